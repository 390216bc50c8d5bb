"""Shared test setup: deq's Hypothesis profiles (``dev`` random, ``ci`` derandomized when ``CI`` is set)."""

from collections.abc import Iterator

import pytest
import torch

from deq_core.testing import register_profiles

register_profiles()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def core_registry() -> Iterator[None]:
    """Resolve names with deq-core's built-in plugin only (independent of what else is installed)."""
    from deq_core.plugins import PluginManager, builtin, use_manager

    with use_manager(PluginManager.from_plugins([builtin])):
        yield
