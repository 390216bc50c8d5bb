"""deq-core: deep equilibrium models for PyTorch.

The fixed-point driver :func:`fixed_point`, adjoints for implicit gradients, the :class:`DEQ` module,
checkpoints, the plugin system (:mod:`deq_core.registry`) and the conformance kit (:mod:`deq_core.testing`).
"""

from . import plugins, registry
from ._adjoint import AbstractAdjoint, ImplicitAdjoint, NeumannAdjoint, PhantomAdjoint, UnrolledAdjoint, resolve_adjoint
from ._checkpoint import load, save
from ._deq import DEQ, DEQInfo
from ._diagnostics import spectral_radius
from ._driver import fixed_point, resolve_solver
from ._errors import DeqConfigError, DeqError, DeqInputError, DeqSolveError, PluginError, UnknownNameError
from ._jacobian import jacobian_frobenius
from ._loop import LoopControl, LoopOutcome, residual_norms, run_loop
from ._picard import FixedPointIteration
from ._solution import Result, Solution, SolveStats
from ._solver import AbstractFixedPointSolver, FlatMap, check_positive, check_range
from ._state import State, StateLayout
from .distributed import reduce_stats

__version__ = "0.1.0"

__all__ = [
    "AbstractAdjoint", "AbstractFixedPointSolver", "DEQ", "DEQInfo", "DeqConfigError", "DeqError", "DeqInputError",
    "DeqSolveError", "FixedPointIteration", "FlatMap", "ImplicitAdjoint", "LoopControl", "LoopOutcome",
    "NeumannAdjoint",
    "PhantomAdjoint", "PluginError", "Result", "Solution", "SolveStats", "State", "StateLayout", "UnknownNameError",
    "UnrolledAdjoint", "__version__", "check_positive", "check_range", "fixed_point", "jacobian_frobenius", "load",
    "plugins", "reduce_stats", "registry", "resolve_adjoint", "resolve_solver", "residual_norms", "run_loop", "save",
    "spectral_radius",
]
