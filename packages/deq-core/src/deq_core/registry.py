"""Read-only view of what the installed plugins provide: solvers, tasks and models by name.

Names come from plugins (``deq`` entry points, see :mod:`deq_core.plugins`); there is no function to
register things at run time. Tests swap the whole view with
``with deq_core.plugins.use_manager(PluginManager.from_plugins([...])): ...``.

Example:
    >>> from deq_core import registry
    >>> "fixed-point" in registry.solvers()
    True
    >>> registry.get_solver("fixed-point", damping=0.5).damping
    0.5
    >>> registry.get_solver("fixed-piont")
    Traceback (most recent call last):
    ...
    deq_core._errors.UnknownNameError: unknown solver 'fixed-piont'. Did you mean 'fixed-point'? ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import PluginError
from ._solver import AbstractFixedPointSolver
from .plugins import ModelEntry, PluginInfo, SolverEntry, TaskEntry, get_manager

__all__ = ["broken", "get_model", "get_solver", "get_task", "models", "plugins", "solvers", "tasks"]


def solvers() -> Mapping[str, SolverEntry]:
    """Read-only ``{name: SolverEntry}`` of every usable solver, sorted by name (aliases and names claimed
    by two plugins are left out)."""
    return get_manager().entries("solver")  # type: ignore[return-value]


def tasks() -> Mapping[str, TaskEntry]:
    """Read-only ``{name: TaskEntry}`` of every usable task."""
    return get_manager().entries("task")  # type: ignore[return-value]


def models() -> Mapping[str, ModelEntry]:
    """Read-only ``{name: ModelEntry}`` of every usable model."""
    return get_manager().entries("model")  # type: ignore[return-value]


def get_solver(name: str, /, **options: Any) -> AbstractFixedPointSolver:
    """Build the solver registered as ``name`` (or an alias) with hyperparameters ``options``.

    Arguments:
        name: a registered solver name (``deq plugins`` lists them); case and ``_`` vs ``-`` are ignored.
        options: the solver's hyperparameters (``damping=0.5``).

    Returns:
        A new :class:`deq_core.AbstractFixedPointSolver`.

    Raises:
        UnknownNameError: no such solver (a ``KeyError``; lists the known ones and the closest match).
        NameConflictError: two plugins provide ``name`` (lists both).
        DeqConfigError: an option the solver does not take (lists the valid ones), or an invalid value.
        PluginError: the plugin's factory returned something that is not a solver.

    Example:
        >>> from deq_core import registry
        >>> registry.get_solver("fixed-point", dampnig=0.5)
        Traceback (most recent call last):
        ...
        deq_core._errors.DeqConfigError: solver 'fixed-point' has no option 'dampnig' (did you mean 'damping'?); ...
    """
    manager = get_manager()
    solver = manager.create("solver", name, **options)
    if not isinstance(solver, AbstractFixedPointSolver):
        raise PluginError(
            f"solver {name!r} (plugin {manager.provider('solver', name)!r}) was built as "
            f"{type(solver).__name__}, expected an AbstractFixedPointSolver"
        )
    return solver


def get_task(name: str, /, **options: Any) -> Any:
    """Build the task registered as ``name`` with ``options`` (errors as in :func:`get_solver`)."""
    return get_manager().create("task", name, **options)


def get_model(name: str, /, **options: Any) -> Any:
    """Build the model registered as ``name`` with ``options`` (errors as in :func:`get_solver`)."""
    return get_manager().create("model", name, **options)


def plugins() -> tuple[PluginInfo, ...]:
    """Every plugin (one per ``deq`` entry point): name, distribution, version, status
    (``active`` / ``broken`` / ``disabled`` / ``conflicted``), what it provides and its error."""
    return get_manager().plugins()


def broken() -> tuple[PluginInfo, ...]:
    """The plugins that failed to import or validate, each with its ``error``."""
    return get_manager().broken()
