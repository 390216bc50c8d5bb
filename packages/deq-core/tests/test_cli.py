"""The ``deq`` command line: ``deq plugins [--json]``, plugin subcommands, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest

from deq_core import DeqInputError, FixedPointIteration
from deq_core.cli import main
from deq_core.plugins import PluginManager, PluginSource, SolverEntry, hookimpl, use_manager


class Core:
    @hookimpl
    def deq_solvers(self):
        return [SolverEntry("fixed-point", FixedPointIteration, "damped Picard", tags=("reference",))]


class WithCommands:
    @hookimpl
    def deq_solvers(self):
        return [SolverEntry("picard-half", FixedPointIteration, "Picard", aliases=("ph",))]

    @hookimpl
    def deq_commands(self, cli):
        @cli.command("greet")
        @click.argument("who")
        def greet(who):
            """Greet WHO."""
            if who == "nobody":
                raise DeqInputError("cannot greet nobody; expected a name")
            click.echo(f"hello {who}")

        @cli.command("plugins")  # clashes with the built-in command: must be skipped
        def fake_plugins():
            click.echo("hijacked")


class BrokenCommands:
    @hookimpl
    def deq_commands(self, cli):
        raise RuntimeError("command hook exploded")


def failing_import():
    raise ModuleNotFoundError("No module named 'gone'")


def manager(*extra, strict=False):
    sources = [PluginSource("deq-core", Core, "deq-core", "0.1.0"),
               PluginSource("cmds", WithCommands, "deq-cmds", "2.0"),
               PluginSource("bad-cmds", BrokenCommands, "deq-bad-cmds", "0.0.1"),
               PluginSource("gone", failing_import, "deq-gone", "1.0"), *extra]
    return PluginManager(sources, strict=strict)


def run(capsys, *args, strict=False):
    with use_manager(manager(strict=strict)):
        code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_plugins_table(capsys):
    code, out, err = run(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["DISTRIBUTION", "VERSION", "STATUS", "HOOKS", "PROVIDES"]
    rows = {line.split()[0]: line for line in lines[1:5]}
    assert rows["deq-core"].split() == ["deq-core", "0.1.0", "active", "solvers", "solvers:", "fixed-point"]
    assert rows["deq-cmds"].split()[1:] == ["(cmds)", "2.0", "active", "solvers,commands", "solvers:", "picard-half",
                                             "(ph);", "commands:", "greet,", "plugins"]
    assert rows["deq-gone"].split()[2:4] == ["1.0", "broken"]
    assert rows["deq-bad-cmds"].split()[3] == "broken"
    assert "gone: ModuleNotFoundError: No module named 'gone'" in out
    assert "bad-cmds: RuntimeError: command hook exploded" in out
    warnings = err.splitlines()
    assert all(w.startswith("warning: ") for w in warnings)
    assert sum("is broken and was skipped" in w for w in warnings) == 2
    assert sum("clashes with the built-in `deq plugins`" in w for w in warnings) == 1


def test_plugins_json(capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    data = json.loads(out)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["deq-core"] == {
        "name": "deq-core", "distribution": "deq-core", "version": "0.1.0", "module": "", "status": "active",
        "provides": {"solvers": ["fixed-point"], "adjoints": [], "tasks": [], "models": [], "commands": []},
        "error": None, "hooks": ["deq_solvers"], "aliases": {}, "shadowed": [], "first_party": True,
    }
    assert plugins["gone"]["status"] == "broken" and "No module named 'gone'" in plugins["gone"]["error"]
    assert data["solvers"]["picard-half"] == {"name": "picard-half", "summary": "Picard", "aliases": ["ph"],
                                              "tags": [], "provider": "cmds"}
    assert data["conflicts"] == {}


def test_plugin_subcommand_runs_and_builtin_wins(capsys):
    code, out, err = run(capsys, "greet", "ada")
    assert (code, out) == (0, "hello ada\n")
    code, out, err = run(capsys, "plugins")
    assert code == 0 and "hijacked" not in out
    assert "clashes with the built-in `deq plugins`" in err


def test_help_lists_plugin_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "greet" in out and "Greet WHO." in out and "plugins" in out


def test_bad_input_is_one_line_without_traceback(capsys):
    code, out, err = run(capsys, "greet", "nobody")
    assert code == 1 and out == ""
    errors = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert errors == ["error: cannot greet nobody; expected a name"]


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "no-such-command")
    errors = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2 and errors == ["error: unknown command 'no-such-command'. Commands: greet, plugins. "
                                    "(see 'deq --help')"]
    code, _, err = run(capsys, "plugins", "--jsn")
    errors = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2 and errors == ["error: No such option '--jsn'. Did you mean '--json'? (see 'deq plugins --help')"]


def test_strict_mode_is_one_error_line(capsys):
    code, out, err = run(capsys, "plugins", strict=True)
    assert code == 1 and out == ""
    assert err.startswith("error: deq plugin 'bad-cmds' (deq-bad-cmds 0.0.1) is broken") and err.count("\n") == 1


def test_conflicting_plugin_commands_report_both_providers(capsys):
    class Again:
        @hookimpl
        def deq_commands(self, cli):
            cli.add_command(click.Command("greet", callback=lambda: None))

    with use_manager(manager(PluginSource.of(("again", Again())))):
        code = main(["greet", "x"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "command 'greet' is added by several plugins ('cmds', 'again')" in err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == "deq, version 0.1.0"


def test_deq_plugins_json_in_a_fresh_process_lists_the_builtin_solver():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEQ_")}
    proc = subprocess.run([sys.executable, "-m", "deq_core.cli", "plugins", "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    core = {p["name"]: p for p in data["plugins"]}["deq-core"]
    assert core["status"] == "active" and "fixed-point" in core["provides"]["solvers"]
    assert data["solvers"]["fixed-point"]["provider"] == "deq-core"


def test_version_and_import_do_not_import_torch_or_dynamo():
    code = ("import sys; sys.argv = ['deq', '--version']\n"
            "import deq_core; from deq_core import DeqError; from deq_core.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
            # the library itself does not load dynamo (and sympy) unless the program compiles
            "from deq_core import DEQ, fixed_point; import deq_core.testing\n"
            "print(sorted(m for m in ('torch', 'torch._dynamo', 'sympy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["deq, version 0.1.0", "no torch", "['torch']"]


def test_lazy_package_attributes():
    import deq_core

    assert "DEQ" in dir(deq_core) and deq_core.DEQ.__module__ == "deq_core._deq"
    assert set(deq_core.__all__) <= set(dir(deq_core))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        deq_core.nope  # noqa: B018


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_group_help_without_command(capsys, flag):
    code, out, _ = run(capsys, flag)
    assert code == 0 and out.startswith("Usage: deq")
