"""The command lines of every how-to run as written, in page order, in one scratch directory per page.

``pip install PATH...`` lines are the installation nox's integration session performs (noxfile.py installs the
same paths, EXAMPLES included, with pip/uv into this environment): here they are checked to be installed, not
run again. Every ``deq ...`` line is run exactly as written (through the console script's ``main``, in this
process: ``deq_core.testing.run_cli``) and must exit 0. ``torchrun`` lines run in
tests/docs/test_ddp_recipe.py.
"""

from __future__ import annotations

import re
import shlex
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from deq_core.testing import run_cli

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
HOWTOS = sorted((ROOT / "docs" / "how-to").glob("*.md"))
_BASH = re.compile(r"^```bash[^\n]*\n(?P<body>.*?)^```", re.M | re.S)


def command_lines(page: Path) -> list[str]:
    lines = []
    for m in _BASH.finditer(page.read_text(encoding="utf-8")):
        for line in m.group("body").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("deq ", "pip install ")):
                lines.append(line)
    return lines


PAGES = [p for p in HOWTOS if any(line.startswith("deq ") for line in command_lines(p))]


def run_page(page: Path, cwd: Path) -> str | None:
    """Run the page's command lines in ``cwd``; ``None`` if every one exited 0, else what went wrong."""
    environ = {"DEQ_DISABLE_PLUGINS": "deq-broken-plugin"}  # installed next to the how-to's plugin for other tests
    ran = 0
    for line in command_lines(page):
        argv = shlex.split(line)
        if argv[:2] == ["pip", "install"]:
            for path in (a for a in argv[2:] if not a.startswith("-")):
                name = tomllib.loads((ROOT / path / "pyproject.toml").read_text())["project"]["name"]
                try:
                    distribution(name)
                except PackageNotFoundError:
                    return (f"docs/how-to/{page.name}: `{line}`: {name} is not installed here; add {path} to "
                            "noxfile.py's EXAMPLES")
            continue
        proc = run_cli(*argv[1:], environ=environ, cwd=cwd)  # the console script's main, in this process
        if proc.returncode != 0:
            return f"docs/how-to/{page.name}: `{line}` exited {proc.returncode}:\n{proc.stderr}"
        ran += 1
    return None if ran else f"docs/how-to/{page.name}: no `deq` command ran"


@pytest.fixture(scope="module")
def pages_run(tmp_path_factory) -> dict[str, tuple[Path, str | None]]:
    """Every page run once (its scratch directory and its failure, if any), shared by the tests below."""
    runs = {}
    for page in PAGES:
        cwd = tmp_path_factory.mktemp(page.stem)
        runs[page.name] = (cwd, run_page(page, cwd))
    return runs


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_howto_commands_run_as_written(page, pages_run):
    _, failure = pages_run[page.name]
    assert failure is None, failure


def test_the_task_how_to_runs_its_task_and_checkpoint(pages_run):
    import json

    cwd, failure = pages_run["write-a-task-plugin.md"]
    assert failure is None, failure
    first = json.loads((cwd / "runs" / "match" / "metrics.json").read_text())
    again = json.loads((cwd / "runs" / "match-again" / "metrics.json").read_text())
    assert first["from_checkpoint"] is False and again["from_checkpoint"] is True
    assert first["steps"] == 60 and again["steps"] == 0       # the reload optimized nothing
    assert again["loss"] == pytest.approx(first["loss"], rel=1e-9)
