"""The solver abstraction, in the optimistix shape: a frozen dataclass of validated hyperparameters with
``init`` / ``step`` / ``terminate`` / ``postprocess``, driven by the one loop :func:`deq_core.run_loop`.

Solvers see flat states: ``z`` and ``fz`` are ``(B, N)`` matrices (the driver packs tuple states). The loop
owns the budget, tolerances, per-sample freezing, fault isolation and statistics; no solver owns a loop.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import Tensor

from ._control import LoopControl, LoopOutcome, meets_tolerance
from ._errors import DeqConfigError

__all__ = ["AbstractFixedPointSolver", "FlatMap"]

FlatMap = Callable[[Tensor], Tensor]
"""A map on flat states ``(B, N) -> (B, N)``."""


OLD_SPELLINGS: Mapping[str, str] = {
    "beta": "damping",
    "memory": "m",
    "tol": "atol= / rtol= of the solve (fixed_point(..., rtol=...), DEQ(rtol=...))",
}
"""Old spellings every solver refuses with the new one (unless it has a field of that name); a class adds its
own in ``renamed``."""


def old_spelling(factory: Any, option: str) -> str | None:
    """The new spelling of ``option`` when it is an old spelling for the solver class ``factory``, else ``None``.

    Example:
        >>> from deq_core import FixedPointIteration
        >>> old_spelling(FixedPointIteration, "beta"), old_spelling(FixedPointIteration, "damping")
        ('damping', None)
    """
    if not (isinstance(factory, type) and issubclass(factory, AbstractFixedPointSolver)):
        return None
    if dataclasses.is_dataclass(factory) and option in {f.name for f in dataclasses.fields(factory)}:
        return None
    return {**OLD_SPELLINGS, **getattr(factory, "renamed", {})}.get(option)


class _SolverMeta(abc.ABCMeta):
    """Refuses the old spelling of a renamed hyperparameter with an error naming the new one."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        for old in kwargs:
            new = old_spelling(cls, old)
            if new is not None:
                raise DeqConfigError(
                    f"{cls.__name__} has no option {old!r}: it is spelled {new} now "
                    f"(one spelling per hyperparameter across deq's solvers)"
                )
        return super().__call__(*args, **kwargs)

    @property
    def __signature__(cls) -> inspect.Signature:
        # what inspect.signature(SolverClass) reports: the dataclass __init__, not this __call__
        sig = inspect.signature(cls.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])


@dataclasses.dataclass(frozen=True)
class AbstractFixedPointSolver(metaclass=_SolverMeta):
    """Base class of fixed-point solvers.

    Subclasses are frozen dataclasses; validate fields in ``__post_init__`` with :func:`deq_core.check_int`,
    :func:`deq_core.check_positive`, :func:`deq_core.check_range` so a bad value fails at construction.
    Shared hyperparameters have one spelling across solvers: ``m`` (history size), ``damping`` (relaxation),
    and the caller's ``atol`` / ``rtol`` / ``max_steps`` (no solver has a budget or tolerance of its own).
    ``renamed`` maps an old spelling to the new one (passing it raises :class:`DeqConfigError`), on top of the
    spellings every solver refuses (:data:`OLD_SPELLINGS`: ``beta``, ``memory``, ``tol``).

    Protocol (all tensors ``(B, N)``), driven by :func:`deq_core.run_loop`::

        state = solver.init(f, z0, fz0)
        z, fz, state = solver.step(f, z, fz, state)                 # repeated by the loop
        done = solver.terminate(z, fz, res, fnorm, state, control)  # (B,) bool, per sample
        outcome = solver.postprocess(outcome, state)                # once, at the end
        solver.stats(state) -> dict                                 # extra statistics, SolveStats.solver

    ``step`` receives the current iterate ``z`` and ``fz = f(z)`` and returns the next iterate together
    with ``f`` evaluated at it (so each step costs one evaluation, more only with line searches). Steps
    must not modify their inputs in place (the loop keeps the best iterate per sample by reference), and
    must treat samples independently: a row that turns non-finite must not touch the other rows.

    Example:
        >>> import torch
        >>> from deq_core import fixed_point, FixedPointIteration
        >>> sol = fixed_point(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3), solver=FixedPointIteration())
        >>> bool(torch.allclose(sol.value, torch.full((2, 3), 2.0), atol=1e-3))
        True
    """

    name: ClassVar[str] = "abstract"
    renamed: ClassVar[Mapping[str, str]] = {}

    @abc.abstractmethod
    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> Any:
        """Return the solver state before the first step."""

    @abc.abstractmethod
    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        """One iteration: ``(z, f(z), state) -> (z_next, f(z_next), state_next)``."""

    def terminate(self, z: Tensor, fz: Tensor, res: Tensor, fnorm: Tensor, state: Any,
                  control: LoopControl) -> Tensor:
        """``(B,)`` bool: which samples have converged at ``z`` (``res = ||f(z) - z||``, ``fnorm = ||f(z)||``).

        The default is the shared test ``res <= atol + rtol * fnorm``; override it only when the solver's
        iterate needs a stricter test (e.g. Halpern's anchor pull), never a looser one.
        """
        return meets_tolerance(res, fnorm, control.atol, control.rtol)

    def postprocess(self, outcome: LoopOutcome, state: Any) -> LoopOutcome:
        """Adjust the loop's outcome once at the end (default: as is, i.e. the best iterate per sample)."""
        return outcome

    def stats(self, state: Any) -> dict[str, Any]:
        """Solver-specific statistics (restarts, memory, ...) reported in ``SolveStats.solver``."""
        return {}

    def options(self) -> dict[str, Any]:
        """Hyperparameters as a plain dict (for configs and checkpoints)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
