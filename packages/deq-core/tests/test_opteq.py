"""OptEq: the prox library, the equilibrium = argmin of the explicit objective, priors, the norm bound, errors.

Every reference is float64 and computed independently of the code under test (a vectorized golden-section
search for the scalar proxes; perturbations and the strong-convexity bound for the minimizer).
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deq_core import DeqConfigError, DeqInputError, FixedPointIteration, UnknownNameError, fixed_point
from deq_core.opteq import (
    AbstractProx,
    DeepOptEq,
    Halpern,
    L1Prox,
    LeakyReLU,
    OptEq,
    OptEqLayer,
    SoftThreshold,
    check_after_step,
    get_prox,
    with_l1,
)
from deq_core.testing import example_budget

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _load_plugins_quietly():
    """Load the plugin registry once; a sibling plugin broken in this environment must not fail these tests."""
    from deq_core import registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        registry.solvers()

PROXES = {
    "relu": lambda: get_prox("relu"),
    "soft-threshold": lambda: get_prox("soft-threshold", lam=0.3),
    "clip": lambda: get_prox("clip", low=-0.5, high=1.5),
    "hardtanh": lambda: get_prox("hardtanh"),
    "leaky-relu": lambda: get_prox("leaky-relu", slope=0.2),
    "tanh": lambda: get_prox("tanh"),
    "sigmoid": lambda: get_prox("sigmoid"),
    "arctan": lambda: get_prox("arctan"),
    "l1-relu": lambda: with_l1("relu", 0.2),
    "l1-tanh": lambda: with_l1("tanh", 0.3),
    "l1-sigmoid": lambda: with_l1("sigmoid", 0.25),
    "l1-leaky": lambda: with_l1(LeakyReLU(0.5), 0.4),
}


def assert_near(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    """max |got - want| <= atol (no torch.testing: its first import costs seconds on a 2-core CPU)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    err = float((got.detach() - want.detach()).abs().max())
    assert err <= atol, f"max abs error {err:.3g} > {atol:.3g}"


def numerical_prox(prox: AbstractProx, v: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """argmin_u phi(u) + (u - v)^2 / 2 by a vectorized golden-section search on dom(phi) ∩ [-|v|-10, |v|+10]."""
    lo, hi = prox.domain
    a = torch.clamp(-v.abs() - 10.0, min=lo)
    b = torch.clamp(v.abs() + 10.0, max=hi)

    def obj(u: torch.Tensor) -> torch.Tensor:
        return prox.phi(u) + 0.5 * (u - v) ** 2

    r = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(iters):
        c, d = b - r * (b - a), a + r * (b - a)
        left = obj(c) <= obj(d)
        b = torch.where(left, d, b)
        a = torch.where(left, a, c)
    return 0.5 * (a + b)


@pytest.mark.parametrize("name", sorted(PROXES))
def test_prox_is_the_argmin_of_phi(name: str) -> None:
    prox = PROXES[name]()
    v = torch.cat([torch.linspace(-6.0, 6.0, 241, dtype=F64), torch.tensor([-30.0, -0.3, 0.25, 0.3, 30.0], dtype=F64)])
    ref = numerical_prox(prox, v)
    got = prox(v)
    assert_near(got, ref, 1e-6)
    # sigma(v) is at least as good as the numerical argmin, to rounding (a sharper test than the 1e-6 above)
    f_got, f_ref = prox.phi(got) + 0.5 * (got - v) ** 2, prox.phi(ref) + 0.5 * (ref - v) ** 2
    assert bool(torch.isfinite(f_got).all())
    assert bool((f_got <= f_ref + 1e-12 * (1 + f_ref.abs())).all())


@pytest.mark.parametrize("name", sorted(PROXES))
def test_prox_is_nondecreasing_and_1_lipschitz(name: str) -> None:
    prox = PROXES[name]()
    v = torch.linspace(-20.0, 20.0, 20001, dtype=F64)
    dv, ds = v.diff(), prox(v).diff()
    assert bool((ds >= -1e-15).all())
    assert bool((ds <= dv + 1e-12).all())


def test_phi_is_infinite_outside_the_domain() -> None:
    outside = {"relu": -0.1, "clip": 1.6, "tanh": 1.01, "sigmoid": -0.01, "arctan": 1.0}
    for name, u in outside.items():
        assert PROXES[name]().phi(torch.tensor([u], dtype=F64)).item() == math.inf, name
    assert math.isfinite(get_prox("tanh").phi(torch.tensor([1.0], dtype=F64)).item())  # closed domain [-1, 1]


def test_l1_prior_turns_relu_into_shifted_relu() -> None:
    v = torch.linspace(-3, 3, 61, dtype=F64)
    assert_near(with_l1("relu", 0.5)(v), torch.relu(v - 0.5), 0.0)
    assert_near(with_l1("relu", 0.0)(v), torch.relu(v), 0.0)


# ------------------------------------------------------------------------------------------------------------
# The equilibrium is the minimizer of the objective (Hypothesis, float64)
# ------------------------------------------------------------------------------------------------------------

def random_layer(seed: int, prox: AbstractProx, n: int, d: int, norm: float, scale: float) -> OptEqLayer:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n + 1, n, generator=g, dtype=F64)
    w = w * (norm / torch.linalg.matrix_norm(w, ord=2))
    u = scale * torch.randn(n, d, generator=g, dtype=F64) / math.sqrt(d)
    b = torch.randn(n, generator=g, dtype=F64)
    return OptEqLayer.from_matrices(w, u, b, prox=prox)


@settings(max_examples=example_budget(30), deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    name=st.sampled_from(sorted(PROXES)),
    n=st.integers(2, 12),
    d=st.integers(1, 5),
    norm=st.floats(0.05, 0.95),
    scale=st.floats(0.1, 5.0),
)
def test_equilibrium_minimizes_objective(seed: int, name: str, n: int, d: int, norm: float, scale: float) -> None:
    prox = PROXES[name]()
    layer = random_layer(seed, prox, n, d, norm, scale)
    model = OptEq.from_layer(layer, adjoint=None, atol=1e-13, rtol=0.0, max_steps=3000)
    g = torch.Generator().manual_seed(seed + 1)
    x = 2 * torch.randn(4, d, generator=g, dtype=F64)
    with torch.no_grad():
        z, info = model(x)
        assert info.result.name == "CONVERGED"
        # the gradient mapping z - prox(z - grad s(z)) vanishes exactly at the minimizer
        assert float(model.gradient_mapping(z, x).norm(dim=1).max()) <= 1e-6
        g_star = model.objective(z, x)
        assert bool(torch.isfinite(g_star).all())
        # no feasible perturbation lowers G; G is (1 - ||W||^2)-strongly convex, so it must rise at least that much
        mu = 1.0 - norm**2
        margin = 1e-9 if prox.open_domain else 0.0
        for eps in (1e-4, 1e-2, 1.0):
            for _ in range(8):
                dz = torch.randn(z.shape, generator=g, dtype=F64)
                zp = prox.project(z + eps * dz / dz.norm(dim=1, keepdim=True), margin)
                rise = model.objective(zp, x) - g_star
                bound = 0.5 * mu * ((zp - z) ** 2).sum(1)
                assert bool((rise >= bound - 1e-9 * (1 + g_star.abs())).all()), (eps, rise, bound)
        # plain iterations (proximal gradient with unit step) never increase G
        zk = prox(3 * torch.randn(z.shape, generator=g, dtype=F64))
        c = layer.inject(x)
        prev = model.objective(zk, x)
        for _ in range(15):
            zk = layer(zk, c)
            cur = model.objective(zk, x)
            assert bool((cur <= prev + 1e-10 * (1 + prev.abs())).all())
            prev = cur
        assert bool((prev >= g_star - 1e-9 * (1 + g_star.abs())).all())


@pytest.mark.parametrize("seed", [0, 1])
def test_deep_equilibrium_minimizes_joint_objective(seed: int) -> None:
    torch.manual_seed(seed)
    model = DeepOptEq(5, (6, 4, 3), prox=("relu", "tanh", "soft-threshold"), l1=(0.1, 0.0, 0.0), gain=3.0,
                      adjoint=None, atol=1e-13, rtol=0.0, max_steps=3000).double()
    w = model.weight().detach()
    norm = float(torch.linalg.matrix_norm(w, ord=2))
    assert norm <= 0.97 + 1e-12  # the spectral rescale is active (gain 3 gives a raw norm well above 1)
    # block lower-bidiagonal: the (0, 2) and (2, 0) blocks are zero
    assert float(w[:6, 6:].abs().max()) == 0.0 and float(w[10:, :6].abs().max()) == 0.0
    x = torch.randn(3, 5, dtype=F64)
    with torch.no_grad():
        z, info = model(x)
        assert info.result.name == "CONVERGED" and len(z) == 3
        assert max(float(t.norm()) for t in model.gradient_mapping(z, x)) <= 1e-6
        g_star = model.objective(z, x)
        proxes = model.layer.proxes
        for eps in (1e-3, 1e-1, 1.0):
            for _ in range(10):
                zp = tuple(p.project(t + eps * torch.randn_like(t)) for p, t in zip(proxes, z))
                assert bool((model.objective(zp, x) >= g_star - 1e-10).all())


def test_any_solver_reaches_the_same_minimizer() -> None:
    layer = random_layer(3, get_prox("tanh"), 8, 3, 0.8, 2.0)
    x = torch.randn(5, 3, dtype=F64)
    sols = []
    for solver, atol in (("fixed-point", 1e-10), (FixedPointIteration(damping=0.7), 1e-10), (Halpern(), 1e-3)):
        model = OptEq.from_layer(layer, solver=solver, adjoint=None, atol=atol, rtol=0.0, max_steps=20000)
        z, info = model(x)
        assert info.result.name == "CONVERGED"
        sols.append(z)
    assert_near(sols[1], sols[0], 1e-8)
    assert_near(sols[2], sols[0], 3e-3)   # Halpern's anchor bias is O(1/k)


def test_implicit_gradient_matches_unrolled() -> None:
    layer = random_layer(5, get_prox("arctan"), 6, 3, 0.7, 1.5)
    x = torch.randn(4, 3, dtype=F64)
    target = torch.randn(4, 6, dtype=F64)
    grads = {}
    for adjoint in ("implicit", "unrolled"):
        model = OptEq.from_layer(copy.deepcopy(layer), adjoint=adjoint, atol=1e-12, rtol=0.0, max_steps=500)
        z, _ = model(x)
        ((z - target) ** 2).sum().backward()
        grads[adjoint] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert_near(grads["implicit"], grads["unrolled"], 1e-8 * (1 + float(grads["unrolled"].abs().max())))


# ------------------------------------------------------------------------------------------------------------
# Priors
# ------------------------------------------------------------------------------------------------------------

def test_halpern_selects_the_fixed_point_nearest_the_anchor() -> None:
    n = 5
    g = torch.Generator().manual_seed(0)
    u = 0.3 * torch.randn(2, n, generator=g, dtype=F64)   # anchor
    v = 2.0 * torch.randn(2, n, generator=g, dtype=F64)   # start, far from the anchor
    eye, zero = torch.eye(n, dtype=F64), torch.zeros(n, 1, dtype=F64)
    with pytest.raises(DeqConfigError, match="measured"):  # ||W||_2 = 1 is not allowed in the strict setting
        OptEqLayer.from_matrices(eye, zero, torch.zeros(n, dtype=F64))
    layer = OptEqLayer.from_matrices(eye, zero, torch.zeros(n, dtype=F64), strict=False)  # T = ReLU, Fix T = R^n_+
    x = torch.zeros(2, 1, dtype=F64)
    # Halpern's error is O(1/k): 1e-3 takes ~1500 steps (1e-4 took ~15000); the other fixed point is > 0.1 away
    anchored = OptEq.from_layer(layer, solver=Halpern(anchor=u), adjoint=None, atol=1e-3, rtol=0.0, max_steps=4000)
    z, info = anchored(x, z0=v)
    assert info.result.name == "CONVERGED"
    assert_near(z, torch.relu(u), 2e-3)   # the projection of u onto Fix T
    plain = OptEq.from_layer(layer, adjoint=None, atol=1e-12, rtol=0.0, max_steps=10)
    z_plain, _ = plain(x, z0=v)
    assert_near(z_plain, torch.relu(v), 1e-12)                 # another fixed point, chosen by z0
    assert float((z_plain - torch.relu(u)).abs().max()) > 0.1


def test_l1_prior_sparsifies_the_equilibrium() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    zeros = []
    for lam in (0.0, 0.3):
        torch.manual_seed(1)
        model = OptEq(10, 32, prox="relu", l1=lam, gain=1.0, adjoint=None, rtol=1e-8, max_steps=300)
        z, _ = model(x)
        zeros.append(float((z == 0).float().mean()))
    assert zeros[1] > zeros[0] + 0.05


# ------------------------------------------------------------------------------------------------------------
# The norm bound: parameterizations, checks, hooks
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,bound", [("spectral", 0.9), ("frobenius", 1.0)])
def test_parameterization_keeps_norm_below_one(method: str, bound: float) -> None:
    torch.manual_seed(0)
    layer = OptEqLayer(4, 16, method=method, kappa=0.1, gain=10.0).double()
    norm = layer.check_convergence()
    assert norm == pytest.approx(float(torch.linalg.matrix_norm(layer.weight().detach(), ord=2)))
    assert norm <= bound + 1e-12 and norm < 1.0
    if method == "spectral":
        assert norm == pytest.approx(0.9, abs=1e-12)  # the raw norm (about 20) is rescaled onto 1 - kappa


def test_check_after_optimizer_step() -> None:
    n = 4
    good = OptEq(3, n, method="spectral")
    bad = OptEq.from_layer(OptEqLayer.from_matrices(0.5 * torch.eye(n), torch.randn(n, 3)))
    for model in (good, bad):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        handle = model.check_after_step(opt)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        model.layer.W.raw["0_0"].grad = -10.0 * torch.eye(n)   # pushes the raw W far beyond norm 1
        if model is good:
            opt.step()                                         # the parameterization keeps ||W||_2 <= 0.97
            assert model.check_convergence() <= 0.97 + 1e-6
        else:
            with pytest.raises(DeqConfigError, match=r"measured \|\|W\|\|_2 = 10\.5"):
                opt.step()
        handle.remove()
    with pytest.raises(DeqConfigError, match="check_convergence"):
        check_after_step(torch.optim.SGD(good.parameters(), lr=0.1), torch.nn.Linear(2, 2))


def test_non_finite_weights_fail_the_check() -> None:
    layer = OptEqLayer(3, 4)
    with torch.no_grad():
        layer.W.raw["0_0"][0, 0] = float("nan")
    with pytest.raises(DeqConfigError, match="nan"):
        layer.check_convergence()


# ------------------------------------------------------------------------------------------------------------
# Bad input and plumbing
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class _Shifted(AbstractProx):
    """clamp(v + 1/2, -1, 1): prox of the indicator of [-1, 1] minus u/2 (maps 0 to 1/2, domain of both signs)."""

    name: ClassVar[str] = "shifted"

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return (v + 0.5).clamp(-1.0, 1.0)

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        return torch.where(u.abs() <= 1, -0.5 * u, torch.full_like(u, math.inf))

    @property
    def domain(self) -> tuple[float, float]:
        return (-1.0, 1.0)


def test_bad_input_gives_clear_errors() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'relu'"):
        get_prox("rellu")
    with pytest.raises(UnknownNameError, match="unknown prox 'swish'"):
        OptEq(3, 4, prox="swish")
    with pytest.raises(DeqConfigError, match="unknown option"):
        get_prox("relu", lam=0.1)
    with pytest.raises(DeqConfigError, match=r"measured \|\|W\|\|_2 = 1\.5"):
        OptEqLayer.from_matrices(1.5 * torch.eye(3), torch.eye(3))
    with pytest.raises(DeqConfigError, match="kappa"):
        OptEq(3, 4, kappa=0.0)
    with pytest.raises(DeqConfigError, match="parameterization"):
        OptEq(3, 4, method="bogus")
    with pytest.raises(DeqConfigError, match="slope"):
        LeakyReLU(slope=1.5)
    with pytest.raises(DeqConfigError, match="low < high"):
        get_prox("clip", low=1.0, high=0.0)
    with pytest.raises(DeqConfigError, match="lam"):
        SoftThreshold(lam=-0.1)
    with pytest.raises(DeqConfigError, match="no closed-form l1 prior"):
        L1Prox(_Shifted(), 0.1)
    with pytest.raises(DeqInputError, match=r"expects x of shape \(B, 3\)"):
        OptEq(3, 4)(torch.randn(2, 5))
    with pytest.raises(DeqConfigError, match="offset"):
        Halpern(offset=0.5)
    with pytest.raises(DeqConfigError, match="non-finite"):
        Halpern(anchor=torch.tensor([math.nan]))
    with pytest.raises(DeqInputError, match="anchor"):
        fixed_point(torch.relu, torch.zeros(2, 3), solver=Halpern(anchor=torch.zeros(5)), adjoint=None)
    with pytest.raises(DeqConfigError, match="2 entries for 3 layers"):
        DeepOptEq(3, (4, 4, 4), prox=("relu", "tanh"))


def test_registered_and_picklable() -> None:
    from deq_core import registry

    model = registry.get_model("opteq", in_features=3, width=4, solver="halpern", max_steps=5)
    assert isinstance(model, OptEq) and isinstance(model.deq.solver, Halpern)
    assert isinstance(registry.get_model("opteq-deep", in_features=3, widths=(4, 2)), DeepOptEq)
    assert isinstance(registry.get_solver("halpern", offset=3.0), Halpern)
    x = torch.randn(2, 3)
    model = OptEq(3, 4, rtol=1e-8, max_steps=200)
    z, _ = model(x)
    clone = pickle.loads(pickle.dumps(model))
    assert_near(clone(x)[0], z, 0.0)
