"""Every plugin kind first-class: deq's own names win (shadowed, ``dist:name``), lazy built-in lookups, install
hints, adjoints by name, the task contract, and the conformance checks of adjoints, tasks and models."""

from __future__ import annotations

import ast
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import deq_core
from deq_core import (
    AbstractAdjoint,
    AbstractTask,
    DeqConfigError,
    FixedPointIteration,
    ImplicitAdjoint,
    NeumannAdjoint,
    PhantomAdjoint,
    PluginError,
    TaskOption,
    UnknownNameError,
    UnrolledAdjoint,
    fixed_point,
    registry,
    resolve_adjoint,
    resolve_solver,
)
from deq_core.cli import main
from deq_core.plugins import (
    AdjointEntry,
    DeqPluginWarning,
    NameConflictError,
    PluginManager,
    PluginSource,
    SolverEntry,
    TaskEntry,
    builtin,
    hookimpl,
    use_manager,
)
from deq_core.testing import check_adjoint, check_model, check_task

SRC = Path(deq_core.__file__).parent


class Solvers:
    """Provides solvers ``names``, each a FixedPointIteration with damping ``tag``."""

    def __init__(self, *names: str, damping: float = 0.5) -> None:
        self.names, self.damping = names, damping

    @hookimpl
    def deq_solvers(self):
        d = self.damping
        return [SolverEntry(n, lambda damping=d: FixedPointIteration(damping=damping), f"solver {n}")
                for n in self.names]


def own(name: str, plugin: object) -> PluginSource:
    """A plugin source that belongs to one of deq's own distributions."""
    return PluginSource(name, lambda: plugin, name, "0.1.0", f"{name.replace('-', '_')}.plugin")


def third(name: str, load) -> PluginSource:
    return PluginSource(name, load if callable(load) and not hasattr(load, "deq_solvers") else (lambda: load),
                        name, "9.9", f"{name.replace('-', '_')}.plugin")


def quiet(mgr: PluginManager) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mgr.plugins()
    return [str(w.message) for w in caught if issubclass(w.category, DeqPluginWarning)]


# -- deq's own names win ---------------------------------------------------------------------------------
def test_deqs_own_name_wins_and_the_duplicate_is_shadowed():
    mgr = PluginManager([own("deq-core", builtin), own("deq-solvers", Solvers("anderson", damping=0.9)),
                         third("hijack", Solvers("fixed-point", "anderson", "extra", damping=0.1))])
    assert quiet(mgr) == []  # shadowing is not a problem worth a warning; `deq plugins` shows it
    with use_manager(mgr):
        assert registry.get_solver("fixed-point") == FixedPointIteration()
        assert registry.get_solver("anderson") == FixedPointIteration(damping=0.9)
        assert registry.get_solver("extra") == FixedPointIteration(damping=0.1)
        assert registry.get_solver("hijack:anderson") == FixedPointIteration(damping=0.1)
        assert registry.get_solver("hijack:fixed-point") == FixedPointIteration(damping=0.1)
        assert registry.get_solver("deq-solvers:anderson") == FixedPointIteration(damping=0.9)
        assert registry.get_solver("deq-core:fixed-point") == FixedPointIteration()
        assert mgr.provider("solver", "hijack:anderson") == "hijack"
        assert mgr.provider("solver", "anderson") == "deq-solvers"
        sol = fixed_point(lambda z: 0.5 * z + 1, torch.zeros(1, 2))
        assert sol.stats.solver["name"] == "fixed-point"
        info = {p.name: p for p in registry.plugins()}
    assert info["hijack"].status == "shadowed" and info["hijack"].shadowed == ("solver anderson", "solver fixed-point")
    assert "'hijack:NAME'" in info["hijack"].error
    assert info["deq-solvers"].status == "active" and info["deq-solvers"].first_party
    assert dict(mgr.shadowed()["solver"]) == {"anderson": ("hijack",), "fixed-point": ("hijack",)}
    assert "anderson" in mgr.entries("solver") and mgr.conflicts()["solver"] == {}


def test_two_third_party_plugins_on_a_new_name_conflict_and_dist_name_picks_one():
    mgr = PluginManager.from_plugins([("a", Solvers("dup", damping=0.2)), ("b", Solvers("dup", damping=0.3))])
    assert len(quiet(mgr)) == 1
    with use_manager(mgr):
        with pytest.raises(NameConflictError, match="Pick one as 'a:dup'"):
            registry.get_solver("dup")
        assert registry.get_solver("a:dup").damping == 0.2 and registry.get_solver("b:dup").damping == 0.3


def test_qualified_names_report_unknown_plugins_and_names():
    mgr = PluginManager.from_plugins([("mine", Solvers("one"))])
    with pytest.raises(UnknownNameError, match="unknown plugin 'mnie'. Did you mean 'mine'"):
        mgr.lookup("solver", "mnie:one")
    with pytest.raises(UnknownNameError, match="unknown solver 'mine:two'.*'mine:one'"):
        mgr.lookup("solver", "mine:two")


names = st.sampled_from(["fixed-point", "anderson", "alpha", "beta"])
plugin_specs = st.lists(st.tuples(st.booleans(), st.lists(names, min_size=1, max_size=3, unique=True)),
                        min_size=1, max_size=4)


@given(plugin_specs)
def test_name_resolution_rule(specs):
    """Whatever plugins claim what: deq's own win; else one claimant wins; else a conflict; dist:name always works."""
    sources = []
    for i, (first_party, claimed) in enumerate(specs):
        name = ("deq-core", "deq-solvers", "deq-tasks", "deq-inr")[i] if first_party else f"third-{i}"
        sources.append(PluginSource(name, lambda c=claimed, i=i: Solvers(*c, damping=(i + 1) / 8), name, "1"))
    mgr = PluginManager(sources)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeqPluginWarning)
        for n in ("fixed-point", "anderson", "alpha", "beta"):
            claims = [(s, (i + 1) / 8) for i, (s, (_, c)) in enumerate(zip(sources, specs)) if n in c]
            winners = [c for c in claims if c[0].first_party] or claims
            if not claims:
                with pytest.raises(UnknownNameError):
                    mgr.lookup("solver", n)
            elif len(winners) == 1:
                assert mgr.create("solver", n).damping == winners[0][1]
            else:
                with pytest.raises(NameConflictError):
                    mgr.lookup("solver", n)
            for source, damping in claims:
                assert mgr.create("solver", f"{source.name}:{n}").damping == damping


# -- lazy: built-in lookups do not import third-party plugins ------------------------------------------------
def test_a_slow_third_party_plugin_does_not_delay_a_builtin_lookup():
    calls = []

    def slow_import():
        calls.append(time.perf_counter())
        time.sleep(2.0)
        return Solvers("slow-one")

    mgr = PluginManager([own("deq-core", builtin), third("slow", slow_import)])
    with use_manager(mgr):
        t = time.perf_counter()
        assert registry.get_solver("fixed-point") == FixedPointIteration()
        assert resolve_adjoint("implicit") == ImplicitAdjoint()
        assert time.perf_counter() - t < 1.0 and calls == []
        assert mgr.loaded_names() == ("deq-core",)
        assert registry.get_solver("slow-one").damping == 0.5  # a name not among deq's own: now it is imported
        assert len(calls) == 1 and mgr.loaded_names() == ("deq-core", "slow")
        registry.solvers()
        assert len(calls) == 1


def test_strict_mode_loads_every_plugin_up_front():
    def fail():
        raise ImportError("no module named 'gone'")

    mgr = PluginManager([own("deq-core", builtin), third("gone", fail)], strict=True)
    with pytest.raises(PluginError, match="gone"):
        mgr.lookup("solver", "fixed-point")


# -- install hints ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "name", "dist"), [
    ("solver", "anderson", "deq-solvers"), ("adjoint", "shine", "deq-solvers"), ("task", "inverse", "deq-tasks"),
    ("model", "isiren", "deq-inr"), ("model", "imfn-gabor-512", "deq-inr"),
])
def test_a_name_of_a_missing_deq_package_says_what_to_install(kind, name, dist):
    with use_manager(PluginManager.from_plugins([builtin])):
        with pytest.raises(UnknownNameError, match=f"unknown {kind} '{name}'. It comes with {dist}: "
                                                   f"pip install {dist}.") as info:
            registry_get(kind, name)
    assert info.value.hint.endswith(f"pip install {dist}.")


def registry_get(kind: str, name: str):
    return {"solver": registry.get_solver, "adjoint": registry.get_adjoint, "task": registry.get_task,
            "model": registry.get_model}[kind](name)


def test_a_disabled_deq_package_is_named_as_disabled():
    mgr = PluginManager([own("deq-core", builtin), own("deq-solvers", Solvers("anderson"))], disabled=["deq-solvers"])
    with pytest.raises(UnknownNameError, match="deq-solvers, which is installed but disabled"):
        mgr.lookup("solver", "anderson")


@pytest.mark.parametrize(("command", "dist"), [("tasks", "deq-tasks"), ("inr", "deq-inr")])
def test_a_command_of_a_missing_deq_package_says_what_to_install(command, dist, capsys):
    with use_manager(PluginManager.from_plugins([builtin])):
        code = main([command, "list"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [f"error: unknown command '{command}'. It comes with {dist}: pip install {dist}. "
                                f"Commands: plugins. (see 'deq --help')"]


def test_a_mistyped_command_gets_the_closest_match(capsys):
    with use_manager(PluginManager.from_plugins([builtin])):
        assert main(["plugnis"]) == 2
    assert "error: unknown command 'plugnis'. Did you mean 'plugins'?" in capsys.readouterr().err


def test_deq_plugins_shows_hooks_and_aliases(capsys):
    class P:
        @hookimpl
        def deq_solvers(self):
            return [SolverEntry("heavy", FixedPointIteration, "s", aliases=("hb", "momentum"))]

        @hookimpl
        def deq_adjoints(self):
            return [AdjointEntry("one-step", lambda: PhantomAdjoint(steps=1, damping=1.0), "one step")]

    with use_manager(PluginManager.from_plugins([("p", P())])):
        assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("p ")]
    assert row.split()[:4] == ["p", "-", "active", "solvers,adjoints"]
    assert "solvers: heavy (hb, momentum); adjoints: one-step" in row


class Twice(AbstractAdjoint):
    """Twice the Jacobian-free gradient (module level: adjoints must pickle)."""

    name: ClassVar[str] = "twice"

    def reference(self, J, v):
        return 2 * v

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        z = z_star.detach()
        with torch.enable_grad():
            fz = f(z)
        return z_star.detach() + 2 * (fz - fz.detach())


class Liar(NeumannAdjoint):
    """A truncated series claiming to be exact."""

    exact: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class OffByOne(NeumannAdjoint):
    """States terms + 1, computes terms."""

    def reference(self, J, v):
        return NeumannAdjoint(terms=self.terms + 1).reference(J, v)


class Unstated(AbstractAdjoint):
    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        return z_star


# -- adjoints by name ------------------------------------------------------------------------------------
def test_builtin_adjoints_are_registered_and_resolved_through_the_registry(core_registry):
    assert list(registry.adjoints()) == ["implicit", "neumann", "phantom", "unrolled"]
    assert resolve_adjoint("neumann", terms=2) == NeumannAdjoint(terms=2)
    assert resolve_adjoint("phantom") == PhantomAdjoint()
    assert isinstance(resolve_adjoint("unrolled"), UnrolledAdjoint)
    adj = NeumannAdjoint(terms=1)
    assert resolve_adjoint(adj) is adj and resolve_adjoint(None) is None
    with pytest.raises(DeqConfigError, match="only accepted with an adjoint name"):
        resolve_adjoint(adj, terms=3)
    with pytest.raises(DeqConfigError, match="must be an AbstractAdjoint"):
        resolve_adjoint(3)  # type: ignore[arg-type]
    with pytest.raises(DeqConfigError, match="only accepted with a solver name"):
        resolve_solver(FixedPointIteration(), damping=0.5)


def test_a_plugin_adjoint_is_used_by_name_everywhere():
    class P:
        @hookimpl
        def deq_adjoints(self):
            return [AdjointEntry("twice", Twice, "2 x the Jacobian-free gradient"),
                    AdjointEntry("not-one", lambda: "oops", "builds a str")]

    with use_manager(PluginManager.from_plugins([("p", P())])):
        x = torch.ones(1, 2, requires_grad=True)
        fixed_point(lambda z: 0.5 * z + x, torch.zeros(1, 2), adjoint="twice").value.sum().backward()
        assert x.grad.tolist() == [[2.0, 2.0]]
        assert deq_core.DEQ(lambda z, x: z, adjoint="p:twice").adjoint.name == "twice"
        with pytest.raises(PluginError, match="built as str, expected an AbstractAdjoint"):
            registry.get_adjoint("not-one")
        check_adjoint(Twice(), max_examples=2)


def test_check_adjoint_passes_the_builtins():
    for adjoint in (ImplicitAdjoint(), NeumannAdjoint(terms=2), PhantomAdjoint(steps=3, damping=0.7),
                    UnrolledAdjoint()):
        check_adjoint(adjoint, max_examples=2)


def test_check_adjoint_catches_a_wrong_gradient_and_a_false_claim():
    with pytest.raises(AssertionError, match="implicit-function-theorem gradient"):
        check_adjoint(Liar(terms=1), max_examples=2)

    with pytest.raises(AssertionError, match="differs from its reference"):
        check_adjoint(OffByOne(terms=1), max_examples=2)

    with pytest.raises(AssertionError, match="does not state its gradient.*override reference"):
        check_adjoint(Unstated(), max_examples=1)


def test_exact_adjoint_reference_is_the_dense_solve():
    J = torch.tensor([[[0.5, 0.1], [0.0, 0.25]]], dtype=torch.float64)
    v = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    u = ImplicitAdjoint().reference(J, v)
    torch.testing.assert_close(u - (J.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1), v)
    series = NeumannAdjoint(terms=200).reference(J, v)
    torch.testing.assert_close(series, u)
    torch.testing.assert_close(PhantomAdjoint(steps=400, damping=0.5).reference(J, v), u)


# -- the task contract -----------------------------------------------------------------------------------
class Sum(AbstractTask):
    name = "sum-task"

    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = dataclasses.field(default=3, metadata={"help": "Count to n."})
        scale: float | None = dataclasses.field(default=None, metadata={"help": "Optional factor."})
        mode: str = dataclasses.field(default="plain", metadata={"help": "plain or squared."})
        save: bool = dataclasses.field(default=True, metadata={"help": "Write a checkpoint."})

    def run(self, out, *, checkpoint=None, progress=True):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        total = float(sum(range(self.config.n + 1))) * (self.config.scale or 1.0)
        if checkpoint is not None:
            total = json.loads(Path(checkpoint).read_text())["total"]
        elif self.config.save:
            (out / "model.safetensors").write_text(json.dumps({"total": total}))
        metrics = {"total": total, "resumed": checkpoint is not None}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return metrics


def test_task_options_come_from_the_config():
    opts = {o.name: o for o in Sum.options()}
    assert list(opts) == ["n", "scale", "mode", "save"]
    assert opts["n"] == TaskOption("n", int, 3, "Count to n.")
    assert opts["n"].convert("7") == 7 and opts["scale"].convert("none") is None
    assert opts["scale"].convert("0.5") == 0.5 and opts["save"].convert("false") is False
    assert opts["mode"].convert("squared") == "squared"
    with pytest.raises(DeqConfigError, match="option 'n' expects int, got 'seven'"):
        opts["n"].convert("seven")


def test_task_construction_checks_options():
    assert Sum(n=5).config == Sum.Config(n=5)
    assert Sum({"n": 2}, scale=2.0).config == Sum.Config(n=2, scale=2.0)
    assert Sum(Sum.Config(n=4)).config.n == 4
    with pytest.raises(DeqConfigError, match="task 'sum-task' has no option 'm'; valid options: n, scale, mode, save"):
        Sum(m=1)
    with pytest.raises(DeqConfigError, match="no option 'mdoe' \\(did you mean 'mode'\\?\\)"):
        Sum(mdoe="plain")
    with pytest.raises(DeqConfigError, match="config must be a Config"):
        Sum(3)


def test_check_task_runs_the_task_and_its_checkpoint(tmp_path):
    metrics = check_task(Sum(n=4), tmp_path / "run")
    assert metrics == {"total": 10.0, "resumed": False}
    assert json.loads((tmp_path / "run-from-checkpoint" / "metrics.json").read_text())["resumed"] is True


def test_check_task_catches_broken_tasks(tmp_path):
    class NoMetrics(Sum):
        def run(self, out, *, checkpoint=None, progress=True):
            Path(out).mkdir(parents=True, exist_ok=True)
            return {}

    class NoHelp(Sum):
        @dataclasses.dataclass(frozen=True)
        class Config:
            n: int = 3

    with pytest.raises(AssertionError, match="did not write"):
        check_task(NoMetrics(), tmp_path / "a")
    with pytest.raises(AssertionError, match="options without help text"):
        check_task(NoHelp(), tmp_path / "b")
    with pytest.raises(AssertionError, match="expected an AbstractTask"):
        check_task(object(), tmp_path / "c")  # type: ignore[arg-type]


def test_a_task_plugin_is_built_by_name():
    class P:
        @hookimpl
        def deq_tasks(self):
            return [TaskEntry("sum-task", Sum, "Sums.")]

    with use_manager(PluginManager.from_plugins([("p", P())])):
        task = registry.get_task("sum-task", n=2)
        assert isinstance(task, Sum) and task.config.n == 2
        with pytest.raises(DeqConfigError, match="no option 'x'"):
            registry.get_task("sum-task", x=1)


# -- models ----------------------------------------------------------------------------------------------
def test_check_model():
    check_model(torch.nn.Linear(3, 2))
    check_model(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()), torch.randn(5, 3))

    class Nan(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * float("nan")

    with pytest.raises(AssertionError, match="non-finite outputs"):
        check_model(Nan(3, 2))
    with pytest.raises(AssertionError, match="expected an nn.Module"):
        check_model(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="pass example="):
        check_model(torch.nn.Tanh())


def test_builtin_opteq_model_conforms(core_registry):
    model = registry.get_model("opteq", in_features=3, width=4)
    check_model(model, torch.randn(2, 3))


# -- structure -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["_driver.py", "_adjoint.py", "_loop.py", "_solver.py"])
def test_numerical_modules_do_not_import_the_registry_at_module_level(module):
    tree = ast.parse((SRC / module).read_text(encoding="utf-8"))
    imported = []
    for node in tree.body:  # module level only: a lazy import inside a function is allowed
        if isinstance(node, ast.ImportFrom):
            imported += [node.module or ""] + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
    assert not [n for n in imported if n in ("registry", "plugins") or n.split(".")[-1] in ("registry", "plugins")]
