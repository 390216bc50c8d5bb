"""deq-core: deep equilibrium models for PyTorch.

The fixed-point driver :func:`fixed_point`, adjoints for implicit gradients, the :class:`DEQ` module,
checkpoints, the plugin system (:mod:`deq_core.registry`) and the conformance kit (:mod:`deq_core.testing`).
"""

from . import plugins, registry
from ._adjoint import AbstractAdjoint, ImplicitAdjoint, NeumannAdjoint, PhantomAdjoint, UnrolledAdjoint
from ._cache import FixedPointCache
from ._checkpoint import load, save
from ._control import LoopControl, LoopOutcome, meets_tolerance, residual_norms
from ._deq import DEQ, DEQInfo
from ._errors import DeqConfigError, DeqError, DeqInputError, DeqSolveError, PluginError, UnknownNameError
from ._fixed_point import fixed_point
from ._jacobian import jacobian_frobenius
from ._loop import run_loop
from ._picard import FixedPointIteration
from ._resolve import resolve_adjoint, resolve_solver
from ._solution import Result, Solution, SolveStats
from ._solver import AbstractFixedPointSolver, FlatMap
from ._state import State, StateLayout
from ._task import AbstractTask, TaskOption
from ._validate import check_bool, check_int, check_positive, check_range, check_tolerances
from .distributed import reduce_stats

__version__ = "0.1.0"

__all__ = [
    "AbstractAdjoint", "AbstractFixedPointSolver", "AbstractTask", "DEQ", "DEQInfo", "DeqConfigError", "DeqError",
    "DeqInputError", "DeqSolveError", "FixedPointCache", "FixedPointIteration", "FlatMap", "ImplicitAdjoint",
    "LoopControl", "LoopOutcome", "NeumannAdjoint", "PhantomAdjoint", "PluginError", "Result", "Solution",
    "SolveStats", "State", "StateLayout", "TaskOption", "UnknownNameError", "UnrolledAdjoint", "__version__",
    "check_bool", "check_int", "check_positive", "check_range", "check_tolerances", "fixed_point",
    "jacobian_frobenius", "load", "meets_tolerance", "plugins", "reduce_stats", "registry", "residual_norms",
    "resolve_adjoint", "resolve_solver", "run_loop", "save",
]
