"""Clear errors: each says what was expected and what came, and each is tested here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deq_core import (
    DEQ,
    DeqConfigError,
    DeqError,
    DeqInputError,
    DeqSolveError,
    FixedPointIteration,
    ImplicitAdjoint,
    NeumannAdjoint,
    PhantomAdjoint,
    UnknownNameError,
    fixed_point,
    registry,
    resolve_adjoint,
)

pytestmark = pytest.mark.usefixtures("core_registry")

PICARD = FixedPointIteration()


def _f(z):
    return 0.5 * z + 1.0


def _z0(*shape, dtype=torch.float32):
    return torch.zeros(*(shape or (3, 4)), dtype=dtype)


# --- f(z) must look like z ---------------------------------------------------------------------------------


def test_f_output_shape_differs() -> None:
    with pytest.raises(DeqInputError, match=r"f\(z\) must have shape \(3, 4\) like z0, got \(3, 5\)"):
        fixed_point(lambda z: torch.cat([z, z[:, :1]], dim=1), _z0(), solver=PICARD)


def test_f_output_dtype_differs() -> None:
    with pytest.raises(DeqInputError, match=r"dtype torch.float32 like z0, got torch.float64"):
        fixed_point(lambda z: z.double(), _z0(), solver=PICARD)


def test_f_output_structure_differs() -> None:
    with pytest.raises(DeqInputError, match="structure of z0"):
        fixed_point(lambda z: z[0], (_z0(), _z0(3, 2)), solver=PICARD)
    with pytest.raises(DeqInputError, match="structure of z0"):
        fixed_point(lambda z: (z, z), _z0(), solver=PICARD)
    with pytest.raises(DeqInputError, match=r"f\(z\)\[1\] must have shape \(3, 2\)"):
        fixed_point(lambda z: (z[0], z[0]), (_z0(), _z0(3, 2)), solver=PICARD)
    with pytest.raises(DeqInputError, match="tensor or a tuple of tensors, got str"):
        fixed_point(lambda z: "nope", _z0(), solver=PICARD)


def test_bad_z0() -> None:
    with pytest.raises(DeqInputError, match="floating-point"):
        fixed_point(_f, torch.zeros(3, 4, dtype=torch.long), solver=PICARD)
    with pytest.raises(DeqInputError, match="leading batch dimension"):
        fixed_point(_f, torch.tensor(1.0), solver=PICARD)
    with pytest.raises(DeqInputError, match="batch size 3"):
        fixed_point(lambda z: z, (_z0(3, 4), _z0(2, 4)), solver=PICARD)
    with pytest.raises(DeqInputError, match="one dtype"):
        fixed_point(lambda z: z, (_z0(3, 4), _z0(3, 4, dtype=torch.float64)), solver=PICARD)
    with pytest.raises(DeqInputError, match="empty tuple"):
        fixed_point(lambda z: z, (), solver=PICARD)


# --- non-finite values ---------------------------------------------------------------------------------------


def test_nonfinite_z0_names_the_samples() -> None:
    z0 = _z0(4, 3)
    z0[1, 0], z0[3, 2] = math.nan, math.inf
    with pytest.raises(DeqInputError, match=r"z0 contains non-finite values \(nan or inf\) in samples \[1, 3\]"):
        fixed_point(_f, z0, solver=PICARD)


def test_nonfinite_f_z0() -> None:
    with pytest.raises(DeqInputError, match=r"f\(z0\) contains non-finite values .* samples \[0, 1, 2\]"):
        fixed_point(lambda z: z / 0.0, _z0(), solver=PICARD)


def test_nonfinite_f_during_solve() -> None:
    calls = [0]

    def f(z):
        calls[0] += 1
        return _f(z) * (math.nan if calls[0] > 3 else 1.0)

    with pytest.raises(DeqSolveError, match="non-finite values") as info:
        fixed_point(f, _z0(), solver=PICARD)
    assert info.value.solution.result.name == "NONFINITE"


# --- names and options -----------------------------------------------------------------------------------------


def test_unknown_solver_name_suggests_the_closest() -> None:
    for call in (lambda: fixed_point(_f, _z0(), solver="fixed-piont"),
                 lambda: DEQ(nn.Identity(), solver="fixed-piont"),
                 lambda: ImplicitAdjoint("fixed-piont"),
                 lambda: registry.get_solver("fixed-piont")):
        with pytest.raises(UnknownNameError, match="unknown solver 'fixed-piont'. Did you mean 'fixed-point'") as e:
            call()
        assert isinstance(e.value, KeyError) and "'fixed-point'" in str(e.value)


def test_unknown_adjoint_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'implicit'"):
        fixed_point(_f, _z0(), solver=PICARD, adjoint="implict")
    with pytest.raises(UnknownNameError, match="Did you mean 'phantom'"):
        DEQ(nn.Identity(), adjoint="fantom")


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(DeqConfigError, match="no option 'dampnig'.*did you mean 'damping'"):
        registry.get_solver("fixed-point", dampnig=0.5)
    with pytest.raises(DeqConfigError, match="dampnig"):
        ImplicitAdjoint("fixed-point", dampnig=0.5)
    with pytest.raises(DeqConfigError, match="without a solver name"):
        ImplicitAdjoint(damping=0.5)
    with pytest.raises(DeqConfigError, match="adjoint 'neumann' has no option 'trems' \\(did you mean 'terms'\\?\\)"):
        resolve_adjoint("neumann", trems=2)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FixedPointIteration(damping=0.0), r"damping must be in \(0.0, 1.0\], got 0.0"),
        (lambda: FixedPointIteration(damping=1.5), "damping"),
        (lambda: registry.get_solver("fixed-point", damping=-1), "damping"),
        (lambda: NeumannAdjoint(terms=-1), "terms must be an int >= 0"),
        (lambda: PhantomAdjoint(steps=0), "steps"),
        (lambda: PhantomAdjoint(steps=2, damping=2.0), "damping"),
        (lambda: DEQ(nn.Identity(), jac_reg_probes=-1), "jac_reg_probes"),
        (lambda: DEQ(nn.Identity(), reuse_steps=-1), "reuse_steps"),
        (lambda: DEQ(nn.Identity(), reuse="no"), r"DEQ.reuse must be a bool, got 'no'"),
        (lambda: DEQ(nn.Identity(), strict=1), r"DEQ.strict must be a bool, got 1"),
    ],
)
def test_invalid_hyperparameters_fail_at_construction(make, match: str) -> None:
    with pytest.raises(DeqConfigError, match=match):
        make()


# --- tolerances and budgets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"atol": -1e-6}, "atol must be a number >= 0, got -1e-06"),
        ({"rtol": -1.0}, "rtol must be a number >= 0"),
        ({"rtol": math.nan}, "rtol must be a number >= 0, got nan"),
        ({"atol": 0.0, "rtol": 0.0}, "at least one of atol, rtol must be > 0"),
        ({"max_steps": -1}, "max_steps must be an int >= 0"),
        ({"max_steps": 2.5}, "max_steps must be an int"),
        ({"check_every": 0}, "check_every must be an int >= 1"),
        ({"divergence": 1.0}, "divergence must be > 1"),
        ({"record_trace": "no"}, r"fixed_point.record_trace must be a bool, got 'no'"),
        ({"throw": 0}, r"fixed_point.throw must be a bool, got 0"),
    ],
)
def test_bad_tolerances(kw: dict, match: str) -> None:
    with pytest.raises(DeqConfigError, match=match):
        fixed_point(_f, _z0(), solver=PICARD, **kw)


def test_bad_tolerances_fail_at_construction_of_deq_and_adjoint() -> None:
    with pytest.raises(DeqConfigError, match="at least one of atol, rtol"):
        DEQ(nn.Identity(), atol=0.0, rtol=0.0)
    with pytest.raises(DeqConfigError, match="atol must be"):
        ImplicitAdjoint(atol=-1.0)


# --- failed solves ---------------------------------------------------------------------------------------------


def test_failed_solve_with_throw_names_the_worst_samples() -> None:
    scale = torch.tensor([[1.0], [100.0], [10.0]])
    with pytest.raises(DeqSolveError) as info:
        fixed_point(lambda z: 0.99 * z + scale, _z0(), solver=PICARD, max_steps=5, rtol=1e-8, atol=1e-8)
    msg = str(info.value)
    assert msg.startswith("fixed-point solve did not converge")
    assert "3 of 3 samples failed after 5 steps" in msg
    assert "sample 0: relative residual" in msg and "sample 1" in msg and "sample 2" in msg
    assert "throw=False" in msg and "max_steps" in msg
    assert isinstance(info.value, DeqError) and isinstance(info.value, RuntimeError)
    sol = info.value.solution
    assert sol.result.name == "MAX_STEPS" and tuple(sol.value.shape) == (3, 4)
    # throw=False: no error, the same best iterate
    quiet = fixed_point(lambda z: 0.99 * z + scale, _z0(), solver=PICARD, max_steps=5, rtol=1e-8, atol=1e-8,
                        throw=False)
    assert torch.equal(quiet.value, sol.value) and not quiet.result.ok


def test_failure_message_lists_only_failed_samples() -> None:
    # sample 0 converges at once (f(z0) = z0); samples 1, 2 do not
    f = lambda z: 0.99 * z + torch.tensor([[0.0], [1.0], [2.0]])
    with pytest.raises(DeqSolveError, match="2 of 3 samples failed") as info:
        fixed_point(f, _z0(), solver=PICARD, max_steps=3)
    assert "sample 0" not in str(info.value)


def test_deq_strict_and_divergence() -> None:
    class Slow(nn.Module):
        def forward(self, z, x):
            return 0.99 * z + x

    x = torch.ones(2, 3)
    z, info = DEQ(Slow(), max_steps=3)(x)  # not strict: the best iterate comes back
    assert info.result.name == "MAX_STEPS"
    with pytest.raises(DeqSolveError, match="did not converge"):
        DEQ(Slow(), max_steps=3, strict=True)(x)

    class Blows(nn.Module):
        def forward(self, z, x):
            return 3.0 * z + x

    with pytest.raises(DeqSolveError, match="diverged"):
        DEQ(Blows(), max_steps=100)(x)


def test_deq_needs_a_starting_point() -> None:
    with pytest.raises(DeqInputError, match="DEQ needs z0"):
        DEQ(nn.Identity())({"x": torch.ones(2, 3)})
