"""(Implicit)^2 models: iSIREN and Fourier/Gabor iMFN (one implicit layer with input injection), and the explicit
SIREN / MFN baselines of matched size.

Block map ``F(z; x)`` with ``L`` sub-layers and width ``D`` (the forms of the authors' released code)::

    iMFN:    z <- z + g_0(x)                          # injection filter (Fourier or Gabor)
             for i = 1..L:  z <- g_i(x) * (W_i z + b_i)
    iSIREN:  z <- z + sin(Omega_0 x + phi_0)
             for i = 1..L:  z <- sin(W_i z + b_i + Omega_i x + phi_i)

* implicit: ``z* = F(z*; x)`` solved by a :class:`deq_core.DEQ`, ``y = W_out z* + b_out`` (linear readout);
  ``||W_i||_2 <= 0.97`` (spectral normalization), so ``F`` is a contraction in ``z`` and plain iteration converges;
* explicit: the same ``F`` applied once from ``z = 0`` (an MFN with ``L + 1`` filters, "SIREN with input
  injection"); :class:`Siren` is the classic SIREN without injection (``sin(omega_0 (W h + b))``).

The x-only terms (``g_i(x)``, ``Omega_i x + phi_i``) are computed once per forward and handed to the DEQ as its
input ``x`` (a tuple of tensors), so solver iterations only cost the ``W_i z`` products.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor, nn

from deq_core import DEQ, AbstractAdjoint, DEQInfo, ImplicitAdjoint, NeumannAdjoint
from deq_core.nn import spectral_norm as _spectral_norm

from ._filters import FourierFilter, make_filter

__all__ = ["FilterBank", "INRBlock", "ImplicitINR", "ExplicitINR", "Siren", "FAMILIES"]

FAMILIES = ("siren", "fourier", "gabor")
LR_SIREN = 3e-3   # iSIREN's default Adam rate at width <= 256 (see ImplicitINR.default_lr)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def _check_sizes(in_features: int, out_features: int, width: int, layers: int, input_scale: float,
                 scale_name: str = "input_scale") -> None:
    for name, v in (("in_features", in_features), ("out_features", out_features), ("width", width),
                    ("layers", layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not (isinstance(input_scale, (int, float)) and input_scale > 0 and math.isfinite(input_scale)):
        raise ValueError(f"{scale_name} must be a finite number > 0, got {input_scale!r}")


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


class FilterBank(nn.Module):
    """The x-only terms of a block with ``layers`` sub-layers: ``(g_0(x), g_1(x), ..., g_L(x))``.

    ``g_0`` is the injection filter (Fourier ``sin(Omega_0 x + phi_0)`` for the SIREN family, Gabor with
    ``alpha = 6`` for the Gabor family); the layer filters are Fourier, Gabor (``alpha = 3``) or, for the SIREN
    family, the pre-activations ``Omega_i x + phi_i``. MFN init with ``k = layers``.
    """

    def __init__(self, family: str, in_features: int, width: int, layers: int, input_scale: float) -> None:
        super().__init__()
        _check_family(family)
        k = layers
        if family == "siren":
            self.injection: nn.Module = FourierFilter(in_features, width, input_scale, k)
        else:
            self.injection = make_filter(family, in_features, width, input_scale, k, alpha=6.0)
        layer_kind = "sine" if family == "siren" else family
        self.filters = nn.ModuleList(
            make_filter(layer_kind, in_features, width, input_scale, k, alpha=3.0) for _ in range(layers)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return (self.injection(x), *(g(x) for g in self.filters))


class INRBlock(nn.Module):
    """``F(z; filters)``: the (Implicit)^2 block map over precomputed filters ``(g_0, g_1, ..., g_L)``.

    Arguments:
        family: ``siren`` (``z <- sin(W z + b + Omega x + phi)``), ``fourier`` or ``gabor`` (``z <- g * (W z + b)``).
        width, layers: ``D`` and ``L``.
        spectral_norm: bound on ``||W_i||_2`` (0.97 for implicit models), ``None`` = unconstrained.

    Example:
        >>> import torch
        >>> blk = INRBlock("fourier", 4, 1)
        >>> filt = (torch.ones(2, 4), torch.ones(2, 4))
        >>> tuple(blk(torch.zeros(2, 4), filt).shape)
        (2, 4)
    """

    def __init__(self, family: str, width: int, layers: int, spectral_norm: float | None = None,
                 n_power_iterations: int = 5) -> None:
        super().__init__()
        _check_family(family)
        self.family = family
        self.linears = nn.ModuleList()
        for _ in range(layers):
            lin = nn.Linear(width, width)
            with torch.no_grad():
                bound = math.sqrt(1.0 / width)   # weight_scale 1
                lin.weight.uniform_(-bound, bound)
            if spectral_norm is not None:
                _spectral_norm(lin, max_norm=spectral_norm, n_power_iterations=n_power_iterations)
            self.linears.append(lin)

    def init_state(self, filters: tuple[Tensor, ...]) -> Tensor:
        return torch.zeros_like(filters[0])

    def forward(self, z: Tensor, filters: tuple[Tensor, ...]) -> Tensor:
        z = z + filters[0]
        if self.family == "siren":
            for lin, pre in zip(self.linears, filters[1:]):
                z = torch.sin(lin(z) + pre)
        else:
            for lin, g in zip(self.linears, filters[1:]):
                z = g * lin(z)
        return z


class _INR(nn.Module):
    name: str = "inr"

    def _chunked(self, coords: Tensor, chunk: int) -> Tensor:
        return torch.cat([self(c)[0] for c in coords.split(chunk)])

    @torch.no_grad()
    def predict(self, coords: Tensor, chunk: int = 65536) -> Tensor:
        """Evaluation forward in chunks, without gradients (implicit models: full solve from zeros)."""
        was = self.training
        self.eval()
        try:
            return self._chunked(coords, chunk)
        finally:
            self.train(was)


class ImplicitINR(_INR):
    """Implicit INR: ``y = W_out z* + b_out`` with ``z* = F(z*; x)`` solved by a :class:`deq_core.DEQ`.

    Arguments:
        family: ``siren`` (iSIREN), ``fourier`` or ``gabor`` (iMFN).
        in_features, out_features: coordinate and value dimensions.
        width, layers: ``D`` and the number of sub-layers ``L`` inside the implicit block ("1L-256D" default).
        input_scale: frequency scale of the filters (about half the training points per side).
        spectral_norm: bound on ``||W_i||_2`` (0.97: ``F`` is a 0.97-contraction), ``None`` = off.
        solver: forward solver (object or registered name; ``fixed-point`` = plain iteration).
        neumann_terms: backward = truncated Neumann series of this order (1 = the paper's default), ``None`` =
            exact implicit gradient (:class:`deq_core.ImplicitAdjoint`). Ignored when ``adjoint`` is given.
        adjoint: any :class:`deq_core.AbstractAdjoint` (overrides ``neumann_terms``).
        amortize: warm-start from the previous training step's output for the same ``cache_key`` (the fixed
            training coordinates), then ``reuse_steps`` solver steps (1 = one application of ``F`` per step).
        reuse_steps: see above; ``None`` = warm start, then solve to tolerance.
        rtol, atol, max_steps: forward tolerance and budget (cold solves and evaluation).

    ``forward(coords, cache_key=None) -> (y, DEQInfo)``: in training mode with ``amortize`` and a
    ``cache_key`` the solve is warm-started; otherwise it starts from zeros.

    Example:
        >>> import torch
        >>> m = ImplicitINR("gabor", 2, 1, width=16, input_scale=8.0)
        >>> y, info = m(torch.rand(10, 2) * 2 - 1)
        >>> tuple(y.shape), info.result.name
        ((10, 1), 'CONVERGED')
    """

    implicit = True

    def __init__(self, family: str, in_features: int, out_features: int, *, width: int = 256, layers: int = 1,
                 input_scale: float = 32.0, spectral_norm: float | None = 0.97, solver: Any = "fixed-point",
                 neumann_terms: int | None = 1, adjoint: AbstractAdjoint | None = None, amortize: bool = True,
                 reuse_steps: int | None = 1, rtol: float = 1e-3, atol: float = 1e-6, max_steps: int = 100) -> None:
        super().__init__()
        _check_family(family)
        _check_sizes(in_features, out_features, width, layers, input_scale)
        self.name = {"siren": "isiren", "fourier": "imfn-fourier", "gabor": "imfn-gabor"}[family]
        self.family = family
        #: Adam learning rate :func:`deq_inr.fit` uses when none is given. iSIREN: ``3e-3 * min(1, 256 / width)``,
        #: not the paper's 1e-3: with ``||W||_2`` held at 0.97 and the biased T = 1 gradient it under-fits at 1e-3
        #: in a few hundred steps; an Adam step moves ``W`` by up to ``lr * width`` in spectral norm, so the wider
        #: layer needs the smaller rate (3e-3 at 512D fits worse than 1e-3; ablations in
        #: benchmarks/results/RESULTS.md). The iMFNs keep 1e-3.
        self.default_lr = LR_SIREN * min(1.0, 256 / width) if family == "siren" else 1e-3
        self.filters = FilterBank(family, in_features, width, layers, input_scale)
        block = INRBlock(family, width, layers, spectral_norm=spectral_norm)
        if adjoint is None:
            adjoint = ImplicitAdjoint(max_steps=max_steps) if neumann_terms is None else NeumannAdjoint(neumann_terms)
        self.deq = DEQ(block, solver=solver, adjoint=adjoint, rtol=rtol, atol=atol, max_steps=max_steps,
                       reuse=amortize, reuse_steps=reuse_steps)
        self.readout = nn.Linear(width, out_features)
        self._config = {
            "model": self.name, "in_features": in_features, "out_features": out_features, "width": width,
            "layers": layers, "input_scale": float(input_scale), "spectral_norm": spectral_norm,
            "solver": self.deq.solver.name,
            "solver_options": {k: v for k, v in self.deq.solver.options().items() if _plain(v)},
            "neumann_terms": neumann_terms, "amortize": amortize,
            "reuse_steps": reuse_steps, "rtol": rtol, "atol": atol, "max_steps": max_steps,
        }

    @property
    def block(self) -> INRBlock:
        return self.deq.f

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-friendly), enough to rebuild the architecture."""
        return dict(self._config)

    def forward(self, coords: Tensor, *, cache_key: Hashable = None) -> tuple[Tensor, DEQInfo]:
        filt = self.filters(coords)
        z0 = None if (self.training and cache_key is not None) else self.block.init_state(filt)
        z, info = self.deq(filt, z0=z0, cache_key=cache_key)
        return self.readout(z), info


class ExplicitINR(_INR):
    """Explicit baseline: the same block ``F`` applied once from ``z = 0`` (no spectral norm), linear readout.

    ``family="siren"`` is "SIREN with input injection" (coordinates enter every layer); ``fourier`` / ``gabor``
    are MFNs with ``layers`` linear layers and ``layers + 1`` filters.

    Example:
        >>> import torch
        >>> m = ExplicitINR("fourier", 2, 3, width=16, layers=4, input_scale=8.0)
        >>> tuple(m(torch.zeros(5, 2))[0].shape)
        (5, 3)
    """

    implicit = False
    default_lr = 1e-3

    def __init__(self, family: str, in_features: int, out_features: int, *, width: int = 256, layers: int = 1,
                 input_scale: float = 32.0, spectral_norm: float | None = None) -> None:
        super().__init__()
        _check_family(family)
        _check_sizes(in_features, out_features, width, layers, input_scale)
        self.name = {"siren": "siren", "fourier": "mfn-fourier", "gabor": "mfn-gabor"}[family]
        self.family = family
        self.filters = FilterBank(family, in_features, width, layers, input_scale)
        self.block = INRBlock(family, width, layers, spectral_norm=spectral_norm)
        self.readout = nn.Linear(width, out_features)
        self._config = {"model": self.name, "in_features": in_features, "out_features": out_features,
                        "width": width, "layers": layers, "input_scale": float(input_scale), "injection": True,
                        "spectral_norm": spectral_norm}

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def forward(self, coords: Tensor, *, cache_key: Hashable = None) -> tuple[Tensor, None]:
        filt = self.filters(coords)
        return self.readout(self.block(self.block.init_state(filt), filt)), None


class Siren(_INR):
    """Classic SIREN (no input injection): ``h_1 = sin(omega_0 (W_0 x + b_0))``, ``layers`` hidden layers
    ``h <- sin(omega_0 (W h + b))``, linear output; Sitzmann et al.'s init.

    Example:
        >>> import torch
        >>> tuple(Siren(2, 1, width=8, layers=2)(torch.zeros(4, 2))[0].shape)
        (4, 1)
    """

    implicit = False
    default_lr = 1e-3
    name = "siren"

    def __init__(self, in_features: int, out_features: int, *, width: int = 256, layers: int = 1,
                 omega_0: float = 30.0) -> None:
        super().__init__()
        _check_sizes(in_features, out_features, width, layers, omega_0, scale_name="omega_0")
        self.omega_0 = omega_0
        self.first = nn.Linear(in_features, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.readout = nn.Linear(width, out_features)
        with torch.no_grad():
            self.first.weight.uniform_(-1 / in_features, 1 / in_features)
            bound = math.sqrt(6 / width) / omega_0
            for lin in (*self.hidden, self.readout):
                lin.weight.uniform_(-bound, bound)
        self._config = {"model": "siren", "in_features": in_features, "out_features": out_features,
                        "width": width, "layers": layers, "omega_0": float(omega_0), "injection": False}

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def forward(self, coords: Tensor, *, cache_key: Hashable = None) -> tuple[Tensor, None]:
        h = torch.sin(self.omega_0 * self.first(coords))
        for lin in self.hidden:
            h = torch.sin(self.omega_0 * lin(h))
        return self.readout(h), None
