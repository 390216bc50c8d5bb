"""The solver abstraction: a frozen dataclass of validated hyperparameters with ``init`` / ``step``.

Solvers see flat states: ``z`` and ``fz`` are ``(B, N)`` matrices (the driver packs tuple states). The
driver (:func:`deq_core.fixed_point`) owns the loop, tolerances, non-finite checks and statistics; a
solver that must own its loop (e.g. a GPU-fused one) overrides :meth:`AbstractFixedPointSolver.solve`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from ._errors import DeqConfigError
from ._loop import LoopControl, LoopOutcome, run_loop

__all__ = ["AbstractFixedPointSolver", "FlatMap", "check_positive", "check_range"]

FlatMap = Callable[[Tensor], Tensor]
"""A map on flat states ``(B, N) -> (B, N)``."""


@dataclasses.dataclass(frozen=True)
class AbstractFixedPointSolver(abc.ABC):
    """Base class of fixed-point solvers.

    Subclasses are frozen dataclasses; validate fields in ``__post_init__`` with
    :func:`check_positive` / :func:`check_range` so a bad value fails at construction.

    Protocol (all tensors ``(B, N)``)::

        state = solver.init(f, z0, fz0)
        z, fz, state = solver.step(f, z, fz, state)   # repeated by the driver
        solver.stats(state) -> dict                    # extra statistics for SolveStats.solver

    ``step`` receives the current iterate ``z`` and ``fz = f(z)`` and returns the next iterate together
    with ``f`` evaluated at it (so each step costs one evaluation, more only with line searches).
    Steps must not modify their inputs in place (the driver keeps the best iterate per sample).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point, FixedPointIteration
        >>> sol = fixed_point(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3), solver=FixedPointIteration())
        >>> bool(torch.allclose(sol.value, torch.full((2, 3), 2.0), atol=1e-3))
        True
    """

    name: ClassVar[str] = "abstract"

    @abc.abstractmethod
    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> Any:
        """Return the solver state before the first step."""

    @abc.abstractmethod
    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        """One iteration: ``(z, f(z), state) -> (z_next, f(z_next), state_next)``."""

    def stats(self, state: Any) -> dict[str, Any]:
        """Solver-specific statistics (restarts, memory, ...) reported in ``SolveStats.solver``."""
        return {}

    def solve(self, f: FlatMap, z: Tensor, fz: Tensor, control: LoopControl) -> LoopOutcome:
        """Run the iteration loop; the default is the shared driver loop (:func:`deq_core.run_loop`).

        Override to own the loop (fused kernels, graph capture). An override must honour ``control``
        (tolerances, ``max_steps``, divergence) and return a :class:`LoopOutcome`.
        """
        return run_loop(self, f, z, fz, control)

    def options(self) -> dict[str, Any]:
        """Hyperparameters as a plain dict (for configs and checkpoints)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def check_positive(owner: object, name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise :class:`DeqConfigError` unless ``value > 0`` (or ``>= 0`` with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok or value != value:
        want = ">= 0" if allow_zero else "> 0"
        raise DeqConfigError(f"{type(owner).__name__}.{name} must be a number {want}, got {value!r}")


def check_range(owner: object, name: str, value: float, low: float, high: float) -> None:
    """Raise :class:`DeqConfigError` unless ``low < value <= high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low < value <= high):
        raise DeqConfigError(f"{type(owner).__name__}.{name} must be in ({low}, {high}], got {value!r}")
