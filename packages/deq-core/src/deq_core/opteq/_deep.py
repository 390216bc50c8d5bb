r"""Deep OptEq: several unit layers coupled into one joint convex objective.

The state is :math:`z = (z_1, \dots, z_L)` (widths :math:`n_l`,
activations :math:`\sigma_l = \operatorname{prox}_{\varphi_l}`).
One block lower-bidiagonal matrix couples neighbouring layers,

.. math::  W = \begin{pmatrix} W_{11} & & & \\ W_{21} & W_{22} & & \\ & \ddots & \ddots & \\ & & W_{L,L-1} & W_{LL}
           \end{pmatrix}, \qquad \|W\|_2 < 1,

the input enters the first layer, :math:`c = (Ux + b_1, b_2, \dots, b_L)`, and the equilibrium
:math:`z^\star_l = \sigma_l\big((W^\top W z^\star + c)_l\big)` is the unique minimizer of the joint objective

.. math::  G(z; x) = \sum_l \sum_j \varphi_l(z_{l,j}) + \tfrac12\|z\|^2 - \tfrac12\|W z\|^2 - \langle c, z\rangle
           = \sum_l G_l(z_l) - \sum_l \langle W_{l+1,l} z_l, W_{l+1,l+1} z_{l+1}\rangle,

i.e. the per-layer unit objectives :math:`G_l`
(with :math:`W_l^\top W_l = W_{ll}^\top W_{ll} + W_{l+1,l}^\top W_{l+1,l}`)
plus bilinear coupling terms that carry information from layer :math:`l` to :math:`l + 1` (and back). It is the
unit layer on the stacked state with a structured :math:`W`, so every unit-layer guarantee carries over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._adjoint import AbstractAdjoint
from .._errors import DeqConfigError, DeqInputError
from .._solver import AbstractFixedPointSolver
from ._layer import _EquilibriumModel, _OptEqCore, _resolve_prox
from ._prox import AbstractProx

__all__ = ["DeepOptEq", "DeepOptEqLayer"]


def _per_layer(value: Any, n: int, what: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise DeqConfigError(f"DeepOptEq: {what} has {len(value)} entries for {n} layers")
        return list(value)
    return [value] * n


class DeepOptEqLayer(_OptEqCore):
    r"""The deep OptEq map on a tuple state ``(z_1, ..., z_L)``: :math:`z \mapsto \sigma(W^\top W z + c)` blockwise.

    Arguments:
        in_features: size of ``x`` (flattened).
        widths: layer widths :math:`(n_1, \dots, n_L)`, :math:`L \ge 1`.
        prox: one prox (name or object) for all layers, or one per layer.
        l1: :math:`\lambda \ge 0` of an extra :math:`\lambda\|z_l\|_1` term, one value or one per layer.
        method, kappa, strict, gain, bias, dtype: see :class:`deq_core.opteq.OptEqLayer`
            (the norm bound applies to the whole block matrix :math:`W`).

    Example:
        >>> import torch
        >>> layer = DeepOptEqLayer(3, (4, 2), prox=("relu", "tanh")).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> z = layer.init_state(layer.inject(x))
        >>> [tuple(t.shape) for t in layer(z, layer.inject(x))]
        [(5, 4), (5, 2)]
    """

    def __init__(self, in_features: int, widths: Sequence[int], *,
                 prox: AbstractProx | str | Sequence[AbstractProx | str] = "relu", l1: float | Sequence[float] = 0.0,
                 method: str = "spectral", kappa: float = 0.03, strict: bool = True, gain: float = 0.25,
                 bias: bool = True, dtype: torch.dtype | None = None) -> None:
        widths = tuple(widths)
        if not widths:
            raise DeqConfigError("DeepOptEq needs at least one layer width")
        proxes = [_resolve_prox(p, lam) for p, lam in zip(_per_layer(prox, len(widths), "prox"),
                                                           _per_layer(l1, len(widths), "l1"))]
        blocks = [(i, i) for i in range(len(widths))] + [(i, i - 1) for i in range(1, len(widths))]
        super().__init__(in_features, widths, proxes, blocks, hidden=None, method=method, kappa=kappa,
                         strict=strict, gain=gain, bias=bias, weight=None, dtype=dtype)

    def _pack(self, z: Any, what: str = "z") -> Tensor:
        if not isinstance(z, (tuple, list)) or len(z) != len(self.widths):
            raise DeqInputError(f"DeepOptEq expects {what} as a tuple of {len(self.widths)} tensors (one per layer)")
        for i, (t, w) in enumerate(zip(z, self.widths)):
            if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != w:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise DeqInputError(f"DeepOptEq: {what}[{i}] must have shape (B, {w}), got {got}")
        return torch.cat(tuple(z), dim=1)

    def _unpack(self, flat: Tensor) -> tuple[Tensor, ...]:
        return tuple(flat.split(self.widths, dim=1))

    def init_state(self, c: Tensor) -> tuple[Tensor, ...]:
        """Default :math:`z_0 = 0` in every layer."""
        return self._unpack(torch.zeros_like(c))

    def forward(self, z: tuple[Tensor, ...], c: Tensor) -> tuple[Tensor, ...]:
        """One application of the joint map; ``c = inject(x)`` (flat)."""
        return self._unpack(self._step(self._pack(z), c))

    def objective(self, z: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """The joint objective :math:`G(z; x)` per sample, ``(B,)``."""
        return self._objective(self._pack(z), self.inject(x))

    def gradient_mapping(self, z: tuple[Tensor, ...], x: Tensor) -> tuple[Tensor, ...]:
        """:math:`z - \\sigma(W^\\top W z + c)` per layer (zero exactly at the minimizer)."""
        flat = self._pack(z)
        return self._unpack(flat - self._step(flat, self.inject(x)))


class DeepOptEq(_EquilibriumModel):
    r"""Deep OptEq equilibrium model: ``forward(x) = ((z_1*, ..., z_L*), info)``, the minimizer of the joint
    :meth:`objective`, solved by a :class:`deq_core.DEQ` (any solver, any adjoint) on the tuple state.

    Arguments:
        in_features, widths, prox, l1, method, kappa, strict, gain, bias, dtype: see :class:`DeepOptEqLayer`.
        solver, adjoint, atol, rtol, max_steps, **deq_options: see :class:`deq_core.DEQ`.

    Example:
        >>> import torch
        >>> model = DeepOptEq(6, (8, 4), prox="relu", atol=1e-12, rtol=1e-12, max_steps=300).double()
        >>> x = torch.randn(2, 6, dtype=torch.float64)
        >>> z, info = model(x)
        >>> info.result.name, max(float(g.detach().norm()) for g in model.gradient_mapping(z, x)) < 1e-8
        ('CONVERGED', True)
    """

    def __init__(self, in_features: int, widths: Sequence[int] = (64, 64), *,
                 prox: AbstractProx | str | Sequence[AbstractProx | str] = "relu", l1: float | Sequence[float] = 0.0,
                 method: str = "spectral", kappa: float = 0.03, strict: bool = True, gain: float = 0.25,
                 bias: bool = True, dtype: torch.dtype | None = None,
                 solver: AbstractFixedPointSolver | str = "fixed-point",
                 adjoint: AbstractAdjoint | str | None = "implicit",
                 atol: float = 1e-6, rtol: float = 1e-4, max_steps: int = 50, **deq_options: Any) -> None:
        super().__init__()
        layer = DeepOptEqLayer(in_features, widths, prox=prox, l1=l1, method=method, kappa=kappa, strict=strict,
                               gain=gain, bias=bias, dtype=dtype)
        self._wrap(layer, solver, adjoint, atol, rtol, max_steps, deq_options)
