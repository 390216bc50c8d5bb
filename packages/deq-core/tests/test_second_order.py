"""Second-order gradients through ``ImplicitAdjoint`` (backward with ``create_graph=True``).

Force-field style: ``E = energy(z*(x; theta))``, forces ``= -dE/dx`` (a first backward with
``create_graph=True``), a loss on the forces, and its gradient with respect to the parameters (a second
backward). References in float64: autograd through the explicitly unrolled iteration (converged far below
round-off, so its derivatives are the implicit ones), central finite differences, and the dense formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from deq_core import DEQ, ImplicitAdjoint, fixed_point

pytestmark = pytest.mark.usefixtures("core_registry")

F64 = torch.float64
TIGHT = dict(atol=1e-14, rtol=1e-14, max_steps=1000)


@dataclass
class Field:
    """``f(z) = tanh(z W^T + x U^T + c)``, ``||W||_2 = rho``; energy ``sum(z) + q * sum(z^2)``."""

    W: Tensor
    U: Tensor
    c: Tensor
    x: Tensor
    target: Tensor
    q: float

    @classmethod
    def draw(cls, seed: int, batch: int = 3, n: int = 5, m: int = 4, rho: float = 0.5, q: float = 0.5) -> Field:
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=F64)
        W = rho * W / torch.linalg.matrix_norm(W, ord=2)
        U = torch.randn(n, m, generator=g, dtype=F64) / m**0.5
        c = 0.3 * torch.randn(n, generator=g, dtype=F64)
        x = torch.randn(batch, m, generator=g, dtype=F64)
        target = torch.randn(batch, m, generator=g, dtype=F64)
        return cls(W.requires_grad_(), U.requires_grad_(), c.requires_grad_(), x, target, q)

    @property
    def params(self) -> tuple[Tensor, ...]:
        return self.W, self.U, self.c

    def energy(self, z: Tensor) -> Tensor:
        return z.sum() + self.q * (z * z).sum()

    def solve(self, x: Tensor, how: str) -> Tensor:
        def f(z):
            return torch.tanh(z @ self.W.T + x @ self.U.T + self.c)

        z0 = torch.zeros(x.shape[0], self.W.shape[0], dtype=F64)
        if how == "implicit":
            return fixed_point(f, z0, adjoint=ImplicitAdjoint(**TIGHT), **TIGHT).value
        z = z0
        for _ in range(200):  # rho <= 0.6: 0.6^200 ~ 1e-44, far below round-off
            z = f(z)
        return z

    def loss(self, how: str, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (self.x if x is None else x).detach().requires_grad_()
        (dE,) = torch.autograd.grad(self.energy(self.solve(x, how)), x, create_graph=True)
        forces = -dE
        return ((forces - self.target) ** 2).sum(), forces


def grads(field: Field, how: str) -> tuple[list[Tensor], Tensor]:
    loss, forces = field.loss(how)
    return list(torch.autograd.grad(loss, field.params)), forces.detach()


@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1), rho=st.floats(0.1, 0.6), q=st.floats(0.0, 1.0), batch=st.integers(1, 4))
def test_force_loss_gradient_matches_unrolled_double_backward(seed, rho, q, batch):
    field = Field.draw(seed, batch=batch, rho=rho, q=q)
    got, forces = grads(field, "implicit")
    want, forces_ref = grads(field, "unrolled")
    assert torch.allclose(forces, forces_ref, rtol=0, atol=1e-11)
    for g, w in zip(got, want):
        assert float((g - w).abs().max()) <= 1e-6 * max(1.0, float(w.abs().max())), float((g - w).abs().max())


def test_force_loss_gradient_matches_finite_differences():
    field = Field.draw(7)
    got, _ = grads(field, "implicit")
    h = 1e-6
    for p, g in zip(field.params, got):
        for idx in [(0,), (1,)] if p.dim() == 1 else [(0, 0), (1, 2)]:
            with torch.no_grad():
                p[idx] += h
            up = float(field.loss("implicit")[0].detach())
            with torch.no_grad():
                p[idx] -= 2 * h
            down = float(field.loss("implicit")[0].detach())
            with torch.no_grad():
                p[idx] += h
            fd = (up - down) / (2 * h)
            assert abs(fd - float(g[idx])) <= 1e-6 * max(1.0, abs(fd)), (idx, fd, float(g[idx]))


def test_dense_reference_for_a_linear_field():
    # f(z) = z A^T + x U^T: z* = (I - A)^{-1} U x, E = sum(z*): forces = -U^T (I - A^T)^{-1} 1, independent of x;
    # loss = ||forces - t||^2, d loss / dA by autograd through the dense formula
    g = torch.Generator().manual_seed(3)
    n, m = 4, 3
    A = 0.5 * torch.randn(n, n, generator=g, dtype=F64) / n**0.5
    U = torch.randn(n, m, generator=g, dtype=F64)
    t = torch.randn(1, m, generator=g, dtype=F64)
    A.requires_grad_()
    x = torch.randn(1, m, generator=g, dtype=F64, requires_grad=True)
    z = fixed_point(lambda z: z @ A.T + x @ U.T, torch.zeros(1, n, dtype=F64), adjoint=ImplicitAdjoint(**TIGHT),
                    **TIGHT).value
    (dE,) = torch.autograd.grad(z.sum(), x, create_graph=True)
    (got,) = torch.autograd.grad(((-dE - t) ** 2).sum(), A)
    A_ = A.detach().clone().requires_grad_()
    forces = -(U.T @ torch.linalg.solve(torch.eye(n, dtype=F64) - A_.T, torch.ones(n, dtype=F64)))
    (want,) = torch.autograd.grad(((forces - t[0]) ** 2).sum(), A_)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_first_order_gradients_are_unchanged_by_the_second_order_path():
    field = Field.draw(2)
    x = field.x.detach().requires_grad_()
    z = field.solve(x, "implicit")
    g1 = torch.autograd.grad(field.energy(z), [*field.params, x], retain_graph=True)
    g2 = torch.autograd.grad(field.energy(z), [*field.params, x], create_graph=True)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert all(b.requires_grad for b in g2)


class Cell(nn.Module):
    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n, n, dtype=F64)
        self.inj = nn.Linear(m, n, dtype=F64)
        with torch.no_grad():
            self.lin.weight.mul_(0.3 / torch.linalg.matrix_norm(self.lin.weight, ord=2))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.lin(z) + self.inj(x))

    def init_state(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], self.lin.out_features, dtype=F64)


def test_deq_module_trains_on_forces():
    torch.manual_seed(0)
    cell = Cell(6, 3)
    deq = DEQ(cell, adjoint=ImplicitAdjoint(**TIGHT), **TIGHT)
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    z, _ = deq(x)
    (dE,) = torch.autograd.grad(z.sum(), x, create_graph=True)
    (-dE).pow(2).sum().backward()
    got = [p.grad.clone() for p in cell.parameters()]
    # reference: unrolled iteration of the same cell
    for p in cell.parameters():
        p.grad = None
    x2 = x.detach().requires_grad_()
    z2 = cell.init_state(x2)
    for _ in range(200):
        z2 = cell(z2, x2)
    (dE2,) = torch.autograd.grad(z2.sum(), x2, create_graph=True)
    (-dE2).pow(2).sum().backward()
    for g, p in zip(got, cell.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-7, atol=1e-10)
