"""Exception types shared by every deq package."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["DeqError", "DeqConfigError", "DeqInputError", "DeqSolveError", "UnknownNameError", "PluginError",
           "NameConflictError"]


class DeqError(Exception):
    """Base class of every error raised by deq."""


class DeqConfigError(DeqError, ValueError):
    """A hyperparameter or option has an invalid value (e.g. a tolerance ``<= 0``)."""


class DeqInputError(DeqError, ValueError):
    """A tensor handed to deq has the wrong shape, dtype or non-finite values."""


class DeqSolveError(DeqError, RuntimeError):
    """A fixed-point solve failed (max steps, divergence, non-finite values) and ``throw=True``."""

    def __init__(self, message: str, solution: object | None = None) -> None:
        super().__init__(message)
        self.solution = solution


class PluginError(DeqError, RuntimeError):
    """A plugin failed to import or validate (raised only with ``DEQ_STRICT_PLUGINS=1``)."""


class UnknownNameError(DeqError, KeyError):
    """A name (solver, adjoint, task, model, option) is not known; the message lists what exists.

    ``hint`` (e.g. ``"It comes with deq-solvers: pip install deq-solvers."``) replaces the closest-match
    suggestion when given.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str], *, hint: str = "") -> None:
        known = sorted(set(known))
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        suggest = f" {hint}" if hint else (f" Did you mean {close[0]!r}?" if close else "")
        listing = ", ".join(repr(k) for k in known) or "(none registered)"
        self.kind, self.name, self.known, self.suggestion = kind, name, known, (close[0] if close else None)
        self.hint = hint
        super().__init__(f"unknown {kind} {name!r}.{suggest} Known {kind}s: {listing}.")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class NameConflictError(DeqError, KeyError):
    """A name is claimed by several plugins; the message lists every provider."""

    def __init__(self, kind: str, name: str, providers: tuple[str, ...]) -> None:
        self.kind, self.name, self.providers = kind, name, providers
        listing = ", ".join(repr(p) for p in providers)
        super().__init__(
            f"{kind} {name!r} is provided by {len(providers)} plugins ({listing}), so it is ambiguous. "
            f"Pick one as '{providers[0]}:{name}', uninstall one of them, or hide one with "
            f"DEQ_DISABLE_PLUGINS={providers[-1]}."
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])
