"""Installed plugins working together: discovery, a broken plugin, strict and disabled modes.

Assumes nox installed deq-core, deq-solvers, deq-tasks, deq-inr and the plugins of noxfile.py's EXAMPLES
(examples/deq-solver-example, examples/deq-broken-plugin, tests/integration/deq-shadow-plugin, ...) into this
environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import torch

from deq_core import PluginError, UnknownNameError, fixed_point, registry
from deq_core.plugins import DeqPluginWarning, PluginManager, use_manager
from deq_core.testing import CliResult, run_cli

BROKEN = "deq-broken-plugin"
EXAMPLE = "deq-solver-example"
SHADOW = "deq-shadow-plugin"  # claims deq's own names on purpose: shadowed (tests/integration/test_shadow_plugin.py)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEQ_")}
    env.update(extra)
    return env


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m deq_core.cli ARGS`` (the code behind the ``deq`` console script) with ``DEQ_*`` vars ``env``."""
    return subprocess.run([sys.executable, "-m", "deq_core.cli", *args], capture_output=True, text=True,
                          env=clean_env(**env), timeout=300)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(**env),
                          timeout=300)


def plugins_json(**env: str) -> tuple[dict[str, Any], CliResult]:
    """``deq plugins --json`` in this process (``deq_core.testing.run_cli``) under the ``DEQ_*`` variables ``env``."""
    proc = run_cli("plugins", "--json", environ=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc


@pytest.fixture(scope="module")
def listing() -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """``deq plugins --json`` in a fresh process in the default environment (computed once)."""
    proc = run(["plugins", "--json"])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc


def entry_point_manager(**environ: str) -> PluginManager:
    return PluginManager.from_entry_points(environ=environ)


# -- discovery ------------------------------------------------------------------------------------------
def test_deq_plugins_json_lists_every_installed_plugin(listing):
    data, _ = listing
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["deq-core"]["status"] == "active"
    assert "fixed-point" in plugins["deq-core"]["provides"]["solvers"]
    assert plugins[EXAMPLE]["status"] == "active"
    assert plugins[EXAMPLE]["distribution"] == EXAMPLE and plugins[EXAMPLE]["version"] == "0.1.0"
    assert plugins[EXAMPLE]["provides"]["solvers"] == ["heavy-ball"]
    assert data["solvers"]["heavy-ball"]["provider"] == EXAMPLE
    assert data["solvers"]["heavy-ball"]["aliases"] == ["momentum"]


def test_first_party_plugins_load_cleanly_together(listing):
    data, _ = listing
    bad = {p["name"]: (p["status"], p["error"]) for p in data["plugins"]
           if p["name"] not in (BROKEN, SHADOW) and p["status"] != "active"}
    assert bad == {}, f"plugins that are not active: {bad}"
    assert data["conflicts"] == {}
    shadowed = {n for table in data["shadowed"].values() for n, owners in table.items() if owners != [SHADOW]}
    assert shadowed == set(), f"names of deq's own packages shadowing more than the test plugin: {shadowed}"


def test_plugin_commands_appear_in_help(listing):
    data, _ = listing
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for p in data["plugins"]:
        for command in p["provides"]["commands"]:
            assert f"  {command}" in proc.stdout, (command, proc.stdout)


# -- the broken plugin -------------------------------------------------------------------------------------
def test_broken_plugin_is_listed_broken_with_its_error(listing):
    data, proc = listing
    (broken,) = [p for p in data["plugins"] if p["name"] == BROKEN]
    assert broken["status"] == "broken"
    assert "deq_dependency_that_is_not_installed" in broken["error"]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and BROKEN in warnings[0] and "Traceback" not in proc.stderr


def test_broken_plugin_in_the_table():
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith(BROKEN)]
    assert row.split()[:3] == [BROKEN, "0.1.0", "broken"]
    assert "deq_dependency_that_is_not_installed" in proc.stdout


def test_get_solver_still_works_with_a_broken_plugin_installed():
    mgr = entry_point_manager()
    with use_manager(mgr):
        solver = registry.get_solver("fixed-point", damping=0.5)  # a built-in name: third-party plugins not loaded
        assert solver.damping == 0.5
        assert BROKEN not in mgr.loaded_names()
        with pytest.warns(DeqPluginWarning, match=BROKEN):
            assert [p.name for p in registry.broken()] == [BROKEN]
        sol = fixed_point(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3), solver="momentum")  # the example's alias
        torch.testing.assert_close(sol.value, torch.full((2, 3), 2.0), rtol=1e-3, atol=1e-3)


def test_default_registry_in_a_fresh_process_warns_once_and_works():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from deq_core import registry\n"
            "print(registry.get_solver('fixed-point'), registry.get_solver('heavy-ball'), "
            "[p.name for p in registry.broken()])")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "FixedPointIteration(damping=1.0)" in proc.stdout and "HeavyBall(" in proc.stdout
    assert f"['{BROKEN}']" in proc.stdout
    assert proc.stderr.count("DeqPluginWarning") == 1


# -- strict mode -------------------------------------------------------------------------------------------
def test_strict_mode_raises_plugin_error():
    with use_manager(entry_point_manager(DEQ_STRICT_PLUGINS="1")):
        with pytest.raises(PluginError, match=BROKEN):
            registry.get_solver("fixed-point")


def test_strict_mode_cli_fails_with_one_line():
    proc = run_cli("plugins", "--json", environ={"DEQ_STRICT_PLUGINS": "1"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and BROKEN in lines[0], proc.stderr
    assert proc.stdout == ""


# -- disabling ---------------------------------------------------------------------------------------------
def test_disable_hides_the_broken_plugin_without_warning():
    data, proc = plugins_json(DEQ_DISABLE_PLUGINS=BROKEN)
    assert {p["name"]: p["status"] for p in data["plugins"]}[BROKEN] == "disabled"
    assert "warning:" not in proc.stderr
    with use_manager(entry_point_manager(DEQ_DISABLE_PLUGINS=BROKEN)):
        assert registry.broken() == ()  # and no DeqPluginWarning (filterwarnings = error would fail here)


def test_disable_hides_a_working_plugin_and_its_names():
    data, _ = plugins_json(DEQ_DISABLE_PLUGINS=f"{BROKEN}, {EXAMPLE}")
    assert {p["name"]: p["status"] for p in data["plugins"]}[EXAMPLE] == "disabled"
    assert "heavy-ball" not in data["solvers"]
    with use_manager(entry_point_manager(DEQ_DISABLE_PLUGINS=f"{BROKEN},{EXAMPLE}")):
        with pytest.raises(UnknownNameError, match="unknown solver 'heavy-ball'"):
            registry.get_solver("heavy-ball")
        assert "fixed-point" in registry.solvers()


def test_json_is_the_only_stdout_output():
    proc = run_cli("plugins", "--json", environ={"DEQ_DISABLE_PLUGINS": BROKEN})
    assert isinstance(json.loads(proc.stdout), dict)
