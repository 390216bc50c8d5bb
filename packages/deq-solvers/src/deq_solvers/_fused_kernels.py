"""Triton kernels of the fused Anderson solver (imported lazily: ``TRITON_INTERPRET`` is read at definition).

* ``push_gram``: one read of ``z``, ``f(z)`` and the residual history ``G``: writes ``g = f(z) - z`` and
  ``f(z)`` into ring slot ``slot`` of ``G`` / ``F``, and emits per-split partial sums of the new Gram row
  ``<G_i, g>`` (with the new ``g`` in place of ``G_slot``), ``||g||^2`` and ``||f(z)||^2``.
* ``mix``: ``out = sum_i a_i F_i - (1 - beta) sum_i a_i G_i`` in one read of the histories.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["mix", "push_gram"]


@triton.jit
def push_gram(z_ptr, fz_ptr, F_ptr, G_ptr, part_ptr, slot, N, CHUNK, S,
              M: tl.constexpr, M_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    rows = tl.arange(0, M_PAD)
    cols = tl.arange(0, BLOCK)
    hist_ty = G_ptr.dtype.element_ty
    acc = tl.zeros([M_PAD, BLOCK], dtype=hist_ty)
    acc_g = tl.zeros([BLOCK], dtype=hist_ty)
    acc_f = tl.zeros([BLOCK], dtype=hist_ty)
    start = s * CHUNK
    for off in range(start, start + CHUNK, BLOCK):
        offs = off + cols
        inb = offs < N
        zv = tl.load(z_ptr + b * N + offs, mask=inb, other=0.0).to(hist_ty)
        fv = tl.load(fz_ptr + b * N + offs, mask=inb, other=0.0).to(hist_ty)
        g = fv - zv
        tile_mask = (rows[:, None] < M) & inb[None, :]
        tile = tl.load(G_ptr + b * M * N + rows[:, None] * N + offs[None, :], mask=tile_mask, other=0.0)
        tile = tl.where(rows[:, None] == slot, g[None, :], tile)
        acc += tile * g[None, :]
        acc_g += g * g
        acc_f += fv * fv
        tl.store(G_ptr + b * M * N + slot * N + offs, g, mask=inb)
        tl.store(F_ptr + b * M * N + slot * N + offs, fv, mask=inb)
    base = part_ptr + (b * S + s) * (M_PAD + 2)
    tl.store(base + rows, tl.sum(acc, axis=1))
    tl.store(base + M_PAD, tl.sum(acc_g, axis=0))
    tl.store(base + M_PAD + 1, tl.sum(acc_f, axis=0))


@triton.jit
def mix(a_ptr, F_ptr, G_ptr, out_ptr, N, gcoef,
        M: tl.constexpr, M_PAD: tl.constexpr, BLOCK: tl.constexpr, USE_G: tl.constexpr):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    rows = tl.arange(0, M_PAD)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inb = offs < N
    hist_ty = F_ptr.dtype.element_ty
    a = tl.load(a_ptr + b * M + rows, mask=rows < M, other=0.0).to(hist_ty)
    tile_mask = (rows[:, None] < M) & inb[None, :]
    ptrs = b * M * N + rows[:, None] * N + offs[None, :]
    acc = tl.sum(tl.load(F_ptr + ptrs, mask=tile_mask, other=0.0) * a[:, None], axis=0)
    if USE_G:
        acc += gcoef * tl.sum(tl.load(G_ptr + ptrs, mask=tile_mask, other=0.0) * a[:, None], axis=0)
    tl.store(out_ptr + b * N + offs, acc.to(out_ptr.dtype.element_ty), mask=inb)
