"""What a solve is asked (:class:`LoopControl`), what it returns (:class:`LoopOutcome`), and the one stopping
test (:func:`meets_tolerance`) with the residual norms it is applied to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._solution import Result

__all__ = ["LoopControl", "LoopOutcome", "meets_tolerance", "residual_norms"]


@dataclass(frozen=True)
class LoopControl:
    """What the caller asks of the loop.

    Attributes:
        atol, rtol: sample ``i`` has converged when ``||f(z_i) - z_i|| <= atol + rtol * ||f(z_i)||``.
        max_steps: solver steps at most (the one budget: solvers have none of their own).
        check_every: consult the host (a sync on accelerators) every this many steps.
        divergence: a sample diverges when its residual exceeds ``divergence`` x its initial residual, or when
            ``||f(z)||`` runs away beyond ``divergence`` x ``(||f(z0)|| + ||f(z0) - z0||)`` (a relative
            test that grows with the iterate must not pass a sample that escapes to infinity).
        record_trace: keep the ``(T + 1, B)`` relative residual trace.
        sync_ranks: under ``torch.distributed``, every rank takes the same number of steps: at each check
            (every ``check_every`` steps) the ranks all-reduce their "all settled" flag and stop together
            (what sharded training, e.g. FSDP, needs when ``f`` itself runs collectives). ``False`` or no
            initialized process group: each rank stops on its own.
        group: the process group of ``sync_ranks`` (``None``: the default group).
    """

    atol: float
    rtol: float
    max_steps: int
    check_every: int = 1
    divergence: float = 1e6
    record_trace: bool = True
    sync_ranks: bool = False
    group: Any = None


@dataclass
class LoopOutcome:
    """What :func:`deq_core.run_loop` returns; every tensor on the state's device.

    Attributes:
        z, fz: ``(B, N)`` the returned iterate per sample (converged: where it converged; failed: its best
            finite iterate; otherwise the best iterate) and ``f`` at it.
        result: the batch's :class:`Result` (the worst per-sample status).
        steps: ``(B,)`` steps each sample took until it converged or failed (else the steps run).
        residual, fnorm: ``(B,)`` ``||f(z) - z||`` and ``||f(z)||`` at the returned iterate.
        converged: ``(B,)`` bool.
        status: ``(B,)`` int8 per-sample :class:`Result` codes (``Result.from_code``).
        trace: ``(T + 1, B)`` relative residuals (frozen after a sample settled), or ``(0, B)``.
        nfev: evaluations of ``f`` inside the loop.
        solver_stats: ``solver.stats(state)``.
        state: the solver's final state (adjoints such as SHINE read it).
    """

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
    status: Tensor | None = None
    state: Any = None


def residual_norms(z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``(||f(z) - z||, ||f(z)||)`` in at least float32, shapes ``(B,)``."""
    acc = torch.promote_types(fz.dtype, torch.float32)
    return (
        torch.linalg.vector_norm(fz - z, dim=1, dtype=acc),
        torch.linalg.vector_norm(fz, dim=1, dtype=acc),
    )


def meets_tolerance(res: Tensor, fnorm: Tensor, atol: float, rtol: float) -> Tensor:
    """Per-sample ``res <= atol + rtol * fnorm``, ``(B,)`` bool: the one stopping test (False for nan)."""
    return torch.sub(res, fnorm, alpha=rtol) <= atol
