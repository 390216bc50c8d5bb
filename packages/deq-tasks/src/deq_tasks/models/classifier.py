"""A small multi-resolution conv DEQ classifier (MDEQ-style) for 28x28 digits.

State ``z = (z_1, z_2)``: branch 1 with ``C_1`` channels at 14x14, branch 2 with ``C_2`` channels at 7x7, packed
into one flat vector per sample so that any flat fixed-point solver (and the JIIO engine) can run on it.

Layer (one application of ``f``), following MDEQ (Bai, Koltun, Kolter 2020)::

    per branch i:  y_i = GN(relu(GN(conv3x3(z_i))) -> conv3x3 + inj_i) ; y_i = GN(relu(y_i + z_i))
    fusion:        u_1 = y_1 + up(conv1x1(y_2)),   u_2 = y_2 + conv3x3_stride2(y_1)
    output:        z_i^+ = GN(conv1x1(relu(u_i)))

The input image ``u`` (plus an adversarial perturbation ``delta``) enters through a stem
(conv3x3-GN-ReLU, twice; the first with stride 2) into branch 1, and a strided conv of it into branch 2.
Head: branch 1 is downsampled onto branch 2, summed, 1x1 conv to 32 channels, ReLU, 2x2 average pool,
Linear to the classes (a GroupNorm before a global pool left the pooled features nearly constant across images
and the classifier did not train in a CPU budget).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deq_core import DEQ, DeqConfigError, DeqInputError, ImplicitAdjoint, resolve_solver

__all__ = ["MDEQClassifier", "MDEQClassifierLayer"]


def _gn(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, c), c, affine=True)


class _Block(nn.Module):
    def __init__(self, c: int, expansion: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, expansion * c, 3, padding=1, bias=False)
        self.gn1 = _gn(expansion * c, groups)
        self.conv2 = nn.Conv2d(expansion * c, c, 3, padding=1, bias=False)
        self.gn2 = _gn(c, groups)
        self.gn3 = _gn(c, groups)

    def forward(self, z: Tensor, inj: Tensor) -> Tensor:
        y = F.relu(self.gn1(self.conv1(z)))
        y = self.gn2(self.conv2(y) + inj)
        return self.gn3(F.relu(y + z))


class MDEQClassifierLayer(nn.Module):
    """``f(z, inj)``: one MDEQ layer on the flat two-branch state (see module docstring).

    Arguments:
        channels: ``(C_1, C_2)`` channels of the 14x14 and 7x7 branches.
        expansion: width factor inside each residual block (MDEQ uses 5; 2 keeps CPU cost low).
        groups: GroupNorm groups.
    """

    def __init__(self, channels: tuple[int, int] = (16, 24), expansion: int = 2, groups: int = 4) -> None:
        super().__init__()
        c1, c2 = channels
        self.channels = (c1, c2)
        self.shapes = ((c1, 14, 14), (c2, 7, 7))
        self.sizes = (c1 * 196, c2 * 49)
        self.block1 = _Block(c1, expansion, groups)
        self.block2 = _Block(c2, expansion, groups)
        self.down12 = nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False), _gn(c2, groups))
        self.up21 = nn.Sequential(nn.Conv2d(c2, c1, 1, bias=False), _gn(c1, groups))
        self.post1 = nn.Sequential(nn.Conv2d(c1, c1, 1, bias=False), _gn(c1, groups))
        self.post2 = nn.Sequential(nn.Conv2d(c2, c2, 1, bias=False), _gn(c2, groups))

    @property
    def state_size(self) -> int:
        return sum(self.sizes)

    def unpack(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = z.split(self.sizes, dim=1)
        return z1.reshape(-1, *self.shapes[0]), z2.reshape(-1, *self.shapes[1])

    def pack(self, z1: Tensor, z2: Tensor) -> Tensor:
        return torch.cat([z1.flatten(1), z2.flatten(1)], dim=1)

    def forward(self, z: Tensor, inj: tuple[Tensor, Tensor]) -> Tensor:
        z1, z2 = self.unpack(z)
        y1 = self.block1(z1, inj[0])
        y2 = self.block2(z2, inj[1])
        u1 = y1 + F.interpolate(self.up21(y2), size=y1.shape[-2:], mode="nearest")
        u2 = y2 + self.down12(y1)
        return self.pack(self.post1(F.relu(u1)), self.post2(F.relu(u2)))


class MDEQClassifier(nn.Module):
    """MDEQ-style DEQ classifier for 1x28x28 images in ``[0, 1]``: ``logits = head(z*)``, ``z* = f(z*, stem(u))``.

    Arguments:
        channels: branch channels ``(C_1, C_2)`` (papers: 2 branches x 16-24 ch for MNIST).
        expansion, groups: block width factor and GroupNorm groups.
        num_classes: output classes.
        solver: fixed-point solver (object or registered name) for the forward and backward solves.
        max_steps, rtol: forward budget and relative tolerance of the equilibrium solve.
        backward_steps: budget of the implicit backward solve.
        jac_reg_probes: Hutchinson probes for the Jacobian regularizer ``model.last_info.jac_loss`` (training).

    Example:
        >>> import torch
        >>> from deq_core import FixedPointIteration
        >>> from deq_tasks.models.classifier import MDEQClassifier
        >>> model = MDEQClassifier(solver=FixedPointIteration(), max_steps=5)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, channels: tuple[int, int] = (16, 24), expansion: int = 2, groups: int = 4,
                 num_classes: int = 10, solver: Any = "anderson", max_steps: int = 18, rtol: float = 1e-4,
                 backward_steps: int = 20, jac_reg_probes: int = 0) -> None:
        super().__init__()
        if len(channels) != 2 or min(channels) < 1:
            raise DeqConfigError(f"channels must be two positive ints, got {channels!r}")
        c1, c2 = channels
        self.hparams = {"channels": list(channels), "expansion": expansion, "groups": groups,
                        "num_classes": num_classes, "max_steps": max_steps, "rtol": rtol,
                        "backward_steps": backward_steps, "jac_reg_probes": jac_reg_probes}
        self.stem = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1, bias=False), _gn(c1, groups), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1, bias=False), _gn(c1, groups), nn.ReLU(),
        )
        self.inj2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.layer = MDEQClassifierLayer(channels, expansion, groups)
        self.head_down = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.head = nn.Sequential(nn.Conv2d(c2, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(128, num_classes))
        solver_obj = resolve_solver(solver)
        self.solver = solver_obj
        self.deq = DEQ(self.layer, solver=solver_obj,
                       adjoint=ImplicitAdjoint(rtol=rtol, max_steps=backward_steps),
                       rtol=rtol, atol=1e-8, max_steps=max_steps, jac_reg_probes=jac_reg_probes)
        self.last_info = None

    def check_images(self, u: Tensor) -> None:
        if u.dim() != 4 or tuple(u.shape[1:]) != (1, 28, 28):
            raise DeqInputError(f"expected images of shape (B, 1, 28, 28), got {tuple(u.shape)}")

    def inject(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Input injection ``(inj_1, inj_2)`` of the images ``u`` (B, 1, 28, 28)."""
        s = self.stem(u)
        return s, self.inj2(s)

    def f(self, z: Tensor, u: Tensor) -> Tensor:
        """One layer application on flat ``z`` (B, N) with the images ``u`` as input (stem included)."""
        return self.layer(z, self.inject(u))

    def z0(self, u: Tensor) -> Tensor:
        return u.new_zeros(u.shape[0], self.layer.state_size)

    def equilibrium(self, u: Tensor, z0: Tensor | None = None) -> Tensor:
        """``z*`` for images ``u`` (implicit gradients w.r.t. parameters and ``u`` when grad is enabled)."""
        self.check_images(u)
        inj = self.inject(u)
        z, info = self.deq(inj, z0=self.z0(u) if z0 is None else z0)
        self.last_info = info
        return z

    def logits(self, z: Tensor) -> Tensor:
        """Class logits ``h(z)`` of flat states ``z`` (B, N)."""
        z1, z2 = self.layer.unpack(z)
        return self.head(z2 + self.head_down(z1))

    def forward(self, u: Tensor) -> Tensor:
        return self.logits(self.equilibrium(u))
