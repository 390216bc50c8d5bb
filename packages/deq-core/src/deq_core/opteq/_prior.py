r"""The two ways OptEq injects priors.

1. **Change the convex problem**: add a convex term :math:`R(z)` to the objective. A separable non-smooth
   :math:`R` merges into the prox; :class:`L1Prox` does this for :math:`R(z) = \lambda\|z\|_1` (sparse features):
   :math:`\operatorname{prox}_{\varphi + \lambda|\cdot|} =
   \operatorname{prox}_\varphi \circ \operatorname{soft}_\lambda`
   when :math:`\operatorname{prox}_\varphi(0) = 0`, and :math:`\operatorname{prox}_\varphi(v \mp \lambda)` when
   :math:`\operatorname{dom}\varphi` lies in :math:`[0, \infty)` (resp. :math:`(-\infty, 0]`),
   where :math:`|u| = \pm u`.
   ReLU becomes :math:`\max(v - \lambda, 0)`.
2. **Choose among equilibria**: when :math:`\|W\|_2 = 1` the objective is only convex and the fixed-point set
   may be a set; the anchored (Halpern) iteration :class:`Halpern`,
   :math:`z_{k+1} = \lambda_k u + (1 - \lambda_k) T(z_k)` with :math:`\lambda_k = 1/(k + 2)`, converges for a
   nonexpansive :math:`T` to the fixed point nearest the anchor :math:`u` (its projection onto
   :math:`\operatorname{Fix} T`), so :math:`u` carries the prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._control import LoopControl, meets_tolerance
from .._errors import DeqConfigError, DeqInputError
from .._solver import AbstractFixedPointSolver, FlatMap
from ._prox import AbstractProx, get_prox

__all__ = ["Halpern", "L1Prox", "with_l1"]


@dataclass(frozen=True, repr=False)
class L1Prox(AbstractProx):
    r"""The prox of :math:`\varphi + \lambda|\cdot|` (``base`` gives :math:`\varphi`, ``lam`` = :math:`\lambda \ge 0`).

    Raises:
        DeqConfigError: ``lam < 0``, or ``base`` has :math:`\operatorname{prox}_\varphi(0) \ne 0` and a domain that
            contains both signs (no closed form here).

    Example:
        >>> import torch
        >>> from deq_core.opteq import with_l1
        >>> with_l1("relu", 0.5)(torch.tensor([-1.0, 0.2, 2.0])).tolist()
        [0.0, 0.0, 1.5]
    """

    name: ClassVar[str] = "l1"
    base: AbstractProx
    lam: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.base, AbstractProx):
            raise DeqConfigError(f"L1Prox.base must be an AbstractProx, got {type(self.base).__name__}")
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise DeqConfigError(f"L1Prox.lam must be a finite number >= 0, got {lam!r}")
        lo, hi = self.base.domain
        p0 = float(self.base(torch.zeros((), dtype=torch.float64)))
        if p0 == 0.0:
            mode = "compose"
        elif lo >= 0:
            mode = "shift+"
        elif hi <= 0:
            mode = "shift-"
        else:
            raise DeqConfigError(
                f"no closed-form l1 prior for {self.base!r}: its prox maps 0 to {p0:g} and its domain "
                f"[{lo:g}, {hi:g}] contains both signs"
            )
        object.__setattr__(self, "_mode", mode)

    def __call__(self, v: Tensor) -> Tensor:
        mode = self._mode  # type: ignore[attr-defined]
        if mode == "compose":
            return self.base(torch.sign(v) * torch.relu(v.abs() - self.lam))
        return self.base(v - self.lam if mode == "shift+" else v + self.lam)

    def phi(self, u: Tensor) -> Tensor:
        return self.base.phi(u) + self.lam * u.abs()

    @property
    def domain(self) -> tuple[float, float]:
        return self.base.domain

    @property
    def open_domain(self) -> bool:  # type: ignore[override]
        return self.base.open_domain

    def options(self) -> dict[str, Any]:
        return {"base": self.base, "lam": self.lam}


def with_l1(prox: AbstractProx | str, lam: float) -> AbstractProx:
    r"""``prox`` with the extra term :math:`\lambda\|z\|_1` in the objective (``lam == 0`` returns ``prox`` itself).

    Example:
        >>> with_l1("relu", 0.1)
        L1Prox(base=ReLU(), lam=0.1)
    """
    base = get_prox(prox)
    if isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam == 0:
        return base
    return L1Prox(base, lam)


@dataclass(frozen=True, eq=False)
class Halpern(AbstractFixedPointSolver):
    r"""Anchored (Halpern) iteration :math:`z_{k+1} = \lambda_k u + (1 - \lambda_k) f(z_k)`,
    :math:`\lambda_k = 1/(k + c)`.

    For a nonexpansive ``f`` with fixed points it converges (slowly, :math:`O(1/k)`) to the projection of the
    anchor :math:`u` onto :math:`\operatorname{Fix} f`: it selects the equilibrium nearest the anchor when there
    are many (OptEq with :math:`\|W\|_2 = 1`). For a contraction it converges to the unique fixed point.

    Arguments:
        anchor: :math:`u`; ``None`` anchors at the starting point ``z0``. A tensor with the flat per-sample size
            ``N`` (broadcast over the batch) or with ``B * N`` entries (one anchor per sample).
        offset: :math:`c \ge 1` in :math:`\lambda_k = 1/(k + c)` (the default 2 gives 1/2, 1/3, ...).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> u = torch.tensor([[-0.1, 2.0]], dtype=torch.float64)
        >>> sol = fixed_point(torch.relu, torch.tensor([[3.0, -3.0]], dtype=torch.float64),
        ...                   solver=Halpern(anchor=u), atol=1e-4, rtol=0.0, max_steps=100_000)
        >>> bool(torch.allclose(sol.value, torch.relu(u), atol=1e-3))   # the fixed point nearest u, not z0
        True
    """

    name: ClassVar[str] = "halpern"
    anchor: Tensor | None = None
    offset: float = 2.0

    def __post_init__(self) -> None:
        if self.anchor is not None:
            if not isinstance(self.anchor, Tensor) or not self.anchor.is_floating_point():
                raise DeqConfigError(f"Halpern.anchor must be None or a floating-point tensor, got {self.anchor!r}")
            if not bool(torch.isfinite(self.anchor).all()):
                raise DeqConfigError("Halpern.anchor contains non-finite values (nan or inf)")
        c = self.offset
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 1:
            raise DeqConfigError(f"Halpern.offset must be a finite number >= 1 (so that lambda_0 <= 1), got {c!r}")

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> Any:
        if self.anchor is None:
            return 0, z.detach().clone()
        a = self.anchor.detach().to(dtype=z.dtype, device=z.device)
        if a.numel() == z.numel():
            a = a.reshape(z.shape)
        elif a.numel() == z.shape[1]:
            a = a.reshape(1, -1).expand_as(z)
        else:
            raise DeqInputError(
                f"Halpern.anchor must have N = {z.shape[1]} entries per sample or B * N = {z.numel()} in all, "
                f"got a tensor of shape {tuple(self.anchor.shape)}"
            )
        return 0, a

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        k, u = state
        lam = 1.0 / (k + self.offset)
        z_next = torch.lerp(fz, u, lam)
        return z_next, f(z_next), (k + 1, u)

    def terminate(self, z: Tensor, fz: Tensor, res: Tensor, fnorm: Tensor, state: Any,
                  control: LoopControl) -> Tensor:
        """The shared test, made stricter by the anchor's pull ``||u - f(z)|| / (k + c)``: the next step moves
        ``z`` towards ``u`` by that much, so ``z`` is only settled when the pull is within tolerance too."""
        k, u = state
        pull = torch.linalg.vector_norm(u - fz, dim=1, dtype=res.dtype) / (k + self.offset)
        return meets_tolerance(res + pull, fnorm, control.atol, control.rtol)

    def stats(self, state: Any) -> dict[str, Any]:
        return {"anchor_weight": 1.0 / (state[0] + self.offset)}

    def options(self) -> dict[str, Any]:
        return {"anchor": None if self.anchor is None else self.anchor.tolist(), "offset": self.offset}
