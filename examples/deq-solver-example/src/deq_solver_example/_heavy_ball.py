"""Heavy-ball (Polyak momentum) fixed-point iteration, safeguarded by restarts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deq_core import AbstractFixedPointSolver, DeqConfigError, FlatMap, check_range

__all__ = ["HeavyBall"]


@dataclass(frozen=True)
class HeavyBall(AbstractFixedPointSolver):
    """Fixed-point iteration with momentum (Polyak's heavy ball on the residual ``g(z) = f(z) - z``), restarted
    whenever a momentum step increases a sample's residual.

    .. math::

        \\hat z = z_k + \\alpha\\,(f(z_k) - z_k) + \\beta\\,(z_k - z_{k-1}), \\qquad z_{-1} = z_0,

        z_{k+1} = \\hat z \\ \\text{if}\\ \\|f(\\hat z) - \\hat z\\| \\le \\|f(z_k) - z_k\\|,
        \\ \\text{else}\\ z_k \\ \\text{(restart: the next step has no momentum)}.

    Why the safeguard: on a linear map ``f(z) = Jz + b`` each eigenvalue ``lambda`` of ``J`` gives the
    recursion ``r^2 - (1 - alpha + alpha lambda + beta) r + beta = 0``. For real ``lambda`` in ``(-1, 1)``
    (symmetric ``J``) both roots lie inside the unit circle and a moderate ``beta`` speeds up directions with
    ``lambda`` close to 1 (the worst root drops from ``lambda`` to about ``sqrt(beta)``); but for complex
    ``lambda`` near the circle ``|lambda| = rho`` a root leaves it (``lambda = 0.9i``, ``beta = 0.5``:
    ``|r| = 1.34``), and plain heavy ball diverges on such contractions. A step that makes a sample's residual
    go up is therefore discarded for that sample (its iterate stays, costing one evaluation of ``f``) and its
    momentum restarts, so its next step is the damped Picard step ``z_k + alpha (f(z_k) - z_k)``, which shrinks
    the residual of a ``rho``-contraction by ``1 - alpha (1 - rho)``. The residual of the iterates never
    increases, and each restart cycle gains at least that Picard factor, so the iteration converges on every
    contraction (the conformance kit's whole problem class). Each step costs one evaluation of ``f``. Cost:
    faster than plain iteration when ``J`` contracts slowly along real directions (symmetric ``J`` with
    eigenvalues in ``[0, 0.95]``, ``beta = 0.6``: 4x fewer steps); slower on maps that already contract fast
    (momentum floors the rate at about ``sqrt(beta)``); at worst, when every momentum step is discarded (a
    scaled rotation), twice the evaluations of damped Picard.

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
        push = self.momentum * (z - z_prev)
        z_next = z + self.relaxation * (fz - z) + push
        f_next = f(z_next)
        if self.momentum == 0.0:
            return z_next, f_next, z
        # restart where momentum made the residual go up (nan compares False: the driver reports it)
        worse = torch.linalg.vector_norm(f_next - z_next, dim=1) > torch.linalg.vector_norm(fz - z, dim=1)
        back = (worse & (push != 0).any(dim=1))[:, None]
        return torch.where(back, z, z_next), torch.where(back, fz, f_next), z
