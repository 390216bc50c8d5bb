"""Type-II Anderson acceleration with a scale-aware ridge, safeguards and an in-place ring buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deq_core import FlatMap, check_range

from ._util import AndersonOptions, history_dtype

__all__ = ["Anderson", "mixing_weights"]


@dataclass(frozen=True)
class Anderson(AndersonOptions):
    r"""Type-II Anderson acceleration (Anderson mixing) with memory ``m``.

    With residuals ``g_i = f(z_i) - z_i`` of the last ``n <= m`` iterates, each step solves, per sample,

    .. math::
        \alpha = \arg\min_{1^\top \alpha = 1} \|G\alpha\|^2 + \lambda s \|\alpha\|^2,\qquad
        \alpha = \frac{(H + \lambda s I)^{-1} 1}{1^\top (H + \lambda s I)^{-1} 1},\quad H = G^\top G,

    with the ridge scaled by ``s = max_i H_ii`` (a fixed absolute ridge dominates ``H`` near convergence and
    turns the method into plain averaging), and mixes

    .. math::
        z_{k+1} = \sum_i \alpha_i f(z_i) - (1 - d) \sum_i \alpha_i g_i .

    The Gram matrix ``H`` is updated incrementally (only the newest row and column, one batched matrix
    product), the ``(m+1)``-sized system is solved in ``solve_dtype`` (float64 by default) and the histories
    ``(B, m, N)`` are a ring buffer written in place, in float32 for float16 / bfloat16 states.

    Safeguards (per sample, no host synchronisation): if the solution is not finite or ``||alpha||_1``
    exceeds ``max_alpha`` (ill-conditioned system), the step falls back to the plain damped step and the
    history restarts from the newest entry; it also restarts when a residual grows by more than
    ``restart_growth`` over the previous one.

    Adaptive mode (``adaptive=True``, the default; CPU states only): while every sample's residual contracts
    well, ``||g_k|| <= switch_ratio * ||g_{k-1}||``, the step is the plain damped step
    ``z_{k+1} = z_k + d g_k`` (the Anderson step with the newest entry only) and only the residual ring
    buffer is written, no Gram matrix and no small solve. The first time some sample contracts worse, the Gram
    matrix of the stored Picard history is formed in one batched product and Anderson mixing takes over
    for good, so no evaluation is wasted. The test is one host check per step, free on the CPU; on other
    devices (where it would be a host synchronisation) ``adaptive`` is ignored and every step mixes.

    Arguments:
        m: history size (``>= 1``; ``m = 1`` is damped fixed-point iteration).
        damping: mixing (relaxation) parameter ``d`` in ``(0, 1]`` (``beta`` in the Anderson literature).
        ridge: relative Tikhonov regularization ``lambda`` (``>= 0``).
        max_alpha: restart when ``||alpha||_1`` exceeds this (``> 1``).
        restart_growth: restart when ``||g_new|| > restart_growth * ||g_prev||`` (``> 1``; ``inf`` disables).
        history_dtype: ``"auto"`` (state dtype, float32 for half states), ``"float32"`` or ``"float64"``.
        solve_dtype: dtype of the small system, ``"float64"`` (default) or ``"float32"``.
        adaptive: plain damped steps while the residual contracts by ``switch_ratio`` per step (CPU only).
        switch_ratio: contraction ratio in ``(0, 1]`` above which adaptive mode switches Anderson on.

    Statistics: ``restarts`` (total per-sample restarts), ``history_bytes``, ``m``, ``picard_steps``
    (steps taken as plain damped steps by adaptive mode).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import Anderson
        >>> A = 0.9 * torch.eye(4, dtype=torch.float64)
        >>> sol = fixed_point(lambda z: z @ A + 1.0, torch.zeros(2, 4, dtype=torch.float64),
        ...                   solver=Anderson(m=3), rtol=1e-10)
        >>> bool(torch.allclose(sol.value, torch.full((2, 4), 10.0, dtype=torch.float64)))
        True
    """

    name: ClassVar[str] = "anderson"
    adaptive: bool = True
    switch_ratio: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.adaptive, bool):
            from deq_core import DeqConfigError

            raise DeqConfigError(f"Anderson.adaptive must be a bool, got {self.adaptive!r}")
        check_range(self, "switch_ratio", self.switch_ratio, 0.0, 1.0)
        if self.solve_dtype == "auto":
            from deq_core import DeqConfigError

            raise DeqConfigError("Anderson.solve_dtype must be 'float32' or 'float64', got 'auto'")

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> _AndersonState:
        return _AndersonState(self, z)

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: _AndersonState) -> tuple[Tensor, Tensor, Any]:
        s = state
        m, slot = self.m, s.k % self.m
        # newest history entry, written in place (per-slot views are precomputed: no indexing per step)
        g_slot = s.G_slot[slot]
        if g_slot.dtype == fz.dtype:
            torch.sub(fz, z, out=g_slot)
        else:
            g_slot.copy_(fz - z)
        if s.picard and _stay_picard(self, s, g_slot, z):  # adaptive mode: F is rebuilt on the switch
            s.k += 1
            s.picard_steps += 1
            z_next = fz if self.damping == 1.0 else z.lerp(fz, self.damping)
            return z_next, f(z_next), s
        s.F_slot[slot].copy_(fz)
        if m == 1:
            s.k += 1
            z_next = fz if self.damping == 1.0 else z.lerp(fz, self.damping)
            return z_next, f(z_next), s
        # incremental Gram update: row/column `slot` = <g_i, g_slot>
        row = torch.bmm(s.G_row[slot], s.GT).squeeze(1)
        alpha = mixing_weights(self, s, slot, row)
        # into a contiguous (B, 1, m) buffer: the solver's output is column-major, and a strided left factor
        # sends torch.bmm on the CPU down a per-sample loop (~10x slower); the copy also converts the dtype
        s.alpha_view.copy_(alpha)
        a = s.alpha_row
        mix = torch.bmm(a, s.F)
        if self.damping != 1.0:
            mix = torch.baddbmm(mix, a, s.G, alpha=-(1.0 - self.damping))
        z_next = mix.squeeze(1)
        if z_next.dtype != z.dtype:
            z_next = z_next.to(z.dtype)
        return z_next, f(z_next), s

    def stats(self, state: _AndersonState) -> dict[str, Any]:
        s = state
        return {"restarts": int(s.restarts.sum()), "history_bytes": s.nbytes(), "m": self.m,
                "picard_steps": s.picard_steps}


def _stay_picard(solver: Anderson, s: _AndersonState, g: Tensor, z: Tensor) -> bool:
    """Adaptive mode: True while every residual contracted by ``switch_ratio``; else switch Anderson on.

    Plain steps store only the residuals ``g_i``. On the switch (at step ``k``, with ``z = z_k``) the values
    ``f(z_i) = z_i + g_i`` of the stored entries are rebuilt backwards from ``z_{i+1} = z_i + d g_i``
    (exact up to rounding), and their Gram matrix is formed in one batched product, so the Anderson step that
    follows sees the whole plain-step history and no evaluation is wasted.
    """
    res = torch.linalg.vector_norm(g, dim=1)
    prev, s.prev_res = s.prev_res, res
    if prev is None or not bool((res > prev.mul_(solver.switch_ratio)).any()):
        return True
    m, k = solver.m, s.k
    s.picard = False
    s.mixing_buffers(solver)
    n = min(k + 1, m)
    if n < m:  # slots never written hold garbage: zero them (the mix multiplies them by 0)
        s.G[:, n:].zero_()
        s.F[:, n:].zero_()
    zi = z if z.dtype == s.G.dtype else z.to(s.G.dtype)
    for i in range(k - 1, k - n, -1):  # z_i = z_{i+1} - d g_i, f(z_i) = z_i + g_i
        gi = s.G_slot[i % m]
        zi = zi - gi if solver.damping == 1.0 else torch.sub(zi, gi, alpha=solver.damping)
        torch.add(zi, gi, out=s.F_slot[i % m])
    G = s.G[:, :n]
    s.H[:, :n, :n].copy_(torch.bmm(G, G.transpose(1, 2)))
    s.valid[:, :n].fill_(1.0)
    return False


class _AndersonState:
    """Ring buffers ``F``, ``G`` ``(B, m, N)``, Gram ``H`` ``(B, m, m)``, live-slot mask, counters."""

    __slots__ = ("F", "G", "H", "valid", "eye", "k", "restarts", "tiny", "growth2", "ones", "host_sync",
                 "masked_until", "picard", "prev_res", "picard_steps", "G_slot", "F_slot", "G_row", "GT", "H_row",
                 "H_col", "valid_col", "diag", "diag_col", "alpha_row", "alpha_view")

    def __init__(self, solver: Anderson, z: Tensor) -> None:
        B, N = z.shape
        m = solver.m
        hd = history_dtype(solver.history_dtype, z.dtype)
        self.host_sync = z.device.type == "cpu"  # a host sync is free on the CPU: take the short path
        self.picard = getattr(solver, "adaptive", False) and self.host_sync and m > 1  # FusedAnderson: no
        # adaptive mode writes every slot before reading it (unwritten ones are zeroed on the switch)
        alloc = torch.empty if self.picard else torch.zeros
        self.G = alloc(B, m, N, dtype=hd, device=z.device)
        self.F = None if self.picard else torch.zeros_like(self.G)  # adaptive: allocated on the switch
        self.k = 0
        self.restarts = torch.zeros(B, dtype=torch.long, device=z.device)
        self.masked_until = 0
        self.prev_res: Tensor | None = None
        self.picard_steps = 0
        # views reused every step (the buffers are never reallocated)
        self.G_slot = [self.G[:, j] for j in range(m)]
        self.F_slot = None if self.F is None else [self.F[:, j] for j in range(m)]
        self.H = None
        if not self.picard:
            self.mixing_buffers(solver)

    def mixing_buffers(self, solver: Anderson) -> None:
        """Allocate what mixing needs besides the histories (adaptive mode: only once it switches)."""
        B, m, _ = self.G.shape
        dev = self.G.device
        sd = torch.float64 if solver.solve_dtype == "float64" else torch.float32
        if self.F is None:
            self.F = torch.empty_like(self.G)  # every slot is written on the switch
            self.F_slot = [self.F[:, j] for j in range(m)]
        self.H = torch.zeros(B, m, m, dtype=sd, device=dev)
        self.valid = torch.zeros(B, m, dtype=sd, device=dev)
        self.eye = torch.eye(m, dtype=sd, device=dev)
        self.tiny = float(torch.finfo(sd).tiny)
        self.growth2 = solver.restart_growth ** 2
        self.ones = torch.ones(B, m, 1, dtype=sd, device=dev)
        self.G_row = [self.G[:, j:j + 1] for j in range(m)]
        self.GT = self.G.transpose(1, 2)
        self.H_row = [self.H[:, j] for j in range(m)]
        self.H_col = [self.H[:, :, j] for j in range(m)]
        self.valid_col = [self.valid[:, j] for j in range(m)]
        self.diag = torch.diagonal(self.H, dim1=1, dim2=2)
        self.diag_col = [self.diag[:, j] for j in range(m)]
        self.alpha_row = torch.empty(B, 1, m, dtype=self.G.dtype, device=dev)  # mixing weights, contiguous
        self.alpha_view = self.alpha_row[:, 0]

    def nbytes(self) -> int:
        """Bytes of the allocated buffers (``F``, ``H`` and the mask only once mixing has started)."""
        live = (self.G,) if self.H is None else (self.F, self.G, self.H, self.valid)
        return sum(t.numel() * t.element_size() for t in live)


def mixing_weights(solver: Anderson, s: _AndersonState, slot: int, row: Tensor) -> Tensor:
    """Absorb the new Gram row ``<g_i, g_slot>`` into ``s.H`` and return the mixing weights ``(B, m)``.

    The general path stays on the device (no host sync): live-slot mask, residual-growth restart, the ridge
    scaled by the largest live diagonal entry, the ``(m, m)`` solve in ``s.H.dtype`` and the safeguard
    (non-finite or ``||alpha||_1 > max_alpha``: plain step from the newest entry, history restarted).
    On the CPU, where a host sync costs nothing, a shorter path without the mask is taken while every
    stored slot is live and no safeguard fires (it falls back to the general path when one does).
    """
    m = solver.m
    s.H_row[slot].copy_(row)
    s.H_col[slot].copy_(row)
    s.valid_col[slot].fill_(1.0)
    if s.k == 0:
        s.k += 1
        return s.eye[slot].expand(s.H.shape[0], m)
    if s.host_sync and s.k >= s.masked_until:
        alpha = _unmasked_weights(solver, s, slot)
        if alpha is not None:
            s.k += 1
            return alpha
    return _masked_weights(solver, s, slot)


def _unmasked_weights(solver: Anderson, s: _AndersonState, slot: int) -> Tensor | None:
    m, H = solver.m, s.H
    n = min(s.k + 1, m)  # slots 0..n-1 hold entries (the ring fills in order)
    if solver.restart_growth != float("inf"):
        if bool(torch.gt(s.diag_col[slot], s.diag_col[(s.k - 1) % m] * s.growth2).any()):
            return None
    if n == m:
        Hs, diag, eye = H, s.diag, s.eye
    else:
        Hs, diag, eye = H[:, :n, :n], s.diag[:, :n], s.eye[:n, :n]
    # A = H + ridge * max_i H_ii * I in one kernel (no clone of H)
    A = torch.addcmul(Hs, diag.amax(dim=1, keepdim=True).clamp_min_(s.tiny).unsqueeze(2), eye, value=solver.ridge)
    y = torch.linalg.solve_ex(A, s.ones[:, :n]).result  # (B, n, 1)
    alpha = y.div_(y.sum(dim=1, keepdim=True)).squeeze(2)
    if not float(torch.linalg.vector_norm(alpha, ord=1, dim=1).max()) <= solver.max_alpha:
        return None
    return alpha if n == m else torch.nn.functional.pad(alpha, (0, m - n))


def _masked_weights(solver: Anderson, s: _AndersonState, slot: int) -> Tensor:
    m, H = solver.m, s.H
    onehot = s.eye[slot]
    valid = s.valid
    restarted = None
    if solver.restart_growth != float("inf"):
        prev = (s.k - 1) % m
        grow = H[:, slot, slot] > s.growth2 * H[:, prev, prev]
        valid = torch.where(grow[:, None], onehot, valid)
        s.restarts += grow
        restarted = grow
    Hm = H * (valid[:, :, None] * valid[:, None, :])
    scale = torch.diagonal(Hm, dim1=1, dim2=2).amax(dim=1, keepdim=True).clamp_min_(s.tiny)
    # diagonal: ridge * scale on live slots, 1 on dead ones (their weight solves to exactly 0)
    torch.diagonal(Hm, dim1=1, dim2=2).add_(torch.addcmul(1.0 - valid, valid, scale, value=solver.ridge))
    y = torch.linalg.solve_ex(Hm, valid[:, :, None])[0][:, :, 0]
    alpha = y / y.sum(dim=1, keepdim=True)
    bad = ~(alpha.abs().sum(dim=1) <= solver.max_alpha)
    alpha = torch.where(bad[:, None], onehot, alpha)
    s.valid.copy_(torch.where(bad[:, None], onehot, valid))  # in place: CUDA-graph safe
    s.restarts += bad
    if s.host_sync:
        restarted = bad if restarted is None else restarted | bad
        if bool(restarted.any()):  # dead slots until the ring has been rewritten once
            s.masked_until = s.k + m
    s.k += 1
    return alpha
