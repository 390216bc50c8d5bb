"""Spectral normalization that starts at its bound, shared by the task models."""

from __future__ import annotations

import torch
from torch import nn

from deq_core.nn import spectral_norm

__all__ = ["spectral_norm_at_bound"]


def spectral_norm_at_bound(module: nn.Module, max_norm: float, init_iterations: int = 30) -> nn.Module:
    """Spectral-normalize ``module.weight`` to ``||W||_2 <= max_norm`` (W reshaped to ``(out, -1)``), starting AT
    the bound: the init is rescaled so its norm is twice the cap, so the cap binds from the first step and the
    layer starts as contractive as allowed, like a trained one. Returns ``module``.

    Example:
        >>> import torch
        >>> lin = spectral_norm_at_bound(torch.nn.Linear(6, 6, bias=False), 0.9, init_iterations=100)
        >>> _ = lin(torch.zeros(1, 6))
        >>> round(float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2)), 3)
        0.9
    """
    with torch.no_grad():
        w = module.weight
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        w.mul_(2.0 * max_norm / sigma)
    return spectral_norm(module, max_norm=max_norm, init_iterations=init_iterations)
