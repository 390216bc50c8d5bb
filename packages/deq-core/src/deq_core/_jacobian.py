"""Jacobian regularization: Hutchinson estimate of ``||df/dz||_F^2`` at the fixed point (Bai et al., ICML 2021)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["jacobian_frobenius"]


def jacobian_frobenius(f: Callable[[Tensor], Tensor], z: Tensor, *, probes: int = 1,
                       generator: torch.Generator | None = None) -> Tensor:
    """Unbiased estimate of ``||J||_F^2 / N`` averaged over the batch, ``J = df/dz`` at ``z`` (``(B, N)``).

    ``E_eps ||eps^T J||^2 = ||J||_F^2`` for ``eps ~ N(0, I)``; differentiable w.r.t. what ``f`` closes over.

    Example:
        >>> import torch
        >>> est = jacobian_frobenius(lambda z: 0.5 * z, torch.zeros(4, 1000), probes=4)
        >>> abs(float(est) - 0.25) < 0.02
        True
    """
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z)
        total = z.new_zeros(())
        for _ in range(probes):
            eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
            (vjp,) = torch.autograd.grad(fz, z, eps, create_graph=True, retain_graph=True)
            total = total + vjp.pow(2).sum()
    return total / (probes * z.shape[0] * z.shape[1])
