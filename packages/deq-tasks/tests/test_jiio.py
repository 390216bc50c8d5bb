"""Properties of the JIIO engine, in float64 against dense references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deq_core import DeqConfigError, DeqInputError, DeqSolveError
from deq_core.testing import example_budget
from deq_tasks.jiio import (
    JIIOConfig,
    JIIOProblem,
    JIIOResult,
    augmented_equilibrium,
    augmented_map,
    box,
    equilibrium_with_grad,
    jiio_solve,
    l2_ball,
)

D = torch.float64


def _toy(seed: int, n: int = 4, k: int = 3, B: int = 2, lam: float = 0.5, scale: float = 0.5):
    """f(z, x) = z A + x Bm (row vectors), l = 1/2 ||z C - y||^2 + lam/2 ||x||^2: convex, closed-form optimum."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=D)
    A = scale * A / torch.linalg.matrix_norm(A, ord=2)
    Bm = torch.randn(k, n, generator=g, dtype=D) / n ** 0.5
    C = torch.randn(n, n, generator=g, dtype=D) / n ** 0.5
    y = torch.randn(B, n, generator=g, dtype=D)
    prob = JIIOProblem(f=lambda z, x: z @ A + x @ Bm,
                       objective=lambda z, x: 0.5 * ((z @ C - y) ** 2).sum(1) + 0.5 * lam * (x ** 2).sum(1))
    Inv = torch.linalg.inv(torch.eye(n, dtype=D) - A)       # z* = x Bm (I - A)^-1
    MC = Bm @ Inv @ C                                      # z* C = x MC
    x_star = y @ MC.T @ torch.linalg.inv(MC @ MC.T + lam * torch.eye(k, dtype=D))
    z_star = x_star @ Bm @ Inv
    grad_z = (z_star @ C - y) @ C.T                        # dl/dz
    mu_star = grad_z @ torch.linalg.inv(torch.eye(n, dtype=D) - A.T)   # mu = mu A^T + dl/dz
    return prob, (A, Bm, C, y, lam), (z_star, mu_star, x_star)


@settings(max_examples=example_budget(6))
@given(seed=st.integers(0, 10_000), alpha=st.sampled_from([0.3, 0.5]))
def test_fixed_point_satisfies_kkt_and_matches_closed_form(seed: int, alpha: float) -> None:
    prob, _, (z_star, mu_star, x_star) = _toy(seed)
    z0 = torch.zeros_like(z_star)
    res = jiio_solve(prob, z0, torch.zeros_like(x_star), JIIOConfig(budget=150, alpha=alpha, solver="anderson"))
    assert isinstance(res, JIIOResult)
    torch.testing.assert_close(res.x, x_star, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(res.z, z_star, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(res.mu, mu_star, atol=1e-6, rtol=1e-6)   # the dense adjoint solution
    for key in ("z", "mu", "x"):
        assert res.kkt[key].shape == (2,)
        assert float(res.kkt[key].max()) < 1e-6, (key, res.kkt)
    assert res.objective.shape == (2,)
    assert res.steps == 150


def test_warmup_and_step_cap_reach_the_same_kkt_point() -> None:
    # warm-up (z alone first, then the full map with a restarted solver) and the trust-region cap on the x step
    # change the path, not the fixed point
    prob, _, (z_star, mu_star, x_star) = _toy(5)
    z0, x0 = torch.full_like(z_star, 0.5), torch.zeros_like(x_star)   # z0 = 0 is z*(0): no warm-up
    res = jiio_solve(prob, z0, x0, JIIOConfig(budget=200, alpha=0.3, warmup=10, max_step=0.05, solver="anderson"))
    torch.testing.assert_close(res.x, x_star, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(res.mu, mu_star, atol=1e-6, rtol=1e-6)
    assert bool((res.stats["iteration"] > 10).all())          # a warm-up iterate is never returned
    capped = jiio_solve(prob, z0, x0, JIIOConfig(budget=7, alpha=0.3, max_step=1e-3, solver="fixed-point",
                                                  best_iterate=False))
    assert 0 < float(capped.x.norm(dim=1).max()) <= 7e-3 + 1e-12   # at most 7 steps of length 1e-3
    for bad in ({"warmup": -1}, {"warmup": 7, "budget": 7}, {"max_step": 0.0}, {"max_step": float("inf")}):
        with pytest.raises(DeqConfigError):
            JIIOConfig(**bad)


def test_warmup_holds_mu_and_x() -> None:
    prob, _, (z_star, _, x_star) = _toy(6)
    z0, x0 = torch.full_like(z_star, 0.5), torch.zeros_like(x_star)   # z0 = 0 is z*(0): no warm-up
    warm = jiio_solve(prob, z0, x0, JIIOConfig(budget=6, alpha=0.3, warmup=5, best_iterate=False))
    plain = jiio_solve(prob, z0, x0, JIIOConfig(budget=5, alpha=0.3, best_iterate=False))
    # after 5 warm-up iterations mu and x are still 0, so the 6th (first full) step moves x by alpha * grad_x l = 0
    # (the toy's x enters l only through lam ||x||^2 / 2 at x = 0) and mu by beta_mu * grad_z l
    assert float(warm.x.abs().max()) == 0.0
    assert float(plain.x.abs().max()) > 0.0
    # started at the equilibrium z*(x0) there is nothing to warm up: the warm-up is skipped
    eq = jiio_solve(prob, torch.zeros_like(z_star), x0, JIIOConfig(budget=6, alpha=0.3, warmup=5, best_iterate=False))
    assert float(eq.x.abs().max()) > 0.0


def test_plain_damped_iteration_also_reaches_the_kkt_point() -> None:
    # the paper's damped Jacobi iteration without Anderson: slower, and only for small enough alpha
    prob, _, (z_star, mu_star, x_star) = _toy(3)
    res = jiio_solve(prob, torch.zeros_like(z_star), torch.zeros_like(x_star),
                     JIIOConfig(budget=600, alpha=0.1, solver="fixed-point"))
    torch.testing.assert_close(res.x, x_star, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(res.mu, mu_star, atol=1e-9, rtol=1e-9)


def _dense_problem(seed: int = 0, n: int = 5, k: int = 3, B: int = 3):
    """A nonlinear layer and objective with per-sample dense Jacobians: ``(f, obj, z, mu, x, pieces)`` where
    ``pieces(z, mu, x)`` gives ``f(z, x)``, ``(df/dz)^T mu + grad_z l`` and ``d_x = (df/dx)^T mu + grad_x l``."""
    g = torch.Generator().manual_seed(seed)
    W = 0.4 * torch.randn(n, n, generator=g, dtype=D) / n ** 0.5
    U = torch.randn(k, n, generator=g, dtype=D)
    y = torch.randn(B, n, generator=g, dtype=D)

    def f(z, x):
        return torch.tanh(z @ W + x @ U)

    def obj(z, x):
        return ((z - y) ** 2).sum(1) + (x ** 4).sum(1)

    def pieces(z, mu, x):
        fz, adj, dx = [], [], []
        for b in range(B):
            xb, zb = x[b:b + 1], z[b:b + 1]
            Jz = torch.autograd.functional.jacobian(lambda zz, xb=xb: f(zz[None], xb)[0], z[b])
            Jx = torch.autograd.functional.jacobian(lambda xx, zb=zb: f(zb, xx[None])[0], x[b])
            fz.append(f(zb, xb)[0])
            adj.append(Jz.T @ mu[b] + 2 * (z[b] - y[b]))
            dx.append(Jx.T @ mu[b] + 4 * x[b] ** 3)
        return torch.stack(fz), torch.stack(adj), torch.stack(dx)

    z, mu, x = (torch.randn(B, n, generator=g, dtype=D), torch.randn(B, n, generator=g, dtype=D),
                torch.randn(B, k, generator=g, dtype=D))
    return f, obj, z, mu, x, pieces


def test_augmented_map_is_the_papers_update_with_dense_jacobians() -> None:
    f, obj, z, mu, x, pieces = _dense_problem(0, B=2)
    n = z.shape[1]
    cfg = JIIOConfig(alpha=0.07, beta_z=0.8, beta_mu=0.6, solver="fixed-point")
    G = augmented_map(JIIOProblem(f, obj), cfg, z, x)
    out = G(torch.cat([z, mu, x], 1))
    fz, adj, dx = pieces(z, mu, x)
    torch.testing.assert_close(out[:, :n], z + 0.8 * (fz - z))
    torch.testing.assert_close(out[:, n:2 * n], mu + 0.6 * (adj - mu))
    torch.testing.assert_close(out[:, 2 * n:], x - 0.07 * dx)


def test_tuple_states_and_box_constraint() -> None:
    prob0, _, (z_star, _, x_star) = _toy(3)
    n = z_star.shape[1]
    h = n // 2

    def f(z, x):
        out = prob0.f(torch.cat(z, 1), x)
        return out[:, :h], out[:, h:]

    prob = JIIOProblem(f=f, objective=lambda z, x: prob0.objective(torch.cat(z, 1), x), project=box(-0.05, 0.05))
    z0 = (torch.zeros(2, h, dtype=D), torch.zeros(2, n - h, dtype=D))
    res = jiio_solve(prob, z0, torch.zeros_like(x_star), JIIOConfig(budget=150, alpha=0.3, solver="anderson"))
    assert isinstance(res.z, tuple) and res.z[0].shape == (2, h)
    assert float(res.x.abs().max()) <= 0.05 + 1e-12
    assert float(res.kkt["x"].max()) < 1e-6      # projected-gradient stationarity on the box
    assert float(res.kkt["z"].max()) < 1e-6


def test_maximization_with_normalized_step_on_an_l2_ball() -> None:
    g = torch.Generator().manual_seed(1)
    n, k, B, eps = 4, 3, 3, 0.7
    A = 0.3 * torch.eye(n, dtype=D)
    Bm = torch.randn(k, n, generator=g, dtype=D)
    w = torch.randn(B, n, generator=g, dtype=D)
    prob = JIIOProblem(f=lambda z, x: z @ A + x @ Bm, objective=lambda z, x: (w * z).sum(1),
                       project=l2_ball(eps), maximize=True)
    res = jiio_solve(prob, torch.zeros(B, n, dtype=D), torch.zeros(B, k, dtype=D),
                     JIIOConfig(budget=120, alpha=0.2, alpha_final=0.02, switch_at=60, normalized_step=True,
                                solver="fixed-point"))
    direction = w @ torch.linalg.inv(torch.eye(n, dtype=D) - A.T) @ Bm.T     # d<w, z*>/dx
    expect = eps * direction / direction.norm(dim=1, keepdim=True)
    torch.testing.assert_close(res.x, expect, atol=1e-3, rtol=1e-3)
    assert bool((res.x.norm(dim=1) <= eps + 1e-9).all())
    assert bool((res.objective > 0).all())


def test_alpha_schedule_and_config_validation() -> None:
    cfg = JIIOConfig(budget=40, alpha=0.6, alpha_final=0.2)
    assert cfg.switch_iteration == 50 and cfg.alpha_at(49) == 0.6
    cfg = JIIOConfig(budget=160, alpha=0.6, alpha_final=0.2)
    assert cfg.switch_iteration == 100 and cfg.alpha_at(99) == 0.6 and cfg.alpha_at(100) == 0.2
    for bad in ({"alpha": -0.1}, {"alpha": 0.0}, {"alpha_final": -1.0}, {"budget": 0}, {"beta_z": 0.0},
                {"beta_mu": 1.5}, {"switch_at": -1}, {"solver": 3}):
        with pytest.raises(DeqConfigError):
            JIIOConfig(**bad)
    with pytest.raises(DeqConfigError, match="step size"):
        JIIOConfig(alpha=-0.01)


def test_bad_inputs_are_clear_errors() -> None:
    prob, _, (z_star, _, x_star) = _toy(0)
    z0, x0 = torch.zeros_like(z_star), torch.zeros_like(x_star)
    cfg = JIIOConfig(budget=5, alpha=0.1, solver="fixed-point")
    # a constraint (projection) of the wrong shape
    wrong = JIIOProblem(prob.f, prob.objective, project=lambda x: x[:, :2])
    with pytest.raises(DeqInputError, match="projection must return x's shape"):
        jiio_solve(wrong, z0, x0, cfg)
    with pytest.raises(DeqInputError, match="one per sample"):
        jiio_solve(JIIOProblem(prob.f, prob.objective, project=l2_ball(torch.ones(5))), z0, x0, cfg)
    # epsilon <= 0
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(DeqConfigError, match="eps"):
            l2_ball(eps)
    # an objective that is not one scalar per sample
    for bad_obj in (lambda z, x: z ** 2, lambda z, x: (z ** 2).sum()):
        with pytest.raises(DeqInputError, match="one scalar per sample"):
            jiio_solve(JIIOProblem(prob.f, bad_obj), z0, x0, cfg)
    with pytest.raises(DeqInputError, match="batch size"):
        jiio_solve(prob, z0, torch.zeros(3, x0.shape[1], dtype=D), cfg)
    with pytest.raises(DeqInputError, match="dtype"):
        jiio_solve(prob, z0, x0.float(), cfg)
    with pytest.raises(DeqConfigError):
        JIIOProblem(f=None, objective=prob.objective)  # type: ignore[arg-type]


def test_divergence_names_the_sample_and_the_others_go_on() -> None:
    n = 3
    scale = torch.tensor([1.0, 1e3, 1.0], dtype=D)    # sample 1's objective is 1e6 x steeper: alpha too large for it

    prob = JIIOProblem(f=lambda z, x: 0.5 * z + x, objective=lambda z, x: (scale ** 2) * ((z - 1.0) ** 2).sum(1))
    z0 = torch.zeros(3, n, dtype=D)
    with pytest.raises(DeqSolveError, match=r"samples \[1\]") as info:
        jiio_solve(prob, z0, z0.clone(), JIIOConfig(budget=200, alpha=0.01, solver="fixed-point"))
    partial = info.value.solution
    # the loop isolates the diverging sample (frozen at its best finite iterate); the others keep iterating
    assert isinstance(partial, JIIOResult) and "samples [1]" in str(info.value) and "[0" not in str(info.value)
    assert bool(torch.isfinite(partial.x).all()) and bool(torch.isfinite(partial.z).all())


def test_best_iterate_and_traces() -> None:
    prob, _, (z_star, _, x_star) = _toy(5)
    res = jiio_solve(prob, torch.zeros_like(z_star), torch.zeros_like(x_star),
                     JIIOConfig(budget=50, alpha=0.3, solver="anderson"))
    assert res.stats["trace"].shape == (51, 2) and res.stats["objective_trace"].shape == (51, 2)
    assert res.stats["time_trace"].shape == (51,) and bool((res.stats["time_trace"].diff() >= 0).all())
    it = res.stats["iteration"]
    # the returned iterate is the one recorded at its iteration
    for b in range(2):
        torch.testing.assert_close(res.objective[b], res.stats["objective_trace"][it[b], b])
    last = jiio_solve(prob, torch.zeros_like(z_star), torch.zeros_like(x_star),
                      JIIOConfig(budget=50, alpha=0.3, solver="anderson", best_iterate=False))
    assert bool((last.stats["iteration"] == 50).all())


def test_training_gradient_with_x_constant_matches_dense_ift() -> None:
    # theta = a scalar w in f(z, x) = w z A + x Bm; outer loss L = sum(z*)  (x held constant)
    prob, (A, Bm, C, y, lam), (z_star, mu_star, x_star) = _toy(7)
    w = torch.tensor(1.0, dtype=D, requires_grad=True)
    z = equilibrium_with_grad(lambda z, x: w * (z @ A) + x @ Bm, z_star, x_star, rtol=1e-12, atol=1e-14,
                              backward_steps=500, adjoint_init=torch.ones_like(z_star))
    z.sum().backward()
    n = A.shape[0]
    Inv = torch.linalg.inv(torch.eye(n, dtype=D) - A)
    # z = z A w + c  ->  dz/dw = (z A) (I - A)^-1
    expect = ((z_star @ A) @ Inv).sum()
    torch.testing.assert_close(w.grad, expect, atol=1e-8, rtol=1e-8)


def test_full_augmented_ift_matches_finite_differences_of_the_optimum() -> None:
    g = torch.Generator().manual_seed(11)
    n, k, B, lam = 4, 3, 2, 0.5
    A0 = torch.randn(n, n, generator=g, dtype=D)
    A0 = 0.4 * A0 / torch.linalg.matrix_norm(A0, ord=2)
    Bm = torch.randn(k, n, generator=g, dtype=D) / n ** 0.5
    y = torch.randn(B, n, generator=g, dtype=D)

    def x_opt(s: float) -> torch.Tensor:   # closed form for f = s z A0 + x Bm, l = 1/2||z - y||^2 + lam/2||x||^2
        M = Bm @ torch.linalg.inv(torch.eye(n, dtype=D) - s * A0)
        return y @ M.T @ torch.linalg.inv(M @ M.T + lam * torch.eye(k, dtype=D))

    s = torch.tensor(1.0, dtype=D, requires_grad=True)
    prob = JIIOProblem(f=lambda z, x: s * (z @ A0) + x @ Bm,
                       objective=lambda z, x: 0.5 * ((z - y) ** 2).sum(1) + 0.5 * lam * (x ** 2).sum(1))
    cfg = JIIOConfig(budget=150, alpha=0.3, solver="anderson")
    res = jiio_solve(prob, torch.zeros(B, n, dtype=D), torch.zeros(B, k, dtype=D), cfg)
    torch.testing.assert_close(res.x, x_opt(1.0), atol=1e-8, rtol=1e-8)
    _, _, x = augmented_equilibrium(prob, cfg, res, backward_steps=2000, rtol=1e-12, atol=1e-14)
    x.sum().backward()
    h = 1e-6
    fd = (x_opt(1.0 + h).sum() - x_opt(1.0 - h).sum()) / (2 * h)
    torch.testing.assert_close(s.grad, fd, atol=1e-6, rtol=1e-6)


def test_tangent_step_keeps_the_boundary_optimum_and_leaves_interior_steps() -> None:
    # z = f(z, x) = z / 2 + x (so z* = 2x); l = ||z - y||^2 with y / 2 outside the ball: x* = r y / ||y|| on the sphere
    g = torch.Generator().manual_seed(0)
    y = 6.0 * torch.randn(3, 5, generator=g, dtype=D)
    r = 1.0
    prob = JIIOProblem(f=lambda z, x: 0.5 * z + x, objective=lambda z, x: ((z - y) ** 2).sum(1), project=l2_ball(r))
    x_star = r * y / y.norm(dim=1, keepdim=True)
    z0 = torch.zeros(3, 5, dtype=D)
    for tangent in (False, True):
        res = jiio_solve(prob, z0, z0.clone(), JIIOConfig(budget=300, alpha=0.05, solver="fixed-point",
                                                          tangent_step=tangent))
        torch.testing.assert_close(res.x, x_star, atol=1e-5, rtol=1e-5)
        assert res.stats["boundary"] == 1.0
    # the map: an interior sample's step is untouched, a boundary sample's outward radial part is dropped
    G = augmented_map(prob, JIIOConfig(alpha=0.1, tangent_step=True), z0, z0)
    x = torch.stack([torch.tensor([0.5, 0, 0, 0, 0], dtype=D), torch.tensor([1.0, 0, 0, 0, 0], dtype=D),
                     torch.tensor([1.0, 0, 0, 0, 0], dtype=D)])
    step = torch.tensor([[-1.0, 1, 0, 0, 0], [-1.0, 1, 0, 0, 0], [1.0, 1, 0, 0, 0]], dtype=D)
    out = G._tangent(x, step)
    torch.testing.assert_close(out[0], step[0])                                   # interior: as is
    torch.testing.assert_close(out[1], torch.tensor([0.0, 1, 0, 0, 0], dtype=D))  # boundary, outward: tangent only
    torch.testing.assert_close(out[2], step[2])                                   # boundary, inward: as is


def test_kkt_residuals_are_the_norms_of_the_three_equations() -> None:
    """Every KKT check elsewhere is an upper bound, which residuals of zero would pass."""
    f, obj, z, mu, x, pieces = _dense_problem(1)
    fz, adj, dx = pieces(z, mu, x)
    G = augmented_map(JIIOProblem(f, obj), JIIOConfig(alpha=0.07), z, x)
    kkt, objective = G.kkt(G.stack(z, mu, x))
    torch.testing.assert_close(kkt["z"], (fz - z).norm(dim=1))
    torch.testing.assert_close(kkt["mu"], (adj - mu).norm(dim=1))
    torch.testing.assert_close(kkt["x"], dx.norm(dim=1))
    torch.testing.assert_close(objective, obj(z, x))
    # with a constraint: the projected-gradient residual (x - Proj(x - alpha d_x)) / alpha
    P = box(-0.3, 0.3)
    x_in = P(x)
    Gp = augmented_map(JIIOProblem(f, obj, project=P), JIIOConfig(alpha=0.07), z, x_in)
    _, _, dx_in = pieces(z, mu, x_in)
    kkt_p, _ = Gp.kkt(Gp.stack(z, mu, x_in))
    torch.testing.assert_close(kkt_p["x"], ((x_in - P(x_in - 0.07 * dx_in)) / 0.07).norm(dim=1))


@pytest.mark.parametrize("variant", ["normalized", "x_scale", "max_step", "tangent"])
def test_augmented_map_options_with_dense_jacobians(variant: str) -> None:
    """The map's options act on its x-update as documented (each was removable with every test green)."""
    f, obj, z, mu, x, pieces = _dense_problem(2)
    fz, adj, dx = pieces(z, mu, x)
    alpha = 0.07
    project = None
    if variant == "normalized":
        cfg = JIIOConfig(alpha=alpha, normalized_step=True)
        expect = x - alpha * dx / dx.norm(dim=1, keepdim=True)
    elif variant == "x_scale":
        cfg = JIIOConfig(alpha=alpha, x_scale=2.5)
        expect = x - alpha * dx
    elif variant == "max_step":
        cap = 0.5 * float((alpha * dx).norm(dim=1).min())
        cfg = JIIOConfig(alpha=alpha, max_step=cap)
        expect = x - cap * dx / dx.norm(dim=1, keepdim=True)
    else:   # every x on the sphere of radius r; samples whose step points outward move along the sphere
        r = 1.0
        x = r * x / x.norm(dim=1, keepdim=True)
        c = 10.0 * x * torch.tensor([[1.0], [-1.0], [1.0]], dtype=D)    # a linear term in x: outward for sample 1
        base = obj

        def obj(z, x):   # noqa: F811  (the x**4 term replaced by <c, x>)
            return base(z, x) - (x ** 4).sum(1) + (c * x).sum(1)

        fz, adj, dx = pieces(z, mu, x)
        dx = dx - 4 * x ** 3 + c
        project = l2_ball(r)
        cfg = JIIOConfig(alpha=alpha, tangent_step=True)
        step = alpha * dx
        outward = -(step * x).sum(1, keepdim=True) / r
        assert bool((outward > 0).any() and (outward < 0).any()), "the example needs outward and inward steps"
        tangent = torch.where(outward > 0, step + outward * x / r, step)
        expect = project(x - tangent)
    G = augmented_map(JIIOProblem(f, obj, project=project), cfg.replace(beta_z=1.0, beta_mu=1.0), z, x)
    v = G.stack(z, mu, x)
    if variant == "x_scale":
        torch.testing.assert_close(v[:, 2 * z.shape[1]:], x / 2.5)     # the stacked state holds x / x_scale
    zn, mun, xn = G.split(G(v))
    torch.testing.assert_close(zn, fz)
    torch.testing.assert_close(mun, adj)
    torch.testing.assert_close(xn, expect)


def test_best_iterate_rule_of_the_release() -> None:
    """The recorder's rule, on made-up residuals: forced for 10 iterations after the warm-up, then a lower
    residual, or a lower cost with a residual under 1.3 x the best one."""
    from deq_tasks.jiio import JIIORecorder

    rec = JIIORecorder(JIIOConfig(budget=30, warmup=3))
    gv = torch.ones(1, 1, dtype=D)

    def v(rel: float) -> torch.Tensor:    # rel = ||G(v) - v|| / ||G(v)|| with G(v) = 1
        return torch.tensor([[1.0 - rel]], dtype=D)

    rec.start(v(0.5), gv, torch.tensor([5.0], dtype=D), 1.0)
    chosen = []
    for k, (rel, cost) in enumerate([(0.5, 5.0)] * 12 + [(0.6, 9.0), (0.6, 1.0), (0.79, 0.5), (0.7, 0.9),
                                                          (0.1, 100.0)], start=1):
        rec.record(k, v(rel), gv, torch.tensor([cost], dtype=D), 1.0)
        chosen.append(int(rec.best_k))
    assert chosen[:12] == list(range(1, 13))     # k - warmup < 10: every iterate is taken
    assert chosen[12:] == [12, 14, 14, 16, 17]   # worse; lower cost within 1.3x; outside 1.3x; within; lower rel


def test_the_step_size_drops_at_the_switch_iteration() -> None:
    prob, _, (z_star, _, x_star) = _toy(2)
    res = jiio_solve(prob, torch.zeros_like(z_star), torch.zeros_like(x_star),
                     JIIOConfig(budget=12, alpha=0.3, alpha_final=0.05, switch_at=8, solver="fixed-point"))
    assert res.stats["alpha"] == 0.05
    early = jiio_solve(prob, torch.zeros_like(z_star), torch.zeros_like(x_star),
                       JIIOConfig(budget=7, alpha=0.3, alpha_final=0.05, switch_at=8, solver="fixed-point"))
    assert early.stats["alpha"] == 0.3
