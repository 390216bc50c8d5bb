"""The adjoints that read the forward solver's state: ``ReversibleAdjoint`` (exact gradient of the finite
reversible iteration, memory independent of its length), ``ShineAdjoint`` (forward Broyden inverse) and
``jfb``. References are float64 autograd through the explicitly unrolled iteration, dense linear algebra
and the exact implicit gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from deq_core import (
    DeqConfigError,
    DeqError,
    DeqSolveError,
    ImplicitAdjoint,
    PhantomAdjoint,
    fixed_point,
)
from deq_solvers import Broyden, Picard, Reversible, ReversibleAdjoint, ShineAdjoint, jfb
from deq_solvers._shine import inverse_transpose

F64 = torch.float64
NO_STOP = dict(atol=1e-300, rtol=1e-300, throw=False)  # run exactly max_steps steps


@dataclass
class Net:
    """``f(z) = tanh(z W^T + h U^T + c)`` with ``h = 2 x`` computed outside ``f`` (a non-leaf input, like an
    encoder's output); loss ``sum(w * z)``."""

    W: Tensor
    U: Tensor
    c: Tensor
    x: Tensor
    w: Tensor

    @classmethod
    def draw(cls, seed: int, batch: int = 3, n: int = 6, m: int = 4, rho: float = 0.8, spread: float = 0.0) -> Net:
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=F64)
        W = rho * W / torch.linalg.matrix_norm(W, ord=2)
        U = torch.randn(n, m, generator=g, dtype=F64) / m**0.5
        c = 0.3 * torch.randn(n, generator=g, dtype=F64)
        x = torch.randn(batch, m, generator=g, dtype=F64)
        x = x * torch.logspace(0, spread, batch, dtype=F64)[:, None]  # rows of different scale converge apart
        w = torch.randn(batch, n, generator=g, dtype=F64)
        return cls(*(t.requires_grad_() for t in (W, U, c, x)), w)

    @property
    def leaves(self) -> tuple[Tensor, ...]:
        return self.W, self.U, self.c, self.x

    def map(self):
        h = 2 * self.x  # outside f: reaches f as an upstream graph, not as a leaf
        return lambda z: torch.tanh(z @ self.W.T + h @ self.U.T + self.c)

    def z0(self) -> Tensor:
        return torch.zeros(self.x.shape[0], self.W.shape[0], dtype=F64)

    def grads(self, value: Tensor) -> list[Tensor]:
        return list(torch.autograd.grad((value * self.w).sum(), self.leaves))


def unrolled_iterates(net: Net, damping: float, steps: int) -> list[Tensor]:
    """``z_0..z_K`` of the reversible iteration, with autograd through all of it (the reference)."""
    f, a, b = net.map(), 1.0 - damping, damping
    y = z = net.z0()
    out = [z]
    for _ in range(steps):
        y = y.mul(a).add(f(z), alpha=b)
        z = z.mul(a).add(f(y), alpha=b)
        out.append(z)
    return out


def rel_err(got: list[Tensor], want: list[Tensor]) -> float:
    return max(float((g - w).abs().max() / w.abs().max().clamp_min(1e-300)) for g, w in zip(got, want))


# ---------------------------------------------------------------- reversible


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), damping=st.sampled_from([0.2, 0.35, 0.5, 0.65]),
       steps=st.integers(1, 25), batch=st.integers(1, 4), rho=st.floats(0.2, 0.9))
def test_reversible_gradient_equals_unrolled_autograd(seed, damping, steps, batch, rho):
    # round-off grows ~|1 - damping|^-steps in the rebuilt iterates: stay where float64 keeps 1e-10
    if abs(1 - damping) ** -steps > 1e5:
        steps = int(5 * 2.3026 / -torch.log(torch.tensor(1 - damping)).item())
    net = Net.draw(seed, batch=batch, rho=rho)
    sol = fixed_point(net.map(), net.z0(), solver=Reversible(damping=damping), adjoint=ReversibleAdjoint(),
                      max_steps=steps, **NO_STOP)
    zs = unrolled_iterates(net, damping, steps)
    # the driver returns per sample its best iterate: the reference differentiates that same iterate
    rows = [next(n for n in range(steps, -1, -1) if torch.equal(zs[n][i].detach(), sol.value[i].detach()))
            for i in range(batch)]
    ref = torch.stack([zs[n][i] for i, n in enumerate(rows)])
    got, want = net.grads(sol.value), net.grads(ref)
    assert rel_err(got, want) <= 1e-10, (rows, rel_err(got, want))


def test_reversible_samples_that_stop_early_get_the_gradient_of_their_own_iteration():
    net = Net.draw(3, batch=4, rho=0.7, spread=3.0)
    sol = fixed_point(net.map(), net.z0(), solver=Reversible(damping=0.4), adjoint=ReversibleAdjoint(),
                      atol=1e-9, rtol=1e-12, max_steps=200)
    steps = sol.stats.steps.tolist()
    assert len(set(steps)) > 1, steps  # the samples really did stop at different steps
    zs = unrolled_iterates(net, 0.4, max(steps))
    ref = torch.stack([zs[n][i] for i, n in enumerate(steps)])
    assert torch.equal(ref.detach(), sol.value.detach())
    assert rel_err(net.grads(sol.value), net.grads(ref)) <= 1e-10


def test_reversible_solver_converges_to_the_fixed_point():
    net = Net.draw(1, batch=3, rho=0.9)
    sol = fixed_point(net.map(), net.z0(), solver=Reversible(damping=0.6), adjoint=None, atol=1e-12, rtol=1e-12,
                      max_steps=500)
    with torch.no_grad():
        assert float((net.map()(sol.value) - sol.value).abs().max()) <= 1e-10
    assert sol.stats.solver["evaluations_per_step"] == 2
    assert sol.stats.nfev == 2 * int(sol.stats.steps.max()) + 1


def test_reversible_reconstruction_error_is_recorded_and_bounded_by_max_error():
    net = Net.draw(2, batch=2, rho=0.8)
    sol = fixed_point(net.map(), net.z0(), solver=Reversible(damping=0.5), adjoint=ReversibleAdjoint(), max_steps=10,
                      **NO_STOP)
    assert sol.stats.solver["reconstruction_error"] == []
    net.grads(sol.value)
    (err,) = sol.stats.solver["reconstruction_error"]
    assert err.shape == (2,) and bool((err < 1e-12).all()), err
    # many steps at strong relaxation: the rebuilt start drifts far; max_error refuses the gradient
    sol = fixed_point(net.map(), net.z0(), solver=Reversible(damping=0.9), adjoint=ReversibleAdjoint(max_error=1e-6),
                      max_steps=40, **NO_STOP)
    with pytest.raises(DeqSolveError, match="max_error"):
        net.grads(sol.value)


def test_reversible_backward_memory_does_not_grow_with_steps():
    """Peak bytes of tensors saved for backward (forward and backward together), counted by hooks."""

    def peak_saved(adjoint, steps: int) -> int:
        net = Net.draw(0, batch=8, n=64, rho=0.5)
        meter = SavedMeter()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            sol = fixed_point(net.map(), net.z0(), solver=Reversible(damping=0.3), adjoint=adjoint,
                              max_steps=steps, **NO_STOP)
            net.grads(sol.value)
        return meter.peak

    from deq_core import UnrolledAdjoint

    rev10, rev100 = peak_saved(ReversibleAdjoint(), 10), peak_saved(ReversibleAdjoint(), 100)
    unr10, unr100 = peak_saved(UnrolledAdjoint(), 10), peak_saved(UnrolledAdjoint(), 100)
    assert rev100 <= 1.1 * rev10, (rev10, rev100)
    assert unr100 >= 5 * unr10, (unr10, unr100)


class SavedMeter:
    """Live and peak bytes of the tensors autograd saves (pack / unpack hooks; freed with their graph)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t: Tensor):
        return _Held(self, t)

    def unpack(self, held):
        return held.t


class _Held:
    __slots__ = ("meter", "t", "n")

    def __init__(self, meter: SavedMeter, t: Tensor) -> None:
        self.meter, self.t, self.n = meter, t, t.numel() * t.element_size()
        meter.live += self.n
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.n


def test_reversible_adjoint_refuses_other_solvers_and_second_order():
    net = Net.draw(0)
    with pytest.raises(DeqConfigError, match="Reversible solver"):
        fixed_point(net.map(), net.z0(), solver=Picard(), adjoint=ReversibleAdjoint(), max_steps=5, throw=False)
    sol = fixed_point(net.map(), net.z0(), solver=Reversible(), adjoint=ReversibleAdjoint(), max_steps=5, **NO_STOP)
    with pytest.raises(DeqConfigError, match="first-order"):
        torch.autograd.grad(sol.value.sum(), net.x, create_graph=True)


def test_reversible_finds_the_returned_step_of_a_best_iterate():
    """``returned_steps``: a sample frozen at its convergence step is found there; one the driver returned at an
    earlier best iterate (its residual matches an earlier step) is found at the latest step with that residual;
    a residual the solver never recorded is an error, not a guess."""
    from deq_solvers._reversible import _ReversibleState

    z = torch.zeros(3, 2, dtype=F64)
    state = _ReversibleState(0.5, z, z + torch.tensor([[4.0], [4.0], [4.0]], dtype=F64))
    for r in ([2.0, 3.0, 2.0], [1.0, 5.0, 2.0], [0.5, 5.0, 1.0]):   # residuals of steps 1..3
        state.residuals.append(torch.tensor(r, dtype=F64))
    state.steps = 3
    steps = torch.tensor([3, 3, 3])
    # sample 0 converged at step 3; sample 1's best was step 1 (3.0); sample 2's residual 2.0 is at steps 1 and 2
    residual = torch.tensor([0.5, 3.0, 2.0], dtype=F64)
    assert state.returned_steps(residual, steps).tolist() == [3, 1, 2]
    assert state.returned_steps(torch.tensor([2.0, 5.0, 1.0], dtype=F64), torch.tensor([1, 2, 3])).tolist() == [1, 2, 3]
    with pytest.raises(DeqError, match=r"samples \[1\] were returned at no step"):
        state.returned_steps(torch.tensor([0.5, 7.0, 1.0], dtype=F64), steps)


@pytest.mark.parametrize("bad", [0.0, 1.0, 2.0, -0.5, True, "0.5"])
def test_reversible_damping_validated(bad):
    with pytest.raises(DeqConfigError, match="damping"):
        Reversible(damping=bad)


def test_reversible_over_relaxation_is_allowed_and_exact():
    net = Net.draw(4, rho=0.3)
    sol = fixed_point(net.map(), net.z0(), solver=Reversible(damping=1.3), adjoint=ReversibleAdjoint(),
                      max_steps=8, **NO_STOP)
    zs = unrolled_iterates(net, 1.3, 8)
    rows = [next(n for n in range(8, -1, -1) if torch.equal(zs[n][i].detach(), sol.value[i].detach()))
            for i in range(3)]
    ref = torch.stack([zs[n][i] for i, n in enumerate(rows)])
    assert rel_err(net.grads(sol.value), net.grads(ref)) <= 1e-10


# ---------------------------------------------------------------- SHINE and JFB


def implicit_grads(net: Net, solver) -> list[Tensor]:
    sol = fixed_point(net.map(), net.z0(), solver=solver, adjoint=ImplicitAdjoint(atol=1e-13, rtol=1e-13,
                      max_steps=1000), atol=1e-12, rtol=1e-12, max_steps=300)
    return net.grads(sol.value)


def cosine(a: list[Tensor], b: list[Tensor]) -> float:
    fa, fb = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(torch.nn.functional.cosine_similarity(fa, fb, dim=0))


def test_shine_estimate_is_minus_the_broyden_inverse_transposed():
    net = Net.draw(5, batch=2, n=5)
    captured = {}

    class Spy(ShineAdjoint):
        def attach(self, f, z_star, **kw):
            captured["state"] = kw["forward"].state
            return super().attach(f, z_star, **kw)

    fixed_point(net.map(), net.z0(), solver=Broyden(m=8), adjoint=Spy(), rtol=1e-10, max_steps=6, throw=False)
    s = captured["state"]
    v = torch.randn(2, 5, dtype=F64)
    n = s.n
    all_live = inverse_transpose(s, v)
    s.live[0, 1] = 0.0   # a skipped or restarted term (live = 0) must drop out of the estimate
    assert n >= 3 and not torch.allclose(inverse_transpose(s, v)[0], all_live[0])
    for i in range(2):  # dense B = -I + sum_k live_k u_k v_k^T
        Bi = -torch.eye(5, dtype=F64) + (s.U[i, :n].T * s.live[i, :n]) @ s.V[i, :n]
        assert torch.allclose(inverse_transpose(s, v)[i], -Bi.T @ v[i], atol=1e-12)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), rho=st.floats(0.3, 0.85))
def test_shine_refined_converges_to_the_implicit_gradient(seed, rho):
    net = Net.draw(seed, rho=rho)
    exact = implicit_grads(net, Broyden())
    sol = fixed_point(net.map(), net.z0(), solver=Broyden(), adjoint=ShineAdjoint(refine=200), atol=1e-12,
                      rtol=1e-12, max_steps=300)
    assert rel_err(net.grads(sol.value), exact) <= 1e-8


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), rho=st.floats(0.3, 0.8))
def test_shine_points_where_the_implicit_gradient_does(seed, rho):
    net = Net.draw(seed, batch=4, n=12, m=6, rho=rho)
    exact = implicit_grads(net, Broyden())
    sol = fixed_point(net.map(), net.z0(), solver=Broyden(m=30), adjoint=ShineAdjoint(), rtol=1e-8,
                      max_steps=100)
    shine = net.grads(sol.value)
    sol = fixed_point(net.map(), net.z0(), solver=Broyden(m=30), adjoint=ShineAdjoint(refine=2), rtol=1e-8,
                      max_steps=100)
    refined = net.grads(sol.value)
    assert cosine(shine, exact) >= 0.9
    assert cosine(refined, exact) >= cosine(shine, exact) - 1e-3


def test_shine_without_history_is_the_jacobian_free_gradient():
    net = Net.draw(6)
    z_star = fixed_point(net.map(), net.z0(), adjoint=None, rtol=1e-12, max_steps=500).value
    # started at the fixed point: no Broyden step, no secant, B = -I
    sol = fixed_point(net.map(), z_star, solver=Broyden(), adjoint=ShineAdjoint(), rtol=1e-8)
    assert int(sol.stats.steps.max()) == 0
    sol_jfb = fixed_point(net.map(), z_star, solver=Broyden(), adjoint=jfb(), rtol=1e-8)
    assert rel_err(net.grads(sol.value), net.grads(sol_jfb.value)) <= 1e-14


def test_shine_refuses_other_solvers_and_bad_refine():
    net = Net.draw(0)
    with pytest.raises(DeqConfigError, match="Broyden"):
        fixed_point(net.map(), net.z0(), solver=Picard(), adjoint=ShineAdjoint(), max_steps=5, throw=False)
    with pytest.raises(DeqConfigError, match="refine"):
        ShineAdjoint(refine=-1)


def test_jfb_is_one_undamped_phantom_step():
    assert jfb() == PhantomAdjoint(steps=1, damping=1.0)
    net = Net.draw(7)
    sol = fixed_point(net.map(), net.z0(), adjoint=jfb(), rtol=1e-12, max_steps=500)
    z = sol.value.detach()
    want = net.grads(net.map()(z))  # (df/dtheta at z*)^T w
    assert rel_err(net.grads(sol.value), want) <= 1e-14


def test_reversible_overflowing_reconstruction_raises_instead_of_returning_nan():
    x = torch.randn(2, 8, requires_grad=True)
    W = 0.5 * torch.linalg.qr(torch.randn(8, 8))[0]
    sol = fixed_point(lambda z: z @ W.T + x, torch.zeros(2, 8), solver=Reversible(damping=0.9),
                      adjoint=ReversibleAdjoint(), max_steps=80, **NO_STOP)
    with pytest.raises(DeqSolveError, match="overflowed"):
        torch.autograd.grad(sol.value.sum(), x)


def test_reversible_and_shine_through_the_deq_module_reach_parameters_and_the_encoder():
    from torch import nn

    from deq_core import DEQ

    class Cell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.inj = nn.Linear(8, 8, dtype=F64), nn.Linear(3, 8, dtype=F64)
            with torch.no_grad():
                self.lin.weight.mul_(0.5 / torch.linalg.matrix_norm(self.lin.weight, ord=2))

        def forward(self, z, x):
            return torch.tanh(self.lin(z) + self.inj(x))

        def init_state(self, x):
            return torch.zeros(x.shape[0], 8, dtype=F64)

    torch.manual_seed(0)
    cell, enc = Cell(), nn.Linear(3, 3, dtype=F64)
    x = torch.randn(4, 3, dtype=F64)
    leaves = [*cell.parameters(), *enc.parameters()]
    deq = DEQ(cell, solver=Reversible(damping=0.4), adjoint=ReversibleAdjoint(), atol=1e-300, rtol=1e-300,
              max_steps=12)
    z, _ = deq(enc(x))
    got = torch.autograd.grad(z.square().sum(), leaves)
    h, y = enc(x), cell.init_state(x)
    zz = y
    for _ in range(12):
        y = y.mul(0.6).add(cell(zz, h), alpha=0.4)
        zz = zz.mul(0.6).add(cell(y, h), alpha=0.4)
    assert torch.equal(zz.detach(), z.detach())
    want = torch.autograd.grad(zz.square().sum(), leaves)
    assert rel_err(list(got), list(want)) <= 1e-10
    deq = DEQ(cell, solver=Broyden(), adjoint=ShineAdjoint(refine=100), atol=1e-12, rtol=1e-12, max_steps=100)
    z, _ = deq(enc(x))
    got = torch.autograd.grad(z.square().sum(), leaves)
    deq = DEQ(cell, solver=Broyden(), adjoint=ImplicitAdjoint(atol=1e-13, rtol=1e-13, max_steps=500), atol=1e-12,
              rtol=1e-12, max_steps=100)
    z, _ = deq(enc(x))
    assert rel_err(list(got), list(torch.autograd.grad(z.square().sum(), leaves))) <= 1e-8


def test_new_adjoints_are_registered_and_pass_check_adjoint() -> None:
    from deq_core import registry
    from deq_core.testing import check_adjoint

    assert {"reversible", "shine", "jfb"} <= set(registry.adjoints())
    check_adjoint("jfb", max_examples=3)
    # the reversible backward loses precision as (1 - damping)^-1 per rebuilt step: at the check's 1e-13 forward
    # tolerance it holds to 1e-6 for ||W||_2 <= 0.4 (200 random problems passed); beyond, see the next test
    check_adjoint("reversible", solver="reversible", rho=(0.1, 0.4), max_examples=3)
    # SHINE's definition needs the forward Broyden state, not J alone: it is checked above against the dense
    # Broyden inverse and, refined, against the implicit gradient


def test_reversible_backward_refuses_a_gradient_it_cannot_rebuild() -> None:
    """Hypothesis found it (check_adjoint, seed 26613): ||W||_2 = 0.798 solved to 1e-13 takes 111 steps at damping
    0.5, the rebuilt start is off by 5e22 and the gradient by 0.04. The default max_error turns that silent
    wrong gradient into an error; the same problem at a tolerance it can rebuild still matches the IFT."""
    from deq_core import DeqSolveError, fixed_point
    from deq_solvers import Reversible, ReversibleAdjoint

    dt = torch.float64
    g = torch.Generator().manual_seed(26613)
    q = torch.randn(5, 5, generator=g, dtype=dt)
    W = (0.7976 * q / torch.linalg.matrix_norm(q, ord=2)).requires_grad_()
    x = torch.randn(3, 5, generator=g, dtype=dt).requires_grad_()
    v = torch.randn(3, 5, generator=g, dtype=dt)

    def f(z):
        return torch.tanh(z @ W.T + x)

    z0 = torch.zeros(3, 5, dtype=dt)
    sol = fixed_point(f, z0, solver=Reversible(), adjoint=ReversibleAdjoint(), atol=1e-13, rtol=1e-13,
                      max_steps=5000)
    with pytest.raises(DeqSolveError, match="above max_error=1000000000000.0"):
        torch.autograd.grad((sol.value * v).sum(), (x,))
    sol = fixed_point(f, z0, solver=Reversible(damping=1.2), adjoint=ReversibleAdjoint(), atol=1e-13,
                      rtol=1e-13, max_steps=5000)
    (gx,) = torch.autograd.grad((sol.value * v).sum(), (x,))
    with torch.no_grad():
        s = 1 - torch.tanh(sol.value @ W.T + x) ** 2
        J = s.unsqueeze(-1) * W.unsqueeze(0)
        u = torch.linalg.solve(torch.eye(5, dtype=dt) - J.transpose(1, 2), v.unsqueeze(-1)).squeeze(-1)
    assert float((gx - s * u).abs().max()) < 1e-7
