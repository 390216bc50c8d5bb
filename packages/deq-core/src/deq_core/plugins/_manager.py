"""The plugin manager: discovers ``deq`` entry points lazily, guards each one, resolves names and conflicts.

Loading happens lazily and at most once per plugin, in two stages: a name lookup first loads only deq's own
distributions (:data:`FIRST_PARTY`: deq-core, deq-solvers, deq-tasks, deq-inr) and answers from them when
it can, so resolving a built-in name never imports (or waits for) third-party plugins; the others are loaded
when a name is not found there, when a qualified ``dist:name`` names them, or when everything is listed.

Each plugin is loaded and validated on its own: a plugin whose module fails to import, whose hooks raise, or
whose hooks return invalid records is recorded as *broken* (with its error) and warned about once with
:class:`DeqPluginWarning`; every other plugin keeps working. ``DEQ_STRICT_PLUGINS=1`` raises
:class:`deq_core.PluginError` instead (and loads every plugin up front), and ``DEQ_DISABLE_PLUGINS=a,b``
skips the plugins whose entry-point or distribution name is listed (without importing them).

Names: deq's own distributions win a clash with a third-party plugin (the duplicate is *shadowed*, listed as
such, and reachable as ``dist:name``); two third-party plugins claiming one new name make it *conflicted*
(a plain lookup raises :class:`NameConflictError`; ``dist:name`` picks one).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import importlib
import importlib.metadata
import os
import re
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pluggy

from .._errors import DeqConfigError, NameConflictError, PluginError, UnknownNameError
from . import _hookspecs
from ._hookspecs import HOOK_NAMES, PROJECT_NAME
from ._types import (
    AdjointEntry,
    DeqPluginWarning,
    Entry,
    ModelEntry,
    PluginInfo,
    SolverEntry,
    TaskEntry,
    normalize_name,
)

__all__ = [
    "BUILTIN_MODULE", "ENTRY_POINT_GROUP", "FIRST_PARTY", "KINDS", "KINDS_PLURAL", "PluginManager", "PluginSource",
    "env_settings",
    "get_manager", "install_hint", "use_manager",
]

ENTRY_POINT_GROUP = "deq"
BUILTIN_MODULE = "deq_core.plugins.builtin"
KINDS: Mapping[str, type[Entry]] = MappingProxyType(
    {"solver": SolverEntry, "adjoint": AdjointEntry, "task": TaskEntry, "model": ModelEntry})
_HOOK_OF_KIND = {"solver": "deq_solvers", "adjoint": "deq_adjoints", "task": "deq_tasks", "model": "deq_models"}
_PLURAL = {"solver": "solvers", "adjoint": "adjoints", "task": "tasks", "model": "models", "command": "commands"}
KINDS_PLURAL: Mapping[str, str] = MappingProxyType({k: _PLURAL[k] for k in KINDS})
"""``{kind: plural}`` of the record kinds, in listing order (``"solver": "solvers"``, ...)."""

FIRST_PARTY: frozenset[str] = frozenset({"deq-core", "deq-solvers", "deq-tasks", "deq-inr"})
"""deq's own distributions: their names win a clash with a third-party plugin, and they load first."""

# Names that deq's optional packages provide, for "pip install ..." hints when one is not installed.
_OWN_NAMES: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "deq-solvers": {"solver": ("picard", "anderson", "broyden", "neumann", "fused-anderson", "fused"),
                    "adjoint": ("reversible", "shine", "jfb")},
    "deq-tasks": {"task": ("generative", "inverse", "adversarial", "meta-learning"), "command": ("tasks",)},
    "deq-inr": {"model": ("isiren", "imfn-fourier", "imfn-gabor", "siren", "mfn-fourier", "mfn-gabor"),
                "command": ("inr",)},
})
_INR_MODEL = re.compile(r"^(i?siren|i?mfn)(-|$)")  # deq-inr's model families, widths and variants included
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

    @property
    def first_party(self) -> bool:
        """Whether the plugin belongs to one of deq's own distributions (:data:`FIRST_PARTY`)."""
        return self.distribution is not None and normalize_name(self.distribution) in FIRST_PARTY

    @property
    def qualifiers(self) -> frozenset[str]:
        """The prefixes that select this plugin's names as ``prefix:name``: its name and its distribution."""
        return frozenset(normalize_name(q) for q in (self.name, self.distribution) if q)

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
    hooks: tuple[str, ...] = ()


@dataclasses.dataclass
class _State:
    loaded: list[_Loaded]
    complete: bool  # every source loaded (else: only deq's own distributions)
    names: dict[str, dict[str, Entry]]  # kind -> name or alias -> entry
    owner: dict[int, str]  # id(entry) -> plugin name (every loaded entry, shadowed and conflicted ones too)
    conflicts: dict[str, dict[str, tuple[str, ...]]]  # kind (incl. "command") -> name -> providers
    shadowed: dict[str, dict[str, tuple[str, ...]]]  # kind (incl. "command") -> name -> third-party providers
    qualified: dict[str, dict[tuple[str, str], Entry]]  # kind -> (qualifier, name or alias) -> entry
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
        self._loaded: dict[str, _Loaded] = {}
        self._state: _State | None = None       # every source loaded
        self._own_state: _State | None = None   # deq's own distributions loaded
        self._warned: set[str] = set()
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
    @property
    def sources(self) -> tuple[PluginSource, ...]:
        """The plugins this manager knows (loaded or not)."""
        return self._sources

    def entries(self, kind: str) -> Mapping[str, Entry]:
        """Read-only ``{name: entry}`` of one kind (``"solver"``, ``"adjoint"``, ``"task"``, ``"model"``), sorted by
        name; conflicted names and shadowed duplicates are left out (see :meth:`conflicts`, :meth:`plugins`)."""
        state = self._ensure_loaded()
        table = state.names[_check_kind(kind)]
        return MappingProxyType({n: e for n, e in sorted(table.items()) if e.name == n})

    def lookup(self, kind: str, name: str, /) -> Entry:
        """The entry called ``name`` (or an alias of it), or ``dist:name`` for the one a given plugin provides.

        A plain name is answered from deq's own distributions when they provide it (without loading
        third-party plugins); otherwise every plugin is loaded and asked.

        Raises:
            UnknownNameError: no plugin provides it (the message lists what exists, the closest match and, for a
                name of one of deq's optional packages, the package to install).
            NameConflictError: two third-party plugins claim it (the message names both).
        """
        kind = _check_kind(kind)
        if not isinstance(name, str):
            raise DeqConfigError(f"a {kind} name must be a str, got {type(name).__name__}")
        key = normalize_name(name)
        if ":" in key:
            return self._lookup_qualified(kind, name, key)
        state = self._ensure_loaded(own_only=True)
        if key not in state.names[kind] and key not in state.conflicts[kind]:
            state = self._ensure_loaded()
        table = state.names[kind]
        if key in table:
            return table[key]
        if key in state.conflicts[kind]:
            raise NameConflictError(kind, key, state.conflicts[kind][key])
        hint = install_hint(kind, key, self._sources, {n: i.status for n, i in self._loaded.items()})
        raise UnknownNameError(kind, name, list(table) + list(state.conflicts[kind]), hint=hint)

    def _lookup_qualified(self, kind: str, name: str, key: str) -> Entry:
        qualifier, _, bare = key.partition(":")
        sources = [s for s in self._sources if qualifier in s.qualifiers]
        if not sources:
            known = sorted({q for s in self._sources for q in s.qualifiers})
            raise UnknownNameError("plugin", qualifier, known)
        state = self._ensure_loaded(own_only=all(s.first_party for s in sources))
        entry = state.qualified[kind].get((qualifier, bare))
        if entry is not None:
            return entry
        offered = [f"{q}:{n}" for (q, n), e in state.qualified[kind].items() if q == qualifier and e.name == n]
        statuses = {s.name: self._loaded[s.name].status for s in sources if s.name in self._loaded}
        why = "; ".join(f"plugin {n!r} is {st}" for n, st in statuses.items() if st != "active")
        raise UnknownNameError(kind, name, offered, hint=f"({why})" if why else "")

    def provider(self, kind: str, name: str, /) -> str:
        """Name of the plugin that provides ``name`` (plain or ``dist:name``)."""
        entry = self.lookup(kind, name)
        return self._ensure_loaded(own_only=True).owner.get(id(entry)) or self._ensure_loaded().owner[id(entry)]

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
                from .._solver import old_spelling

                renamed = old_spelling(entry.factory, unknown[0])
                close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.6)
                hint = (f" (it is spelled {renamed} now)" if renamed is not None
                        else f" (did you mean {close[0]!r}?)" if close else "")
                raise DeqConfigError(
                    f"{kind} {entry.name!r} has no option {', '.join(map(repr, unknown))}{hint}; "
                    f"valid options: {', '.join(valid) if valid else '(none)'}"
                )
        return entry.factory(**options)

    def conflicts(self) -> Mapping[str, Mapping[str, tuple[str, ...]]]:
        """``{kind: {name: providers}}`` for names claimed by several third-party plugins (kinds include
        ``"command"``)."""
        state = self._ensure_loaded()
        return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in state.conflicts.items()})

    def shadowed(self) -> Mapping[str, Mapping[str, tuple[str, ...]]]:
        """``{kind: {name: third-party providers}}`` for names that one of deq's own distributions provides too
        (deq's wins; the others are reachable as ``plugin:name``)."""
        state = self._ensure_loaded()
        return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in state.shadowed.items()})

    def command(self, name: str, /) -> Any | None:
        """The ``click.Command`` a plugin adds as ``deq NAME`` (deq's own packages first, without loading
        third-party plugins when one of them has it), or ``None``."""
        state = self._ensure_loaded(own_only=True)
        if name not in state.commands and name not in state.conflicts["command"]:
            state = self._ensure_loaded()
        return state.commands.get(name)

    def command_provider(self, name: str, /) -> str:
        """Name of the plugin that adds the ``deq`` subcommand ``name``."""
        state = self._ensure_loaded()
        cmd = state.commands.get(name)
        for item in state.loaded:
            if item.status == "active" and name in item.commands and (cmd is None or item.commands[name] is cmd):
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
            aliases = {e.name: e.aliases for k in KINDS for e in p.records.get(k, ()) if e.aliases}
            status, error, shadowed = p.status, p.error, ()
            if status == "active":
                me = p.source.name
                clashes = [
                    f"{kind} {n!r} is also provided by {', '.join(repr(o) for o in owners if o != me)} "
                    f"(select one as '{me}:{n}')"
                    for kind, table in state.conflicts.items() for n, owners in sorted(table.items())
                    if me in owners
                ]
                shadowed = tuple(f"{kind} {n}" for kind, table in state.shadowed.items()
                                 for n, owners in sorted(table.items()) if me in owners)
                if clashes:
                    status, error = "conflicted", "; ".join(clashes)
                elif shadowed:
                    status = "shadowed"
                    error = (f"deq's own packages provide {', '.join(shadowed)} too and win; this plugin's are "
                             f"selected as '{me}:NAME'")
            out.append(PluginInfo(p.source.name, p.source.distribution, p.source.version, p.source.module,
                                  status, MappingProxyType(provides), error, hooks=p.hooks,
                                  aliases=MappingProxyType(aliases), shadowed=shadowed,
                                  first_party=p.source.first_party))
        return tuple(sorted(out, key=lambda i: i.name))

    def broken(self) -> tuple[PluginInfo, ...]:
        """The plugins that failed to import or validate (each with its ``error``)."""
        return tuple(p for p in self.plugins() if p.status == "broken")

    def tracebacks(self) -> Mapping[str, str]:
        """``{plugin name: formatted traceback}`` of broken plugins, for debugging."""
        state = self._ensure_loaded()
        return MappingProxyType({p.source.name: p.traceback for p in state.loaded if p.traceback})

    def loaded_names(self) -> tuple[str, ...]:
        """Names of the plugins imported (or tried) so far, in load order; loads nothing."""
        return tuple(self._loaded)

    # -- loading ------------------------------------------------------------------------------------------
    def _ensure_loaded(self, own_only: bool = False) -> _State:
        """The state over every plugin, or (``own_only``) at least over deq's own distributions."""
        own_only = own_only and not self.strict
        state = self._state if self._state is not None or not own_only else self._own_state
        if state is not None:
            return state
        with self._lock:
            state = self._state if self._state is not None or not own_only else self._own_state
            if state is not None:
                return state
            if self._loading:
                raise PluginError(
                    "a deq plugin used the registry while plugins were being loaded; "
                    "look names up inside functions, not at import time"
                )
            self._loading = True
            try:
                problems = self._load_sources([s for s in self._sources if s.name not in self._loaded
                                               and (s.first_party or not own_only)])
                state, conflicts = self._build(complete=not own_only)
                problems += conflicts
            finally:
                self._loading = False
            if own_only:
                self._own_state = state
            else:
                self._state = state
        for message in problems:  # after the state is stored: a warning turned into an error cannot half-load
            if message not in self._warned:
                self._warned.add(message)
                warnings.warn(message, DeqPluginWarning, stacklevel=4)
        return state

    def _load_sources(self, sources: list[PluginSource]) -> list[str]:
        problems: list[str] = []
        for source in sources:
            item = _Loaded(source)
            if normalize_name(source.name) in self.disabled or (
                    source.distribution is not None and normalize_name(source.distribution) in self.disabled):
                item.status = "disabled"
            else:
                try:
                    item.records, item.commands, item.hooks = _collect(source)
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
            self._loaded[source.name] = item
        return problems

    def _build(self, complete: bool) -> tuple[_State, list[str]]:
        loaded = [self._loaded[s.name] for s in self._sources if s.name in self._loaded]
        problems: list[str] = []
        claims: dict[str, dict[str, list[tuple[_Loaded, Any]]]] = {k: {} for k in (*KINDS, "command")}
        owner: dict[int, str] = {}
        qualified: dict[str, dict[tuple[str, str], Entry]] = {k: {} for k in KINDS}
        for item in loaded:
            if item.status != "active":
                continue
            for kind, records in item.records.items():
                for entry in records:
                    owner[id(entry)] = item.source.name
                    for n in entry.names:
                        claims[kind].setdefault(n, []).append((item, entry))
                        for q in item.source.qualifiers:
                            qualified[kind].setdefault((q, n), entry)
            for n, cmd in item.commands.items():
                claims["command"].setdefault(n, []).append((item, cmd))
        names: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        conflicts: dict[str, dict[str, tuple[str, ...]]] = {k: {} for k in (*KINDS, "command")}
        shadowed: dict[str, dict[str, tuple[str, ...]]] = {k: {} for k in (*KINDS, "command")}
        commands: dict[str, Any] = {}
        for kind, table in claims.items():
            for n, owners in sorted(table.items()):
                own = [o for o in owners if o[0].source.first_party]
                if own and len(own) < len(owners):
                    shadowed[kind][n] = tuple(i.source.name for i, _ in owners if not i.source.first_party)
                winners = own or owners
                if len(winners) > 1:
                    who = tuple(i.source.name for i, _ in winners)
                    conflicts[kind][n] = who
                    msg = (f"deq plugins {', '.join(map(repr, who))} all provide {kind} {n!r}; that name cannot be "
                           f"used plainly until one of them is uninstalled or disabled (DEQ_DISABLE_PLUGINS={who[-1]})"
                           f"; '{who[0]}:{n}' selects one.")
                    if self.strict:
                        raise PluginError(msg + " (DEQ_STRICT_PLUGINS is set)")
                    problems.append(msg)
                elif kind == "command":
                    commands[n] = winners[0][1]
                else:
                    names[kind][n] = winners[0][1]
        return _State(loaded, complete, names, owner, conflicts, shadowed, qualified, commands), problems


def install_hint(kind: str, name: str, sources: Iterable[PluginSource] = (),
                 statuses: Mapping[str, str] | None = None) -> str:
    """A sentence naming the deq package that provides ``kind`` ``name`` when that package is not usable
    (``"It comes with deq-solvers: pip install deq-solvers."``), else ``""``.

    Arguments:
        kind: ``"solver"``, ``"adjoint"``, ``"task"``, ``"model"`` or ``"command"``.
        name: the normalized name asked for.
        sources: the plugin sources known (an installed package has one).
        statuses: ``{plugin name: status}`` of the loaded ones (``"broken"`` / ``"disabled"`` change the hint).

    Example:
        >>> install_hint("solver", "anderson")
        'It comes with deq-solvers: pip install deq-solvers.'
        >>> install_hint("solver", "my-solver")
        ''
    """
    statuses = statuses or {}
    for dist, table in _OWN_NAMES.items():
        if name in table.get(kind, ()) or (dist == "deq-inr" and kind == "model" and _INR_MODEL.match(name)):
            break
    else:
        return ""
    mine = [s for s in sources if s.distribution is not None and normalize_name(s.distribution) == dist]
    if not mine:
        return f"It comes with {dist}: pip install {dist}."
    status = statuses.get(mine[0].name, "active")
    if status == "disabled":
        return f"It comes with {dist}, which is installed but disabled by DEQ_DISABLE_PLUGINS."
    if status == "broken":
        return f"It comes with {dist}, which is installed but broken (see `deq plugins`)."
    return ""


def _builtin_source(unique_from: set[str]) -> PluginSource:
    from .. import __version__

    name = "deq-core" if "deq-core" not in unique_from else "deq-core-builtin"
    return PluginSource(name, lambda: importlib.import_module(BUILTIN_MODULE), "deq-core", __version__,
                        BUILTIN_MODULE)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DeqConfigError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return kind


def _collect(source: PluginSource) -> tuple[dict[str, tuple[Entry, ...]], dict[str, Any], tuple[str, ...]]:
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
    return records, commands, tuple(h for h in HOOK_NAMES if h in impls)


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
