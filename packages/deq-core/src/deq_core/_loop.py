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

__all__ = ["LoopControl", "LoopOutcome", "meets_tolerance", "run_loop", "residual_norms"]


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
    state: Any = None
    """The solver's final state (adjoints such as SHINE and the reversible one read it)."""


def residual_norms(z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``(||f(z) - z||, ||f(z)||)`` in at least float32, shapes ``(B,)``."""
    acc = torch.promote_types(fz.dtype, torch.float32)
    return (
        torch.linalg.vector_norm(fz - z, dim=1, dtype=acc),
        torch.linalg.vector_norm(fz, dim=1, dtype=acc),
    )


def meets_tolerance(res: Tensor, fnorm: Tensor, atol: float, rtol: float) -> Tensor:
    """Per-sample ``res <= atol + rtol * fnorm`` (the one stopping test every loop uses), ``(B,)`` bool."""
    return torch.sub(res, fnorm, alpha=rtol) <= atol


def run_loop(solver: AbstractFixedPointSolver, f: Callable[[Tensor], Tensor], z: Tensor, fz: Tensor,
             control: LoopControl) -> LoopOutcome:
    """Iterate ``solver.step`` from ``(z, fz)`` until every sample meets its tolerance or the budget ends.

    Converged samples are frozen: their returned iterate, residual, step count and trace entries no
    longer change (their rows are still computed, as batched ``f`` cannot skip rows, but what happens
    to them afterwards, noise or non-finite values included, is ignored). For samples that do not
    converge the iterate with the lowest residual is returned (residuals below ``4 eps ||f(z)||``, i.e.
    round-off, count as equal: the latest such iterate is kept). Divergence and non-finite values are
    judged on the samples still running.

    Cost per step besides ``solver.step``: with ``check_every == 1`` (the host is consulted every step
    anyway), a step in which every running sample improves and none converges costs about nine small
    ``(B,)`` kernels and one host sync: the best iterate is the current one, kept by reference, and
    converged samples sit in a separate store, written only on the steps where some sample converges.
    Steps where a running residual goes up (e.g. float round-off near the fixed point) blend rows with
    ``torch.lerp``. With ``check_every > 1`` (no host sync between checks, for accelerators) the
    bookkeeping runs on the device with ``torch.where`` and the host is consulted every ``check_every``
    steps.
    """
    counter = _Counter(f)
    atol, rtol, every, max_steps = control.atol, control.rtol, control.check_every, control.max_steps
    res, fnorm = residual_norms(z, fz)
    done = meets_tolerance(res, fnorm, atol, rtol)
    limit = control.divergence * res  # a running sample diverges when its residual exceeds this
    # best iterate; on the host path only its rows of running samples are meaningful, converged samples
    # live in `frozen` (z, fz, res, fnorm; rows valid where done)
    best_z, best_fz, best_res, best_fn = z, fz, res, fnorm
    frozen: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    res_hist, fn_hist = ([res], [fnorm]) if control.record_trace else (None, None)
    done_at = torch.zeros_like(res, dtype=torch.long)  # step at which each done sample converged
    state = solver.init(counter, z, fz)
    result = Result.CONVERGED
    host = every == 1
    floor = 4 * torch.finfo(res.dtype).eps  # residuals below floor * ||f(z)|| are round-off: all equally good
    k = 0
    if not bool(done.all()):
        result = Result.MAX_STEPS
        any_done = host and bool(done.any())
        if any_done:
            frozen = (z, fz, res, fnorm)
        for k in range(1, max_steps + 1):
            z, fz, state = solver.step(counter, z, fz, state)
            res, fnorm = residual_norms(z, fz)
            if res_hist is not None:
                res_hist.append(res)
                fn_hist.append(fnorm)
            excess = torch.sub(res, fnorm, alpha=rtol)
            # lower than the best so far, or at round-off level (where residuals only jitter); False for nan
            improved = res < torch.maximum(best_res, fnorm * floor)
            if host:
                going = (excess > atol) & improved  # running on, improving (hence finite, not diverging)
                if bool((going | done).all() if any_done else going.all()):
                    best_z, best_fz, best_res, best_fn = z, fz, res, fnorm
                    continue
                conv = excess <= atol
                newly = conv & ~done if any_done else conv
                running = ~(conv | done) if any_done else ~conv
                off = ~(res <= limit)  # nan, inf or diverged
                # one host sync for both questions: did a running sample go bad, did a sample converge?
                bad_any, newly_any = torch.stack([(running & off).any(), newly.any()]).tolist()
                if bad_any:
                    bad = running & off
                    result = Result.NONFINITE if bool((bad & ~torch.isfinite(res)).any()) else Result.DIVERGED
                    break
                if newly_any:
                    current = (z, fz, res, fnorm)
                    if frozen is None:
                        frozen = current
                    else:
                        rows = newly[:, None]
                        frozen = (torch.where(rows, z, frozen[0]), torch.where(rows, fz, frozen[1]),
                                  torch.where(newly, res, frozen[2]), torch.where(newly, fnorm, frozen[3]))
                    done_at = torch.where(newly, k, done_at)
                    done = done | newly
                    any_done = True
                    if bool(done.all()):
                        result = Result.CONVERGED
                        break
                # running rows of z and fz are finite here, so a 0/1 lerp selects rows exactly
                better = running & improved
                w = better.to(z.dtype).unsqueeze(1)
                best_z, best_fz = torch.lerp(best_z, z, w), torch.lerp(best_fz, fz, w)
                best_res, best_fn = torch.where(better, res, best_res), torch.where(better, fnorm, best_fn)
                continue
            active = ~done
            newly = active & (excess <= atol)
            better = active & (improved | newly)
            keep = better[:, None]
            best_z = torch.where(keep, z, best_z)
            best_fz = torch.where(keep, fz, best_fz)
            best_res = torch.where(better, res, best_res)
            best_fn = torch.where(better, fnorm, best_fn)
            done_at = torch.where(newly, k, done_at)
            done = done | newly
            if k % every == 0 or k == max_steps:
                bad = active & ~newly & ~(res <= limit)  # nan, inf or diverged, among samples still running
                if bool(bad.any()):
                    result = Result.NONFINITE if bool((bad & ~torch.isfinite(res)).any()) else Result.DIVERGED
                    break
                if bool(done.all()):
                    result = Result.CONVERGED
                    break
    if frozen is not None and result is Result.CONVERGED:  # host path, everybody converged: all in the store
        best_z, best_fz, best_res, best_fn = frozen
    elif frozen is not None:  # host path: converged samples from their store, the others' best iterate
        rows = done[:, None]
        best_z, best_fz = torch.where(rows, frozen[0], best_z), torch.where(rows, frozen[1], best_fz)
        best_res, best_fn = torch.where(done, frozen[2], best_res), torch.where(done, frozen[3], best_fn)
    converged = meets_tolerance(best_res, best_fn, atol, rtol)
    if result is Result.CONVERGED and not bool(converged.all()):
        result = Result.MAX_STEPS
    steps = torch.where(done, done_at, k)
    if res_hist is not None:
        rel = torch.stack(res_hist) / torch.stack(fn_hist).clamp_min(torch.finfo(best_fn.dtype).tiny)
        rows_t = torch.arange(rel.shape[0], device=rel.device)[:, None]
        trace = rel.gather(0, torch.minimum(rows_t, steps[None, :]))  # frozen after each sample converged
    else:
        trace = best_res.new_zeros(0, best_res.numel())
    return LoopOutcome(best_z, best_fz, result, steps, best_res, best_fn, converged, trace,
                       counter.calls, solver.stats(state), state)


class _Counter:
    """Counts evaluations of ``f`` (solver-internal ones included)."""

    __slots__ = ("f", "calls")

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f, self.calls = f, 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return self.f(z)
