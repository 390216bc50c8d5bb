"""``picard``: damped fixed-point iteration with optional per-sample adaptive damping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deq_core import AbstractFixedPointSolver, DeqConfigError, FlatMap, check_range

__all__ = ["Picard"]


@dataclass(frozen=True)
class Picard(AbstractFixedPointSolver):
    r"""Damped fixed-point (Krasnosel'skii-Mann) iteration ``z <- (1 - d) z + d f(z)``.

    Richer than deq-core's minimal ``fixed-point``: with ``adaptive=True`` each sample keeps its own
    damping ``d``, halved (down to ``min_damping``) whenever its residual ``||f(z) - z||`` grows and
    multiplied by ``recover`` (up to ``damping``) when it shrinks, all on the device, without host syncs.

    Arguments:
        damping: (initial and largest) damping in ``(0, 1]``.
        adaptive: adapt the damping per sample from the residual history.
        min_damping: smallest damping in adaptive mode, in ``(0, damping]``.
        recover: growth factor of the damping after a successful step (``>= 1``).

    Statistics: ``damping_mean`` (mean per-sample damping at the end), ``backtracks`` (damping reductions).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import Picard
        >>> sol = fixed_point(lambda z: -0.9 * z + 1, torch.zeros(3, 2), solver=Picard(damping=0.5), rtol=1e-6)
        >>> bool(torch.allclose(sol.value, torch.full((3, 2), 1 / 1.9), atol=1e-5))
        True
    """

    name: ClassVar[str] = "picard"
    damping: float = 1.0
    adaptive: bool = False
    min_damping: float = 0.05
    recover: float = 1.2

    def __post_init__(self) -> None:
        check_range(self, "damping", self.damping, 0.0, 1.0)
        if not isinstance(self.adaptive, bool):
            raise DeqConfigError(f"Picard.adaptive must be a bool, got {self.adaptive!r}")
        check_range(self, "min_damping", self.min_damping, 0.0, self.damping)
        if isinstance(self.recover, bool) or not isinstance(self.recover, (int, float)) or not self.recover >= 1:
            raise DeqConfigError(f"Picard.recover must be a number >= 1, got {self.recover!r}")

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> Any:
        if not self.adaptive:
            return None
        acc = torch.promote_types(z.dtype, torch.float32)
        B = z.shape[0]
        return {
            "d": torch.full((B, 1), self.damping, dtype=acc, device=z.device),
            "res": torch.full((B,), float("inf"), dtype=acc, device=z.device),
            "backtracks": torch.zeros(B, dtype=torch.long, device=z.device),
        }

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        if state is None:
            z_next = fz if self.damping == 1.0 else z.lerp(fz, self.damping)
            return z_next, f(z_next), state
        g = fz - z
        res = torch.linalg.vector_norm(g, dim=1, dtype=state["d"].dtype)
        worse = res > state["res"]
        d = torch.where(worse[:, None], state["d"] * 0.5, state["d"] * self.recover)
        d = d.clamp_(self.min_damping, self.damping)
        state["d"], state["res"] = d, res
        state["backtracks"] += worse
        z_next = torch.addcmul(z, g, d.to(z.dtype))
        return z_next, f(z_next), state

    def stats(self, state: Any) -> dict[str, Any]:
        if state is None:
            return {"damping_mean": self.damping, "backtracks": 0}
        return {"damping_mean": float(state["d"].mean()), "backtracks": int(state["backtracks"].sum())}
