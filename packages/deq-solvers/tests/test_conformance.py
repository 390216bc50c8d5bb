"""Every solver passes deq-core's conformance kit (``deq_core.testing.check_solver``)."""

from __future__ import annotations

import pytest
import torch

from deq_core.testing import check_solver
from deq_solvers import Anderson, Broyden, FusedAnderson, Neumann, Picard, Reversible, triton_status


@pytest.mark.parametrize("solver", [
    Picard(), Picard(damping=0.9, adaptive=True), Anderson(), Anderson(m=2, damping=0.8), Broyden(),
    Broyden(m=3, line_search=True), Neumann(), Reversible(), Reversible(damping=0.8),
], ids=repr)
def test_check_solver(solver):
    check_solver(solver, max_examples=6)


def test_check_solver_by_name():
    check_solver("anderson", dtype=torch.float64, max_examples=3)


@pytest.mark.slow  # about 3 CPU-minutes in the Triton interpreter: the CI tier (`nox -s tests` with CI set)
@pytest.mark.skipif(triton_status() is not None, reason=str(triton_status()))
def test_check_solver_fused_interpreter():
    # Triton interpreter on CPU: small examples only (it is slow)
    check_solver(FusedAnderson(block=16), dtype=torch.float64, max_examples=2, max_steps=200)
