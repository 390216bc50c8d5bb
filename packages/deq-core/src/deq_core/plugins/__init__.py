"""The plugin system: pluggy project ``"deq"``, entry-point group ``deq``.

A distribution registers what it provides in one module (by convention ``<package>/plugin.py``)::

    # pyproject.toml
    [project.entry-points.deq]
    my-dist = "my_package.plugin"

    # my_package/plugin.py
    from deq_core.plugins import SolverEntry, hookimpl

    @hookimpl
    def deq_solvers():
        from ._my_solver import MySolver
        return [SolverEntry("my-solver", MySolver, "One line on what it does.", tags=("gpu",))]

Hooks: ``deq_solvers``, ``deq_adjoints``, ``deq_tasks``, ``deq_models`` (iterables of :class:`SolverEntry`,
:class:`AdjointEntry`, :class:`TaskEntry`, :class:`ModelEntry`) and ``deq_commands(cli)`` (add ``deq``
subcommands). Use names through :mod:`deq_core.registry`; tests inject a fresh :class:`PluginManager` with
:func:`use_manager`. deq's own distributions (:data:`FIRST_PARTY`) win a name clash; a third-party duplicate is
*shadowed* and reachable as ``dist:name``.
"""

from .._errors import NameConflictError
from ._hookspecs import HOOK_NAMES, PROJECT_NAME, hookimpl, hookspec
from ._manager import (
    BUILTIN_MODULE,
    ENTRY_POINT_GROUP,
    FIRST_PARTY,
    KINDS,
    KINDS_PLURAL,
    PluginManager,
    PluginSource,
    env_settings,
    get_manager,
    install_hint,
    use_manager,
)
from ._types import (
    AdjointEntry,
    DeqPluginWarning,
    Entry,
    ModelEntry,
    PluginInfo,
    SolverEntry,
    TaskEntry,
)

__all__ = [
    "AdjointEntry", "BUILTIN_MODULE", "DeqPluginWarning", "ENTRY_POINT_GROUP", "Entry", "FIRST_PARTY", "HOOK_NAMES",
    "KINDS", "KINDS_PLURAL",
    "ModelEntry", "NameConflictError", "PROJECT_NAME", "PluginInfo", "PluginManager", "PluginSource", "SolverEntry",
    "TaskEntry", "env_settings", "get_manager", "hookimpl", "hookspec", "install_hint", "use_manager",
]
