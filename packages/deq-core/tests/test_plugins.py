"""The plugin system: records, guarded loading, conflicts, strict / disabled modes, entry-point discovery."""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
import warnings
from pathlib import Path

import click
import pytest

from deq_core import DeqConfigError, FixedPointIteration, PluginError, UnknownNameError, registry
from deq_core.plugins import (
    HOOK_NAMES,
    DeqPluginWarning,
    ModelEntry,
    NameConflictError,
    PluginManager,
    PluginSource,
    SolverEntry,
    TaskEntry,
    _hookspecs,
    builtin,
    env_settings,
    get_manager,
    hookimpl,
    use_manager,
)

REPO = Path(__file__).resolve().parents[3]


class SolverPlugin:
    """A plugin providing solvers with the given names (each a FixedPointIteration with its own damping)."""

    def __init__(self, *names: str, aliases: dict[str, tuple[str, ...]] | None = None) -> None:
        self.names, self.aliases = names, aliases or {}

    @hookimpl
    def deq_solvers(self):
        return [SolverEntry(n, FixedPointIteration, f"solver {n}", self.aliases.get(n, ())) for n in self.names]


class RaisingHook:
    @hookimpl
    def deq_solvers(self):
        raise RuntimeError("hook exploded")


def quiet(mgr: PluginManager):
    """Load ``mgr`` while recording its warnings; returns the list of warning messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mgr.plugins()
    return [str(w.message) for w in caught if issubclass(w.category, DeqPluginWarning)]


# -- records ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Anderson", "fixed_point", "-a", "a-", "a--b", "1abc", "", "a b", None, 3])
def test_entry_rejects_names_that_are_not_lower_kebab(name):
    with pytest.raises(DeqConfigError, match="lower-case kebab"):
        SolverEntry(name, FixedPointIteration, "x")


def test_entry_validates_fields_and_is_frozen():
    with pytest.raises(DeqConfigError, match="callable"):
        SolverEntry("a", 3, "x")
    with pytest.raises(DeqConfigError, match="one-line"):
        SolverEntry("a", FixedPointIteration, "two\nlines")
    with pytest.raises(DeqConfigError, match="tuple of str"):
        SolverEntry("a", FixedPointIteration, "x", aliases="b")
    with pytest.raises(DeqConfigError, match="kebab"):
        SolverEntry("a", FixedPointIteration, "x", aliases=("B",))
    with pytest.raises(DeqConfigError, match="repeats"):
        SolverEntry("a", FixedPointIteration, "x", aliases=("b", "a"))
    e = TaskEntry("a", dict, " padded ", aliases=["b"], tags=["gpu"])
    assert e.aliases == ("b",) and e.tags == ("gpu",) and e.summary == "padded" and e.names == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.name = "c"  # type: ignore[misc]


def test_option_names_from_signature():
    assert SolverEntry("a", FixedPointIteration, "x").option_names() == ("damping",)
    assert ModelEntry("m", lambda width, *, depth=2: None, "x").option_names() == ("width", "depth")
    assert ModelEntry("m", lambda **kw: None, "x").option_names() is None


# -- the built-in plugin and lazy loading -------------------------------------------------------------------
def test_builtin_plugin_registers_fixed_point():
    mgr = PluginManager.from_plugins([("deq-core", builtin)])
    assert mgr.entries("solver")["fixed-point"].factory is FixedPointIteration
    assert mgr.create("solver", "fixed-point", damping=0.25) == FixedPointIteration(damping=0.25)
    (info,) = mgr.plugins()
    assert (info.name, info.status, info.error) == ("deq-core", "active", None)
    assert "fixed-point" in info.provides["solvers"]


def test_from_plugins_adds_the_builtin_plugin_once_unless_told_not_to():
    mgr = PluginManager.from_plugins([("mine", SolverPlugin("a"))])
    assert {p.name for p in mgr.plugins()} == {"mine", "deq-core"}
    assert mgr.provider("solver", "fixed-point") == "deq-core"
    for given in ([builtin], [("core", builtin)]):
        infos = PluginManager.from_plugins(given).plugins()
        assert len(infos) == 1 and infos[0].distribution == "deq-core" and infos[0].status == "active"
    bare = PluginManager.from_plugins([("mine", SolverPlugin("a"))], include_builtin=False)
    assert list(bare.entries("solver")) == ["a"]


def test_loading_is_lazy_and_happens_once():
    calls = []

    def load():
        calls.append(1)
        return SolverPlugin("a")

    mgr = PluginManager([PluginSource("p", load)])
    assert calls == []
    mgr.entries("solver")
    mgr.lookup("solver", "a")
    mgr.plugins()
    assert calls == [1]


# -- broken plugins -----------------------------------------------------------------------------------------
def failing_import():
    raise ModuleNotFoundError("No module named 'does_not_exist'")


def test_import_failure_is_recorded_warned_once_and_others_work():
    mgr = PluginManager([PluginSource("bad", failing_import, "bad-dist", "9.9"),
                         PluginSource.of(("good", SolverPlugin("a")))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mgr.create("solver", "a") == FixedPointIteration()
        mgr.plugins()
        mgr.lookup("solver", "a")
    msgs = [str(w.message) for w in caught if issubclass(w.category, DeqPluginWarning)]
    assert len(msgs) == 1 and "'bad'" in msgs[0] and "does_not_exist" in msgs[0]
    assert "DEQ_DISABLE_PLUGINS=bad" in msgs[0]
    (bad,) = mgr.broken()
    assert (bad.name, bad.distribution, bad.version, bad.status) == ("bad", "bad-dist", "9.9", "broken")
    assert bad.error == "ModuleNotFoundError: No module named 'does_not_exist'"
    assert "ModuleNotFoundError" in mgr.tracebacks()["bad"]
    assert {p.name: p.status for p in mgr.plugins()} == {"bad": "broken", "good": "active"}


def test_warning_is_a_userwarning_and_errors_under_filterwarnings_error():
    assert issubclass(DeqPluginWarning, UserWarning)
    mgr = PluginManager([PluginSource("bad", failing_import)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeqPluginWarning)
        with pytest.raises(DeqPluginWarning):
            mgr.plugins()
    assert mgr.broken()[0].name == "bad"  # the state was stored before warning: no half-loaded manager


class NotIterable:
    @hookimpl
    def deq_solvers(self):
        return 42


class WrongRecordType:
    @hookimpl
    def deq_solvers(self):
        return [TaskEntry("t", dict, "a task in the solver hook")]


class StringResult:
    @hookimpl
    def deq_tasks(self):
        return "not-a-record"


class DuplicateNames:
    @hookimpl
    def deq_models(self):
        return [ModelEntry("m", dict, "x"), ModelEntry("n", dict, "y", aliases=("m",))]


class InvalidRecordInHook:
    @hookimpl
    def deq_solvers(self):
        return [SolverEntry("Bad_Name", FixedPointIteration, "x")]


class TypoHook:
    @hookimpl
    def deq_solver(self):  # typo: not a hook
        return []


class NoHooks:
    def deq_solvers(self):  # forgot @hookimpl
        return []


class BadHookArgs:
    @hookimpl
    def deq_commands(self, cli, extra):
        pass


class CommandHookRaises:
    @hookimpl
    def deq_commands(self, cli):
        raise ValueError("no commands today")


@pytest.mark.parametrize(("plugin", "match"), [
    (RaisingHook(), "RuntimeError: hook exploded"),
    (NotIterable(), "must return an iterable of SolverEntry, got int"),
    (WrongRecordType(), "must yield SolverEntry records, got TaskEntry"),
    (StringResult(), "must return an iterable of TaskEntry, got str"),
    (DuplicateNames(), "model name 'm' twice"),
    (InvalidRecordInHook(), "lower-case kebab"),
    (TypoHook(), "unknown hook 'deq_solver'"),
    (NoHooks(), "no @hookimpl functions"),
    (BadHookArgs(), "PluginValidationError"),
    (CommandHookRaises(), "ValueError: no commands today"),
])
def test_invalid_hooks_make_only_that_plugin_broken(plugin, match):
    mgr = PluginManager.from_plugins([("bad", plugin), ("deq-core", builtin)])
    msgs = quiet(mgr)
    assert len(msgs) == 1
    (bad,) = mgr.broken()
    assert bad.name == "bad" and re.search(re.escape(match), bad.error), bad.error
    assert all(not names for names in bad.provides.values())
    assert mgr.create("solver", "fixed-point") == FixedPointIteration()


def test_registry_use_during_plugin_import_is_reported():
    mgr = PluginManager([PluginSource("eager", lambda: mgr.lookup("solver", "x"))])
    quiet(mgr)
    assert "while plugins were being loaded" in mgr.broken()[0].error


# -- strict and disabled ------------------------------------------------------------------------------------
def test_strict_mode_raises_plugin_error_naming_the_plugin():
    mgr = PluginManager([PluginSource("bad", failing_import, "bad-dist", "1.0"), PluginSource.of(("ok", builtin))],
                        strict=True)
    with pytest.raises(PluginError, match=r"'bad' \(bad-dist 1.0\) is broken: ModuleNotFoundError") as info:
        mgr.lookup("solver", "fixed-point")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    with pytest.raises(PluginError):  # not cached as loaded: raises again
        mgr.plugins()


def test_strict_mode_raises_on_conflicts():
    mgr = PluginManager.from_plugins([("a", SolverPlugin("x")), ("b", SolverPlugin("x"))], strict=True)
    with pytest.raises(PluginError, match="'a', 'b' all provide solver 'x'"):
        mgr.entries("solver")


def test_disabled_plugins_are_not_imported():
    loaded = []

    def load():
        loaded.append(1)
        return SolverPlugin("a")

    mgr = PluginManager([PluginSource("p", load, "p-dist", "1"), PluginSource("q", failing_import, "Q_Dist", "2"),
                         PluginSource.of(("deq-core", builtin))], disabled=["p", "q-dist"])
    assert quiet(mgr) == []
    assert loaded == []
    assert {p.name: p.status for p in mgr.plugins()} == {"p": "disabled", "q": "disabled", "deq-core": "active"}
    with pytest.raises(UnknownNameError):
        mgr.lookup("solver", "a")


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (False, frozenset())),
    ({"DEQ_STRICT_PLUGINS": "1"}, (True, frozenset())),
    ({"DEQ_STRICT_PLUGINS": "off", "DEQ_DISABLE_PLUGINS": " deq_solvers, ,Other.Thing "},
     (False, frozenset({"deq-solvers", "other-thing"}))),
])
def test_env_settings(env, expected):
    assert env_settings(env) == expected


def test_env_settings_rejects_unknown_strict_value():
    with pytest.raises(DeqConfigError, match="DEQ_STRICT_PLUGINS"):
        env_settings({"DEQ_STRICT_PLUGINS": "maybe"})


# -- conflicts ----------------------------------------------------------------------------------------------
def test_conflicting_name_raises_listing_both_providers_and_other_names_work():
    mgr = PluginManager.from_plugins(
        [("deq-a", SolverPlugin("dup", "only-a")), ("deq-b", SolverPlugin("dup", "only-b"))], include_builtin=False)
    msgs = quiet(mgr)
    assert len(msgs) == 1 and "'deq-a', 'deq-b' all provide solver 'dup'" in msgs[0]
    with pytest.raises(NameConflictError, match="'dup' is provided by 2 plugins \\('deq-a', 'deq-b'\\)") as info:
        mgr.create("solver", "dup")
    assert isinstance(info.value, KeyError) and info.value.providers == ("deq-a", "deq-b")
    assert mgr.provider("solver", "only-a") == "deq-a" and mgr.provider("solver", "only-b") == "deq-b"
    assert list(mgr.entries("solver")) == ["only-a", "only-b"]
    statuses = {p.name: (p.status, p.error) for p in mgr.plugins()}
    assert statuses["deq-a"] == ("conflicted", "solver 'dup' is also provided by 'deq-b' (select one as 'deq-a:dup')")
    assert mgr.provider("solver", "deq-b:dup") == "deq-b"
    assert dict(mgr.conflicts()["solver"]) == {"dup": ("deq-a", "deq-b")}


def test_alias_clashing_with_another_plugins_name_is_a_conflict():
    mgr = PluginManager.from_plugins([("a", SolverPlugin("x", aliases={"x": ("y",)})), ("b", SolverPlugin("y"))],
                                     include_builtin=False)
    quiet(mgr)
    with pytest.raises(NameConflictError):
        mgr.lookup("solver", "y")
    assert mgr.lookup("solver", "x").name == "x"
    assert list(mgr.entries("solver")) == ["x"]


def test_command_conflicts():
    def adder(name):
        class P:
            @hookimpl
            def deq_commands(self, cli):
                cli.add_command(click.Command(name, callback=lambda: None))
        return P()

    mgr = PluginManager.from_plugins([("a", adder("go")), ("b", adder("go")), ("c", adder("stop"))],
                                     include_builtin=False)
    quiet(mgr)
    assert list(mgr.commands()) == ["stop"]
    assert mgr.conflicts()["command"]["go"] == ("a", "b")
    assert mgr.command_provider("stop") == "c"


# -- injection ----------------------------------------------------------------------------------------------
def test_use_manager_is_scoped_and_nestable():
    outer = get_manager()
    m1 = PluginManager.from_plugins([("one", SolverPlugin("one"))], include_builtin=False)
    m2 = PluginManager.from_plugins([("two", SolverPlugin("two"))], include_builtin=False)
    with use_manager(m1):
        assert list(registry.solvers()) == ["one"]
        with use_manager(m2):
            assert list(registry.solvers()) == ["two"]
        assert get_manager() is m1
    assert get_manager() is outer
    with pytest.raises(DeqConfigError):
        with use_manager("nope"):  # type: ignore[arg-type]
            pass


def test_duplicate_source_names_are_refused():
    with pytest.raises(DeqConfigError, match="share the name"):
        PluginManager.from_plugins([("a", builtin), ("a", SolverPlugin("x"))])


# -- entry-point discovery (a fake installed distribution on sys.path) --------------------------------------
def _fake_dist(root: Path, dist: str, version: str, group: str, entry: str, module: str, source: str) -> None:
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_from_entry_points_discovers_guards_and_disables(tmp_path, monkeypatch):
    group = "deq-test-group"
    _fake_dist(tmp_path, "fake-good", "1.2.3", group, "fake-good", "fake_good_plugin", """
        from deq_core import FixedPointIteration
        from deq_core.plugins import SolverEntry, hookimpl

        @hookimpl
        def deq_solvers():
            return [SolverEntry("fake-solver", FixedPointIteration, "from a fake distribution")]
    """)
    _fake_dist(tmp_path, "fake-broken", "0.0.1", group, "fake-broken", "fake_broken_plugin",
               "import a_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("fake_good_plugin", "fake_broken_plugin"):
        monkeypatch.delitem(sys.modules, mod, raising=False)

    mgr = PluginManager.from_entry_points(group, environ={}, include_builtin=True)
    msgs = quiet(mgr)
    assert len(msgs) == 1 and "fake-broken" in msgs[0]
    info = {p.name: p for p in mgr.plugins()}
    assert (info["fake-good"].distribution, info["fake-good"].version, info["fake-good"].status) == (
        "fake-good", "1.2.3", "active")
    assert info["fake-good"].module == "fake_good_plugin"
    assert info["fake-broken"].status == "broken" and "a_module_that_does_not_exist" in info["fake-broken"].error
    assert info["deq-core"].status == "active"  # added because this group has no deq-core entry point
    assert {"fake-solver", "fixed-point"} <= set(mgr.entries("solver"))

    mgr = PluginManager.from_entry_points(group, environ={"DEQ_DISABLE_PLUGINS": "fake-broken,fake_good"},
                                          include_builtin=False)
    assert quiet(mgr) == []
    assert {p.name: p.status for p in mgr.plugins()} == {"fake-broken": "disabled", "fake-good": "disabled"}

    with pytest.raises(PluginError, match="fake-broken"):
        PluginManager.from_entry_points(group, environ={"DEQ_STRICT_PLUGINS": "1"}).plugins()


def test_installed_deq_core_declares_its_builtin_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="deq")}
    assert eps.get("deq-core") == "deq_core.plugins.builtin"


# -- docs ---------------------------------------------------------------------------------------------------
def test_every_hookspec_is_documented():
    doc = REPO / "docs" / "reference" / "plugin-hooks.md"
    if not (REPO / "docs").is_dir():
        pytest.skip("not running from the repository checkout")
    text = doc.read_text(encoding="utf-8")
    specs = sorted(n for n in dir(_hookspecs) if n.startswith("deq_") and callable(getattr(_hookspecs, n)))
    assert specs == sorted(HOOK_NAMES)
    missing = [n for n in specs if not re.search(rf"^#+ .*`{n}\b", text, flags=re.M)]
    assert not missing, f"hooks without a heading in {doc}: {missing}"
