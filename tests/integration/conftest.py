"""Integration tests run with no ``DEQ_*`` variables from the caller's environment."""

from __future__ import annotations

import os

import pytest

from deq_core.testing import register_profiles

# deq's Hypothesis profiles (dev, ci, explore): `nox -s fuzz` passes --hypothesis-profile=explore to every suite
register_profiles()


@pytest.fixture(autouse=True)
def _no_deq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("DEQ_")]:
        monkeypatch.delenv(key)

