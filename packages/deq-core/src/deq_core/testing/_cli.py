"""Run the ``deq`` command line in this process, for tests of commands (deq's own and plugins')."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CliResult", "run_cli"]


@dataclasses.dataclass(frozen=True)
class CliResult:
    """What ``deq ARGS`` returned and printed."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, environ: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None) -> CliResult:
    """``deq ARGS`` through the console script's own ``main``, in this process: with a plugin registry built from
    the installed entry points under ``environ`` (the ``DEQ_*`` variables a fresh process would read; default
    none), in ``cwd``, with stdout and stderr captured (so, as in a pipe, not a terminal: no progress bars).

    A fresh ``deq`` process costs a torch import, seconds each; test what is about a fresh process (entry-point
    discovery, warnings at start-up, import side effects) with ``subprocess``, and the rest with this.

    Example::

        >>> from deq_core.testing import run_cli
        >>> r = run_cli("--version")
        >>> r.returncode, r.stdout.strip(), r.stderr
        (0, 'deq, version 0.1.0', '')
        >>> r = run_cli("plugins", "--jsn")
        >>> r.returncode, r.stderr.startswith("error: No such option '--jsn'. Did you mean '--json'?")
        (2, True)
    """
    from deq_core.cli import main
    from deq_core.plugins import PluginManager, use_manager

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with use_manager(PluginManager.from_entry_points(environ=dict(environ or {}))), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(old)
    return CliResult(int(code), out.getvalue(), err.getvalue())
