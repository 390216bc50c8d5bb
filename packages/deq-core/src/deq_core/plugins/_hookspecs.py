"""The hook specifications of the pluggy project ``"deq"``.

A plugin is a module (or any object) with functions marked ``@hookimpl`` whose names are the hooks
below. Each distribution points one key of the ``deq`` entry-point group at such a module::

    [project.entry-points.deq]
    my-dist = "my_package.plugin"

Every hook is optional; implement only what the distribution provides.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from ._types import AdjointEntry, ModelEntry, SolverEntry, TaskEntry

__all__ = ["PROJECT_NAME", "HOOK_NAMES", "hookimpl", "hookspec"]

PROJECT_NAME = "deq"
"""The pluggy project name; markers of any other project are ignored."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marker for hook specifications (used only by deq-core)."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: ``@hookimpl`` on a module-level function named after a hook."""


@hookspec
def deq_solvers() -> Iterable[SolverEntry]:
    """Fixed-point solvers this plugin provides.

    Returns:
        An iterable of :class:`~deq_core.plugins.SolverEntry`; each ``factory(**options)`` must return a
        :class:`deq_core.AbstractFixedPointSolver`. Names are looked up by
        :func:`deq_core.registry.get_solver`, ``fixed_point(..., solver="name")`` and ``DEQ(solver="name")``.

    Example:
        >>> from deq_core.plugins import SolverEntry, hookimpl
        >>> from deq_core import FixedPointIteration
        >>> @hookimpl
        ... def deq_solvers():
        ...     return [SolverEntry("my-picard", FixedPointIteration, "Damped Picard iteration.")]
    """


@hookspec
def deq_adjoints() -> Iterable[AdjointEntry]:
    """Adjoints (how gradients flow back through a fixed point) this plugin provides.

    Returns:
        An iterable of :class:`~deq_core.plugins.AdjointEntry`; each ``factory(**options)`` must return a
        :class:`deq_core.AbstractAdjoint`. Names are looked up by :func:`deq_core.registry.get_adjoint`,
        ``fixed_point(..., adjoint="name")`` and ``DEQ(adjoint="name")``; check an adjoint with
        :func:`deq_core.testing.check_adjoint`.

    Example:
        >>> from deq_core.plugins import AdjointEntry, hookimpl
        >>> from deq_core import PhantomAdjoint
        >>> @hookimpl
        ... def deq_adjoints():
        ...     return [AdjointEntry("one-step", lambda: PhantomAdjoint(steps=1, damping=1.0), "Backprop one f step.")]
    """


@hookspec
def deq_tasks() -> Iterable[TaskEntry]:
    """Tasks (runnable experiments) this plugin provides, as :class:`~deq_core.plugins.TaskEntry` records.

    ``factory(**options)`` returns a :class:`deq_core.AbstractTask` (usually ``factory`` is the task class);
    :func:`deq_core.registry.get_task` calls it and ``deq tasks run NAME`` runs it. Check a task with
    :func:`deq_core.testing.check_task`.
    """


@hookspec
def deq_models() -> Iterable[ModelEntry]:
    """Models (``nn.Module`` builders) this plugin provides, as :class:`~deq_core.plugins.ModelEntry` records.

    ``factory(**options)`` returns the model; :func:`deq_core.registry.get_model` calls it (and
    ``deq inr fit --model NAME`` for models tagged ``"inr"``). Check a model with
    :func:`deq_core.testing.check_model`.
    """


@hookspec
def deq_commands(cli: click.Group) -> None:
    """Add subcommands to the ``deq`` command line.

    Arguments:
        cli: a :class:`click.Group`; add commands with ``@cli.command()`` / ``@cli.group()`` or
            ``cli.add_command(cmd)``. Keep this hook cheap (import heavy modules inside the command
            callbacks): it runs whenever the plugin is loaded.

    Example:
        >>> import click
        >>> from deq_core.plugins import hookimpl
        >>> @hookimpl
        ... def deq_commands(cli):
        ...     @cli.command("hello")
        ...     def hello():
        ...         click.echo("hello from my plugin")
    """


HOOK_NAMES: tuple[str, ...] = ("deq_solvers", "deq_adjoints", "deq_tasks", "deq_models", "deq_commands")
"""Every hook name, in documentation order."""
