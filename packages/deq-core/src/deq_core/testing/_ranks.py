"""Run a function on several local CPU ranks set up as ``torchrun`` sets them up, for multi-process tests."""

from __future__ import annotations

import importlib.util
import inspect
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["run_ranks"]


def run_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = 300.0) -> None:
    """Call ``fn(*args)`` once in each of ``world_size`` new processes, with the environment ``torchrun
    --standalone`` gives its workers (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` on a
    free loopback port; no visible GPU), so ``torch.distributed.init_process_group("gloo")`` in ``fn`` rendezvous.

    The ranks are forked from this process when that is safe (Linux, one intra-op thread here: a forked GNU
    OpenMP thread pool can hang), so they start with torch already imported, in milliseconds instead of the
    seconds each ``torchrun`` worker spends importing torch. Otherwise ``fn``'s file is loaded afresh in spawned
    processes, so ``fn`` must be a module-level function of a file that imports without side effects.

    Args:
        fn: run on every rank; its return value is ignored (write results to a file in ``args``).
        *args: picklable arguments of ``fn``.
        world_size: the number of ranks (>= 1).
        timeout: seconds for all ranks together; ranks still running then are killed.

    Raises:
        AssertionError: a rank raised (the message holds its traceback), died, or ran past ``timeout``.

    Example (a 2-rank gloo test)::

        def worker(out):
            import torch.distributed as dist
            dist.init_process_group("gloo")
            (out / f"rank{dist.get_rank()}.txt").write_text(str(dist.get_world_size()))
            dist.destroy_process_group()

        def test_two_ranks(tmp_path):
            run_ranks(worker, tmp_path)
            assert (tmp_path / "rank1.txt").read_text() == "2"
    """
    import torch

    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"run_ranks: world_size must be an int >= 1, got {world_size!r}")
    fork = sys.platform == "linux" and torch.get_num_threads() == 1
    ctx = mp.get_context("fork" if fork else "spawn")
    target = fn if fork else (str(Path(inspect.getfile(fn)).resolve()), fn.__qualname__)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="deq-ranks-") as tmp:
        procs = [ctx.Process(target=_rank_main, args=(target, args, rank, world_size, port, tmp),
                             name=f"rank{rank}") for rank in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        late = [p.name for p in procs if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        errors = [(Path(tmp) / f"rank{r}.err") for r in range(world_size)]
        reports = [f"--- rank {r} ---\n{e.read_text()}" for r, e in enumerate(errors) if e.exists()]
        died = [f"rank{r} (exit code {p.exitcode})" for r, p in enumerate(procs)
                if p.exitcode not in (0, None) and not errors[r].exists()]
    assert not (late or reports or died), (
        f"run_ranks({getattr(fn, '__qualname__', fn)!r}, world_size={world_size}) failed: "
        f"{f'still running after {timeout} s: {late}; ' if late else ''}{f'died: {died}; ' if died else ''}"
        + "\n".join(reports))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(target: Any, args: tuple, rank: int, world_size: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    try:
        if callable(target):
            fn = target
        else:  # spawned: load fn's file under a private name
            path, qualname = target
            spec = importlib.util.spec_from_file_location(f"_deq_rank_{Path(path).stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            fn = module
            for part in qualname.split("."):
                fn = getattr(fn, part)
        fn(*args)
    except BaseException:
        Path(tmp, f"rank{rank}.err").write_text(traceback.format_exc())
        raise SystemExit(1) from None
