"""Diagnostics of a fixed point: the spectral radius of ``df/dz`` at ``z*`` by power iteration."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._errors import DeqConfigError, DeqInputError

__all__ = ["spectral_radius"]


def spectral_radius(f: Callable[[Tensor], Tensor], z_star: Tensor, iters: int = 50, *,
                    generator: torch.Generator | None = None) -> Tensor:
    r"""Estimate, per sample, the spectral radius ``rho(J)`` of ``J = df/dz`` at ``z_star`` ``(B, N)``.

    Power iteration with VJPs (the eigenvalues of ``J^T`` are those of ``J``): one evaluation of ``f`` with
    its graph, then ``iters`` VJPs ``w <- J^T w / ||J^T w||`` from a random start, batched over samples (each
    row of ``f`` must depend only on its own row of ``z``, as in a DEQ). The estimate is the geometric mean
    of the growth ``||J^T w_k||`` over the second half of the iterations, so it converges both when one
    real eigenvalue dominates and when a complex pair does (there ``||J^T w_k||`` oscillates, its mean
    growth still tends to ``|lambda|``).

    Limits: the error decays like ``(|lambda_2| / |lambda_1|)^k`` when one eigenvalue dominates (slowly for
    a small gap); for non-normal ``J`` the transient growth ``||J^k|| >> rho^k`` biases short runs upward,
    and several eigenvalues of equal modulus but different phase (not a conjugate pair) give an estimate
    that only converges like ``1/k``. For a symmetric ``J`` the estimate is a lower bound that increases to
    ``rho`` (up to round-off). ``rho < 1`` is what makes the plain iteration (and the Neumann series of the
    backward) converge locally; ``||J||_2 < 1`` is the stronger, global statement.

    Arguments:
        f: the map on flat states ``(B, N) -> (B, N)``.
        z_star: the point ``(B, N)`` (detached inside; no gradient flows out of the estimate).
        iters: VJPs (``>= 2``).
        generator: for the random start.

    Returns:
        ``(B,)`` estimates, in ``z_star``'s dtype (at least float32), detached.

    Example:
        >>> import torch
        >>> from deq_core import spectral_radius
        >>> A = torch.diag(torch.tensor([0.9, -0.5, 0.2], dtype=torch.float64))
        >>> rho = spectral_radius(lambda z: z @ A.T, torch.zeros(2, 3, dtype=torch.float64), iters=200)
        >>> [round(float(r), 6) for r in rho]
        [0.9, 0.9]
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 2:
        raise DeqConfigError(f"spectral_radius: iters must be an int >= 2, got {iters!r}")
    if not isinstance(z_star, Tensor) or z_star.dim() != 2 or not z_star.is_floating_point():
        raise DeqInputError(
            f"spectral_radius: z_star must be a floating (B, N) tensor, got "
            f"{tuple(z_star.shape) if isinstance(z_star, Tensor) else type(z_star).__name__}")
    acc = torch.promote_types(z_star.dtype, torch.float32)
    z = z_star.detach().to(acc).requires_grad_()
    with torch.enable_grad():
        fz = f(z)
    if not isinstance(fz, Tensor) or fz.shape != z.shape:
        raise DeqInputError(f"spectral_radius: f must map {tuple(z.shape)} to the same shape, got "
                            f"{tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__}")
    B = z.shape[0]
    tiny = torch.finfo(acc).tiny
    if not fz.requires_grad:  # f does not depend on z
        return torch.zeros(B, dtype=acc, device=z.device)
    w = torch.randn(z.shape, generator=generator, dtype=acc, device=z.device)
    w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(tiny)
    logs = torch.zeros(B, dtype=acc, device=z.device)
    counted = 0
    dead = torch.zeros(B, dtype=torch.bool, device=z.device)
    start = iters // 2
    for k in range(iters):
        (jw,) = torch.autograd.grad(fz, z, w.to(fz.dtype), retain_graph=k < iters - 1, allow_unused=True)
        if jw is None:
            return torch.zeros(B, dtype=acc, device=z.device)
        jw = jw.to(acc)
        norm = torch.linalg.vector_norm(jw, dim=1)
        dead |= norm <= tiny
        if k >= start:
            logs += torch.log(norm.clamp_min(tiny))
            counted += 1
        w = jw / norm.clamp_min(tiny)[:, None]
    rho = torch.exp(logs / counted)
    return torch.where(dead, torch.zeros_like(rho), rho).detach()
