"""Packing of fixed-point states (a tensor or a tuple of tensors) into one ``(B, N)`` matrix.

Every solver works on flat per-sample rows; the driver packs a user state once on entry and unpacks
on exit, so tuple states (multi-resolution DEQs, JIIO's ``(z, mu, x)``) cost nothing per iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor

from ._errors import DeqInputError

__all__ = ["State", "StateLayout", "flat_map"]

State = Tensor | tuple[Tensor, ...]


@dataclass(frozen=True)
class StateLayout:
    """Shapes, dtype and device of a state, and how it maps to rows of a ``(B, N)`` matrix.

    Example:
        >>> import torch
        >>> layout = StateLayout.of((torch.zeros(2, 3), torch.zeros(2, 4, 5)))
        >>> layout.numel, layout.batch
        (23, 2)
        >>> flat = layout.pack((torch.ones(2, 3), torch.zeros(2, 4, 5)))
        >>> tuple(flat.shape)
        (2, 23)
    """

    shapes: tuple[torch.Size, ...]
    is_tuple: bool
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, state: State, what: str = "z0") -> StateLayout:
        tensors = _as_tuple(state, what)
        if not tensors:
            raise DeqInputError(f"{what} must be a tensor or a non-empty tuple of tensors, got an empty tuple")
        batch = None
        for i, t in enumerate(tensors):
            name = what if isinstance(state, Tensor) else f"{what}[{i}]"
            if t.dim() < 1:
                raise DeqInputError(f"{name} must have a leading batch dimension, got a 0-d tensor")
            if not t.is_floating_point():
                raise DeqInputError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
            if batch is None:
                batch = t.shape[0]
            elif t.shape[0] != batch:
                raise DeqInputError(f"all parts of {what} must share the batch size {batch}, {name} has {t.shape[0]}")
            if t.dtype != tensors[0].dtype or t.device != tensors[0].device:
                raise DeqInputError(
                    f"all parts of {what} must share one dtype and device; expected {tensors[0].dtype} on "
                    f"{tensors[0].device}, {name} is {t.dtype} on {t.device}"
                )
        # a list counts as a tuple (it used to be unpacked as one tensor)
        return cls(tuple(t.shape for t in tensors), not isinstance(state, Tensor), tensors[0].dtype, tensors[0].device)

    def with_batch(self, batch: int) -> StateLayout:
        """The same layout for ``batch`` samples (e.g. a sub-batch of healthy rows)."""
        return StateLayout(tuple(torch.Size((batch, *s[1:])) for s in self.shapes), self.is_tuple, self.dtype,
                           self.device)

    @property
    def batch(self) -> int:
        return self.shapes[0][0]

    @property
    def numel(self) -> int:
        """Number of entries per sample, N."""
        return sum(prod(s[1:]) for s in self.shapes)

    def pack(self, state: State) -> Tensor:
        """Tensor or tuple -> ``(B, N)`` (a view when the state is a single contiguous tensor)."""
        tensors = _as_tuple(state, "state")
        if len(tensors) == 1:
            return tensors[0].reshape(self.batch, self.numel)
        return torch.cat([t.reshape(self.batch, prod(t.shape[1:])) for t in tensors], dim=1)

    def unpack(self, flat: Tensor) -> State:
        """``(B, N)`` -> the original structure (views into ``flat``)."""
        if not self.is_tuple:
            return flat.reshape(self.shapes[0])
        sizes = [prod(s[1:]) for s in self.shapes]
        return tuple(p.reshape(s) for p, s in zip(flat.split(sizes, dim=1), self.shapes))

    def check(self, state: State, what: str) -> None:
        """Raise :class:`DeqInputError` unless ``state`` has exactly this layout."""
        tensors = _as_tuple(state, what)
        is_tuple = not isinstance(state, Tensor)
        if is_tuple != self.is_tuple or len(tensors) != len(self.shapes):
            raise DeqInputError(
                f"{what} must have the structure of z0 ({_describe(self.shapes, self.is_tuple)}), "
                f"got {_describe(tuple(t.shape for t in tensors), is_tuple)}"
            )
        for i, (t, shape) in enumerate(zip(tensors, self.shapes)):
            name = f"{what}[{i}]" if self.is_tuple else what
            if t.shape != shape:
                raise DeqInputError(f"{name} must have shape {tuple(shape)} like z0, got {tuple(t.shape)}")
            if t.dtype != self.dtype:
                raise DeqInputError(f"{name} must have dtype {self.dtype} like z0, got {t.dtype}")


def flat_map(f: Callable[[State], State], layout: StateLayout, *, check: bool = True) -> Callable[[Tensor], Tensor]:
    """Wrap ``f`` on user states into a map on ``(B, N)`` rows; checks the output layout on the first call."""
    checked = not check
    # a (B, N) state needs no reshaping at all (one Python call less per evaluation)
    flat_already = not layout.is_tuple and len(layout.shapes[0]) == 2

    def g(flat: Tensor) -> Tensor:
        nonlocal checked
        out = f(flat if flat_already else layout.unpack(flat))
        if not checked:
            layout.check(out, "f(z)")
            checked = True
        return out if flat_already else layout.pack(out)

    return g


def _as_tuple(state: State, what: str) -> tuple[Tensor, ...]:
    if isinstance(state, Tensor):
        return (state,)
    if isinstance(state, Sequence) and all(isinstance(t, Tensor) for t in state):
        return tuple(state)
    raise DeqInputError(f"{what} must be a tensor or a tuple of tensors, got {type(state).__name__}")


def _describe(shapes: Sequence[torch.Size], is_tuple: bool) -> str:
    if not is_tuple:
        return f"a tensor of shape {tuple(shapes[0])}"
    return "a tuple of shapes " + ", ".join(str(tuple(s)) for s in shapes)
