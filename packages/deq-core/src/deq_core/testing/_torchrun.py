"""Launch a script the way ``torchrun`` does, from the current interpreter, for multi-process tests on CPU."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

__all__ = ["run_torchrun"]


def run_torchrun(args: list[str | Path], *, cwd: str | Path | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run ARGS`` (``ARGS`` = what follows ``torchrun`` on a command line) with
    one OpenMP thread per process and no visible GPU, and return the finished process (text stdout / stderr).

    Raises:
        AssertionError: the launcher exited non-zero; the message holds the command and the output's tails.

    Example (a 2-process gloo test)::

        proc = run_torchrun(["--standalone", "--nproc_per_node=2", "worker.py", "--out", str(tmp_path)])
    """
    argv = [sys.executable, "-m", "torch.distributed.run", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
