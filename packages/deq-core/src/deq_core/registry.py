"""Read-only view of what the installed plugins provide: solvers, adjoints, tasks and models by name.

Names come from plugins (``deq`` entry points, see :mod:`deq_core.plugins`); there is no function to
register things at run time. deq's own packages win a name clash; ``"dist:name"`` (``"my-plugin:anderson"``,
``"deq-solvers:anderson"``) selects the one a given plugin provides. Tests swap the whole view with
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
from .plugins import AdjointEntry, ModelEntry, PluginInfo, SolverEntry, TaskEntry, get_manager

__all__ = [
    "adjoints", "broken", "get_adjoint", "get_model", "get_solver", "get_task", "models", "plugins", "solvers", "tasks",
]


def solvers() -> Mapping[str, SolverEntry]:
    """Read-only ``{name: SolverEntry}`` of every usable solver, sorted by name (aliases and names claimed
    by two plugins are left out)."""
    return get_manager().entries("solver")  # type: ignore[return-value]


def adjoints() -> Mapping[str, AdjointEntry]:
    """Read-only ``{name: AdjointEntry}`` of every usable adjoint (``implicit``, ``neumann``, ...)."""
    return get_manager().entries("adjoint")  # type: ignore[return-value]


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


def get_adjoint(name: str, /, **options: Any) -> Any:
    """Build the adjoint registered as ``name`` with ``options`` (errors as in :func:`get_solver`).

    Returns:
        A new :class:`deq_core.AbstractAdjoint`.

    Example:
        >>> from deq_core import registry
        >>> registry.get_adjoint("neumann", terms=3)
        NeumannAdjoint(terms=3)
    """
    from ._adjoint import AbstractAdjoint

    manager = get_manager()
    adjoint = manager.create("adjoint", name, **options)
    if not isinstance(adjoint, AbstractAdjoint):
        raise PluginError(
            f"adjoint {name!r} (plugin {manager.provider('adjoint', name)!r}) was built as "
            f"{type(adjoint).__name__}, expected an AbstractAdjoint"
        )
    return adjoint


def get_task(name: str, /, **options: Any) -> Any:
    """Build the task registered as ``name`` with ``options`` (a :class:`deq_core.AbstractTask` for tasks on
    the task contract; errors as in :func:`get_solver`)."""
    return get_manager().create("task", name, **options)


def get_model(name: str, /, **options: Any) -> Any:
    """Build the model registered as ``name`` with ``options`` (errors as in :func:`get_solver`)."""
    return get_manager().create("model", name, **options)


def plugins() -> tuple[PluginInfo, ...]:
    """Every plugin (one per ``deq`` entry point): name, distribution, version, status
    (``active`` / ``broken`` / ``disabled`` / ``conflicted`` / ``shadowed``), hooks, what it provides and its
    error."""
    return get_manager().plugins()


def broken() -> tuple[PluginInfo, ...]:
    """The plugins that failed to import or validate, each with its ``error``."""
    return get_manager().broken()
