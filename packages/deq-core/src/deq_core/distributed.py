"""Solver statistics under ``torch.distributed`` (DDP / FSDP): one set of numbers for the whole job.

Each rank solves the fixed points of its own shard of the batch, so its :class:`~deq_core.SolveStats` describe
only that shard (ranks may even take a different number of solver steps; that is fine for DDP, which only
synchronizes parameter gradients). :func:`reduce_stats` combines them into the statistics of the global batch:

* ``steps_max``, ``residual_max``, ``rel_residual_max``, ``nfev_max``: maximum over ranks;
* ``steps_mean``, ``rel_residual_mean``: mean over every sample of every rank (weighted by shard size);
* ``converged``, ``batch``: sums; ``nfev_mean``: mean over ranks; ``world_size``: number of ranks.

Without an initialized process group (one process) the same dictionary is computed from the local stats, so
logging code needs no branch. It is a collective: **every rank must call it**, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from ._errors import DeqInputError
from ._solution import SolveStats

__all__ = ["average_gradients", "is_distributed", "rank_shard", "reduce_stats"]

_SUM = ("steps_sum", "rel_residual_sum", "converged", "batch", "nfev_sum")
_MAX = ("steps_max", "residual_max", "rel_residual_max", "nfev_max")


def is_distributed() -> bool:
    """``True`` when ``torch.distributed`` is available and a process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def _local(stats: SolveStats | Mapping[str, Any]) -> dict[str, float]:
    if isinstance(stats, SolveStats):
        steps = stats.steps.detach().double()
        rel = stats.rel_residual.detach().double()
        return {
            "steps_sum": float(steps.sum()), "rel_residual_sum": float(rel.sum()),
            "converged": float(stats.converged.sum()), "batch": float(stats.converged.numel()),
            "nfev_sum": float(stats.nfev),
            "steps_max": float(steps.max()), "residual_max": float(stats.residual.detach().double().max()),
            "rel_residual_max": float(rel.max()), "nfev_max": float(stats.nfev),
        }
    if isinstance(stats, Mapping):  # the output of SolveStats.summary()
        need = ("steps_max", "steps_mean", "rel_residual_max", "residual_max", "converged", "batch", "nfev")
        missing = [k for k in need if k not in stats]
        if missing:
            raise DeqInputError(f"reduce_stats expected SolveStats or SolveStats.summary() keys {list(need)}, "
                                f"missing {missing}")
        b = float(stats["batch"])
        return {
            "steps_sum": float(stats["steps_mean"]) * b, "rel_residual_sum": float("nan"),
            "converged": float(stats["converged"]), "batch": b, "nfev_sum": float(stats["nfev"]),
            "steps_max": float(stats["steps_max"]), "residual_max": float(stats["residual_max"]),
            "rel_residual_max": float(stats["rel_residual_max"]), "nfev_max": float(stats["nfev"]),
        }
    raise DeqInputError(
        f"reduce_stats expected SolveStats or a dict from SolveStats.summary(), got {type(stats).__name__}"
    )


def reduce_stats(stats: SolveStats | Mapping[str, Any], *, group: Any = None) -> dict[str, Any]:
    """Statistics of the global batch from every rank's :class:`~deq_core.SolveStats` (or its ``summary()``).

    Arguments:
        stats: this rank's ``info.stats`` from :class:`deq_core.DEQ` (or ``Solution.stats``), or its ``summary()``
            (then ``rel_residual_mean`` is ``nan``: the summary has no per-sample residuals).
        group: process group (default: the world).

    Returns:
        A dict of plain numbers: ``steps_max``, ``steps_mean``, ``residual_max``, ``rel_residual_max``,
        ``rel_residual_mean``, ``converged``, ``batch``, ``nfev_max``, ``nfev_mean``, ``world_size``.

    Raises:
        DeqInputError: ``stats`` is neither ``SolveStats`` nor a ``summary()`` dict.

    The reduction runs as two ``all_reduce`` calls on a small float64 tensor on the device of the process group
    (CUDA for NCCL, CPU for gloo). Every rank must call it (it is a collective).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_core.distributed import reduce_stats
        >>> sol = fixed_point(lambda z: 0.5 * z + 1.0, torch.zeros(4, 3), rtol=1e-6)
        >>> r = reduce_stats(sol.stats)   # one process: the local numbers
        >>> r["world_size"], r["batch"], r["converged"], r["steps_max"] == int(sol.stats.steps.max())
        (1, 4, 4, True)
    """
    local = _local(stats)
    world = 1
    if is_distributed():
        world = dist.get_world_size(group)
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        sums = torch.tensor([local[k] for k in _SUM], dtype=torch.float64, device=device)
        maxs = torch.tensor([local[k] for k in _MAX], dtype=torch.float64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(maxs, op=dist.ReduceOp.MAX, group=group)
        local = {**dict(zip(_SUM, sums.tolist())), **dict(zip(_MAX, maxs.tolist()))}
    batch = max(local["batch"], 1.0)
    return {
        "steps_max": int(local["steps_max"]),
        "steps_mean": local["steps_sum"] / batch,
        "residual_max": local["residual_max"],
        "rel_residual_max": local["rel_residual_max"],
        "rel_residual_mean": local["rel_residual_sum"] / batch,
        "converged": int(local["converged"]),
        "batch": int(local["batch"]),
        "nfev_max": int(local["nfev_max"]),
        "nfev_mean": local["nfev_sum"] / world,
        "world_size": world,
    }


def rank_shard(batch: int, *, group: Any = None) -> slice:
    """This rank's contiguous slice of a global batch of ``batch`` samples (the whole batch in one process).

    For training loops that draw the global batch identically on every rank (same seed) and train on their own
    part, as DistributedDataParallel expects.

    Raises:
        DeqInputError: ``batch`` is not divisible by the world size (unequal shards would weight the ranks'
            mean losses unequally, and the averaged gradient would not be the full-batch one).
    """
    if not is_distributed():
        return slice(0, batch)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if batch % world:
        raise DeqInputError(f"global batch {batch} is not divisible by the world size {world}; "
                            "use a multiple so every rank gets an equal shard")
    n = batch // world
    return slice(rank * n, (rank + 1) * n)


def average_gradients(parameters: Any, *, group: Any = None) -> None:
    """All-reduce (mean) the ``.grad`` of ``parameters`` over the ranks, in place; a no-op in one process.

    What DistributedDataParallel does after ``backward``, for training loops that call parts of a model directly
    instead of one wrapped ``forward`` (the JIIO loops evaluate the layer, the head and the objective
    separately). It is a collective: every rank must call it, with the same parameters in the same order.
    Parameters without a gradient take part as zeros, so the ranks stay in step.
    """
    if not is_distributed():
        return
    world = dist.get_world_size(group)
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= world
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n
