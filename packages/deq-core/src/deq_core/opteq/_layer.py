r"""The OptEq unit layer and its equilibrium model.

With :math:`\sigma = \operatorname{prox}_\varphi` (elementwise) and :math:`\|W\|_2 < 1`, the equilibrium

.. math::  z^\star = \sigma(W^\top W z^\star + U x + b)

is the unique minimizer of the explicit, strongly convex (modulus :math:`1 - \|W\|_2^2`) objective

.. math::  G(z; x) = \sum_j \varphi(z_j) + \tfrac12\|z\|^2 - \tfrac12\|W z\|^2 - \langle U x + b, z\rangle,

because :math:`0 \in \partial\varphi(z^\star) + (I - W^\top W) z^\star - (Ux + b)` is exactly the prox fixed-point
condition. The plain iteration :math:`z \leftarrow \sigma(W^\top W z + Ux + b)` is proximal gradient with unit
step on :math:`G` (the smooth part has a 1-Lipschitz gradient), so :math:`G` decreases monotonically along it, and
:math:`z - \sigma(W^\top W z + Ux + b)` is the *gradient mapping* (zero exactly at the minimizer).

:math:`\|W\|_2 < 1` is kept by the weight parameterization (:class:`ContractiveWeight`):

* ``"spectral"``: :math:`W = \tilde W / \max(1, \sigma_{\max}(\tilde W) / (1 - \kappa))`,
  so :math:`\|W\|_2 \le 1 - \kappa`
  (exact largest singular value via the Gram matrix's top eigenvalue, differentiable);
* ``"frobenius"``: :math:`W = V / \sqrt{1 + \|V\|_F^2}`, so :math:`\|W\|_2 \le \|W\|_F < 1` with no SVD;
* ``"none"``: :math:`W` as given (checked only).

The bound is asserted at construction and by :meth:`OptEqLayer.check_convergence` (hook it after every optimizer
step with :func:`check_after_step`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._adjoint import AbstractAdjoint
from .._deq import DEQ, DEQInfo
from .._errors import DeqConfigError, DeqInputError
from .._solver import AbstractFixedPointSolver
from ..nn._norm import _Reparam
from ._prior import with_l1
from ._prox import AbstractProx

__all__ = ["ContractiveWeight", "OptEq", "OptEqLayer", "check_after_step"]

METHODS = ("spectral", "frobenius", "none")


class _BoundHook(_Reparam):
    """Writes ``module.weight`` once per DEQ forward (frozen during the solve, see ``deq_core.nn``)."""

    def compute(self, module: nn.Module, update: bool) -> Tensor:
        return module.compute_weight()


class ContractiveWeight(nn.Module):
    r"""A (block-structured) matrix :math:`W` with :math:`\|W\|_2 < 1`; calling the module returns :math:`W`.

    Arguments:
        rows, cols: block heights and widths; ``W`` is ``(sum(rows), sum(cols))``.
        blocks: the ``(i, j)`` blocks that are free parameters (others are zero), default all.
        method: ``"spectral"``, ``"frobenius"`` or ``"none"`` (see the module docstring).
        kappa: margin :math:`\kappa \in (0, 1)` of the spectral rescale (:math:`\|W\|_2 \le 1 - \kappa`).
        gain: raw blocks start as ``gain * randn / sqrt(block width)``.
        init: optional dense initial value of the raw matrix (entries outside ``blocks`` must be zero).

    Example:
        >>> import torch
        >>> w = ContractiveWeight((6,), (6,), init=3 * torch.eye(6))
        >>> round(float(torch.linalg.matrix_norm(w().detach(), ord=2)), 4)
        0.97
    """

    def __init__(self, rows: Sequence[int], cols: Sequence[int], blocks: Iterable[tuple[int, int]] | None = None, *,
                 method: str = "spectral", kappa: float = 0.03, gain: float = 0.25, init: Tensor | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if method not in METHODS:
            raise DeqConfigError(f"weight parameterization must be one of {METHODS}, got {method!r}")
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0 < kappa < 1:
            raise DeqConfigError(f"kappa must be in (0, 1) so that ||W||_2 <= 1 - kappa < 1, got {kappa!r}")
        self.rows, self.cols = tuple(int(r) for r in rows), tuple(int(c) for c in cols)
        if not self.rows or not self.cols or min(self.rows + self.cols) < 1:
            raise DeqConfigError(f"block sizes must be positive ints, got rows={rows!r}, cols={cols!r}")
        all_blocks = [(i, j) for i in range(len(self.rows)) for j in range(len(self.cols))]
        self.blocks = tuple(sorted(set(all_blocks if blocks is None else blocks)))
        if not set(self.blocks) <= set(all_blocks):
            raise DeqConfigError(f"blocks {self.blocks} out of range for {len(self.rows)}x{len(self.cols)} blocks")
        self.method, self.kappa = method, float(kappa)
        self.raw = nn.ParameterDict()
        r0 = [sum(self.rows[:i]) for i in range(len(self.rows))]
        c0 = [sum(self.cols[:j]) for j in range(len(self.cols))]
        if init is not None:
            shape = (sum(self.rows), sum(self.cols))
            if tuple(init.shape) != shape:
                raise DeqInputError(f"initial W must have shape {shape}, got {tuple(init.shape)}")
            mask = torch.zeros(shape, dtype=torch.bool)
            for i, j in self.blocks:
                mask[r0[i]:r0[i] + self.rows[i], c0[j]:c0[j] + self.cols[j]] = True
            if bool((init.detach().cpu()[~mask] != 0).any()):
                raise DeqInputError("initial W has non-zero entries outside its free blocks")
        for i, j in self.blocks:
            if init is None:
                blk = torch.randn(self.rows[i], self.cols[j], dtype=dtype) * (gain / math.sqrt(self.cols[j]))
            else:
                blk = init.detach()[r0[i]:r0[i] + self.rows[i], c0[j]:c0[j] + self.cols[j]].clone()
                blk = blk.to(dtype) if dtype is not None else blk
            self.raw[f"{i}_{j}"] = nn.Parameter(blk)
        self.register_forward_pre_hook(_BoundHook("weight"))
        self.weight = self.compute_weight().detach()

    def assemble(self) -> Tensor:
        """The raw matrix :math:`\\tilde W` (zeros outside the free blocks)."""
        if len(self.rows) == 1 and len(self.cols) == 1:
            return self.raw["0_0"]
        ref = next(iter(self.raw.values()))
        row_parts = []
        for i, r in enumerate(self.rows):
            parts = [self.raw[f"{i}_{j}"] if (i, j) in self.blocks else ref.new_zeros(r, c)
                     for j, c in enumerate(self.cols)]
            row_parts.append(torch.cat(parts, dim=1))
        return torch.cat(row_parts, dim=0)

    def compute_weight(self) -> Tensor:
        """:math:`W` from the raw parameters (differentiable)."""
        raw = self.assemble()
        if self.method == "spectral":
            sigma = _sigma_max(raw)
            return raw / torch.clamp(sigma / (1.0 - self.kappa), min=1.0)
        if self.method == "frobenius":
            return raw / torch.sqrt(1.0 + raw.pow(2).sum())
        return raw.view_as(raw)  # a plain tensor, never the Parameter itself (it is assigned to a module attribute)

    def forward(self) -> Tensor:
        return self.weight

    def spectral_norm(self) -> float:
        """The exact :math:`\\|W\\|_2` of the current parameters, computed in float64."""
        with torch.no_grad():
            if not all(bool(torch.isfinite(p).all()) for p in self.raw.values()):
                return float("nan")
            return float(_sigma_max(self.compute_weight().double()))

    def num_free(self) -> int:
        """Number of free parameters (the free blocks only)."""
        return sum(p.numel() for p in self.raw.values())

    def extra_repr(self) -> str:
        return f"rows={self.rows}, cols={self.cols}, blocks={self.blocks}, method={self.method!r}, kappa={self.kappa}"


def _sigma_max(w: Tensor) -> Tensor:
    """Exact largest singular value, as ``sqrt(lambda_max)`` of the smaller Gram matrix (differentiable).

    ``eigvalsh`` of the Gram matrix is several times faster than an SVD on CPU and exact to rounding for the top
    singular value, which is all the bound needs.
    """
    gram = w.t() @ w if w.shape[0] >= w.shape[1] else w @ w.t()
    return torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0).sqrt()


def _resolve_prox(prox: AbstractProx | str, l1: float) -> AbstractProx:
    return with_l1(prox, l1)


class _OptEqCore(nn.Module):
    """Shared maths of the unit and the deep layer, on flat ``(B, N)`` states (``N = sum(widths)``)."""

    def __init__(self, in_features: int, widths: Sequence[int], proxes: Sequence[AbstractProx],
                 blocks: Iterable[tuple[int, int]], *, hidden: Sequence[int] | None, method: str, kappa: float,
                 strict: bool, gain: float, bias: bool, weight: Tensor | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), *((f"width[{i}]", w) for i, w in enumerate(widths))):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DeqConfigError(f"{type(self).__name__}: {name} must be an int >= 1, got {v!r}")
        self.in_features, self.widths = in_features, tuple(widths)
        self.proxes = tuple(proxes)
        self.strict = bool(strict)
        self.W = ContractiveWeight(tuple(widths) if hidden is None else tuple(hidden), tuple(widths), blocks,
                                   method=method, kappa=kappa, gain=gain, init=weight, dtype=dtype)
        self.U = nn.Linear(in_features, widths[0], bias=bias, dtype=dtype)
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(w, dtype=dtype)) for w in widths[1:]])
        self.check_convergence()

    # -- maths on flat states -------------------------------------------------------------------------------
    def inject(self, x: Tensor) -> Tensor:
        """:math:`c = (Ux + b, b_2, \\dots)`, flat ``(B, N)``; ``x`` is ``(B, in_features)`` or ``(B, ...)``."""
        if not isinstance(x, Tensor) or x.dim() < 2 or x[0].numel() != self.in_features:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise DeqInputError(f"{type(self).__name__} expects x of shape (B, {self.in_features}), got {got}")
        c = self.U(x.reshape(x.shape[0], -1))
        if not self.biases:
            return c
        return torch.cat([c, *(b.expand(x.shape[0], -1) for b in self.biases)], dim=1)

    def _sigma(self, v: Tensor) -> Tensor:
        if len(self.proxes) == 1:
            return self.proxes[0](v)
        return torch.cat([p(part) for p, part in zip(self.proxes, v.split(self.widths, dim=1))], dim=1)

    def _step(self, z: Tensor, c: Tensor) -> Tensor:
        w = self.W()
        return self._sigma((z @ w.t()) @ w + c)

    def _objective(self, z: Tensor, c: Tensor) -> Tensor:
        w = self.W()
        phi = sum(p.value(part) for p, part in zip(self.proxes, z.split(self.widths, dim=1)))
        wz = z @ w.t()
        return phi + 0.5 * (z * z).sum(1) - 0.5 * (wz * wz).sum(1) - (c * z).sum(1)

    # -- the convergence condition --------------------------------------------------------------------------
    def weight(self) -> Tensor:
        """:math:`W` (recomputed from the parameters)."""
        return self.W.compute_weight()

    def check_convergence(self) -> float:
        """Measure :math:`\\|W\\|_2` exactly (float64); return it, or raise if the condition fails.

        The condition is :math:`\\|W\\|_2 < 1` (strongly convex objective, unique equilibrium, contraction);
        with ``strict=False`` :math:`\\|W\\|_2 \\le 1` (convex objective, nonexpansive map; use :class:`Halpern`).

        Raises:
            DeqConfigError: the measured norm breaks the condition (or the weights are not finite).
        """
        norm = self.W.spectral_norm()
        ok = norm < 1.0 if self.strict else norm <= 1.0 + 1e-12
        if not ok:
            want = "< 1 (strongly convex objective, unique equilibrium)" if self.strict else "<= 1 (nonexpansive map)"
            raise DeqConfigError(
                f"{type(self).__name__} needs ||W||_2 {want}; measured ||W||_2 = {norm:.6g} "
                f"(parameterization {self.W.method!r}). Use method='spectral' or 'frobenius', or rescale W."
            )
        return norm

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, widths={self.widths}, proxes={self.proxes}, strict={self.strict}"


class OptEqLayer(_OptEqCore):
    r"""The OptEq unit layer :math:`f(z, c) = \sigma(W^\top W z + c)` with :math:`c = Ux + b` (see :meth:`inject`).

    Arguments:
        in_features: size of ``x`` (flattened).
        width: size ``n`` of ``z``.
        prox: activation, a registered prox name (``relu``, ``tanh``, ...) or an :class:`AbstractProx`.
        l1: :math:`\lambda \ge 0` of an extra :math:`\lambda\|z\|_1` term (merged into the prox, sparse ``z``).
        hidden: rows ``m`` of :math:`W \in \mathbb{R}^{m \times n}` (default ``n``).
        method, kappa: weight parameterization (``spectral`` / ``frobenius`` / ``none``) and spectral margin.
        strict: require :math:`\|W\|_2 < 1` (default); ``False`` allows :math:`\|W\|_2 = 1`.
        gain: initial raw scale of :math:`W` (:math:`\|W\|_2 \approx 2\,` gain for a square ``W``).
        weight: optional initial raw ``W`` (``(m, n)``).

    Raises:
        DeqConfigError: bad hyperparameters, or an initial ``W`` that breaks the condition.
        UnknownNameError: unknown prox name.

    Example:
        >>> import torch
        >>> layer = OptEqLayer(3, 4, prox="relu").double()
        >>> x, z = torch.randn(2, 3, dtype=torch.float64), torch.rand(2, 4, dtype=torch.float64)
        >>> tuple(layer(z, layer.inject(x)).shape), tuple(layer.objective(z, x).shape)
        ((2, 4), (2,))
    """

    def __init__(self, in_features: int, width: int, *, prox: AbstractProx | str = "relu", l1: float = 0.0,
                 hidden: int | None = None, method: str = "spectral", kappa: float = 0.03, strict: bool = True,
                 gain: float = 0.25, bias: bool = True, weight: Tensor | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, (width,), (_resolve_prox(prox, l1),), [(0, 0)],
                         hidden=None if hidden is None else (hidden,), method=method, kappa=kappa, strict=strict,
                         gain=gain, bias=bias, weight=weight, dtype=dtype)

    @property
    def prox(self) -> AbstractProx:
        return self.proxes[0]

    @classmethod
    def from_matrices(cls, W: Tensor, U: Tensor, b: Tensor | None = None, *, prox: AbstractProx | str = "relu",
                      l1: float = 0.0, strict: bool = True) -> OptEqLayer:
        r"""A layer with the given :math:`W` (``(m, n)``, used as is: ``method="none"``), :math:`U` (``(n, d)``),
        :math:`b`.

        Raises:
            DeqConfigError: :math:`\|W\|_2` breaks the condition (the message gives the measured norm).

        Example:
            >>> import torch
            >>> from deq_core import DeqConfigError
            >>> try:
            ...     OptEqLayer.from_matrices(1.5 * torch.eye(2), torch.eye(2))
            ... except DeqConfigError as err:
            ...     print(str(err).split(";")[1].split("(")[0].strip())
            measured ||W||_2 = 1.5
        """
        if W.dim() != 2 or U.dim() != 2 or U.shape[0] != W.shape[1]:
            raise DeqInputError(f"need W (m, n) and U (n, d); got W {tuple(W.shape)} and U {tuple(U.shape)}")
        layer = cls(U.shape[1], W.shape[1], prox=prox, l1=l1, hidden=W.shape[0], method="none", strict=strict,
                    bias=b is not None, weight=W, dtype=W.dtype)
        with torch.no_grad():
            layer.U.weight.copy_(U)
            if b is not None:
                layer.U.bias.copy_(b)
        return layer

    def init_state(self, c: Tensor) -> Tensor:
        """Default :math:`z_0 = 0`."""
        return torch.zeros_like(c)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        """One application :math:`\\sigma(W^\\top W z + c)`; ``c = inject(x)``."""
        return self._step(z, c)

    def objective(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`G(z; x)` per sample, ``(B,)`` (``+inf`` where ``z`` leaves :math:`\\operatorname{dom}\\varphi`)."""
        return self._objective(z, self.inject(x))

    def gradient_mapping(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`z - \\sigma(W^\\top W z + Ux + b)`: zero exactly at the minimizer of :math:`G`."""
        return z - self._step(z, self.inject(x))


class _StepCheck:
    """Optimizer step post-hook: ``check_convergence()`` on each module (picklable)."""

    def __init__(self, modules: tuple[nn.Module, ...]) -> None:
        self.modules = modules

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for m in self.modules:
            m.check_convergence()


def check_after_step(optimizer: torch.optim.Optimizer, *modules: nn.Module) -> RemovableHandle:
    """Call ``check_convergence()`` of every module after each ``optimizer.step()``; returns the hook handle.

    Example:
        >>> import torch
        >>> model = OptEq(4, 3)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> handle = check_after_step(opt, model)
        >>> opt.step()          # raises DeqConfigError if ||W||_2 < 1 is broken
        >>> handle.remove()
    """
    if not modules or not all(callable(getattr(m, "check_convergence", None)) for m in modules):
        raise DeqConfigError("check_after_step needs modules with a check_convergence() method")
    return optimizer.register_step_post_hook(_StepCheck(modules))


class _EquilibriumModel(nn.Module):
    """Shared wrapper: a :class:`deq_core.DEQ` around an OptEq layer, with the injection computed once."""

    def _wrap(self, layer: _OptEqCore, solver: AbstractFixedPointSolver | str, adjoint: AbstractAdjoint | str | None,
              atol: float, rtol: float, max_steps: int, deq_options: dict[str, Any]) -> None:
        self.deq = DEQ(layer, solver=solver, adjoint=adjoint, atol=atol, rtol=rtol, max_steps=max_steps,
                       **deq_options)

    @property
    def layer(self) -> Any:
        """The layer (``self.deq.f``)."""
        return self.deq.f

    def forward(self, x: Tensor, z0: Any = None, *, cache_key: Hashable = None) -> tuple[Any, DEQInfo]:
        """Solve for :math:`z^\\star(x)`; returns ``(z*, DEQInfo)``."""
        return self.deq(self.layer.inject(x), z0, cache_key=cache_key)

    def objective(self, z: Any, x: Tensor) -> Tensor:
        """The explicit convex objective :math:`G(z; x)` per sample whose minimizer is ``forward(x)[0]``."""
        return self.layer.objective(z, x)

    def gradient_mapping(self, z: Any, x: Tensor) -> Any:
        """:math:`z - f(z, x)` (zero at the minimizer)."""
        return self.layer.gradient_mapping(z, x)

    def weight(self) -> Tensor:
        """:math:`W`."""
        return self.layer.weight()

    def check_convergence(self) -> float:
        """See :meth:`OptEqLayer.check_convergence`."""
        return self.layer.check_convergence()

    def check_after_step(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Run :meth:`check_convergence` after each ``optimizer.step()``."""
        return check_after_step(optimizer, self)


class OptEq(_EquilibriumModel):
    r"""OptEq equilibrium model: ``forward(x) = (z*, info)`` with :math:`z^\star = \sigma(W^\top W z^\star + Ux + b)`,
    the minimizer of :meth:`objective`. A :class:`deq_core.DEQ` (``self.deq``) solves it with any registered solver
    and differentiates it with any adjoint.

    Arguments:
        in_features, width, prox, l1, hidden, method, kappa, strict, gain, bias, dtype: see :class:`OptEqLayer`.
        solver, adjoint, atol, rtol, max_steps, **deq_options: see :class:`deq_core.DEQ`.

    Example:
        >>> import torch
        >>> model = OptEq(5, 8, prox="relu", atol=1e-12, rtol=1e-12, max_steps=200).double()
        >>> x = torch.randn(3, 5, dtype=torch.float64)
        >>> z, info = model(x)
        >>> info.result.name, bool(model.gradient_mapping(z, x).norm() < 1e-8)
        ('CONVERGED', True)
        >>> bool((model.objective(z, x) <= model.objective(z + 0.01 * torch.rand_like(z), x)).all())
        True
    """

    def __init__(self, in_features: int, width: int, *, prox: AbstractProx | str = "relu", l1: float = 0.0,
                 hidden: int | None = None, method: str = "spectral", kappa: float = 0.03, strict: bool = True,
                 gain: float = 0.25, bias: bool = True, dtype: torch.dtype | None = None,
                 solver: AbstractFixedPointSolver | str = "fixed-point",
                 adjoint: AbstractAdjoint | str | None = "implicit",
                 atol: float = 1e-6, rtol: float = 1e-4, max_steps: int = 50, **deq_options: Any) -> None:
        super().__init__()
        layer = OptEqLayer(in_features, width, prox=prox, l1=l1, hidden=hidden, method=method, kappa=kappa,
                           strict=strict, gain=gain, bias=bias, dtype=dtype)
        self._wrap(layer, solver, adjoint, atol, rtol, max_steps, deq_options)

    @classmethod
    def from_layer(cls, layer: OptEqLayer, *, solver: AbstractFixedPointSolver | str = "fixed-point",
                   adjoint: AbstractAdjoint | str | None = "implicit", atol: float = 1e-6, rtol: float = 1e-4,
                   max_steps: int = 50, **deq_options: Any) -> OptEq:
        """Wrap an existing :class:`OptEqLayer` (e.g. from :meth:`OptEqLayer.from_matrices`)."""
        if not isinstance(layer, OptEqLayer):
            raise DeqConfigError(f"OptEq.from_layer needs an OptEqLayer, got {type(layer).__name__}")
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj._wrap(layer, solver, adjoint, atol, rtol, max_steps, deq_options)
        return obj
