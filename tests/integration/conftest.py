"""Integration tests run with no ``DEQ_*`` variables from the caller's environment."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_deq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("DEQ_")]:
        monkeypatch.delenv(key)

