"""Seeded fixed-point problems with float64 references, shared by the tests."""

from __future__ import annotations

import math

import torch


def affine(seed: int, B: int = 4, N: int = 16, rho: float = 0.8, dtype=torch.float64, sym: bool = False):
    """``f(z) = z A^T + b`` with ``||A||_2 = rho``; returns ``(f, z_star, A, b)``."""
    g = torch.Generator().manual_seed(seed)
    if sym:
        Q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
        A = (Q * torch.linspace(0, rho, N, dtype=torch.float64)) @ Q.T
    else:
        A = torch.randn(N, N, generator=g, dtype=torch.float64)
        A = A * (rho / torch.linalg.matrix_norm(A, ord=2))
    b = torch.randn(B, N, generator=g, dtype=torch.float64)
    z_star = torch.linalg.solve(torch.eye(N, dtype=torch.float64) - A, b.T).T
    A_, b_ = A.to(dtype), b.to(dtype)
    return (lambda z: z @ A_.T + b_), z_star, A, b


def tanh_map(seed: int, B: int = 4, N: int = 16, rho: float = 0.9, dtype=torch.float64, scale: float = 1.0):
    """``f(z) = tanh(z W^T + u)`` with ``||W||_2 = rho``; returns ``(f, z_star)`` (float64 reference)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, N, generator=g, dtype=torch.float64)
    W = W * (rho / torch.linalg.matrix_norm(W, ord=2))
    u = scale * torch.randn(B, N, generator=g, dtype=torch.float64)
    z = torch.zeros(B, N, dtype=torch.float64)
    for _ in range(int(math.log(1e-17) / math.log(rho)) + 50):
        z = torch.tanh(z @ W.T + u)
    W_, u_ = W.to(dtype), u.to(dtype)
    return (lambda z: torch.tanh(z @ W_.T + u_)), z
