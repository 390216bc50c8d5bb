"""A small multi-resolution conv DEQ decoder in the spirit of MDEQ (papers.md section 4), sized for a CPU.

State ``z = (z1, z2)``: ``z1`` is ``(B, C1, S/2, S/2)``, ``z2`` is ``(B, C2, S/4, S/4)`` (``S`` = image side).
The latent ``x in R^L`` enters every branch through its own ``Linear(L -> C H W)`` (no normalization after it:
a scale-invariant injection would make the latent's norm drift without bound under gradient steps). The layer::

    y_i  = GN(ReLU(GN(conv3x3(ReLU(GN(conv3x3(z_i))))) + inj_i) + z_i)      residual block per branch
    u_1  = y_1 + upsample(conv1x1(y_2));  u_2 = y_2 + conv3x3_stride2(y_1)  multiscale fusion
    f_i  = GN(conv1x1(ReLU(u_i)))

(weight-normalized convolutions, GroupNorm). The head upsamples ``z2``, adds it to ``z1`` and decodes with
``GN - ReLU - conv3x3 (4 channels) - pixel shuffle (x2) -> tanh`` to one channel in [-1, 1]: a sub-pixel head
at the resolution of ``z1``. JIIO differentiates the objective ``l(h(z))`` through the head at every augmented
iteration, so the head's cost is paid ``T`` times (a transposed conv and a conv at full resolution cost as much
as ``f`` itself); the sub-pixel head costs about a third of that (batch 16: 0.27 ms against 0.79 ms).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deq_core import DEQ, DeqConfigError, DeqInputError, ImplicitAdjoint, resolve_solver
from deq_core.nn import weight_norm

from ._spectral import spectral_norm_at_bound

__all__ = ["DecoderLayer", "MDEQDecoder"]


def _groups(channels: int) -> int:
    for g in (4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _Branch(nn.Module):
    """Residual block of one branch: ``conv3x3 -> ReLU -> conv3x3`` (spectral-normalized, no bias)."""

    def __init__(self, c: int, expansion: int, max_norm: float) -> None:
        super().__init__()
        h = c * expansion
        self.conv1 = spectral_norm_at_bound(nn.Conv2d(c, h, 3, padding=1, bias=False), 1.0)
        self.conv2 = spectral_norm_at_bound(nn.Conv2d(h, c, 3, padding=1, bias=False), max_norm)

    def forward(self, z: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(z)))


class DecoderLayer(nn.Module):
    """The DEQ layer ``f((z1, z2), x)`` of :class:`MDEQDecoder` (two branches, fusion, latent injection).

    ``f_i = tanh(gain * u_i + inj_i(x))`` with ``u`` the fused branch outputs; the convolutions are
    spectral-normalized (block path 0.7 c, fusion 0.3 c, c = ``contraction``; norms of the reshaped kernels) and
    scaled by a fixed ``gain``, so the map stays close to a
    contraction with a rate set by ``contraction`` (the solve then needs tens of iterations, as MDEQ's does).
    """

    def __init__(self, latent_dim: int = 32, size: int = 28, channels: tuple[int, int] = (8, 16),
                 expansion: int = 2, contraction: float = 0.9, gain: float = 4.0) -> None:
        super().__init__()
        self.gain = float(gain)
        if size % 4 != 0 or size < 8:
            raise DeqConfigError(f"image size must be a multiple of 4 and >= 8, got {size}")
        if not 0 < contraction < 2:
            raise DeqConfigError(f"contraction must be in (0, 2), got {contraction}")
        c1, c2 = channels
        self.latent_dim, self.size, self.channels = latent_dim, size, (c1, c2)
        self.res = (size // 2, size // 4)
        self.contraction = contraction
        self.branches = nn.ModuleList([_Branch(c, expansion, 0.7 * contraction) for c in (c1, c2)])
        self.inject = nn.ModuleList([nn.Linear(latent_dim, c * r * r) for c, r in zip(self.channels, self.res)])
        self.down = spectral_norm_at_bound(nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False),
                                           0.3 * contraction)
        self.up = spectral_norm_at_bound(nn.Conv2d(c2, c1, 1, bias=False), 0.3 * contraction)

    def init_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Zero state for a batch of latents ``x`` ``(B, L)``."""
        B = x.shape[0]
        return tuple(x.new_zeros(B, c, r, r) for c, r in zip(self.channels, self.res))  # type: ignore[return-value]

    def injection(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.latent_dim:
            raise DeqInputError(f"latent x must have shape (B, {self.latent_dim}), got {tuple(x.shape)}")
        B = x.shape[0]
        return tuple(lin(x).view(B, c, r, r)  # type: ignore[return-value]
                     for lin, c, r in zip(self.inject, self.channels, self.res))

    def forward(self, z: tuple[Tensor, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        inj1, inj2 = self.injection(x)
        y1, y2 = (br(zi) for br, zi in zip(self.branches, z))
        u1 = y1 + F.interpolate(self.up(z[1]), scale_factor=2, mode="nearest")
        u2 = y2 + self.down(z[0])
        g = self.gain
        return torch.tanh(g * u1 + inj1), torch.tanh(g * u2 + inj2)


class MDEQDecoder(nn.Module):
    """Decoder-only DEQ generative model ``x -> h(z*)`` with ``z* = f(z*, x)`` (images in [-1, 1]).

    Arguments:
        latent_dim: ``L``; size: image side ``S`` (28 for MNIST, 8 for scikit-learn digits);
        channels: ``(C1, C2)`` of the two branches; expansion: width factor inside the residual blocks.
        contraction, gain: spectral caps and the fixed gain of the layer (:class:`DecoderLayer`); the defaults make
            the plain solve take 20-30 Anderson iterations at rtol 1e-4, as an MDEQ's does.
        solver, solver_options: the plain DEQ's forward solver (also used for its implicit backward).
        rtol, max_steps: forward tolerance and budget; backward_steps: budget of the backward solve.

    Example:
        >>> import torch
        >>> dec = MDEQDecoder(latent_dim=8, size=8, channels=(4, 8), solver="fixed-point", max_steps=5)
        >>> img, info = dec(torch.zeros(2, 8))
        >>> tuple(img.shape)
        (2, 1, 8, 8)
    """

    def __init__(self, latent_dim: int = 32, size: int = 28, channels: tuple[int, int] = (8, 16),
                 expansion: int = 2, *, solver: Any = "fixed-point", solver_options: dict | None = None,
                 rtol: float = 1e-4, atol: float = 1e-6, max_steps: int = 40, backward_steps: int = 40,
                 contraction: float = 0.9, gain: float = 4.0) -> None:
        super().__init__()
        self.layer = DecoderLayer(latent_dim, size, tuple(channels), expansion, contraction, gain)  # type: ignore[arg-type]
        c1 = channels[0]
        self.head_up = weight_norm(nn.Conv2d(channels[1], c1, 1, bias=False))
        self.head_gn = nn.GroupNorm(_groups(c1), c1)
        self.head_out = nn.Conv2d(c1, 4, 3, padding=1)   # 4 = 2 x 2 sub-pixels per S/2 position
        if isinstance(solver, str) and solver_options:
            from deq_core import registry

            solver = registry.get_solver(solver, **solver_options)
        self.solver = resolve_solver(solver)
        self.rtol, self.atol, self.max_steps, self.backward_steps = rtol, atol, max_steps, backward_steps
        self.deq = DEQ(self.layer, solver=self.solver,
                       adjoint=ImplicitAdjoint(max_steps=backward_steps, rtol=rtol, atol=atol),
                       rtol=rtol, atol=atol, max_steps=max_steps)
        self.hparams = {"latent_dim": latent_dim, "size": size, "channels": list(channels), "expansion": expansion,
                        "rtol": rtol, "atol": atol, "max_steps": max_steps, "backward_steps": backward_steps,
                        "contraction": contraction, "gain": gain}

    @property
    def latent_dim(self) -> int:
        return self.layer.latent_dim

    def init_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.layer.init_state(x)

    def head(self, z: tuple[Tensor, Tensor]) -> Tensor:
        """``h(z)``: images ``(B, 1, S, S)`` in [-1, 1]."""
        z1, z2 = z
        u = z1 + F.interpolate(self.head_up(z2), scale_factor=2, mode="nearest")
        return torch.tanh(F.pixel_shuffle(self.head_out(F.relu(self.head_gn(u))), 2))

    def forward(self, x: Tensor, z0: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Any]:
        """Plain DEQ decode: solve ``z* = f(z*, x)`` (implicit gradient) from ``z0`` (default zeros) and return
        ``(h(z*), DEQInfo)``."""
        z, info = self.deq(x, z0)
        return self.head(z), info
