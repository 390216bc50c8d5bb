"""The examples in the docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["_anderson", "_broyden", "_picard", "_neumann", "_fused", "_reversible", "_shine"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"deq_solvers.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
