"""Hypothesis strategies for contractions whose fixed point is known to float64 accuracy.

Every problem is built from a drawn integer seed (matrices come from a seeded :class:`torch.Generator`,
so examples are cheap to draw and reproducible), a contraction factor ``rho`` and a state shape:

* affine: ``F(z) = A z + b`` with ``||A||_2 = rho``; ``z* = (I - A)^{-1} b`` by a dense float64 solve.
* tanh: ``F(z) = tanh(W z + u)`` with ``||W||_2 = rho`` (``tanh`` is 1-Lipschitz, so ``F`` is a
  ``rho``-contraction); ``z*`` by float64 Picard iteration then Newton-polished to round-off.

``F`` acts on each sample's flattened state (``N`` entries); the user-facing map ``f`` reshapes it to the
drawn structure: ``(B, N)``, ``(B, C, H, W)`` or a tuple of both. In float32 the parameters are rounded
to float32 first and the reference is the exact fixed point of the rounded map, so the only error left
is the solver's (and float32 evaluation of ``f``). Each sample has its own ``b`` / ``u`` at its own scale,
so samples converge after different numbers of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import torch
from hypothesis import strategies as st
from torch import Tensor

from .._state import State

__all__ = [
    "Contraction", "NoFixedPoint", "affine_contractions", "contractions", "make_contraction", "no_fixed_point_maps",
    "state_shapes", "tanh_contractions",
]

Shape = tuple[int, ...]
StateShape = Shape | tuple[Shape, ...]


@dataclass(frozen=True, eq=False)
class Contraction:
    """A ``rho``-contraction ``f`` (in the per-sample 2-norm of the flattened state) with known fixed point.

    Attributes:
        f: the map, ``State -> State`` (same structure, shape, dtype as ``z0``).
        z0: a starting point (``dtype``, on ``device``).
        z_star: the fixed point, float64 on ``device`` (structure of ``z0``).
        rho: Lipschitz constant of ``f``, ``< 1``.
        kind: ``"affine"`` or ``"tanh"``.
        seed: the seed the parameters were drawn with (for reproducing a failure).

    Example:
        >>> import torch
        >>> c = make_contraction("affine", ((3, 4),), rho=0.5, seed=0, dtype=torch.float64)
        >>> bool(c.error(c.z_star).max() < 1e-12), bool(c.residual(c.z_star).max() < 1e-12)
        (True, True)
    """

    f: Callable[[State], State]
    z0: State
    z_star: State
    rho: float
    kind: str
    seed: int

    @property
    def batch(self) -> int:
        return _parts(self.z0)[0].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return _parts(self.z0)[0].dtype

    def flat(self, z: State) -> Tensor:
        """``(B, N)`` float64 copy of a state with this problem's structure."""
        return _pack(z).to(torch.float64)

    def error(self, z: State) -> Tensor:
        """``(B,)`` float64 ``||z - z*||`` per sample."""
        return torch.linalg.vector_norm(self.flat(z) - self.flat(self.z_star), dim=1)

    def residual(self, z: State) -> Tensor:
        """``(B,)`` float64 ``||f(z) - z||`` per sample (``f`` evaluated in the problem's dtype)."""
        with torch.no_grad():
            fz = self.f(z)
        return torch.linalg.vector_norm(self.flat(fz) - self.flat(z), dim=1)

    def fnorm(self, z: State) -> Tensor:
        """``(B,)`` float64 ``||f(z)||`` per sample."""
        with torch.no_grad():
            return torch.linalg.vector_norm(self.flat(self.f(z)), dim=1)

    def error_bound(self, residual: Tensor) -> Tensor:
        """``||z - z*|| <= ||f(z) - z|| / (1 - rho)`` for a ``rho``-contraction."""
        return residual.to(torch.float64) / (1.0 - self.rho)

    def __repr__(self) -> str:
        shapes = [tuple(t.shape) for t in _parts(self.z0)]
        structure = shapes if isinstance(self.z0, tuple) else shapes[0]
        return (f"Contraction(kind={self.kind!r}, shape={structure}, rho={self.rho:.3g}, dtype={self.dtype}, "
                f"seed={self.seed})")


def make_contraction(kind: str, shapes: Sequence[Shape], *, rho: float, seed: int,
                     dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                     as_tuple: bool | None = None, z0: str = "random") -> Contraction:
    """Build one problem deterministically (the strategies call this; handy to reproduce a failure).

    Arguments:
        kind: ``"affine"`` or ``"tanh"``.
        shapes: the state's tensor shapes, batch first, one batch size (``[(B, N)]`` or
            ``[(B, N1), (B, C, H, W)]``).
        rho: contraction factor in ``(0, 1)``.
        seed: seeds the parameters and ``z0``.
        dtype, device: of ``f``'s parameters, ``z0`` and the states ``f`` sees.
        as_tuple: the state is a tuple (default: when there are several shapes).
        z0: ``"random"`` (standard normal) or ``"zeros"``.
    """
    if kind not in ("affine", "tanh"):
        raise ValueError(f"kind must be 'affine' or 'tanh', got {kind!r}")
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho!r}")
    shapes = [tuple(s) for s in shapes]
    batch = shapes[0][0]
    if any(s[0] != batch for s in shapes):
        raise ValueError(f"all shapes need one batch size, got {shapes}")
    as_tuple = len(shapes) > 1 if as_tuple is None else as_tuple
    sizes = [prod(s[1:]) for s in shapes]
    n = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    mat = torch.randn(n, n, generator=gen, dtype=torch.float64)
    mat = rho * mat / torch.linalg.matrix_norm(mat, ord=2)
    # per-sample offsets at scales spanning three decades: samples converge at different steps
    scale = 10.0 ** torch.empty(batch, 1, dtype=torch.float64).uniform_(-1.5, 1.5, generator=gen)
    offset = scale * torch.randn(batch, n, generator=gen, dtype=torch.float64)
    if kind == "tanh":
        offset = offset / scale.clamp_min(1.0)  # keep tanh out of its flat tails
    start = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    if z0 != "random":
        start = torch.zeros_like(start)
    # round the map's parameters to dtype: the reference is the exact fixed point of the rounded map
    mat_d, off_d = mat.to(dtype), offset.to(dtype)
    mat64, off64 = mat_d.to(torch.float64), off_d.to(torch.float64)
    if kind == "affine":
        z_star = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - mat64, off64.T).T
    else:
        z_star = _tanh_reference(mat64, off64, rho)

    mat_dev, off_dev = mat_d.to(device), off_d.to(device)
    shape_list, tuple_state = list(shapes), as_tuple

    def flat_map(zf: Tensor) -> Tensor:
        y = torch.addmm(off_dev, zf, mat_dev.T) if zf.dim() == 2 else zf @ mat_dev.T + off_dev
        return torch.tanh(y) if kind == "tanh" else y

    def f(z: State) -> State:
        return _unpack(flat_map(_pack(z)), shape_list, tuple_state)

    return Contraction(
        f=f,
        z0=_unpack(start.to(dtype).to(device), shape_list, tuple_state),
        z_star=_unpack(z_star.to(device), shape_list, tuple_state),
        rho=float(rho),
        kind=kind,
        seed=seed,
    )


def _tanh_reference(mat: Tensor, offset: Tensor, rho: float) -> Tensor:
    # Picard down to ~1e-12, then Newton steps z <- z - (I - J)^{-1} (z - f(z)) per sample (quadratic: the
    # last ones only polish round-off); no stopping test that round-off could keep from triggering
    z = torch.zeros_like(offset)
    for _ in range(min(2000, math.ceil(math.log(1e-12) / math.log(rho)) + 10)):
        z = torch.tanh(offset + z @ mat.T)
    eye = torch.eye(mat.shape[0], dtype=mat.dtype)
    for _ in range(3):
        fz = torch.tanh(offset + z @ mat.T)
        jac = (1 - fz**2)[:, :, None] * mat[None]
        z = z - torch.linalg.solve(eye - jac, z - fz)
    return z


def _pack(z: State) -> Tensor:
    parts = _parts(z)
    return torch.cat([t.reshape(t.shape[0], -1) for t in parts], dim=1) if len(parts) > 1 else \
        parts[0].reshape(parts[0].shape[0], -1)


def _unpack(flat: Tensor, shapes: list[Shape], as_tuple: bool) -> State:
    if not as_tuple:
        return flat.reshape(shapes[0])
    pieces = flat.split([prod(s[1:]) for s in shapes], dim=1)
    return tuple(p.reshape(s) for p, s in zip(pieces, shapes))


def _parts(z: State) -> tuple[Tensor, ...]:
    return tuple(z) if isinstance(z, (tuple, list)) else (z,)


@st.composite
def state_shapes(draw: st.DrawFn, *, max_batch: int = 5, tuples: bool = True,
                 images: bool = True) -> tuple[tuple[Shape, ...], bool]:
    """``(shapes, as_tuple)``: one ``(B, N)``, one ``(B, C, H, W)``, or a tuple of both (and singletons).

    Sizes stay small (``N <= 24``) so dense references and many examples are cheap.
    """
    batch = draw(st.integers(1, max_batch))
    kinds = ["flat"] + (["image"] if images else []) + (["tuple", "tuple1"] if tuples else [])
    which = draw(st.sampled_from(kinds))
    flat = (batch, draw(st.integers(1, 12)))
    image = (batch, draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if which == "flat":
        return (flat,), False
    if which == "image":
        return (image,), False
    if which == "tuple1":
        return (flat,), True
    return (flat, image), True


def _dtypes(dtype: torch.dtype | Sequence[torch.dtype]) -> st.SearchStrategy[torch.dtype]:
    if isinstance(dtype, torch.dtype):
        return st.just(dtype)
    dtypes = list(dtype)
    if not dtypes or not all(isinstance(d, torch.dtype) and d.is_floating_point for d in dtypes):
        raise ValueError(f"dtype must be a floating torch.dtype or a sequence of them, got {dtype!r}")
    return st.sampled_from(dtypes)


def _contractions(kind: str, dtype, *, rho: tuple[float, float], device, shapes, z0: str):
    lo, hi = rho
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"rho must be a range inside (0, 1), got {rho!r}")

    @st.composite
    def build(draw: st.DrawFn) -> Contraction:
        dt = draw(_dtypes(dtype))
        state_shape, as_tuple = draw(shapes if shapes is not None else state_shapes())
        r = draw(st.floats(lo, hi)) if lo < hi else lo
        seed = draw(st.integers(0, 2**31 - 1))
        return make_contraction(kind, state_shape, rho=r, seed=seed, dtype=dt, device=device, as_tuple=as_tuple,
                                z0=z0)

    return build()


def affine_contractions(dtype: torch.dtype | Sequence[torch.dtype] = torch.float64, *,
                        rho: tuple[float, float] = (0.05, 0.9), device: torch.device | str = "cpu",
                        shapes: st.SearchStrategy | None = None, z0: str = "random") -> st.SearchStrategy[Contraction]:
    """Affine contractions ``f(z) = A z + b`` with ``||A||_2 = rho``; ``z*`` from a dense float64 solve.

    Arguments:
        dtype: a dtype or a sequence of dtypes to draw from.
        rho: the range ``rho`` is drawn from (inside ``(0, 1)``).
        device: where ``f`` and the states live.
        shapes: a strategy of ``(shapes, as_tuple)`` (default :func:`state_shapes`).
        z0: ``"random"`` or ``"zeros"``.

    Example:
        >>> import torch
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=5, deadline=None)
        ... @given(affine_contractions(torch.float64))
        ... def test(c):
        ...     assert float(c.residual(c.z_star).max()) < 1e-10
        >>> test()
    """
    return _contractions("affine", dtype, rho=rho, device=device, shapes=shapes, z0=z0)


def tanh_contractions(dtype: torch.dtype | Sequence[torch.dtype] = torch.float64, *,
                      rho: tuple[float, float] = (0.05, 0.9), device: torch.device | str = "cpu",
                      shapes: st.SearchStrategy | None = None, z0: str = "random") -> st.SearchStrategy[Contraction]:
    """``f(z) = tanh(W z + u)`` with ``||W||_2 = rho``; ``z*`` from float64 iteration and Newton polish.

    Arguments are those of :func:`affine_contractions`.
    """
    return _contractions("tanh", dtype, rho=rho, device=device, shapes=shapes, z0=z0)


def contractions(dtype: torch.dtype | Sequence[torch.dtype] = (torch.float32, torch.float64), *,
                 rho: tuple[float, float] = (0.05, 0.9), device: torch.device | str = "cpu",
                 shapes: st.SearchStrategy | None = None, z0: str = "random") -> st.SearchStrategy[Contraction]:
    """Affine or tanh contractions (see :func:`affine_contractions`, :func:`tanh_contractions`).

    Example:
        >>> import torch
        >>> from hypothesis import given, settings
        >>> from deq_core import fixed_point
        >>> @settings(max_examples=10, deadline=None)
        ... @given(contractions(torch.float64))
        ... def test(c):
        ...     sol = fixed_point(c.f, c.z0, rtol=1e-10, atol=1e-12, max_steps=500, adjoint=None)
        ...     assert bool((c.error(sol.value) <= 1e-8 * (1 + c.error(c.z0))).all())
        >>> test()
    """
    kw = dict(rho=rho, device=device, shapes=shapes, z0=z0)
    return st.one_of(affine_contractions(dtype, **kw), tanh_contractions(dtype, **kw))


@dataclass(frozen=True)
class NoFixedPoint:
    """A map without any fixed point (``kind`` says why), for checking that no solver reports convergence.

    Attributes:
        f: the map on ``(B, N)`` states.
        z0: a starting point.
        kind: ``"translation"`` (``f(z) = z + c``), ``"singular-affine"`` (``f(z) = A z + b`` with an
            eigenvalue 1 of ``A`` whose eigenvector ``b`` leaves the range of ``I - A``) or ``"quadratic"``
            (``f(z) = z + 1 + z^2`` elementwise: the residual ``1 + z^2`` is at least 1 everywhere).
    """

    f: Callable[[Tensor], Tensor]
    z0: Tensor
    kind: str

    def __repr__(self) -> str:
        return f"NoFixedPoint(kind={self.kind!r}, shape={tuple(self.z0.shape)}, dtype={self.z0.dtype})"


def no_fixed_point_maps(dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", *, batch: int = 3,
                        n: int = 6, seed: int = 0) -> tuple[NoFixedPoint, ...]:
    """Maps without a fixed point (see :class:`NoFixedPoint`), seeded.

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> maps = no_fixed_point_maps(torch.float64)
        >>> [m.kind for m in maps]
        ['translation', 'singular-affine', 'quadratic']
        >>> sol = fixed_point(maps[0].f, maps[0].z0, throw=False, max_steps=100)
        >>> sol.result.name, bool(sol.stats.converged.any())
        ('MAX_STEPS', False)
    """
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eig = torch.cat([torch.ones(1, dtype=torch.float64), torch.linspace(-0.8, 0.8, n - 1, dtype=torch.float64)])
    a = (q * eig) @ q.T                      # symmetric, eigenvalue 1 along q[:, 0]
    b = q[:, 0].expand(batch, n) * torch.linspace(1.0, 2.0, batch, dtype=torch.float64)[:, None]
    z0 = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    to = {"dtype": dtype, "device": device}
    c, a, b, z0 = c.to(**to), a.to(**to), b.to(**to), z0.to(**to)
    return (
        NoFixedPoint(lambda z: z + c, z0.clone(), "translation"),
        NoFixedPoint(lambda z: z @ a.T + b, torch.zeros_like(z0), "singular-affine"),
        NoFixedPoint(lambda z: z + 1 + z * z, 0.1 * z0, "quadratic"),
    )
