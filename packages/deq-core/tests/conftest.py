"""Shared test setup: Hypothesis profiles ``dev`` (default) and ``ci`` (``CI`` set), both derandomized."""

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=20, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=20, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def core_registry() -> Iterator[None]:
    """Resolve names with deq-core's built-in plugin only (independent of what else is installed)."""
    from deq_core.plugins import PluginManager, builtin, use_manager

    with use_manager(PluginManager.from_plugins([builtin])):
        yield
