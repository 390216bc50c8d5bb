"""The one iteration loop: per-sample tolerances, freezing, fault isolation, best iterate, statistics.

Every solve in deq runs here: :func:`deq_core.fixed_point`, the backward solves of the implicit adjoint,
the amortized path of :class:`deq_core.DEQ`, Halpern, Neumann, the fused Anderson and JIIO's schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._control import LoopControl, LoopOutcome, residual_norms
from ._solution import Result

__all__ = ["run_loop"]


def run_loop(solver: Any, f: Callable[[Tensor], Tensor], z: Tensor, fz: Tensor,
             control: LoopControl) -> LoopOutcome:
    """Iterate ``solver.step`` from ``(z, fz = f(z))`` until every sample has settled or the budget ends.

    Arguments:
        solver: an :class:`deq_core.AbstractFixedPointSolver` (``init`` / ``step`` / ``terminate`` /
            ``postprocess`` / ``stats``).
        f: the map on flat states ``(B, N) -> (B, N)``.
        z, fz: ``(B, N)`` starting iterate and ``f`` at it.
        control: tolerances, budget, host-check period, divergence factor, trace.

    Returns:
        :class:`deq_core.LoopOutcome` (after ``solver.postprocess``).

    Per sample, a sample *settles* when it converges (``solver.terminate``) or fails:

    * **converged** samples are frozen: their returned iterate, residual, step count and trace no longer
      change (their rows are still computed, as batched ``f`` cannot skip rows, but what happens to them
      afterwards, noise or non-finite values included, is ignored);
    * **failed** samples, whose residual turns non-finite, grows beyond ``divergence`` x its initial value,
      or whose ``||f(z)||`` runs away beyond ``divergence`` x ``(||f(z0)|| + ||f(z0) - z0||)``, are frozen at
      their best finite iterate and flagged (``status``); a run-away sample never counts as converged,
      even when the relative test ``rtol * ||f(z)||``, which grows with the iterate, would pass it; and
      the relative part of the test counts only once the residual is at most half its initial value (a
      sample whose residual never drops, e.g. under a translation ``f(z) = z + c``, cannot converge by its
      iterate growing);
    * every other sample keeps iterating to its own tolerance; for those that do not converge within
      ``max_steps`` the iterate with the lowest residual is returned (residuals below
      ``4 eps ||f(z)||``, i.e. round-off, count as equal: the latest such iterate is kept).

    The batch's ``result`` is the worst sample status: ``NONFINITE`` > ``DIVERGED`` > ``MAX_STEPS`` >
    ``CONVERGED``. Rows of ``f(z0)`` that are already non-finite fail at step 0.

    Cost per step besides ``solver.step``: with ``check_every == 1`` (the host is consulted every step)
    a step in which every running sample improves and none settles costs about nine small ``(B,)`` kernels
    and one host sync: the best iterate is the current one, kept by reference, and settled samples sit in
    a separate store written only on the steps where some sample settles. With ``check_every > 1`` (for
    accelerators) the bookkeeping runs on the device with ``torch.where`` and the host is consulted only
    every ``check_every`` steps, so there is no host sync in between. With ``control.sync_ranks`` under
    ``torch.distributed`` the loop takes the device path and all-reduces the "all settled" flag at each
    check, so every rank runs the same number of steps.
    """
    counter = _Counter(f)
    every, max_steps = control.check_every, control.max_steps
    res, fnorm = residual_norms(z, fz)
    state = solver.init(counter, z, fz)
    finite = torch.isfinite(res) & torch.isfinite(fnorm)
    done = solver.terminate(z, fz, res, fnorm, state, control) & finite
    failed = ~finite
    nonfinite = failed.clone()
    settled = done | failed
    limit = control.divergence * res              # a running sample diverges when its residual exceeds this
    flimit = control.divergence * (fnorm + res)   # ... or when ||f(z)|| runs away beyond this (>= ||z0||)
    earn = 0.5 * res  # the relative test counts only once the residual has halved (or meets atol)
    best_z, best_fz, best_res, best_fn = z, fz, res, fnorm
    # host path: converged and failed samples live in `frozen` (z, fz, res, fnorm; rows valid where settled)
    frozen: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    res_hist, fn_hist = ([res], [fnorm]) if control.record_trace else (None, None)
    settled_at = torch.zeros_like(res, dtype=torch.long)
    synced = control.sync_ranks and _distributed()
    host = every == 1 and not synced  # synced: the device path, whose checks fall on the same steps on every rank
    floor = 4 * torch.finfo(res.dtype).eps  # residuals below floor * ||f(z)|| are round-off: all equally good
    k = 0
    if not _all_settled(settled, synced, control):
        any_settled = host and bool(settled.any())
        if any_settled:
            frozen = (z, fz, res, fnorm)
        for k in range(1, max_steps + 1):
            z, fz, state = solver.step(counter, z, fz, state)
            res, fnorm = residual_norms(z, fz)
            if res_hist is not None:
                res_hist.append(res)
                fn_hist.append(fnorm)
            conv = solver.terminate(z, fz, res, fnorm, state, control)
            # lower than the best so far, or at round-off level (where residuals only jitter); False for nan
            improved = res < torch.maximum(best_res, fnorm * floor)
            if host:
                going = improved & ~conv  # running on, improving (hence finite, not diverging), not converged
                if bool((going | settled).all() if any_settled else going.all()):
                    best_z, best_fz, best_res, best_fn = z, fz, res, fnorm
                    continue
                running = ~settled
                ok = (res <= limit) & (fnorm <= flimit)  # finite, not diverged, not run away (False for nan)
                newly_conv = running & conv & ok & ((res <= earn) | (res <= control.atol))
                newly_bad = running & ~ok
                # one host sync for both questions: did a running sample fail, did one converge?
                bad_any, conv_any = torch.stack([newly_bad.any(), newly_conv.any()]).tolist()
                if bad_any or conv_any:
                    rows_b = newly_bad[:, None]
                    # converged samples keep this iterate, failed ones their best finite one
                    cz = torch.where(rows_b, best_z, z) if bad_any else z
                    cfz = torch.where(rows_b, best_fz, fz) if bad_any else fz
                    cres = torch.where(newly_bad, best_res, res) if bad_any else res
                    cfn = torch.where(newly_bad, best_fn, fnorm) if bad_any else fnorm
                    newly = newly_conv | newly_bad
                    if frozen is None:
                        frozen = (cz, cfz, cres, cfn)
                    else:
                        rows = newly[:, None]
                        frozen = (torch.where(rows, cz, frozen[0]), torch.where(rows, cfz, frozen[1]),
                                  torch.where(newly, cres, frozen[2]), torch.where(newly, cfn, frozen[3]))
                    settled_at = torch.where(newly, k, settled_at)
                    if conv_any:
                        done = done | newly_conv
                    if bad_any:
                        failed = failed | newly_bad
                        nonfinite = nonfinite | (newly_bad & ~(torch.isfinite(res) & torch.isfinite(fnorm)))
                    settled = settled | newly
                    any_settled = True
                    if bool(settled.all()):
                        break
                    running = ~settled
                # running rows of z and fz are finite here (their residual passed `ok`)
                better = running & improved
                best_z = torch.where(better[:, None], z, best_z)
                best_fz = torch.where(better[:, None], fz, best_fz)
                best_res, best_fn = torch.where(better, res, best_res), torch.where(better, fnorm, best_fn)
                continue
            running = ~settled
            ok = (res <= limit) & (fnorm <= flimit)
            newly_conv = running & conv & ok & ((res <= earn) | (res <= control.atol))
            newly_bad = running & ~ok
            better = running & ok & (improved | conv)
            keep = better[:, None]
            best_z = torch.where(keep, z, best_z)
            best_fz = torch.where(keep, fz, best_fz)
            best_res = torch.where(better, res, best_res)
            best_fn = torch.where(better, fnorm, best_fn)
            newly = newly_conv | newly_bad
            settled_at = torch.where(newly, k, settled_at)
            done = done | newly_conv
            failed = failed | newly_bad
            nonfinite = nonfinite | (newly_bad & ~(torch.isfinite(res) & torch.isfinite(fnorm)))
            settled = settled | newly
            if (k % every == 0 or k == max_steps) and _all_settled(settled, synced, control):
                break
    if frozen is not None:  # host path: settled samples from their store, the others' best iterate
        rows = settled[:, None]
        best_z, best_fz = torch.where(rows, frozen[0], best_z), torch.where(rows, frozen[1], best_fz)
        best_res, best_fn = torch.where(settled, frozen[2], best_res), torch.where(settled, frozen[3], best_fn)
    status = torch.where(done, Result.CONVERGED.code, torch.where(
        nonfinite, Result.NONFINITE.code, torch.where(failed, Result.DIVERGED.code, Result.MAX_STEPS.code)))
    status = status.to(torch.int8)
    worst = int(status.max()) if status.numel() else 0
    result = Result.from_code(worst)
    steps = torch.where(settled, settled_at, k)
    if res_hist is not None:
        rel = torch.stack(res_hist) / torch.stack(fn_hist).clamp_min(torch.finfo(best_fn.dtype).tiny)
        rows_t = torch.arange(rel.shape[0], device=rel.device)[:, None]
        trace = rel.gather(0, torch.minimum(rows_t, steps[None, :]))  # frozen after each sample settled
    else:
        trace = best_res.new_zeros(0, best_res.numel())
    outcome = LoopOutcome(best_z, best_fz, result, steps, best_res, best_fn, done, trace,
                          counter.calls, solver.stats(state), status, state)
    return solver.postprocess(outcome, state)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_settled(settled: Tensor, synced: bool, control: LoopControl) -> bool:
    """Have all samples settled, on this rank (or, with ``sync_ranks``, on every rank: one all-reduce)?"""
    flag = settled.all()
    if not synced:
        return bool(flag)
    dist = torch.distributed
    backend = dist.get_backend(control.group)
    device = flag.device if backend != "gloo" else torch.device("cpu")
    t = flag.to(device=device, dtype=torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=control.group)
    return bool(t.item())


class _Counter:
    """Counts evaluations of ``f`` (solver-internal ones included)."""

    __slots__ = ("f", "calls")

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f, self.calls = f, 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return self.f(z)
