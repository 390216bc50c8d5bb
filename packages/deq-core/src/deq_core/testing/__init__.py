"""Conformance kit for every plugin kind: Hypothesis strategies for contractions with known fixed points,
:func:`check_solver` (solvers), :func:`check_adjoint` (adjoints, against their own stated definition),
:func:`check_task` (the :class:`deq_core.AbstractTask` contract) and :func:`check_model` (models); deq's own
plugins and third-party ones run them alike.

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
from ._cli import CliResult, run_cli
from ._kinds import check_adjoint, check_model, check_task
from ._profiles import EXPLORE_FACTOR, PROFILES, current_profile, example_budget, register_profiles
from ._ranks import run_ranks
from ._strategies import (
    Contraction,
    NoFixedPoint,
    affine_contractions,
    contractions,
    make_contraction,
    no_fixed_point_maps,
    state_shapes,
    tanh_contractions,
)
from ._torchrun import run_torchrun

__all__ = [
    "CliResult", "DEFAULT_TOLERANCES", "EXPLORE_FACTOR", "PROFILES", "Contraction", "NoFixedPoint",
    "affine_contractions", "check_adjoint", "check_model", "check_solver", "check_task", "contractions",
    "current_profile", "example_budget", "make_contraction", "no_fixed_point_maps", "register_profiles",
    "run_cli", "run_ranks", "run_torchrun", "state_shapes", "tanh_contractions",
]
