"""Results of a fixed-point solve: :class:`Result`, :class:`SolveStats`, :class:`Solution`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ._state import State

__all__ = ["Result", "SolveStats", "Solution"]


class Result(enum.Enum):
    """Outcome of a solve; ``result.message`` is a sentence for humans."""

    CONVERGED = "converged"
    MAX_STEPS = "max_steps"
    DIVERGED = "diverged"
    NONFINITE = "nonfinite"

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def ok(self) -> bool:
        return self is Result.CONVERGED


_MESSAGES = {
    Result.CONVERGED: "converged: every sample's residual ||f(z) - z|| is within atol + rtol * ||f(z)||",
    Result.MAX_STEPS: "did not converge: the maximum number of steps was reached before every sample met the tolerance",
    Result.DIVERGED: "diverged: the residual grew far beyond its initial value (is f a contraction? try damping)",
    Result.NONFINITE: "non-finite values (nan or inf) appeared in f(z) during the solve",
}


@dataclass
class SolveStats:
    """Per-sample statistics of a solve (``B`` = batch size, ``T`` = recorded steps).

    Attributes:
        steps: ``(B,)`` int, solver steps each sample took until it converged (or the budget).
        residual: ``(B,)`` ``||f(z) - z||`` measured on the returned iterate.
        rel_residual: ``(B,)`` ``residual / ||f(z)||`` on the returned iterate.
        converged: ``(B,)`` bool.
        trace: ``(T + 1, B)`` relative residual of each sample at every checked step (step 0 = z0).
        nfev: evaluations of ``f`` (solver-internal ones, e.g. line searches, included).
        solver: solver-specific statistics (restarts, history bytes, ...).
    """

    steps: Tensor
    residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    trace: Tensor
    nfev: int
    solver: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly scalars: max/mean steps and residuals, nfev."""
        return {
            "steps_max": int(self.steps.max()),
            "steps_mean": float(self.steps.float().mean()),
            "rel_residual_max": float(self.rel_residual.max()),
            "residual_max": float(self.residual.max()),
            "converged": int(self.converged.sum()),
            "batch": int(self.converged.numel()),
            "nfev": self.nfev,
            **{k: v for k, v in self.solver.items() if isinstance(v, (int, float, str, bool))},
        }


@dataclass
class Solution:
    """``value`` (same structure as ``z0``), ``result`` (:class:`Result`) and ``stats`` (:class:`SolveStats`)."""

    value: State
    result: Result
    stats: SolveStats
