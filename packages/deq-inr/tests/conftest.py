"""Test setup: deq's shared Hypothesis profiles (``dev`` random, ``ci`` derandomized when ``CI`` is set)."""

import pytest
import torch

from deq_core.testing import register_profiles

register_profiles()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
