"""deq-core: deep equilibrium models for PyTorch.

The fixed-point driver :func:`fixed_point`, adjoints for implicit gradients, the :class:`DEQ` module,
checkpoints, the plugin system (:mod:`deq_core.registry`) and the conformance kit (:mod:`deq_core.testing`).
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the submodule defining it. Loaded on first use (PEP 562), so that `import deq_core` and the CLI's
# `deq --version` / `deq --help` / error paths do not import torch; `from deq_core import DEQ` works as usual.
_LAZY: dict[str, str] = {
    "AbstractAdjoint": "_adjoint",
    "ImplicitAdjoint": "_adjoint",
    "NeumannAdjoint": "_adjoint",
    "PhantomAdjoint": "_adjoint",
    "UnrolledAdjoint": "_adjoint",
    "FixedPointCache": "_cache",
    "load": "_checkpoint",
    "save": "_checkpoint",
    "LoopControl": "_control",
    "LoopOutcome": "_control",
    "meets_tolerance": "_control",
    "residual_norms": "_control",
    "DEQ": "_deq",
    "DEQInfo": "_deq",
    "spectral_radius": "_diagnostics",
    "DeqConfigError": "_errors",
    "DeqError": "_errors",
    "DeqInputError": "_errors",
    "DeqSolveError": "_errors",
    "NameConflictError": "_errors",
    "PluginError": "_errors",
    "UnknownNameError": "_errors",
    "fixed_point": "_fixed_point",
    "jacobian_frobenius": "_jacobian",
    "jacobian_spectral": "_jacobian",
    "run_loop": "_loop",
    "FixedPointIteration": "_picard",
    "resolve_adjoint": "_resolve",
    "resolve_solver": "_resolve",
    "Result": "_solution",
    "Solution": "_solution",
    "SolveStats": "_solution",
    "AbstractFixedPointSolver": "_solver",
    "FlatMap": "_solver",
    "State": "_state",
    "StateLayout": "_state",
    "AbstractTask": "_task",
    "TaskOption": "_task",
    "check_bool": "_validate",
    "check_int": "_validate",
    "check_positive": "_validate",
    "check_range": "_validate",
    "check_tolerances": "_validate",
    "reduce_stats": "distributed",
}
_SUBMODULES = ("plugins", "registry", "distributed", "nn", "opteq", "testing", "cli")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'deq_core' has no attribute {name!r}")
    globals()[name] = value  # resolved once: the next access is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


if TYPE_CHECKING:  # what type checkers and IDEs see: the eager imports
    from . import plugins, registry
    from ._adjoint import AbstractAdjoint, ImplicitAdjoint, NeumannAdjoint, PhantomAdjoint, UnrolledAdjoint
    from ._cache import FixedPointCache
    from ._checkpoint import load, save
    from ._control import LoopControl, LoopOutcome, meets_tolerance, residual_norms
    from ._deq import DEQ, DEQInfo
    from ._diagnostics import spectral_radius
    from ._errors import (
        DeqConfigError,
        DeqError,
        DeqInputError,
        DeqSolveError,
        NameConflictError,
        PluginError,
        UnknownNameError,
    )
    from ._fixed_point import fixed_point
    from ._jacobian import jacobian_frobenius, jacobian_spectral
    from ._loop import run_loop
    from ._picard import FixedPointIteration
    from ._resolve import resolve_adjoint, resolve_solver
    from ._solution import Result, Solution, SolveStats
    from ._solver import AbstractFixedPointSolver, FlatMap
    from ._state import State, StateLayout
    from ._task import AbstractTask, TaskOption
    from ._validate import check_bool, check_int, check_positive, check_range, check_tolerances
    from .distributed import reduce_stats

__all__ = [
    "AbstractAdjoint", "AbstractFixedPointSolver", "AbstractTask", "DEQ", "DEQInfo", "DeqConfigError", "DeqError",
    "DeqInputError", "DeqSolveError", "FixedPointCache", "FixedPointIteration", "FlatMap", "ImplicitAdjoint",
    "LoopControl", "LoopOutcome", "NameConflictError", "NeumannAdjoint", "PhantomAdjoint", "PluginError", "Result",
    "Solution",
    "SolveStats", "State", "StateLayout", "TaskOption", "UnknownNameError", "UnrolledAdjoint", "__version__",
    "check_bool", "check_int", "check_positive", "check_range", "check_tolerances", "fixed_point",
    "jacobian_frobenius", "jacobian_spectral", "load", "meets_tolerance", "plugins", "reduce_stats", "registry",
    "residual_norms",
    "resolve_adjoint", "resolve_solver", "run_loop", "save", "spectral_radius",
]
