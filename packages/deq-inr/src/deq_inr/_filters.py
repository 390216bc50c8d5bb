"""Coordinate filters ``g(x)`` of multiplicative filter networks and SIREN-like layers, with MFN initialization.

* Fourier: ``g(x) = sin(Omega x + phi)``.
* Gabor: ``g(x) = sin(Omega x + phi) * exp(-1/2 relu(gamma) ||x - mu||^2)`` (``gamma``, ``mu`` per unit).
* Sine (SIREN-like, no ``omega_0``): the pre-activation ``Omega x + phi``, added inside a layer's ``sin``.

MFN initialization (Fathony et al. 2021, as in the (Implicit)^2 code) for a network with ``k`` linear layers
(``k + 1`` filters): ``Omega`` = PyTorch's default ``nn.Linear`` weight (``U(+-1/sqrt(d_in))``) times
``input_scale / sqrt(k + 1)``, ``phi ~ U(-pi, pi)``; Gabor ``mu ~ U[-1, 1]^d``,
``gamma ~ Gamma(alpha / (k + 1), rate 1)`` and the rows of ``Omega`` further scaled by ``sqrt(gamma)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FourierFilter", "GaborFilter", "SineFilter", "make_filter"]


class _LinearFilter(nn.Module):
    def __init__(self, in_features: int, width: int, input_scale: float, k: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, width)
        with torch.no_grad():
            self.linear.weight.mul_(input_scale / math.sqrt(k + 1))
            self.linear.bias.uniform_(-math.pi, math.pi)


class FourierFilter(_LinearFilter):
    """``g(x) = sin(Omega x + phi)``.

    Example:
        >>> import torch
        >>> g = FourierFilter(2, 8, input_scale=10.0, k=1)
        >>> tuple(g(torch.zeros(3, 2)).shape)
        (3, 8)
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.linear(x))


class SineFilter(_LinearFilter):
    """SIREN-like filter term: the pre-activation ``Omega x + phi`` (no ``omega_0 = 30``: the scale is in ``Omega``)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class GaborFilter(_LinearFilter):
    """``g(x) = sin(Omega x + phi) * exp(-1/2 relu(gamma) ||x - mu||^2)``; ``|g| <= 1``.

    Arguments:
        alpha: shape of the ``gamma`` prior, ``Gamma(alpha / (k + 1), 1)``.

    Example:
        >>> import torch
        >>> g = GaborFilter(2, 8, input_scale=10.0, k=1, alpha=6.0)
        >>> bool(g(torch.rand(5, 2)).abs().max() <= 1)
        True
    """

    def __init__(self, in_features: int, width: int, input_scale: float, k: int, alpha: float = 6.0) -> None:
        super().__init__(in_features, width, input_scale, k)
        self.mu = nn.Parameter(2 * torch.rand(width, in_features) - 1)
        gamma = torch.distributions.Gamma(alpha / (k + 1), 1.0).sample((width,))
        self.gamma = nn.Parameter(gamma)
        with torch.no_grad():
            self.linear.weight.mul_(gamma.sqrt()[:, None])

    def forward(self, x: Tensor) -> Tensor:
        d2 = (x * x).sum(-1, keepdim=True) + (self.mu * self.mu).sum(-1)[None, :] - 2 * x @ self.mu.T
        return torch.sin(self.linear(x)) * torch.exp(-0.5 * d2 * torch.relu(self.gamma)[None, :])


def make_filter(kind: str, in_features: int, width: int, input_scale: float, k: int, alpha: float = 6.0) -> nn.Module:
    """A filter of ``kind`` ``fourier``, ``gabor`` or ``sine``."""
    if kind == "fourier":
        return FourierFilter(in_features, width, input_scale, k)
    if kind == "gabor":
        return GaborFilter(in_features, width, input_scale, k, alpha)
    if kind == "sine":
        return SineFilter(in_features, width, input_scale, k)
    raise ValueError(f"filter kind must be 'fourier', 'gabor' or 'sine', got {kind!r}")
