"""Per-sample warm starts keyed by dataset index: the fixed point (and the adjoint's solution) of each
training sample, kept across epochs, so the next visit of the sample starts where the last one ended."""

from __future__ import annotations

import torch
from torch import Tensor

from ._errors import DeqInputError
from ._state import State, StateLayout
from ._validate import check_bool, check_int

__all__ = ["FixedPointCache"]


class FixedPointCache:
    """A table of ``size`` per-sample states, indexed by the sample's position in its dataset.

    ``DEQ(f, cache=FixedPointCache(len(dataset)))`` and ``deq(x, index=idx)`` (``idx``: the ``(B,)`` dataset
    indices of the batch) warm-start every sample that has been seen before from its own last fixed point,
    whatever the batch it comes in (any batch size, any order, the last short batch included); unseen samples
    start cold. With ``adjoint=True`` the implicit adjoint's backward solution is cached the same way and
    warm-starts the backward solve. Under DDP every rank holds its own cache for the indices it sees (rank
    sharding by a ``DistributedSampler`` keeps them disjoint); nothing is communicated.

    Storage is allocated on the first :meth:`put`, ``(size, *per-sample shape)`` per state part, on ``device``
    (default: the state's device; ``"cpu"`` keeps a GPU model's cache in host memory).

    Arguments:
        size: number of samples in the dataset (indices ``0 .. size - 1``).
        adjoint: also cache the implicit adjoint's solution.
        device: where the table lives.

    Example:
        >>> import torch
        >>> cache = FixedPointCache(10)
        >>> z0, hit = cache.get(torch.tensor([3, 7]), torch.zeros(2, 4))
        >>> hit.tolist()
        [False, False]
        >>> cache.put(torch.tensor([3, 7]), torch.ones(2, 4))
        >>> z0, hit = cache.get(torch.tensor([7, 1]), torch.zeros(2, 4))
        >>> hit.tolist(), z0[0].tolist()
        ([True, False], [1.0, 1.0, 1.0, 1.0])
    """

    def __init__(self, size: int, *, adjoint: bool = True, device: torch.device | str | None = None) -> None:
        check_int("FixedPointCache", "size", size, 1)
        check_bool("FixedPointCache", "adjoint", adjoint)
        self.size, self.adjoint, self.device = size, adjoint, None if device is None else torch.device(device)
        self._tables: dict[str, tuple[list[Tensor], Tensor, StateLayout]] = {}

    def __repr__(self) -> str:
        filled = {k: int(v[1].sum()) for k, v in self._tables.items()}
        return f"FixedPointCache(size={self.size}, adjoint={self.adjoint}, filled={filled})"

    def clear(self) -> None:
        """Forget every cached state."""
        self._tables.clear()

    def get(self, index: Tensor, like: State, *, slot: str = "forward") -> tuple[State, Tensor]:
        """``like`` with the rows of cached samples replaced by their cached states, and the ``(B,)`` hit mask.

        Raises:
            DeqInputError: ``index`` is not a ``(B,)`` integer tensor within ``[0, size)``, or the per-sample
                shape differs from what the cache holds.
        """
        layout = StateLayout.of(like, "state")
        idx = self._index(index, layout.batch)
        table = self._tables.get(slot)
        if table is None:
            return like, torch.zeros(layout.batch, dtype=torch.bool, device=layout.device)
        parts, filled, stored = table
        self._check_layout(stored, layout)
        hit = filled[idx.to(filled.device)].to(layout.device)
        rows = [p[idx.to(p.device)].to(device=layout.device, dtype=layout.dtype) for p in parts]
        mine = like if layout.is_tuple else (like,)
        out = tuple(torch.where(hit.view(-1, *([1] * (t.dim() - 1))), r, t) for r, t in zip(rows, mine))
        return (out if layout.is_tuple else out[0]), hit

    def put(self, index: Tensor, state: State, *, slot: str = "forward", rows: Tensor | None = None) -> None:
        """Store ``state`` (detached) for the samples ``index`` (only where ``rows`` is True, if given)."""
        layout = StateLayout.of(state, "state")
        idx = self._index(index, layout.batch)
        parts_in = state if layout.is_tuple else (state,)
        if rows is not None:
            keep = rows.nonzero().flatten()
            idx, parts_in = idx[keep.to(idx.device)], tuple(t[keep] for t in parts_in)
        table = self._tables.get(slot)
        if table is None:
            dev = self.device or layout.device
            parts = [torch.zeros((self.size, *s[1:]), dtype=layout.dtype, device=dev) for s in layout.shapes]
            table = (parts, torch.zeros(self.size, dtype=torch.bool, device=dev), layout)
            self._tables[slot] = table
        parts, filled, stored = table
        self._check_layout(stored, layout)
        with torch.no_grad():
            for p, t in zip(parts, parts_in):
                p[idx.to(p.device)] = t.detach().to(device=p.device, dtype=p.dtype)
            filled[idx.to(filled.device)] = True

    def _index(self, index: Tensor, batch: int) -> Tensor:
        if not isinstance(index, Tensor) or index.dtype not in (torch.int32, torch.int64) or index.dim() != 1:
            raise DeqInputError(f"index must be a (B,) integer tensor of dataset indices, got {index!r:.80}")
        if index.numel() != batch:
            raise DeqInputError(f"index has {index.numel()} entries but the batch has {batch} samples")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.size):
            raise DeqInputError(f"index must lie in [0, {self.size}) (the cache's size), got "
                                f"[{int(index.min())}, {int(index.max())}]")
        return index.long()

    @staticmethod
    def _check_layout(stored: StateLayout, layout: StateLayout) -> None:
        if [s[1:] for s in stored.shapes] != [s[1:] for s in layout.shapes] or stored.is_tuple != layout.is_tuple:
            raise DeqInputError(
                f"the cache holds per-sample states of shapes {[tuple(s[1:]) for s in stored.shapes]}, got "
                f"{[tuple(s[1:]) for s in layout.shapes]}; use one FixedPointCache per DEQ and data set")
