"""The iteration loop shared by all solvers: per-sample tolerances, freezing, best iterate, statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._solution import Result

if TYPE_CHECKING:
    from ._solver import AbstractFixedPointSolver

__all__ = ["LoopControl", "LoopOutcome", "run_loop", "residual_norms"]


@dataclass(frozen=True)
class LoopControl:
    """What the driver asks of a loop.

    Attributes:
        atol, rtol: sample ``i`` has converged when ``||f(z_i) - z_i|| <= atol + rtol * ||f(z_i)||``.
        max_steps: solver steps at most.
        check_every: test for "all samples converged" (a host sync) every this many steps.
        divergence: a sample diverges when its residual exceeds ``divergence`` x its initial residual.
        record_trace: keep the ``(T + 1, B)`` relative residual trace.
    """

    atol: float
    rtol: float
    max_steps: int
    check_every: int = 1
    divergence: float = 1e6
    record_trace: bool = True


@dataclass
class LoopOutcome:
    """What a loop returns: the best iterate per sample and its statistics (all on the state's device)."""

    z: Tensor
    fz: Tensor
    result: Result
    steps: Tensor
    residual: Tensor
    fnorm: Tensor
    converged: Tensor
    trace: Tensor
    nfev: int
    solver_stats: dict[str, Any] = field(default_factory=dict)


def residual_norms(z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``(||f(z) - z||, ||f(z)||)`` in at least float32, shapes ``(B,)``."""
    acc = torch.promote_types(fz.dtype, torch.float32)
    return (
        torch.linalg.vector_norm(fz - z, dim=1, dtype=acc),
        torch.linalg.vector_norm(fz, dim=1, dtype=acc),
    )


def run_loop(solver: AbstractFixedPointSolver, f: Callable[[Tensor], Tensor], z: Tensor, fz: Tensor,
             control: LoopControl) -> LoopOutcome:
    """Iterate ``solver.step`` from ``(z, fz)`` until every sample meets its tolerance or the budget ends.

    Converged samples are frozen: their returned iterate, residual and step count no longer change
    (their rows are still computed, as batched ``f`` cannot skip rows). For samples that do not
    converge the iterate with the lowest residual is returned.
    """
    counter = _Counter(f)
    res, fnorm = residual_norms(z, fz)
    tol = control.atol + control.rtol * fnorm
    done = res <= tol
    best_z, best_fz, best_res, best_fn = z, fz, res, fnorm
    res0 = res.clamp_min(torch.finfo(res.dtype).tiny)
    steps = torch.zeros_like(res, dtype=torch.long)
    trace = [res / fnorm.clamp_min(torch.finfo(fnorm.dtype).tiny)] if control.record_trace else []
    result = Result.CONVERGED
    state = solver.init(counter, z, fz)
    k = 0
    if not bool(done.all()):
        result = Result.MAX_STEPS
        for k in range(1, control.max_steps + 1):
            z, fz, state = solver.step(counter, z, fz, state)
            res, fnorm = residual_norms(z, fz)
            if control.record_trace:
                trace.append(res / fnorm.clamp_min(torch.finfo(fnorm.dtype).tiny))
            active = ~done
            newly = active & (res <= control.atol + control.rtol * fnorm)
            better = active & ((res < best_res) | newly)
            best_z = torch.where(better[:, None], z, best_z)
            best_fz = torch.where(better[:, None], fz, best_fz)
            best_res = torch.where(better, res, best_res)
            best_fn = torch.where(better, fnorm, best_fn)
            steps = steps + active.long()
            done = done | newly
            if k % control.check_every == 0 or k == control.max_steps:
                finite = torch.isfinite(res)
                if not bool(finite.all()):
                    result = Result.NONFINITE
                    done = done & finite
                    break
                if bool((res > control.divergence * res0).any()):
                    result = Result.DIVERGED
                    break
                if bool(done.all()):
                    result = Result.CONVERGED
                    break
    converged = best_res <= control.atol + control.rtol * best_fn
    if result is Result.CONVERGED and not bool(converged.all()):
        result = Result.MAX_STEPS
    trace_t = torch.stack(trace) if trace else res.new_zeros(0, res.numel())
    return LoopOutcome(best_z, best_fz, result, steps, best_res, best_fn, converged, trace_t,
                       counter.calls, solver.stats(state))


class _Counter:
    """Counts evaluations of ``f`` (solver-internal ones included)."""

    __slots__ = ("f", "calls")

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f, self.calls = f, 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return self.f(z)
