"""Gradients through fixed points match dense references (float64, random contractions).

* ``ImplicitAdjoint``: ``dL/dtheta = (df/dtheta)^T u`` with ``u = (I - J^T)^{-1} dL/dz*`` solved densely, 1e-6.
* ``NeumannAdjoint(T)``: ``u = sum_{t <= T} (J^T)^t dL/dz*`` computed densely.
* ``PhantomAdjoint(k, d)``: autograd through ``k`` explicit damped steps started at ``z*``.
* ``UnrolledAdjoint``: autograd through the explicitly unrolled solver loop.

For parameters (``W``, ``U``, ``c``) and inputs ``x``, through ``fixed_point`` and through ``DEQ``,
in train and eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from deq_core import (
    DEQ,
    DeqInputError,
    DeqSolveError,
    FixedPointIteration,
    ImplicitAdjoint,
    NeumannAdjoint,
    PhantomAdjoint,
    UnrolledAdjoint,
    fixed_point,
)
from deq_core.testing import example_budget

pytestmark = pytest.mark.usefixtures("core_registry")

F64 = torch.float64
TOL = dict(atol=1e-13, rtol=1e-12, max_steps=2000)


@dataclass
class Problem:
    """``f(z) = tanh(z W^T + x U^T + c)`` with ``||W||_2 = rho``; loss ``sum(w * z*)``."""

    W: Tensor
    U: Tensor
    c: Tensor
    x: Tensor
    w: Tensor

    @classmethod
    def draw(cls, seed: int, batch: int, n: int, m: int, rho: float) -> Problem:
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=F64)
        W = rho * W / torch.linalg.matrix_norm(W, ord=2)
        U = torch.randn(n, m, generator=g, dtype=F64) / m**0.5
        c = 0.5 * torch.randn(n, generator=g, dtype=F64)
        x = torch.randn(batch, m, generator=g, dtype=F64)
        w = torch.randn(batch, n, generator=g, dtype=F64)
        return cls(*(t.requires_grad_() for t in (W, U, c, x)), w)

    @property
    def leaves(self) -> tuple[Tensor, ...]:
        return self.W, self.U, self.c, self.x

    def f(self, z: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + self.x @ self.U.T + self.c)

    def z0(self) -> Tensor:
        return torch.zeros(self.x.shape[0], self.W.shape[0], dtype=F64)

    def z_star(self) -> Tensor:
        """Reference fixed point: plain float64 iteration until it stops changing."""
        with torch.no_grad():
            z = self.z0()
            for _ in range(5000):
                z_next = self.f(z)
                if float((z_next - z).abs().max()) <= 1e-15:
                    return z_next
                z = z_next
        raise AssertionError("reference iteration did not converge")

    def jacobians(self, z: Tensor) -> Tensor:
        """``(B, N, N)`` ``df/dz`` per sample, dense (f acts row-wise)."""
        pre = z @ self.W.T + self.x @ self.U.T + self.c
        return (1 - torch.tanh(pre) ** 2).detach()[:, :, None] * self.W.detach()[None]

    def grads_given_u(self, z: Tensor, u: Tensor) -> tuple[Tensor, ...]:
        """``(df/dtheta)^T u`` at ``z`` for every leaf."""
        return torch.autograd.grad(self.f(z.detach()), self.leaves, u)

    def implicit_reference(self) -> tuple[Tensor, ...]:
        z = self.z_star()
        J = self.jacobians(z)
        eye = torch.eye(J.shape[1], dtype=F64)
        u = torch.linalg.solve(eye - J.transpose(1, 2), self.w)  # (I - J^T) u = w, per sample
        return self.grads_given_u(z, u)

    def neumann_reference(self, terms: int) -> tuple[Tensor, ...]:
        z = self.z_star()
        Jt = self.jacobians(z).transpose(1, 2)
        u, term = self.w.clone(), self.w.clone()
        for _ in range(terms):
            term = torch.einsum("bij,bj->bi", Jt, term)
            u = u + term
        return self.grads_given_u(z, u)

    def phantom_reference(self, steps: int, damping: float) -> tuple[Tensor, ...]:
        z = self.z_star().detach()
        for _ in range(steps):
            z = (1 - damping) * z + damping * self.f(z)
        return torch.autograd.grad((z * self.w).sum(), self.leaves)


def _close(got: tuple[Tensor, ...], want: tuple[Tensor, ...], tol: float) -> None:
    for name, a, b in zip(("W", "U", "c", "x"), got, want):
        err = float((a - b).abs().max())
        assert err <= tol * (1 + float(b.abs().max())), f"d/d{name}: max |error| {err:.3g}"


problems = st.builds(
    Problem.draw,
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 3),
    n=st.integers(2, 6),
    m=st.integers(1, 4),
    rho=st.floats(0.1, 0.9),
)


@given(problems)
@settings(max_examples=example_budget(15))
def test_implicit_adjoint_matches_dense_linear_solve(p: Problem) -> None:
    sol = fixed_point(p.f, p.z0(), solver=FixedPointIteration(), adjoint=ImplicitAdjoint(**TOL), **TOL)
    assert torch.allclose(sol.value, p.z_star(), atol=1e-11)
    got = torch.autograd.grad((sol.value * p.w).sum(), p.leaves)
    _close(got, p.implicit_reference(), 1e-6)


@given(problems)
@settings(max_examples=example_budget(5))
def test_implicit_adjoint_by_name_and_with_warm_start(p: Problem) -> None:
    ref = p.implicit_reference()
    sol = fixed_point(p.f, p.z0(), solver="fixed-point", adjoint="implicit", **TOL)
    _close(torch.autograd.grad((sol.value * p.w).sum(), p.leaves), ref, 1e-6)
    # a backward warm start (e.g. last step's u) changes the starting point, not the answer
    warm = fixed_point(p.f, p.z0(), solver=FixedPointIteration(), adjoint=ImplicitAdjoint("fixed-point", damping=0.9,
                       **TOL), adjoint_init=torch.ones_like(p.w), **TOL)
    _close(torch.autograd.grad((warm.value * p.w).sum(), p.leaves), ref, 1e-6)


@given(problems, st.integers(0, 4))
@settings(max_examples=example_budget(10))
def test_neumann_adjoint_matches_truncated_series(p: Problem, terms: int) -> None:
    sol = fixed_point(p.f, p.z0(), solver=FixedPointIteration(), adjoint=NeumannAdjoint(terms=terms), **TOL)
    _close(torch.autograd.grad((sol.value * p.w).sum(), p.leaves), p.neumann_reference(terms), 1e-8)


@given(problems, st.integers(1, 5), st.sampled_from([0.3, 0.5, 1.0]))
@settings(max_examples=example_budget(10))
def test_phantom_adjoint_matches_k_damped_steps(p: Problem, steps: int, damping: float) -> None:
    sol = fixed_point(p.f, p.z0(), solver=FixedPointIteration(), adjoint=PhantomAdjoint(steps=steps, damping=damping),
                      **TOL)
    _close(torch.autograd.grad((sol.value * p.w).sum(), p.leaves), p.phantom_reference(steps, damping), 1e-8)


@given(problems, st.integers(1, 12), st.sampled_from([0.6, 1.0]))
@settings(max_examples=example_budget(10))
def test_unrolled_adjoint_matches_autograd_through_the_loop(p: Problem, k: int, damping: float) -> None:
    # a fixed budget (the tolerance is unreachable): every sample runs k steps
    sol = fixed_point(p.f, p.z0(), solver=FixedPointIteration(damping=damping), adjoint=UnrolledAdjoint(),
                      atol=1e-300, rtol=0.0, max_steps=k, throw=False)
    z = p.z0()
    for _ in range(k):
        z = z.lerp(p.f(z), damping) if damping != 1.0 else p.f(z)
    assert torch.equal(sol.value, z)
    want = torch.autograd.grad((z * p.w).sum(), p.leaves)
    _close(torch.autograd.grad((sol.value * p.w).sum(), p.leaves), want, 1e-12)


def test_unrolled_adjoint_follows_per_sample_freezing() -> None:
    # samples converge after different step counts; each one's gradient goes through its own steps only
    p = Problem.draw(3, batch=3, n=4, m=2, rho=0.6)
    with torch.no_grad():
        p.x.mul_(torch.tensor([[0.01], [1.0], [30.0]], dtype=F64))
    sol = fixed_point(p.f, p.z0(), solver=FixedPointIteration(), adjoint=UnrolledAdjoint(), atol=1e-8, rtol=1e-6)
    steps = sol.stats.steps.tolist()
    assert len(set(steps)) > 1
    got = torch.autograd.grad((sol.value * p.w).sum(), p.leaves)
    want = [torch.zeros_like(t) for t in p.leaves]
    for i, k in enumerate(steps):
        z = p.z0()
        for _ in range(k):
            z = p.f(z)
        for acc, g in zip(want, torch.autograd.grad((z[i] * p.w[i]).sum(), p.leaves)):
            acc += g
    _close(got, tuple(want), 1e-12)


def test_no_gradient_path_without_grad_mode_or_adjoint() -> None:
    p = Problem.draw(0, batch=2, n=3, m=2, rho=0.5)
    with torch.no_grad():
        assert not fixed_point(p.f, p.z0(), **TOL).value.requires_grad
    assert not fixed_point(p.f, p.z0(), adjoint=None, **TOL).value.requires_grad


# --- through the DEQ module ----------------------------------------------------------------------------------


class Layer(nn.Module):
    def __init__(self, p: Problem) -> None:
        super().__init__()
        self.W = nn.Parameter(p.W.detach().clone())
        self.U = nn.Parameter(p.U.detach().clone())
        self.c = nn.Parameter(p.c.detach().clone())

    def init_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.W.shape[0])

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.c)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("adjoint", ["implicit", "neumann", "phantom"])
@given(p=problems)
@settings(max_examples=example_budget(4))
def test_deq_gradients_match_references(p: Problem, mode: str, adjoint: str) -> None:
    objects = {"implicit": ImplicitAdjoint(**TOL), "neumann": NeumannAdjoint(terms=3),
               "phantom": PhantomAdjoint(steps=3, damping=0.5)}
    refs = {"implicit": p.implicit_reference, "neumann": lambda: p.neumann_reference(3),
            "phantom": lambda: p.phantom_reference(3, 0.5)}
    deq = DEQ(Layer(p), solver=FixedPointIteration(), adjoint=objects[adjoint], **TOL)
    deq.train(mode == "train")
    x = p.x.detach().clone().requires_grad_()
    z, info = deq(x)
    assert info.result.ok
    leaves = (deq.f.W, deq.f.U, deq.f.c, x)
    got = torch.autograd.grad((z * p.w).sum(), leaves)
    _close(got, refs[adjoint](), 1e-6 if adjoint == "implicit" else 1e-8)


def _slow_linear(seed: int = 0, B: int = 3, n: int = 5):
    """``f(z) = z A^T + x`` with ``||A||_2 = 0.9`` (a slow backward iteration) and its exact ``dL/dx = u*`` for
    ``L = <w, z*>``: ``u* = w (I - A)^{-1}``."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = 0.9 * A / torch.linalg.matrix_norm(A, ord=2)
    x = torch.randn(B, n, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, n, generator=g, dtype=torch.float64)
    u_star = w @ torch.linalg.inv(torch.eye(n, dtype=torch.float64) - A)
    return (lambda z: z @ A.T + x), x, w, u_star


def _implicit_grad(adjoint: ImplicitAdjoint, **kw) -> Tensor:
    f, x, w, _ = _slow_linear()
    sol = fixed_point(f, torch.zeros_like(w), solver=FixedPointIteration(), adjoint=adjoint, atol=1e-13,
                      rtol=1e-12, max_steps=2000, **kw)
    (g,) = torch.autograd.grad((sol.value * w).sum(), x)
    return g


def test_implicit_adjoint_options_act_on_the_backward_solve() -> None:
    """Each of ImplicitAdjoint's options could be ignored with every other test green."""
    u_star = _slow_linear()[3]

    def err(adjoint: ImplicitAdjoint, **kw) -> float:
        return float((_implicit_grad(adjoint, **kw) - u_star).norm() / u_star.norm())

    assert err(ImplicitAdjoint()) < 1e-9                              # the forward's tolerances: exact
    assert err(ImplicitAdjoint(max_steps=3)) > 1e-2                   # its own budget
    assert 1e-4 < err(ImplicitAdjoint(rtol=0.1, atol=0.0)) < 0.5      # its own tolerances
    assert err(ImplicitAdjoint(atol=1e3, rtol=0.0)) > 1e-2
    with pytest.raises(DeqSolveError, match="implicit backward solve"):
        err(ImplicitAdjoint(max_steps=2, throw=True))
    # its own solver: damping changes where 3 steps get to
    damped = err(ImplicitAdjoint("fixed-point", damping=0.5, max_steps=3))
    assert abs(damped - err(ImplicitAdjoint(max_steps=3))) > 1e-3
    # the warm start: from u* itself one step is exact; from v it is not
    f, x, w, u = _slow_linear()
    assert err(ImplicitAdjoint(max_steps=1), adjoint_init=u) < 1e-12
    assert err(ImplicitAdjoint(max_steps=1)) > 1e-2


def test_adjoint_init_must_have_the_layout_of_z0() -> None:
    """A warm start of another shape used to be reshaped silently (6 x 4 into 4 x 6) or fail with a raw error."""
    f, x, w, u = _slow_linear(B=4, n=6)
    for bad, what in ((torch.zeros(6, 4, dtype=torch.float64), "shape"), ((u,), "structure"),
                      (u.float(), "dtype")):
        with pytest.raises(DeqInputError, match=what):
            fixed_point(f, torch.zeros_like(w), adjoint="implicit", adjoint_init=bad)
