"""A third-party plugin (tests/integration/deq-shadow-plugin, installed by pip) that claims deq's own names
``fixed-point``, ``anderson`` and ``implicit`` and adds its own adjoint, task and model.

deq's own packages win every clash (the plugin's duplicates are listed as shadowed and reachable as
``dist:name``); its own adjoint, task and model work by name from Python and from the command line, and each
passes its conformance check. Resolving a built-in name never imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deq_core import DEQ, FixedPointIteration, NeumannAdjoint, fixed_point, registry, resolve_adjoint
from deq_core.plugins import PluginManager, use_manager
from deq_core.testing import CliResult, check_adjoint, check_model, check_task, run_cli

SHADOW = "deq-shadow-plugin"
PLUGIN_MODULE = "deq_shadow_plugin.plugin"
BROKEN = "deq-broken-plugin"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEQ_") and k != "SHADOW_PLUGIN_IMPORT_SLEEP"}
    env.update(extra)
    return env


def deq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``deq ARGS`` (the console script's code) in a fresh process, stdout/stderr piped."""
    return subprocess.run([sys.executable, "-m", "deq_core.cli", *args], capture_output=True, text=True,
                          env=clean_env(**env), timeout=600)


def deq_here(*args: str, cwd: Path | None = None) -> CliResult:
    """``deq ARGS`` in this process (``deq_core.testing.run_cli``), the broken example plugin hidden."""
    return run_cli(*args, environ={"DEQ_DISABLE_PLUGINS": BROKEN}, cwd=cwd)


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(**env),
                          timeout=600)


@pytest.fixture
def installed():
    """The registry over the installed entry points, the broken example plugin hidden (it warns)."""
    with use_manager(PluginManager.from_entry_points(environ={"DEQ_DISABLE_PLUGINS": BROKEN})) as mgr:
        yield mgr


def contraction(z):
    return 0.5 * z + 1.0


# -- deq's own names win ---------------------------------------------------------------------------------
def test_plain_fixed_point_deq_and_anderson_are_deqs_own(installed):
    sol = fixed_point(contraction, torch.zeros(2, 3))
    assert sol.stats.solver["name"] == "fixed-point"
    torch.testing.assert_close(sol.value, torch.full((2, 3), 2.0), rtol=1e-3, atol=1e-3)
    layer = DEQ(lambda z, x: 0.5 * z + x)
    assert layer.solver == FixedPointIteration() and type(layer.adjoint).__name__ == "ImplicitAdjoint"
    z, info = layer(torch.ones(2, 3))
    assert info.result.name == "CONVERGED"
    assert type(registry.get_solver("anderson")).__module__.startswith("deq_solvers")
    assert installed.provider("solver", "anderson") == "deq-solvers"
    assert installed.provider("adjoint", "implicit") == "deq-core"


def test_qualified_names_pick_either_provider(installed):
    assert registry.get_solver(f"{SHADOW}:anderson") == FixedPointIteration(damping=0.25)
    assert registry.get_solver(f"{SHADOW}:fixed-point") == FixedPointIteration(damping=0.5)
    assert type(registry.get_solver("deq-solvers:anderson")).__name__ == "Anderson"
    assert registry.get_solver("deq-core:fixed-point") == FixedPointIteration()
    assert resolve_adjoint(f"{SHADOW}:implicit") == NeumannAdjoint(terms=0)
    assert type(resolve_adjoint("deq-core:implicit")).__name__ == "ImplicitAdjoint"
    sol = fixed_point(contraction, torch.zeros(1, 2), solver=f"{SHADOW}:anderson", rtol=1e-8, max_steps=200)
    assert sol.result.name == "CONVERGED"


def test_deq_plugins_lists_the_duplicates_as_shadowed():
    proc = deq_here("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    info = {p["name"]: p for p in data["plugins"]}[SHADOW]
    assert info["status"] == "shadowed" and not info["first_party"]
    assert info["shadowed"] == ["solver anderson", "solver fixed-point", "adjoint implicit"]
    assert info["hooks"] == ["deq_solvers", "deq_adjoints", "deq_tasks", "deq_models"]
    assert data["shadowed"] == {"solver": {"anderson": [SHADOW], "fixed-point": [SHADOW]},
                                "adjoint": {"implicit": [SHADOW]}}
    assert data["solvers"]["anderson"]["provider"] == "deq-solvers"
    assert data["adjoints"]["richardson"]["provider"] == SHADOW
    assert data["conflicts"] == {}
    table = deq_here("plugins")
    (row,) = [line for line in table.stdout.splitlines() if line.startswith(SHADOW)]
    assert row.split()[:4] == [SHADOW, "0.1.0", "shadowed", "solvers,adjoints,tasks,models"]
    assert f"'{SHADOW}:NAME'" in table.stdout


def test_a_builtin_name_does_not_import_third_party_plugins():
    """The plugin sleeps 3 s on import here: a built-in lookup must not import it, a lookup by its name must."""
    code = ("import sys, time\n"
            "import deq_core\n"
            "t = time.perf_counter(); deq_core.registry.get_solver('fixed-point'); a = time.perf_counter() - t\n"
            "imported = 'deq_shadow_plugin.plugin' in sys.modules\n"
            "t = time.perf_counter(); deq_core.registry.get_solver('deq-shadow-plugin:anderson')\n"
            "b = time.perf_counter() - t\n"
            "print(a, imported, b, 'deq_shadow_plugin.plugin' in sys.modules)")
    proc = python(code, SHADOW_PLUGIN_IMPORT_SLEEP="3", DEQ_DISABLE_PLUGINS=BROKEN)
    assert proc.returncode == 0, proc.stderr
    _, imported, second, later = proc.stdout.split()
    # not imported, so the built-in lookup cannot have waited for it (its own time is torch's and deq's plugins'
    # import, as `import deq_core` alone does not import torch: no timing comparison with it here)
    assert imported == "False", proc.stdout
    assert later == "True" and float(second) >= 3.0, proc.stdout


# -- the plugin's own adjoint, task and model ------------------------------------------------------------
def test_plugin_adjoint_by_name_and_conformance(installed):
    adjoint = resolve_adjoint("richardson", steps=40)
    assert type(adjoint).__name__ == "RichardsonAdjoint" and not adjoint.exact
    x = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    sol = fixed_point(lambda z: 0.5 * z + x, torch.zeros(2, 3, dtype=torch.float64), adjoint="richardson",
                      rtol=1e-12)
    sol.value.sum().backward()
    expected = adjoint.reference(torch.full((1, 1, 1), 0.5, dtype=torch.float64),
                                 torch.ones(1, 1, dtype=torch.float64)).item()   # 30 steps toward 1/(1-0.5)
    torch.testing.assert_close(x.grad, torch.full_like(x, expected))
    assert DEQ(lambda z, x: 0.5 * z + x, adjoint="richardson").adjoint.name == "richardson"
    check_adjoint("richardson", max_examples=3)


def test_plugin_task_by_name_and_conformance(installed, tmp_path):
    metrics = check_task(registry.get_task("toy-fit", steps=3, width=4), tmp_path / "run")
    assert metrics["adjoint"] == "richardson"
    assert (tmp_path / "run-from-checkpoint" / "metrics.json").is_file()


def test_plugin_task_runs_under_deq_tasks_run(tmp_path):
    out = tmp_path / "toy"
    proc = deq_here("tasks", "run", "toy-fit", "--out", str(out), "--steps", "3", "--width", "4", "--adjoint",
                    "neumann")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "toy-fit" and metrics["adjoint"] == "neumann"
    assert (out / "model.safetensors").is_file()


def test_plugin_model_by_name_and_conformance(installed):
    model = registry.get_model("tiny-inr", width=8)
    check_model(model)
    y, info = model(torch.rand(5, 2))
    assert y.shape == (5, 1) and info.result.name == "CONVERGED"


def test_plugin_model_under_deq_inr_fit(tmp_path):
    out = tmp_path / "fit"
    proc = deq_here("inr", "fit", "--model", "tiny-inr", "--image", "camera", "--size", "16", "--steps", "3",
                    "--width", "8", "--out", str(out))  # no --no-progress: stderr is not a terminal, so no bar
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "tiny-inr" and metrics["config"]["model"] == "tiny-inr"
    assert metrics["solver_steps_per_step"] is not None  # an implicit model: the DEQ's stats were recorded
    assert (out / "model.safetensors").is_file()
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr  # no progress bar in a pipe
    render = deq_here("inr", "render", str(out / "model.safetensors"), "--model", "tiny-inr", "--out",
                      str(tmp_path / "r"))
    assert render.returncode == 0, render.stderr
    assert (tmp_path / "r" / "render.png").is_file()


# -- one CLI ---------------------------------------------------------------------------------------------
ERROR_CASES = [
    (("inr", "fit", "--model", "no-such-model", "--out", "o"), "unknown model 'no-such-model'"),
    (("inr", "fit", "--model", "opteq", "--out", "o"), "is not an INR model"),
    (("inr", "fit", "--image", "no-such-image.png", "--out", "o", "--steps", "1"), "no-such-image.png"),
    (("inr", "fit", "--steps", "0", "--out", "o"), "--steps"),
    (("tasks", "run", "no-such-task", "--out", "o"), "unknown task 'no-such-task'"),
    (("tsks",), "Did you mean 'tasks'?"),
    (("plugins", "--jsn"), "--jsn"),
]
@pytest.mark.parametrize("case", range(len(ERROR_CASES)), ids=[" ".join(a) for a, _ in ERROR_CASES])
def test_errors_are_one_line_with_one_prefix(case, tmp_path):
    args, match = ERROR_CASES[case]
    proc = deq_here(*args, cwd=tmp_path)
    code, stderr = proc.returncode, proc.stderr
    assert code != 0, (args, code, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], stderr
    assert "Traceback" not in stderr and "Error:" not in stderr


def test_the_console_script_exits_non_zero_with_its_error_line():
    proc = deq("tsks", DEQ_DISABLE_PLUGINS=BROKEN)
    assert proc.returncode != 0 and proc.stderr.startswith("error: unknown command 'tsks'"), proc.stderr


def test_every_option_of_every_command_has_help():
    import click

    from deq_core.cli import cli

    missing = []

    def walk(cmd: click.Command, path: str) -> None:
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"{path} {p.opts[0]}")
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), f"{path} {name}")

    with use_manager(PluginManager.from_entry_points(environ={"DEQ_DISABLE_PLUGINS": BROKEN})):
        walk(cli, "deq")
    assert not missing, f"options without help text: {missing}"


def test_deq_version():
    proc = deq_here("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("deq, version "), proc.stdout + proc.stderr


def test_the_plugin_is_installed_as_a_distribution():
    from importlib.metadata import distribution

    dist = distribution(SHADOW)
    assert Path(dist.locate_file("")).exists()
    eps = {ep.name: ep.value for ep in dist.entry_points if ep.group == "deq"}
    assert eps == {SHADOW: PLUGIN_MODULE}
