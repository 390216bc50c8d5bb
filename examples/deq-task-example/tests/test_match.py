"""The example task keeps deq's task contract and finds the input."""

import pytest
from deq_task_example.task import MatchEquilibrium

from deq_core import DeqConfigError
from deq_core.testing import check_task


def test_passes_the_deq_task_kit(tmp_path):
    metrics = check_task(MatchEquilibrium(steps=60), tmp_path / "run")
    assert metrics["loss"] < 1e-2  # from 2.5 at x = 0


def test_bad_options_are_refused():
    with pytest.raises(DeqConfigError, match="lr > 0"):
        MatchEquilibrium(lr=0)
    with pytest.raises(DeqConfigError, match="no option 'stpes'"):
        MatchEquilibrium(stpes=3)
