"""Constraint sets on the optimized input ``x``, given by their projections ``x -> Proj_C(x)`` (same shape)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from deq_core import DeqConfigError, DeqInputError

__all__ = ["box", "l2_ball", "project_checked"]


def l2_ball(eps: float | Tensor, center: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """Projection onto ``{x : ||x - center||_2 <= eps}`` per sample (over the flattened sample).

    ``Pi(d) = d * min(1, eps / ||d||)`` with ``d = x - center``.

    Raises:
        DeqConfigError: ``eps <= 0`` (or not finite).

    Example:
        >>> import torch
        >>> proj = l2_ball(1.0)
        >>> float(proj(torch.tensor([[3.0, 4.0]])).norm())
        1.0
    """
    eps_t = torch.as_tensor(eps, dtype=torch.float64)
    if eps_t.numel() == 0 or not bool(torch.isfinite(eps_t).all()) or not bool((eps_t > 0).all()):
        raise DeqConfigError(f"l2_ball radius eps must be finite and > 0, got {eps!r}")
    if eps_t.dim() > 1:
        raise DeqConfigError(f"l2_ball eps must be a scalar or a (B,) tensor, got shape {tuple(eps_t.shape)}")

    def project(x: Tensor) -> Tensor:
        if center is not None and center.shape != x.shape:
            raise DeqInputError(
                f"l2_ball center has shape {tuple(center.shape)}, expected the shape of x {tuple(x.shape)}")
        if eps_t.dim() == 1 and eps_t.numel() != x.shape[0]:
            raise DeqInputError(f"l2_ball eps has {eps_t.numel()} radii, expected one per sample ({x.shape[0]})")
        d = x if center is None else x - center
        norm = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        scale = torch.clamp(eps_t.to(d) / norm, max=1.0).reshape(-1, *([1] * (d.dim() - 1)))
        d = d * scale
        return d if center is None else center + d

    project.radius = eps  # type: ignore[attr-defined]   (read by JIIO's tangent step and boundary statistics)
    project.center = center  # type: ignore[attr-defined]
    return project


def box(low: float | Tensor, high: float | Tensor) -> Callable[[Tensor], Tensor]:
    """Projection onto the box ``low <= x <= high`` (bounds broadcast to ``x``; e.g. valid pixel range).

    Raises:
        DeqConfigError: ``low > high`` somewhere.

    Example:
        >>> import torch
        >>> box(0.0, 1.0)(torch.tensor([[-1.0, 0.5, 2.0]])).tolist()
        [[0.0, 0.5, 1.0]]
    """
    lo, hi = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high, dtype=torch.float64)
    if bool((lo > hi).any()):
        raise DeqConfigError(f"box needs low <= high, got low={low!r}, high={high!r}")

    def project(x: Tensor) -> Tensor:
        try:
            torch.broadcast_shapes(lo.shape, x.shape)
            torch.broadcast_shapes(hi.shape, x.shape)
        except RuntimeError:
            raise DeqInputError(
                f"box bounds of shapes {tuple(lo.shape)} / {tuple(hi.shape)} do not broadcast to x of shape "
                f"{tuple(x.shape)}"
            ) from None
        return torch.maximum(torch.minimum(x, hi.to(x)), lo.to(x))

    return project


def project_checked(project: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``project(x)``, checked to return a tensor of ``x``'s shape."""
    out: Any = project(x)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise DeqInputError(f"the constraint's projection must return x's shape {tuple(x.shape)}, got {got}")
    return out
