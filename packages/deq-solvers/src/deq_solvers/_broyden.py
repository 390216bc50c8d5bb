"""``broyden``: limited-memory "good" Broyden with a lazily grown ring buffer and optional line search."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deq_core import AbstractFixedPointSolver, DeqConfigError, FlatMap, check_range

from ._util import check_int, history_dtype, resolve_dtype

__all__ = ["Broyden"]


@dataclass(frozen=True)
class Broyden(AbstractFixedPointSolver):
    r"""Limited-memory good Broyden method on the root problem ``g(z) = f(z) - z = 0``.

    The inverse Jacobian of ``g`` is approximated per sample by ``B = -I + \sum_i u_i v_i^\top`` with at most
    ``m`` rank-one terms (when the memory is full the approximation restarts from ``-I`` and the buffer
    is reused in place: dropping just the oldest term corrupts the newer ones, which were built on it). The step is
    ``z_{k+1} = z_k - s B g_k`` and after it the good-Broyden (Sherman-Morrison) update with
    ``dz = z_{k+1} - z_k``, ``dg = g_{k+1} - g_k`` appends

    .. math::
        v = B^\top dz,\qquad u = \frac{dz - B\, dg}{v^\top dg}.

    Buffers ``(B, k, N)`` grow with the number of stored terms (doubling) up to ``m``, never to the
    step budget. Terms with a vanishing denominator are skipped; a sample whose residual grows by more
    than ``restart_growth`` drops its history (``B = -I``, a plain fixed-point step).

    With ``line_search=True`` a per-sample backtracking (Armijo on ``||g||^2``, quadratic interpolation,
    at most ``ls_steps`` extra batched evaluations of ``f``) picks ``s``; otherwise ``s = 1``.

    Arguments:
        m: largest number of rank-one terms (``>= 1``; the history size, spelled ``m`` as for Anderson).
        line_search: per-sample backtracking line search.
        ls_steps: extra evaluations of ``f`` per step at most, with ``line_search``.
        restart_growth: restart a sample when ``||g_new|| > restart_growth * ||g_old||`` (``> 1``).
        history_dtype: ``"auto"`` (state dtype, float32 for half states), ``"float32"`` or ``"float64"``.

    Statistics: ``history_bytes`` (allocated), ``m``, ``restarts``, ``skipped`` updates,
    ``backtracks`` (line-search reductions), ``memory_cycles`` (restarts because the memory was full).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import Broyden
        >>> A = torch.tensor([[0.5, 0.3], [-0.2, 0.6]], dtype=torch.float64)
        >>> z0 = torch.zeros(1, 2, dtype=torch.float64)
        >>> sol = fixed_point(lambda z: z @ A + 1, z0, solver=Broyden(), rtol=1e-10, adjoint=None)
        >>> bool(torch.allclose(sol.value, (z0 + 1) @ torch.linalg.inv(torch.eye(2, dtype=torch.float64) - A)))
        True
    """

    name: ClassVar[str] = "broyden"
    renamed: ClassVar[Mapping[str, str]] = {"memory": "m"}
    m: int = 20
    line_search: bool = False
    ls_steps: int = 3
    restart_growth: float = 1e3
    history_dtype: str = "auto"

    def __post_init__(self) -> None:
        check_int(self, "m", self.m, 1)
        if not isinstance(self.line_search, bool):
            raise DeqConfigError(f"Broyden.line_search must be a bool, got {self.line_search!r}")
        check_int(self, "ls_steps", self.ls_steps, 1)
        check_range(self, "restart_growth", self.restart_growth, 1.0, float("inf"))
        resolve_dtype(self, "history_dtype", self.history_dtype)

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> _BroydenState:
        return _BroydenState(self, z)

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: _BroydenState) -> tuple[Tensor, Tensor, Any]:
        s = state
        hd = s.dtype
        g = (fz - z).to(hd)
        zh = z.to(hd)
        if s.z_prev is None:
            s.g0 = g.norm(dim=1)
        else:
            self._update(s, zh - s.z_prev, g - s.g_prev, g)
        d = self._matvec_neg(s, g)  # -B g
        s.z_prev, s.g_prev = zh, g
        z_next = (zh + d).to(z.dtype)
        fz_next = f(z_next)
        if self.line_search:
            z_next, fz_next = self._line_search(f, s, zh, g, d, z_next, fz_next)
        return z_next, fz_next, s

    # B x = -x + U^T (V x): U, V are (B, n, N) with rows u_i, v_i
    def _matvec_neg(self, s: _BroydenState, x: Tensor) -> Tensor:
        n = s.n
        if n == 0:
            return x
        c = torch.bmm(x[:, None, :], s.V[:, :n].transpose(1, 2)) * s.live[:, None, :n]
        return torch.baddbmm(x[:, None, :], c, s.U[:, :n], alpha=-1.0)[:, 0]

    def _update(self, s: _BroydenState, dz: Tensor, dg: Tensor, g: Tensor) -> None:
        n = s.n
        if n:
            Vn, Un, live = s.V[:, :n], s.U[:, :n], s.live[:, None, :n]
            # v = B^T dz = -dz + V^T (U dz);  B dg = -dg + U^T (V dg)
            cu = torch.bmm(dz[:, None, :], Un.transpose(1, 2)) * live
            v = torch.baddbmm(-dz[:, None, :], cu, Vn)[:, 0]
            cv = torch.bmm(dg[:, None, :], Vn.transpose(1, 2)) * live
            bdg = torch.baddbmm(-dg[:, None, :], cv, Un)[:, 0]
        else:
            v, bdg = -dz, -dg
        den = (v * dg).sum(dim=1, keepdim=True)
        ok = den.abs() > s.tiny * (dz.norm(dim=1, keepdim=True) * dg.norm(dim=1, keepdim=True))
        u = (dz - bdg) / torch.where(ok, den, torch.ones_like(den))
        # restart samples whose residual exploded: history off, B = -I
        gn = g.norm(dim=1)
        blow = gn > self.restart_growth * s.g0
        s.restarts += blow
        s.skipped += ~ok[:, 0]
        slot = s.count % self.m
        if slot == 0 and s.count:
            # full: restart from B = -I (dropping only the oldest term would leave the newer terms, which
            # were built on top of it, inconsistent; that is what makes ring-overwriting Broyden blow up)
            s.live.zero_()
            s.cycles += 1
        s.ensure(slot + 1)
        s.U[:, slot].copy_(u)
        s.V[:, slot].copy_(v)
        s.live[:, slot] = ok[:, 0].to(s.live.dtype)
        s.live.masked_fill_(blow[:, None], 0.0)
        s.g0 = torch.where(blow, gn, s.g0)
        s.count += 1
        s.n = min(s.count, self.m)

    def _line_search(self, f, s, zh, g, d, z_next, fz_next):
        phi0 = (g * g).sum(dim=1)
        acc = torch.ones_like(phi0)
        step = torch.ones_like(phi0)
        for _ in range(self.ls_steps):
            gn = (fz_next - z_next).to(s.dtype)
            phi = (gn * gn).sum(dim=1)
            ok = phi <= (1.0 - 2e-4 * step) * phi0
            if bool(ok.all()):
                break
            # minimiser of the quadratic through phi(0), phi'(0) = -2 phi0, phi(step); kept in [0.1, 0.5] x step
            new = (phi0 * step * step) / (phi + phi0 * (2.0 * step - 1.0)).clamp_min(s.tiny)
            new = torch.minimum(torch.maximum(new, 0.1 * step), 0.5 * step)
            step = torch.where(ok, step, new)
            acc = acc + (~ok).to(acc.dtype)
            z_try = (zh + step[:, None] * d).to(z_next.dtype)
            fz_try = f(z_try)
            z_next = torch.where(ok[:, None], z_next, z_try)
            fz_next = torch.where(ok[:, None], fz_next, fz_try)
        s.backtracks += int((acc - 1).sum())
        return z_next, fz_next

    def stats(self, state: _BroydenState) -> dict[str, Any]:
        s = state
        return {
            "history_bytes": s.nbytes(),
            "m": self.m,
            "restarts": int(s.restarts.sum()),
            "skipped": int(s.skipped.sum()),
            "backtracks": s.backtracks,
            "memory_cycles": s.cycles,
        }


class _BroydenState:
    """Lazily grown buffers ``U``, ``V`` ``(B, cap, N)``, live mask ``(B, cap)``, previous iterate."""

    __slots__ = ("U", "V", "live", "n", "count", "z_prev", "g_prev", "dtype", "restarts", "skipped",
                 "backtracks", "g0", "tiny", "memory", "shape", "device", "cycles")

    def __init__(self, solver: Broyden, z: Tensor) -> None:
        self.dtype = history_dtype(solver.history_dtype, z.dtype)
        self.shape, self.device, self.memory = z.shape, z.device, solver.m
        B = z.shape[0]
        self.U = self.V = self.live = None
        self.n = self.count = 0
        self.z_prev = self.g_prev = None
        self.restarts = torch.zeros(B, dtype=torch.long, device=z.device)
        self.skipped = torch.zeros(B, dtype=torch.long, device=z.device)
        self.backtracks = 0
        self.cycles = 0
        self.g0 = torch.full((B,), float("inf"), dtype=self.dtype, device=z.device)  # set at the first step
        self.tiny = float(torch.finfo(self.dtype).eps) ** 2

    def ensure(self, need: int) -> None:
        cap = 0 if self.U is None else self.U.shape[1]
        if need <= cap:
            return
        new_cap = min(self.memory, max(need, 2 * cap, 4))
        B, N = self.shape
        U = torch.zeros(B, new_cap, N, dtype=self.dtype, device=self.device)
        V = torch.zeros_like(U)
        live = torch.zeros(B, new_cap, dtype=self.dtype, device=self.device)
        if cap:
            U[:, :cap], V[:, :cap], live[:, :cap] = self.U, self.V, self.live
        self.U, self.V, self.live = U, V, live

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.U, self.V, self.live) if t is not None)
