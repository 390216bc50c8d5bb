"""deq_core.registry: a read-only view over an injected plugin manager."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch

from deq_core import (
    DEQ,
    DeqConfigError,
    FixedPointIteration,
    ImplicitAdjoint,
    PluginError,
    UnknownNameError,
    fixed_point,
    registry,
)
from deq_core.plugins import (
    DeqPluginWarning,
    ModelEntry,
    NameConflictError,
    PluginManager,
    PluginSource,
    SolverEntry,
    TaskEntry,
    builtin,
    hookimpl,
    use_manager,
)


@dataclass
class Toy:
    width: int = 4
    depth: int = 1


class Core:
    """Stands in for deq-core's builtin plugin, whose list grows over time."""

    @hookimpl
    def deq_solvers(self):
        return [SolverEntry("fixed-point", FixedPointIteration, "damped Picard")]

    @hookimpl
    def deq_adjoints(self):  # fixed_point and DEQ resolve their default adjoint "implicit" by name
        return builtin.deq_adjoints()


class Fake:
    @hookimpl
    def deq_solvers(self):
        return [
            SolverEntry("half-picard", lambda damping=0.5: FixedPointIteration(damping=damping), "Picard at 0.5",
                        aliases=("half",)),
            SolverEntry("not-a-solver", lambda: "oops", "factory returns a str"),
        ]

    @hookimpl
    def deq_tasks(self):
        return [TaskEntry("toy-task", Toy, "a toy task", tags=("cpu",))]

    @hookimpl
    def deq_models(self):
        return [ModelEntry("toy-model", Toy, "a toy model", aliases=("toy",)),
                ModelEntry("free-model", lambda **kw: kw, "takes any option")]


def broken_source():
    def load():
        raise ImportError("cannot import name 'thing'")
    return PluginSource("broken-one", load, "broken-one", "0.3")


@pytest.fixture
def mgr():
    m = PluginManager.from_plugins([("deq-core", Core()), ("fake", Fake()), broken_source()], include_builtin=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeqPluginWarning)
        m.plugins()
    with use_manager(m):
        yield m


def test_solvers_is_a_sorted_read_only_mapping(mgr):
    table = registry.solvers()
    assert list(table) == ["fixed-point", "half-picard", "not-a-solver"]
    assert isinstance(table["fixed-point"], SolverEntry)
    with pytest.raises(TypeError):
        table["x"] = table["fixed-point"]  # type: ignore[index]
    assert not hasattr(registry, "register_solver")


def test_get_solver_with_options_and_aliases(mgr):
    assert registry.get_solver("fixed-point") == FixedPointIteration()
    assert registry.get_solver("fixed-point", damping=0.3) == FixedPointIteration(damping=0.3)
    assert registry.get_solver("half") == FixedPointIteration(damping=0.5)
    assert registry.get_solver("Half_Picard", damping=0.2) == FixedPointIteration(damping=0.2)  # normalized


def test_unknown_solver_lists_known_names_and_suggests(mgr):
    with pytest.raises(UnknownNameError) as info:
        registry.get_solver("fixed-piont")
    err = info.value
    assert isinstance(err, KeyError)
    assert err.suggestion == "fixed-point"
    assert "Did you mean 'fixed-point'?" in str(err)
    assert "'fixed-point', 'half', 'half-picard', 'not-a-solver'" in str(err)


def test_unknown_option_names_the_valid_ones(mgr):
    with pytest.raises(DeqConfigError, match=r"solver 'fixed-point' has no option 'dampnig' \(did you mean "
                                             r"'damping'\?\); valid options: damping"):
        registry.get_solver("fixed-point", dampnig=0.5)
    with pytest.raises(DeqConfigError, match="valid options: width, depth"):
        registry.get_model("toy", height=3)


def test_bad_option_value_is_the_solvers_own_error(mgr):
    with pytest.raises(DeqConfigError, match="damping must be in"):
        registry.get_solver("fixed-point", damping=2.0)


def test_factory_returning_a_non_solver_is_a_plugin_error(mgr):
    with pytest.raises(PluginError, match=r"'not-a-solver' \(plugin 'fake'\) was built as str"):
        registry.get_solver("not-a-solver")


def test_tasks_and_models(mgr):
    assert list(registry.tasks()) == ["toy-task"]
    assert list(registry.models()) == ["free-model", "toy-model"]
    assert registry.get_task("toy-task", width=8) == Toy(width=8)
    assert registry.get_model("toy", depth=3) == Toy(depth=3)
    assert registry.get_model("free-model", anything=1) == {"anything": 1}
    with pytest.raises(UnknownNameError, match="unknown task 'toy-tsak'. Did you mean 'toy-task'"):
        registry.get_task("toy-tsak")
    with pytest.raises(DeqConfigError, match="must be a str"):
        registry.get_model(3)  # type: ignore[arg-type]


def test_plugins_and_broken(mgr):
    info = {p.name: p for p in registry.plugins()}
    assert set(info) == {"deq-core", "fake", "broken-one"}
    assert info["fake"].status == "active"
    assert info["fake"].provides == {"solvers": ("half-picard", "not-a-solver"), "adjoints": (),
                                     "tasks": ("toy-task",), "models": ("free-model", "toy-model"), "commands": ()}
    assert info["fake"].hooks == ("deq_solvers", "deq_tasks", "deq_models")
    assert info["fake"].aliases == {"half-picard": ("half",), "toy-model": ("toy",)}
    (broken,) = registry.broken()
    assert (broken.name, broken.version, broken.status) == ("broken-one", "0.3", "broken")
    assert broken.error == "ImportError: cannot import name 'thing'"
    assert broken.to_dict()["provides"] == {"solvers": [], "adjoints": [], "tasks": [], "models": [], "commands": []}


def test_conflicted_name_raises_and_other_names_work():
    class Dup:
        @hookimpl
        def deq_solvers(self):
            return [SolverEntry("fixed-point", FixedPointIteration, "a second fixed-point")]

    m = PluginManager.from_plugins([("deq-core", Core()), ("dup", Dup()), ("fake", Fake())], include_builtin=False)
    with use_manager(m):
        with pytest.warns(DeqPluginWarning, match="'deq-core', 'dup' all provide solver 'fixed-point'"):
            with pytest.raises(NameConflictError, match="'deq-core', 'dup'"):
                registry.get_solver("fixed-point")
        assert registry.get_solver("half-picard") == FixedPointIteration(damping=0.5)
        assert "fixed-point" not in registry.solvers()
        statuses = {p.name: p.status for p in registry.plugins()}
        assert statuses == {"deq-core": "conflicted", "dup": "conflicted", "fake": "active"}


def test_names_resolve_through_the_injected_manager_in_fixed_point_and_deq(mgr):
    f = lambda z: 0.5 * z + 1.0  # noqa: E731
    sol = fixed_point(f, torch.zeros(2, 3), solver="half")
    assert sol.stats.solver["name"] == "fixed-point"  # FixedPointIteration.name
    torch.testing.assert_close(sol.value, torch.full((2, 3), 2.0), rtol=1e-3, atol=1e-3)
    adj = ImplicitAdjoint("fixed-point", damping=0.5)
    assert adj.solver == FixedPointIteration(damping=0.5)
    with pytest.raises(UnknownNameError, match="Did you mean 'half-picard'"):
        DEQ(lambda z, x: z, solver="half-picrad")
    with pytest.raises(DeqConfigError, match="no option 'dampin'"):
        ImplicitAdjoint("fixed-point", dampin=0.5)


def test_default_manager_over_installed_entry_points_provides_fixed_point():
    m = PluginManager.from_entry_points(environ={})
    with warnings.catch_warnings():  # other deq packages installed next to deq-core may be mid-development
        warnings.simplefilter("ignore", DeqPluginWarning)
        with use_manager(m):
            assert registry.get_solver("fixed-point") == FixedPointIteration()
            core = {p.name: p for p in registry.plugins()}["deq-core"]
    assert (core.distribution, core.status, core.module) == ("deq-core", "active", "deq_core.plugins.builtin")
    assert "fixed-point" in core.provides["solvers"]
    assert core.provides == builtin_provides()


def builtin_provides():
    m = PluginManager.from_plugins([builtin])
    return m.plugins()[0].provides


def test_old_spellings_name_the_new_one_by_class_and_by_name_unless_the_solver_has_that_field():
    with pytest.raises(DeqConfigError, match="no option 'beta': it is spelled damping"):
        FixedPointIteration(beta=0.5)
    with pytest.raises(DeqConfigError, match=r"solver 'fixed-point' has no option 'tol' \(it is spelled atol="):
        registry.get_solver("fixed-point", tol=1e-3)
    with pytest.raises(DeqConfigError, match=r"has no option 'dampnig' \(did you mean 'damping'\?\)"):
        registry.get_solver("fixed-point", dampnig=0.5)

    @dataclass(frozen=True)
    class Mine(FixedPointIteration):   # a plugin's own field of that name is not an old spelling
        beta: float = 0.3

    assert Mine(beta=0.5).beta == 0.5
