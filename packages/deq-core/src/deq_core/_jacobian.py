"""Jacobian regularization: Hutchinson estimate of ``||df/dz||_F^2`` at the fixed point (Bai et al., ICML 2021),
and a differentiable per-sample power-iteration estimate of ``df/dz``'s largest growth (to aim a hinge at a
target contraction rate instead of pushing the whole Jacobian towards 0)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["jacobian_frobenius", "jacobian_spectral"]


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


def jacobian_spectral(f: Callable[[Tensor], Tensor], z: Tensor, *, iters: int = 5,
                      generator: torch.Generator | None = None) -> Tensor:
    """Per-sample estimate ``(B,)`` of the largest growth of ``J = df/dz`` at ``z`` ``(B, N)``, differentiable in
    what ``f`` closes over.

    ``iters`` VJPs of one evaluation of ``f``: ``iters - 1`` power-iteration steps ``w <- J^T w / ||J^T w||`` from a
    random start (detached), then ``||J^T w||`` with the graph kept (the eigenvalues of ``J^T`` are those of
    ``J``). After enough steps it tends to the spectral radius when one real eigenvalue dominates; a few steps give
    a value between a random direction's growth and ``||J||_2``. Each row of ``f`` must depend only on its own
    row of ``z`` (as in a DEQ). Unlike :func:`jacobian_frobenius`, which is pushed down by every direction, a
    hinge ``relu(estimate - target)`` on it only acts on samples whose layer is less contractive than
    ``target``, so a DEQ keeps a solve of the length that rate implies (see :func:`~deq_core.spectral_radius` for
    a detached diagnostic with a convergence rule).

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([0.8, 0.3, -0.1]))
        >>> s = torch.tensor(1.0, requires_grad=True)
        >>> rho = jacobian_spectral(lambda z: s * z @ A.T, torch.zeros(2, 3), iters=30)
        >>> [round(float(r), 4) for r in rho.detach()]
        [0.8, 0.8]
        >>> rho.sum().backward(); round(float(s.grad), 4)     # d(s * 0.8) / ds per sample, 2 samples
        1.6
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        from ._errors import DeqConfigError

        raise DeqConfigError(f"jacobian_spectral: iters must be an int >= 1, got {iters!r}")
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z)
        w = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        tiny = torch.finfo(z.dtype).tiny
        for _ in range(iters - 1):
            w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(tiny)
            (w,) = torch.autograd.grad(fz, z, w, retain_graph=True)
        w = (w / torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(tiny)).detach()
        (jw,) = torch.autograd.grad(fz, z, w, create_graph=True)
    return torch.linalg.vector_norm(jw, dim=1)
