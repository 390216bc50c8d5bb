"""deq-solvers registers its solvers through the ``deq`` entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from deq_core import UnknownNameError, fixed_point, registry
from deq_core.plugins import PluginManager, SolverEntry, use_manager
from deq_solvers import Anderson, Broyden, FusedAnderson, Neumann, Picard, Reversible, plugin

EXPECTED = {"picard": Picard, "anderson": Anderson, "broyden": Broyden, "neumann": Neumann,
            "fused-anderson": FusedAnderson, "reversible": Reversible}


def test_entry_point_is_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="deq")}
    assert eps.get("deq-solvers") == "deq_solvers.plugin"


def test_hook_yields_valid_entries():
    entries = list(plugin.deq_solvers())
    assert all(isinstance(e, SolverEntry) for e in entries)
    assert {e.name: e.factory for e in entries} == EXPECTED
    names = [n for e in entries for n in e.names]
    assert "fixed-point" not in names  # deq-core owns that name
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name,cls", sorted(EXPECTED.items()))
def test_registry_builds_each_solver(name, cls):
    solver = registry.get_solver(name)
    assert type(solver) is cls and solver.name == name
    assert name in registry.solvers()


def test_registry_passes_options_and_rejects_unknown_ones():
    assert registry.get_solver("anderson", m=3).m == 3
    with pytest.raises(Exception, match="m_size"):
        registry.get_solver("anderson", m_size=3)
    with pytest.raises(UnknownNameError, match="anderson"):
        registry.get_solver("andersen")


def test_name_resolves_in_fixed_point():
    import torch

    sol = fixed_point(lambda z: 0.5 * z + 1, torch.zeros(2, 3), solver="broyden", adjoint=None)
    assert sol.stats.solver["name"] == "broyden"


def test_fresh_manager_with_only_this_plugin():
    with use_manager(PluginManager.from_plugins([plugin])):
        assert set(registry.solvers()) >= set(EXPECTED)
