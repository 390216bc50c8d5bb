"""Heavy-ball (Polyak momentum) fixed-point iteration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from deq_core import AbstractFixedPointSolver, DeqConfigError, FlatMap, check_range

__all__ = ["HeavyBall"]


@dataclass(frozen=True)
class HeavyBall(AbstractFixedPointSolver):
    """Fixed-point iteration with momentum (Polyak's heavy ball on the residual ``g(z) = f(z) - z``).

    .. math::

        z_{k+1} = z_k + \\alpha\\,(f(z_k) - z_k) + \\beta\\,(z_k - z_{k-1}), \\qquad z_{-1} = z_0 .

    On a linear map ``f(z) = Jz + b`` each eigenvalue ``lambda`` of ``J`` gives the recursion
    ``r^2 - (1 - alpha + alpha lambda + beta) r + beta = 0``; with ``alpha = 1`` both roots lie inside the
    unit circle for every real ``lambda`` in ``(-1, 1)`` and ``beta`` in ``[0, 1)``, and a moderate ``beta``
    speeds up maps that contract slowly along directions with ``lambda`` close to 1 (the worst root drops
    from ``lambda`` to about ``sqrt(beta)``). Each step costs one evaluation of ``f``.

    Arguments:
        relaxation: ``alpha`` in ``(0, 1]``, the weight of the new residual (1 = plain Picard plus momentum).
        momentum: ``beta`` in ``[0, 1)``; 0 gives damped Picard iteration.

    Raises:
        DeqConfigError: a hyperparameter is out of range.

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solver_example import HeavyBall
        >>> sol = fixed_point(lambda z: 0.9 * z + 1.0, torch.zeros(2, 3), solver=HeavyBall(momentum=0.5))
        >>> bool(torch.allclose(sol.value, torch.full((2, 3), 10.0), rtol=1e-3))
        True
    """

    name: ClassVar[str] = "heavy-ball"
    relaxation: float = 1.0
    momentum: float = 0.5

    def __post_init__(self) -> None:
        check_range(self, "relaxation", self.relaxation, 0.0, 1.0)
        beta = self.momentum
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise DeqConfigError(f"HeavyBall.momentum must be in [0, 1), got {beta!r}")

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> Any:
        return z  # z_{-1} = z_0: the first step has no momentum

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        z_prev = state
        z_next = z + self.relaxation * (fz - z) + self.momentum * (z - z_prev)
        return z_next, f(z_next), z
