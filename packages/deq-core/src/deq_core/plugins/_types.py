"""Records that plugins yield (``SolverEntry``, ``AdjointEntry``, ``TaskEntry``, ``ModelEntry``) and what the
manager reports (:class:`PluginInfo`)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from .._errors import DeqConfigError

__all__ = [
    "AdjointEntry", "DeqPluginWarning", "Entry", "ModelEntry", "PluginInfo", "SolverEntry",
    "TaskEntry", "check_name", "normalize_name",
]

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


class DeqPluginWarning(UserWarning):
    """A plugin was skipped (failed to import or validate) or two plugins claim one name."""




def normalize_name(name: str) -> str:
    """Lower-case, with ``_`` / ``.`` / spaces turned into ``-`` (PEP 503 style), for lookups and matching."""
    return re.sub(r"[-_.\s]+", "-", name.strip().lower())


def check_name(what: str, name: object) -> str:
    """Return ``name`` if it is lower-case kebab (``anderson``, ``fixed-point``), else raise ``DeqConfigError``."""
    if not isinstance(name, str) or not _KEBAB.match(name):
        raise DeqConfigError(
            f"{what} must be a lower-case kebab name like 'fixed-point' (letters, digits, single dashes, "
            f"starting with a letter), got {name!r}"
        )
    return name


@dataclasses.dataclass(frozen=True)
class Entry:
    """Base of the records plugins yield; use :class:`SolverEntry`, :class:`AdjointEntry`, :class:`TaskEntry`,
    :class:`ModelEntry`.

    Attributes:
        name: lower-case kebab name users type (``"anderson"``).
        factory: callable ``factory(**options)`` returning the object (often the class itself).
        summary: one line shown by ``deq plugins``.
        aliases: other names for the same thing (lower-case kebab).
        tags: capability tags (free-form strings such as ``"gpu"``, ``"reference"``).

    Raises:
        DeqConfigError: a field has the wrong type or form (the manager then marks the plugin broken).
    """

    kind: ClassVar[str] = "entry"

    name: str
    factory: Callable[..., Any]
    summary: str = ""
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        what = type(self).__name__
        check_name(f"{what}.name", self.name)
        if not callable(self.factory):
            raise DeqConfigError(f"{what}({self.name!r}).factory must be callable, got {type(self.factory).__name__}")
        if not isinstance(self.summary, str) or "\n" in self.summary.strip():
            raise DeqConfigError(f"{what}({self.name!r}).summary must be a one-line str, got {self.summary!r}")
        for field in ("aliases", "tags"):
            value = getattr(self, field)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise DeqConfigError(f"{what}({self.name!r}).{field} must be a tuple of str, got {value!r}")
            if not all(isinstance(v, str) and v for v in value):
                raise DeqConfigError(f"{what}({self.name!r}).{field} must contain non-empty strings, got {value!r}")
            object.__setattr__(self, field, tuple(value))
        object.__setattr__(self, "summary", self.summary.strip())
        for alias in self.aliases:
            check_name(f"{what}({self.name!r}).aliases", alias)
        if len(set(self.names)) != len(self.names):
            raise DeqConfigError(f"{what}({self.name!r}) repeats a name among name and aliases: {self.names}")

    @property
    def names(self) -> tuple[str, ...]:
        """``(name, *aliases)``."""
        return (self.name, *self.aliases)

    def option_names(self) -> tuple[str, ...] | None:
        """Keyword options ``factory`` accepts, or ``None`` when it takes ``**kwargs`` (anything goes)."""
        try:
            sig = inspect.signature(self.factory)
        except (TypeError, ValueError):  # builtins without a signature
            return None
        names = []
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                return None
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.append(p.name)
        return tuple(names)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (no factory)."""
        return {"name": self.name, "summary": self.summary, "aliases": list(self.aliases), "tags": list(self.tags)}


@dataclasses.dataclass(frozen=True)
class SolverEntry(Entry):
    """A fixed-point solver; ``factory(**options)`` returns an :class:`deq_core.AbstractFixedPointSolver`.

    Example:
        >>> from deq_core import FixedPointIteration
        >>> from deq_core.plugins import SolverEntry
        >>> e = SolverEntry("my-picard", FixedPointIteration, "Damped Picard iteration.", tags=("reference",))
        >>> e.option_names()
        ('damping',)
    """

    kind: ClassVar[str] = "solver"


@dataclasses.dataclass(frozen=True)
class AdjointEntry(Entry):
    """An adjoint (how gradients flow back through ``z*``); ``factory(**options)`` returns an
    :class:`deq_core.AbstractAdjoint`. Checked by :func:`deq_core.testing.check_adjoint`.

    Example:
        >>> from deq_core import NeumannAdjoint
        >>> from deq_core.plugins import AdjointEntry
        >>> AdjointEntry("my-neumann", NeumannAdjoint, "Truncated Neumann series.").option_names()
        ('terms',)
    """

    kind: ClassVar[str] = "adjoint"


@dataclasses.dataclass(frozen=True)
class TaskEntry(Entry):
    """A task (experiment); ``factory(**options)`` returns a :class:`deq_core.AbstractTask` (usually the task
    class itself, whose ``options`` are its ``Config`` fields). Checked by :func:`deq_core.testing.check_task`."""

    kind: ClassVar[str] = "task"


@dataclasses.dataclass(frozen=True)
class ModelEntry(Entry):
    """A model; ``factory(**options)`` returns an ``nn.Module``. Checked by :func:`deq_core.testing.check_model`.

    Models tagged ``"inr"`` are also buildable by ``deq inr fit --model NAME`` (see deq-inr's model contract:
    ``factory(in_features, out_features, width=..., layers=..., ...)``, ``forward(coords, cache_key=None)
    -> (y, info_or_None)``, ``predict(coords, chunk=...)``, ``config()``)."""

    kind: ClassVar[str] = "model"


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """What ``deq plugins`` reports for one plugin (one entry point of the ``deq`` group).

    Attributes:
        name: entry-point name (by convention the distribution name).
        distribution: distribution that declares the entry point (``None`` for injected plugins).
        version: that distribution's version.
        module: the entry point's target (``"deq_core.plugins.builtin"``).
        status: ``"active"``, ``"broken"`` (failed to import or validate; provides nothing),
            ``"disabled"`` (blocked by ``DEQ_DISABLE_PLUGINS``), ``"conflicted"`` (works, but some of its
            names are also claimed by another third-party plugin and cannot be looked up plainly) or
            ``"shadowed"`` (works, but some of its names are also provided by one of deq's own packages,
            which wins; the plugin's own is reachable as ``dist:name``).
        provides: ``{"solvers": names, "adjoints": names, "tasks": names, "models": names, "commands": names}``.
        error: why it is broken / conflicted / shadowed, else ``None``.
        hooks: the hooks it implements (``("deq_solvers", "deq_commands")``); empty unless loaded.
        aliases: ``{name: aliases}`` of the names it provides that have aliases.
        shadowed: ``("solver anderson", ...)``: its names that one of deq's own packages provides too.
        first_party: it belongs to one of deq's own distributions (deq-core, deq-solvers, deq-tasks, deq-inr).
    """

    STATUSES: ClassVar[tuple[str, ...]] = ("active", "broken", "disabled", "conflicted", "shadowed")

    name: str
    distribution: str | None
    version: str | None
    module: str
    status: str
    provides: Mapping[str, tuple[str, ...]]
    error: str | None = None
    hooks: tuple[str, ...] = ()
    aliases: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    shadowed: tuple[str, ...] = ()
    first_party: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "name": self.name, "distribution": self.distribution, "version": self.version, "module": self.module,
            "status": self.status, "provides": {k: list(v) for k, v in self.provides.items()}, "error": self.error,
            "hooks": list(self.hooks), "aliases": {k: list(v) for k, v in self.aliases.items()},
            "shadowed": list(self.shadowed), "first_party": self.first_party,
        }
