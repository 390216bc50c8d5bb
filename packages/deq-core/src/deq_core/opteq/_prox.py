r"""Proximal operators of convex scalar functions: the activations of OptEq layers.

An activation :math:`\sigma` is the proximal operator of a proper closed convex :math:`\varphi` when

.. math::  \sigma(v) = \operatorname{prox}_\varphi(v) = \arg\min_u\ \varphi(u) + \tfrac12 (u - v)^2
           \iff v - \sigma(v) \in \partial\varphi(\sigma(v)).

A scalar map is such a prox iff it is nondecreasing and 1-Lipschitz (Combettes & Pesquet 2020). Every
class here evaluates both :math:`\sigma` (``prox(v)``) and :math:`\varphi` (``prox.phi(u)``, ``+inf``
outside :math:`\operatorname{dom}\varphi`), so an OptEq objective can be evaluated exactly.

=================  ==========================================================================
name               :math:`\varphi(u)`
=================  ==========================================================================
``relu``           indicator of :math:`u \ge 0`
``soft-threshold`` :math:`\lambda |u|`
``clip``           indicator of :math:`[a, b]` (``hardtanh`` = ``clip`` on :math:`[-1, 1]`)
``leaky-relu``     :math:`(1/s - 1) u^2 / 2` for :math:`u < 0`, 0 otherwise (slope :math:`s \in (0, 1]`)
``tanh``           :math:`\tfrac12[(1+u)\ln(1+u) + (1-u)\ln(1-u)] - u^2/2` on :math:`[-1, 1]`
``sigmoid``        :math:`u\ln u + (1-u)\ln(1-u) - u^2/2` on :math:`[0, 1]`
``arctan``         :math:`-(2/\pi)\ln\cos(\pi u / 2) - u^2/2` on :math:`(-1, 1)`, for :math:`(2/\pi)\arctan`
=================  ==========================================================================
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._errors import DeqConfigError, UnknownNameError

__all__ = [
    "AbstractProx", "Arctan", "Clip", "LeakyReLU", "ReLU", "Sigmoid", "SoftThreshold", "Tanh", "get_prox",
    "prox_names",
]

_INF = float("inf")


class AbstractProx(abc.ABC):
    r"""An elementwise activation :math:`\sigma = \operatorname{prox}_\varphi` together with its :math:`\varphi`.

    Subclasses are frozen dataclasses of validated hyperparameters (picklable, hashable) with

    * ``__call__(v)``: :math:`\sigma(v)` elementwise;
    * ``phi(u)``: :math:`\varphi(u)` elementwise, ``+inf`` outside :math:`\operatorname{dom}\varphi`;
    * ``domain``: ``(low, high)``, the closure of :math:`\operatorname{dom}\varphi`; ``open_domain`` says whether
      the end points themselves are excluded (``phi`` is ``+inf`` there).

    Example:
        >>> import torch
        >>> from deq_core.opteq import get_prox
        >>> relu = get_prox("relu")
        >>> relu(torch.tensor([-1.0, 2.0])).tolist(), relu.phi(torch.tensor([-1.0, 2.0])).tolist()
        ([0.0, 2.0], [inf, 0.0])
    """

    name: ClassVar[str] = "abstract"
    open_domain: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, v: Tensor) -> Tensor:
        """:math:`\\sigma(v)`, elementwise."""

    @abc.abstractmethod
    def phi(self, u: Tensor) -> Tensor:
        """:math:`\\varphi(u)`, elementwise; ``+inf`` outside the domain."""

    @property
    def domain(self) -> tuple[float, float]:
        """``(low, high)``: the closure of :math:`\\operatorname{dom}\\varphi`."""
        return (-_INF, _INF)

    def value(self, z: Tensor) -> Tensor:
        """:math:`\\sum_j \\varphi(z_j)` per sample: ``(B, ...) -> (B,)``."""
        return self.phi(z).reshape(z.shape[0], -1).sum(dim=1)

    def project(self, u: Tensor, margin: float = 0.0) -> Tensor:
        """Clamp ``u`` into the domain (``margin`` inside each finite end; open domains need ``margin > 0``)."""
        lo, hi = self.domain
        lo = None if math.isinf(lo) else lo + margin
        hi = None if math.isinf(hi) else hi - margin
        return u if lo is None and hi is None else u.clamp(lo, hi)

    def options(self) -> dict[str, Any]:
        """Hyperparameters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)} if hasattr(self, "__dataclass_fields__") else {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def _inf_outside(val: Tensor, inside: Tensor) -> Tensor:
    return torch.where(inside, val, torch.full_like(val, _INF))


def _check_number(owner: object, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DeqConfigError(f"{type(owner).__name__}.{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, repr=False)
class ReLU(AbstractProx):
    r"""``max(v, 0)`` = prox of the indicator of :math:`u \ge 0` (0 there, ``+inf`` below).

    Example:
        >>> import torch
        >>> ReLU()(torch.tensor([-2.0, 0.5])).tolist()
        [0.0, 0.5]
    """

    name: ClassVar[str] = "relu"

    def __call__(self, v: Tensor) -> Tensor:
        return torch.relu(v)

    def phi(self, u: Tensor) -> Tensor:
        return _inf_outside(torch.zeros_like(u), u >= 0)

    @property
    def domain(self) -> tuple[float, float]:
        return (0.0, _INF)


@dataclass(frozen=True, repr=False)
class SoftThreshold(AbstractProx):
    r"""``sign(v) max(|v| - lam, 0)`` = prox of :math:`\lambda |u|` (``lam >= 0``).

    Example:
        >>> import torch
        >>> SoftThreshold(lam=0.5)(torch.tensor([-2.0, 0.2, 1.0])).tolist()
        [-1.5, 0.0, 0.5]
    """

    name: ClassVar[str] = "soft-threshold"
    lam: float = 0.1

    def __post_init__(self) -> None:
        if _check_number(self, "lam", self.lam) < 0:
            raise DeqConfigError(f"SoftThreshold.lam must be >= 0 (a convex penalty lam*|u|), got {self.lam!r}")

    def __call__(self, v: Tensor) -> Tensor:
        return torch.sign(v) * torch.relu(v.abs() - self.lam)

    def phi(self, u: Tensor) -> Tensor:
        return self.lam * u.abs()


@dataclass(frozen=True, repr=False)
class Clip(AbstractProx):
    r"""``clamp(v, low, high)`` = prox of the indicator of :math:`[a, b]` (``hardtanh`` for ``[-1, 1]``).

    Example:
        >>> import torch
        >>> Clip(low=-1.0, high=1.0)(torch.tensor([-3.0, 0.5, 2.0])).tolist()
        [-1.0, 0.5, 1.0]
    """

    name: ClassVar[str] = "clip"
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = _check_number(self, "low", self.low), _check_number(self, "high", self.high)
        if not lo < hi:
            raise DeqConfigError(
                f"Clip needs low < high (a non-empty interval), got low={self.low!r}, high={self.high!r}"
            )

    def __call__(self, v: Tensor) -> Tensor:
        return v.clamp(self.low, self.high)

    def phi(self, u: Tensor) -> Tensor:
        return _inf_outside(torch.zeros_like(u), (u >= self.low) & (u <= self.high))

    @property
    def domain(self) -> tuple[float, float]:
        return (float(self.low), float(self.high))


@dataclass(frozen=True, repr=False)
class LeakyReLU(AbstractProx):
    r"""``v`` for ``v >= 0``, ``slope * v`` below; prox of :math:`(1/s - 1) u^2/2` on :math:`u < 0` for
    :math:`s \in (0, 1]` (a slope above 1 is not 1-Lipschitz, hence no prox).

    Example:
        >>> import torch
        >>> LeakyReLU(slope=0.5)(torch.tensor([-2.0, 3.0])).tolist()
        [-1.0, 3.0]
    """

    name: ClassVar[str] = "leaky-relu"
    slope: float = 0.01

    def __post_init__(self) -> None:
        s = _check_number(self, "slope", self.slope)
        if not 0 < s <= 1:
            raise DeqConfigError(
                f"LeakyReLU.slope must be in (0, 1] to be a proximal operator (nondecreasing, 1-Lipschitz), "
                f"got {self.slope!r}"
            )

    def __call__(self, v: Tensor) -> Tensor:
        return torch.where(v >= 0, v, self.slope * v)

    def phi(self, u: Tensor) -> Tensor:
        return torch.where(u < 0, (1.0 / self.slope - 1.0) * 0.5 * u * u, torch.zeros_like(u))


@dataclass(frozen=True, repr=False)
class Tanh(AbstractProx):
    r"""``tanh(v)``; :math:`\varphi(u) = \tfrac12[(1+u)\ln(1+u) + (1-u)\ln(1-u)] - u^2/2` on :math:`[-1, 1]`
    (:math:`\varphi'(u) = \operatorname{artanh} u - u`).

    Example:
        >>> import torch
        >>> round(float(Tanh().phi(torch.tensor(0.0))), 6)
        0.0
    """

    name: ClassVar[str] = "tanh"

    def __call__(self, v: Tensor) -> Tensor:
        return torch.tanh(v)

    def phi(self, u: Tensor) -> Tensor:
        c = u.clamp(-1.0, 1.0)
        val = 0.5 * (torch.xlogy(1 + c, 1 + c) + torch.xlogy(1 - c, 1 - c)) - 0.5 * c * c
        return _inf_outside(val, (u >= -1) & (u <= 1))

    @property
    def domain(self) -> tuple[float, float]:
        return (-1.0, 1.0)


@dataclass(frozen=True, repr=False)
class Sigmoid(AbstractProx):
    r"""Logistic ``1 / (1 + exp(-v))``; :math:`\varphi(u) = u\ln u + (1-u)\ln(1-u) - u^2/2` on :math:`[0, 1]`.

    Example:
        >>> import torch
        >>> Sigmoid()(torch.tensor([0.0])).tolist()
        [0.5]
    """

    name: ClassVar[str] = "sigmoid"

    def __call__(self, v: Tensor) -> Tensor:
        return torch.sigmoid(v)

    def phi(self, u: Tensor) -> Tensor:
        c = u.clamp(0.0, 1.0)
        val = torch.xlogy(c, c) + torch.xlogy(1 - c, 1 - c) - 0.5 * c * c
        return _inf_outside(val, (u >= 0) & (u <= 1))

    @property
    def domain(self) -> tuple[float, float]:
        return (0.0, 1.0)


@dataclass(frozen=True, repr=False)
class Arctan(AbstractProx):
    r"""``(2/pi) arctan(v)``; :math:`\varphi(u) = -(2/\pi)\ln\cos(\pi u/2) - u^2/2` on the open :math:`(-1, 1)`.

    Example:
        >>> import torch
        >>> Arctan()(torch.tensor([1.0])).tolist()
        [0.5]
    """

    name: ClassVar[str] = "arctan"
    open_domain: ClassVar[bool] = True

    def __call__(self, v: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(v)

    def phi(self, u: Tensor) -> Tensor:
        inside = (u > -1) & (u < 1)
        c = torch.where(inside, u, torch.zeros_like(u))
        val = -(2.0 / math.pi) * torch.log(torch.cos(0.5 * math.pi * c)) - 0.5 * c * c
        return _inf_outside(val, inside)

    @property
    def domain(self) -> tuple[float, float]:
        return (-1.0, 1.0)


_REGISTRY: dict[str, type[AbstractProx]] = {
    cls.name: cls for cls in (ReLU, SoftThreshold, Clip, LeakyReLU, Tanh, Sigmoid, Arctan)
}
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "hardtanh": ("clip", {"low": -1.0, "high": 1.0}),
    "softshrink": ("soft-threshold", {}),
    "atan": ("arctan", {}),
    "logistic": ("sigmoid", {}),
}


def prox_names() -> tuple[str, ...]:
    """Every registered prox name and alias, sorted."""
    return tuple(sorted({*_REGISTRY, *_ALIASES}))


def get_prox(prox: AbstractProx | str, **options: Any) -> AbstractProx:
    """A prox object as is, or one built from a registered name with ``options``.

    Raises:
        UnknownNameError: unknown name (the message lists the known ones and the closest match).
        DeqConfigError: unknown or invalid options, or options given together with an object.

    Example:
        >>> get_prox("soft-threshold", lam=0.2)
        SoftThreshold(lam=0.2)
        >>> get_prox("hardtanh")
        Clip(low=-1.0, high=1.0)
    """
    if isinstance(prox, AbstractProx):
        if options:
            raise DeqConfigError(f"options {sorted(options)} were given with a prox object {prox!r}; pass a name")
        return prox
    if not isinstance(prox, str):
        raise DeqConfigError(f"prox must be an AbstractProx or a registered name, got {type(prox).__name__}")
    key = prox.strip().lower().replace("_", "-")
    if key in _ALIASES:
        key, defaults = _ALIASES[key]
        options = {**defaults, **options}
    if key not in _REGISTRY:
        raise UnknownNameError("prox", prox, prox_names())
    cls = _REGISTRY[key]
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DeqConfigError(
            f"unknown option(s) {unknown} for prox {key!r}; it accepts {sorted(allowed) or 'no options'}"
        )
    return cls(**options)
