"""Conformance kit for fixed-point solvers: Hypothesis strategies for contractions with known fixed points
and :func:`check_solver`, which every solver (deq-core's, deq-solvers', third-party plugins') runs alike.

Needs Hypothesis (``pip install deq-core[testing]``).

Example (the whole conformance test of a plugin)::

    from deq_core.testing import check_solver
    from my_plugin import MySolver

    def test_my_solver_conforms():
        check_solver(MySolver(m=5))                         # float32 and float64, 20 examples each

    def test_my_solver_conforms_float64_quick():
        check_solver(MySolver(m=5), dtype=torch.float64, max_examples=5)

Hypothesis profiles shared by every deq test suite (``dev`` random, ``ci`` derandomized when ``CI`` is set,
``explore`` many random examples), one line in a plugin's ``conftest.py``::

    from deq_core.testing import register_profiles
    register_profiles()

Strategies for your own properties::

    from hypothesis import given
    from deq_core.testing import contractions

    @given(contractions(torch.float64))
    def test_my_property(c):          # c.f, c.z0, c.z_star, c.rho, c.error(z), c.residual(z)
        ...
"""

try:
    import hypothesis  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "deq_core.testing needs Hypothesis: pip install 'deq-core[testing]' (or pip install hypothesis)"
    ) from e

from ._check import DEFAULT_TOLERANCES, check_solver
from ._profiles import EXPLORE_FACTOR, PROFILES, current_profile, example_budget, register_profiles
from ._strategies import (
    Contraction,
    affine_contractions,
    contractions,
    make_contraction,
    state_shapes,
    tanh_contractions,
)
from ._torchrun import run_torchrun

__all__ = [
    "DEFAULT_TOLERANCES", "EXPLORE_FACTOR", "PROFILES", "Contraction", "affine_contractions", "check_solver",
    "contractions", "current_profile", "example_budget", "make_contraction", "register_profiles", "run_torchrun",
    "state_shapes", "tanh_contractions",
]
