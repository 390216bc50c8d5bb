"""The reference solver ``fixed-point``: damped Picard iteration ``z <- (1 - damping) z + damping f(z)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ._solver import AbstractFixedPointSolver, FlatMap
from ._validate import check_range

__all__ = ["FixedPointIteration"]


@dataclass(frozen=True)
class FixedPointIteration(AbstractFixedPointSolver):
    """Damped fixed-point (Picard / Krasnosel'skii-Mann) iteration.

    ``z_{k+1} = (1 - damping) z_k + damping f(z_k)``; converges for contractions (any ``damping`` in
    ``(0, 1]``) and for nonexpansive maps with ``damping < 1``.

    Example:
        >>> import torch
        >>> from deq_core import fixed_point, FixedPointIteration
        >>> sol = fixed_point(lambda z: 0.5 * z + 1, torch.zeros(1, 2), solver=FixedPointIteration(damping=0.9))
        >>> sol.result.name
        'CONVERGED'
    """

    name: ClassVar[str] = "fixed-point"
    damping: float = 1.0

    def __post_init__(self) -> None:
        check_range(self, "damping", self.damping, 0.0, 1.0)

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> Any:
        return None

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        z_next = fz if self.damping == 1.0 else z.lerp(fz, self.damping)
        return z_next, f(z_next), state
