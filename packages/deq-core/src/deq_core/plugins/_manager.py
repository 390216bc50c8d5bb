"""The plugin manager: discovers ``deq`` entry points lazily, guards each one, resolves names and conflicts.

Loading happens once, on the first query. Each plugin is loaded and validated on its own: a plugin whose
module fails to import, whose hooks raise, or whose hooks return invalid records is recorded as *broken*
(with its error) and warned about once with :class:`DeqPluginWarning`; every other plugin keeps working.
``DEQ_STRICT_PLUGINS=1`` raises :class:`deq_core.PluginError` instead, and ``DEQ_DISABLE_PLUGINS=a,b``
skips the plugins whose entry-point or distribution name is listed (without importing them).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import importlib
import importlib.metadata
import os
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pluggy

from .._errors import DeqConfigError, PluginError, UnknownNameError
from . import _hookspecs
from ._hookspecs import HOOK_NAMES, PROJECT_NAME
from ._types import (
    DeqPluginWarning,
    Entry,
    ModelEntry,
    NameConflictError,
    PluginInfo,
    SolverEntry,
    TaskEntry,
    normalize_name,
)

__all__ = [
    "BUILTIN_MODULE", "ENTRY_POINT_GROUP", "KINDS", "PluginManager", "PluginSource", "env_settings", "get_manager",
    "use_manager",
]

ENTRY_POINT_GROUP = "deq"
BUILTIN_MODULE = "deq_core.plugins.builtin"
KINDS: Mapping[str, type[Entry]] = MappingProxyType({"solver": SolverEntry, "task": TaskEntry, "model": ModelEntry})
_HOOK_OF_KIND = {"solver": "deq_solvers", "task": "deq_tasks", "model": "deq_models"}
_PLURAL = {"solver": "solvers", "task": "tasks", "model": "models", "command": "commands"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class PluginSource:
    """One plugin to load: a name, a loader, and where it comes from.

    Arguments:
        name: plugin name (the entry-point name; by convention the distribution name).
        load: zero-argument callable returning the plugin object (a module with ``@hookimpl`` functions);
            called once, inside the plugin's guard.
        distribution, version: the distribution declaring it, for ``deq plugins`` and ``DEQ_DISABLE_PLUGINS``.
        module: the entry point's target, for display.

    Example:
        >>> from deq_core.plugins import PluginManager, PluginSource
        >>> def fail(): raise ImportError("no module named 'missing'")
        >>> mgr = PluginManager([PluginSource("bad", fail)])
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     [p.status for p in mgr.plugins()], caught[0].category.__name__
        (['broken'], 'DeqPluginWarning')
    """

    name: str
    load: Callable[[], object]
    distribution: str | None = None
    version: str | None = None
    module: str = ""

    @classmethod
    def of(cls, plugin: object) -> PluginSource:
        """Wrap an already imported plugin object, a ``(name, object)`` pair, or return a ``PluginSource``."""
        if isinstance(plugin, PluginSource):
            return plugin
        if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
            name, obj = plugin
        else:
            obj = plugin
            name = normalize_name(getattr(obj, "__name__", type(obj).__name__))
        module = getattr(obj, "__name__", type(obj).__qualname__)
        if module == BUILTIN_MODULE:
            from .. import __version__

            name = plugin[0] if isinstance(plugin, tuple) else "deq-core"
            return cls(name=name, load=lambda: obj, distribution="deq-core", version=__version__, module=module)
        return cls(name=name, load=lambda: obj, module=module)


@dataclasses.dataclass
class _Loaded:
    source: PluginSource
    status: str = "active"
    error: str | None = None
    traceback: str | None = None
    records: dict[str, tuple[Entry, ...]] = dataclasses.field(default_factory=dict)
    commands: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _State:
    loaded: list[_Loaded]
    names: dict[str, dict[str, Entry]]  # kind -> name or alias -> entry
    providers: dict[str, dict[str, str]]  # kind -> canonical name -> plugin name
    conflicts: dict[str, dict[str, tuple[str, ...]]]  # kind (incl. "command") -> name -> providers
    commands: dict[str, Any]


def env_settings(environ: Mapping[str, str] | None = None) -> tuple[bool, frozenset[str]]:
    """Parse ``DEQ_STRICT_PLUGINS`` and ``DEQ_DISABLE_PLUGINS`` from ``environ`` (default ``os.environ``).

    Returns:
        ``(strict, disabled)``: whether plugin problems raise, and the normalized blocked names.

    Raises:
        DeqConfigError: ``DEQ_STRICT_PLUGINS`` is not one of ``1/true/yes/on/0/false/no/off``.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("DEQ_STRICT_PLUGINS", "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise DeqConfigError(f"DEQ_STRICT_PLUGINS must be one of 1/true/yes/on or 0/false/no/off, got {raw!r}")
    disabled = frozenset(normalize_name(p) for p in environ.get("DEQ_DISABLE_PLUGINS", "").split(",") if p.strip())
    return raw in _TRUE, disabled


class PluginManager:
    """Loads plugins (lazily, on the first query) and answers name lookups; read-only once loaded.

    Arguments:
        sources: plugins to load, as :class:`PluginSource` (see :meth:`from_entry_points`,
            :meth:`from_plugins`).
        strict: raise :class:`deq_core.PluginError` on the first broken plugin or name conflict instead of
            recording it and warning.
        disabled: plugin or distribution names to skip without importing them.

    Tests inject a fresh manager instead of mutating a global registry.

    Example:
        >>> from deq_core.plugins import PluginManager, SolverEntry, hookimpl, use_manager
        >>> from deq_core import FixedPointIteration, registry
        >>> class MyPlugin:
        ...     @hookimpl
        ...     def deq_solvers(self):
        ...         return [SolverEntry("half-step", lambda: FixedPointIteration(damping=0.5), "Picard, damping 0.5.")]
        >>> with use_manager(PluginManager.from_plugins([("mine", MyPlugin())])):
        ...     registry.get_solver("half-step").damping
        0.5
    """

    def __init__(self, sources: Iterable[PluginSource], *, strict: bool = False, disabled: Iterable[str] = ()):
        self._sources = tuple(sources)
        seen: set[str] = set()
        for s in self._sources:
            if s.name in seen:
                raise DeqConfigError(f"two plugin sources share the name {s.name!r}; plugin names must be unique")
            seen.add(s.name)
        self.strict = bool(strict)
        self.disabled = frozenset(normalize_name(d) for d in disabled)
        self._state: _State | None = None
        self._lock = threading.RLock()
        self._loading = False

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_plugins(cls, plugins: Iterable[object], *, strict: bool = False, disabled: Iterable[str] = (),
                     include_builtin: bool = True) -> PluginManager:
        """A manager over given plugin objects (modules, instances with ``@hookimpl`` methods,
        ``(name, object)`` pairs or :class:`PluginSource`); no entry points, no environment variables.

        With ``include_builtin`` (default), deq-core's own plugin (``fixed-point``, the default solver of
        :func:`deq_core.fixed_point` and :class:`deq_core.DEQ`) is added unless it is among ``plugins``;
        pass ``include_builtin=False`` for a manager holding exactly ``plugins``.
        """
        sources = [PluginSource.of(p) for p in plugins]
        if include_builtin and not any(s.module == BUILTIN_MODULE for s in sources):
            sources.append(_builtin_source(unique_from={s.name for s in sources}))
        return cls(sources, strict=strict, disabled=disabled)

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP, *, strict: bool | None = None,
                          disabled: Iterable[str] | None = None, environ: Mapping[str, str] | None = None,
                          include_builtin: bool = True) -> PluginManager:
        """A manager over the installed ``group`` entry points (nothing is imported until the first query).

        ``strict`` / ``disabled`` default to ``DEQ_STRICT_PLUGINS`` / ``DEQ_DISABLE_PLUGINS`` in ``environ``.
        With ``include_builtin``, deq-core's own plugin is added when no entry point declares it (running
        from a source tree without installed metadata).
        """
        env_strict, env_disabled = env_settings(environ)
        sources: list[PluginSource] = []
        names: set[str] = set()
        for ep in importlib.metadata.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            name = ep.name if ep.name not in names else f"{dist_name}:{ep.name}"
            names.add(name)
            sources.append(PluginSource(name, ep.load, dist_name, version, ep.value))
        if include_builtin and not any(s.module == BUILTIN_MODULE for s in sources):
            sources.append(_builtin_source(unique_from=names))
        return cls(sources, strict=env_strict if strict is None else strict,
                   disabled=env_disabled if disabled is None else disabled)

    # -- queries ------------------------------------------------------------------------------------------
    def entries(self, kind: str) -> Mapping[str, Entry]:
        """Read-only ``{name: entry}`` of one kind (``"solver"``, ``"task"``, ``"model"``), sorted by name;
        conflicted names are left out (see :meth:`conflicts`)."""
        state = self._ensure_loaded()
        table = state.names[_check_kind(kind)]
        return MappingProxyType({n: e for n, e in sorted(table.items()) if e.name == n})

    def lookup(self, kind: str, name: str, /) -> Entry:
        """The entry called ``name`` (or an alias of it).

        Raises:
            UnknownNameError: no plugin provides it (the message lists what exists and the closest match).
            NameConflictError: two plugins claim it (the message names both).
        """
        state = self._ensure_loaded()
        kind = _check_kind(kind)
        if not isinstance(name, str):
            raise DeqConfigError(f"a {kind} name must be a str, got {type(name).__name__}")
        key = normalize_name(name)
        table = state.names[kind]
        if key in table:
            return table[key]
        if key in state.conflicts[kind]:
            raise NameConflictError(kind, key, state.conflicts[kind][key])
        raise UnknownNameError(kind, name, list(table) + list(state.conflicts[kind]))

    def provider(self, kind: str, name: str, /) -> str:
        """Name of the plugin that provides ``name``."""
        entry = self.lookup(kind, name)
        return self._ensure_loaded().providers[kind][entry.name]

    def create(self, kind: str, name: str, /, **options: Any) -> Any:
        """``lookup(kind, name).factory(**options)``, refusing options the factory does not take.

        Raises:
            DeqConfigError: an unknown option (the message lists the valid ones), or a bad value.
        """
        entry = self.lookup(kind, name)
        valid = entry.option_names() if options else None   # inspect.signature costs ~40 us: only when needed
        if valid is not None:
            unknown = sorted(set(options) - set(valid))
            if unknown:
                close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DeqConfigError(
                    f"{kind} {entry.name!r} has no option {', '.join(map(repr, unknown))}{hint}; "
                    f"valid options: {', '.join(valid) if valid else '(none)'}"
                )
        return entry.factory(**options)

    def conflicts(self) -> Mapping[str, Mapping[str, tuple[str, ...]]]:
        """``{kind: {name: providers}}`` for names claimed by several plugins (kinds include ``"command"``)."""
        state = self._ensure_loaded()
        return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in state.conflicts.items()})

    def command_provider(self, name: str, /) -> str:
        """Name of the plugin that adds the ``deq`` subcommand ``name``."""
        state = self._ensure_loaded()
        for item in state.loaded:
            if item.status == "active" and name in item.commands:
                return item.source.name
        raise UnknownNameError("command", name, state.commands)

    def commands(self) -> Mapping[str, Any]:
        """``{name: click.Command}`` added by plugins through ``deq_commands`` (conflicted names left out)."""
        return MappingProxyType(dict(self._ensure_loaded().commands))

    def plugins(self) -> tuple[PluginInfo, ...]:
        """Every plugin, loaded or not, as :class:`PluginInfo`, sorted by name."""
        state = self._ensure_loaded()
        out = []
        for p in state.loaded:
            provides = {_PLURAL[k]: tuple(sorted(e.name for e in p.records.get(k, ()))) for k in KINDS}
            provides["commands"] = tuple(sorted(p.commands))
            status, error = p.status, p.error
            if status == "active":
                clashes = [
                    f"{kind} {n!r} is also provided by {', '.join(repr(o) for o in owners if o != p.source.name)}"
                    for kind, table in state.conflicts.items() for n, owners in sorted(table.items())
                    if p.source.name in owners
                ]
                if clashes:
                    status, error = "conflicted", "; ".join(clashes)
            out.append(PluginInfo(p.source.name, p.source.distribution, p.source.version, p.source.module,
                                  status, MappingProxyType(provides), error))
        return tuple(sorted(out, key=lambda i: i.name))

    def broken(self) -> tuple[PluginInfo, ...]:
        """The plugins that failed to import or validate (each with its ``error``)."""
        return tuple(p for p in self.plugins() if p.status == "broken")

    def tracebacks(self) -> Mapping[str, str]:
        """``{plugin name: formatted traceback}`` of broken plugins, for debugging."""
        state = self._ensure_loaded()
        return MappingProxyType({p.source.name: p.traceback for p in state.loaded if p.traceback})

    # -- loading ------------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> _State:
        state = self._state
        if state is not None:
            return state
        with self._lock:
            if self._state is not None:
                return self._state
            if self._loading:
                raise PluginError(
                    "a deq plugin used the registry while plugins were being loaded; "
                    "look names up inside functions, not at import time"
                )
            self._loading = True
            try:
                state, problems = self._load_all()
            finally:
                self._loading = False
            self._state = state
        for message in problems:  # after the state is stored: a warning turned into an error cannot half-load
            warnings.warn(message, DeqPluginWarning, stacklevel=4)
        return state

    def _load_all(self) -> tuple[_State, list[str]]:
        loaded: list[_Loaded] = []
        problems: list[str] = []
        for source in self._sources:
            item = _Loaded(source)
            if normalize_name(source.name) in self.disabled or (
                    source.distribution is not None and normalize_name(source.distribution) in self.disabled):
                item.status = "disabled"
            else:
                try:
                    item.records, item.commands = _collect(source)
                except Exception as exc:  # noqa: BLE001 - the guard: any failure makes this one plugin broken
                    item.status, item.error = "broken", f"{type(exc).__name__}: {exc}"
                    item.traceback = "".join(traceback.format_exception(exc))
                    where = f" ({source.distribution} {source.version})" if source.distribution else ""
                    if self.strict:
                        raise PluginError(
                            f"deq plugin {source.name!r}{where} is broken: {item.error} "
                            f"(DEQ_STRICT_PLUGINS is set; unset it to skip broken plugins with a warning)"
                        ) from exc
                    problems.append(
                        f"deq plugin {source.name!r}{where} is broken and was skipped: {item.error}. "
                        f"`deq plugins` lists every plugin; DEQ_DISABLE_PLUGINS={source.name} hides this one, "
                        f"DEQ_STRICT_PLUGINS=1 makes this an error."
                    )
            loaded.append(item)

        claims: dict[str, dict[str, list[tuple[str, Any]]]] = {k: {} for k in (*KINDS, "command")}
        for item in loaded:
            if item.status != "active":
                continue
            for kind, records in item.records.items():
                for entry in records:
                    for n in entry.names:
                        claims[kind].setdefault(n, []).append((item.source.name, entry))
            for n, cmd in item.commands.items():
                claims["command"].setdefault(n, []).append((item.source.name, cmd))
        names: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        providers: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        conflicts: dict[str, dict[str, tuple[str, ...]]] = {k: {} for k in (*KINDS, "command")}
        commands: dict[str, Any] = {}
        for kind, table in claims.items():
            for n, owners in sorted(table.items()):
                if len(owners) > 1:
                    who = tuple(o for o, _ in owners)
                    conflicts[kind][n] = who
                    msg = (f"deq plugins {', '.join(map(repr, who))} all provide {kind} {n!r}; that name cannot be "
                           f"used until one of them is uninstalled or disabled (DEQ_DISABLE_PLUGINS={who[-1]}).")
                    if self.strict:
                        raise PluginError(msg + " (DEQ_STRICT_PLUGINS is set)")
                    problems.append(msg)
                elif kind == "command":
                    commands[n] = owners[0][1]
                else:
                    owner, entry = owners[0]
                    names[kind][n] = entry
                    if entry.name == n:
                        providers[kind][n] = owner
        return _State(loaded, names, providers, conflicts, commands), problems


def _builtin_source(unique_from: set[str]) -> PluginSource:
    from .. import __version__

    name = "deq-core" if "deq-core" not in unique_from else "deq-core-builtin"
    return PluginSource(name, lambda: importlib.import_module(BUILTIN_MODULE), "deq-core", __version__,
                        BUILTIN_MODULE)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DeqConfigError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return kind


def _collect(source: PluginSource) -> tuple[dict[str, tuple[Entry, ...]], dict[str, Any]]:
    """Import one plugin and run its hooks; raise on anything invalid (the caller's guard records it)."""
    obj = source.load()
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(_hookspecs)
    pm.register(obj, name=source.name)  # checks hookimpl arguments against the specs
    impls = {}
    for caller in pm.get_hookcallers(obj) or ():
        if not caller.has_spec():
            raise PluginError(
                f"{source.module or source.name} implements unknown hook {caller.name!r}; "
                f"known hooks: {', '.join(HOOK_NAMES)}"
            )
        for impl in caller.get_hookimpls():
            if impl.plugin is obj:
                if impl.hookwrapper or getattr(impl, "wrapper", False):
                    raise PluginError(f"hook wrappers are not supported (hook {caller.name!r})")
                impls[caller.name] = impl
    if not impls:
        raise PluginError(
            f"{source.module or source.name} has no @hookimpl functions; mark hooks with "
            f"`from deq_core.plugins import hookimpl` (known hooks: {', '.join(HOOK_NAMES)})"
        )
    records: dict[str, tuple[Entry, ...]] = {}
    for kind, cls in KINDS.items():
        hook = _HOOK_OF_KIND[kind]
        if hook not in impls:
            continue
        result = impls[hook].function()
        if result is None:
            result = ()
        if isinstance(result, Entry):
            result = (result,)
        if isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
            raise PluginError(f"{hook}() must return an iterable of {cls.__name__}, got {type(result).__name__}")
        items = tuple(result)
        seen: dict[str, str] = {}
        for item in items:
            if type(item) is not cls:
                raise PluginError(f"{hook}() must yield {cls.__name__} records, got {type(item).__name__}: {item!r}")
            for n in item.names:
                if n in seen:
                    raise PluginError(f"{hook}() yields {kind} name {n!r} twice ({seen[n]!r} and {item.name!r})")
                seen[n] = item.name
        records[kind] = items
    commands: dict[str, Any] = {}
    if "deq_commands" in impls:
        import click

        probe = click.Group("deq")
        impl = impls["deq_commands"]
        impl.function(**{a: probe for a in impl.argnames})
        for n, cmd in probe.commands.items():
            if not isinstance(cmd, click.Command):
                raise PluginError(f"deq_commands() added {n!r} as {type(cmd).__name__}, expected a click.Command")
        commands = dict(probe.commands)
    return records, commands


_GLOBAL: PluginManager | None = None
_GLOBAL_LOCK = threading.Lock()
_OVERRIDE: contextvars.ContextVar[PluginManager | None] = contextvars.ContextVar("deq_plugin_manager", default=None)


def get_manager() -> PluginManager:
    """The manager in use: the one installed by :func:`use_manager`, else the process-wide one over the
    installed ``deq`` entry points (created on first use, reading the environment variables then)."""
    override = _OVERRIDE.get()
    if override is not None:
        return override
    global _GLOBAL
    if _GLOBAL is None:
        with _GLOBAL_LOCK:
            if _GLOBAL is None:
                _GLOBAL = PluginManager.from_entry_points()
    return _GLOBAL


@contextlib.contextmanager
def use_manager(manager: PluginManager) -> Iterator[PluginManager]:
    """Make ``manager`` the one :mod:`deq_core.registry` and the CLI use inside the ``with`` block
    (context-local: other threads and contexts keep theirs)."""
    if not isinstance(manager, PluginManager):
        raise DeqConfigError(f"use_manager expects a PluginManager, got {type(manager).__name__}")
    token = _OVERRIDE.set(manager)
    try:
        yield manager
    finally:
        _OVERRIDE.reset(token)
