r"""``reversible``: the algebraically reversible relaxed fixed-point iteration of Reversible DEQs
(McCallum, Arora and Foster, arXiv 2509.12917), and :class:`ReversibleAdjoint`, its exact backward.

Two coupled sequences started at ``y_0 = z_0``, with relaxation ``b`` (``a = 1 - b``)::

    y_{n+1} = a y_n + b f(z_n)
    z_{n+1} = a z_n + b f(y_{n+1})

Each step inverts algebraically, ``z_n = (z_{n+1} - b f(y_{n+1})) / a`` and then
``y_n = (y_{n+1} - b f(z_n)) / a``, so the backward pass rebuilds the iterates from the last state
``(y_K, z_K)`` in reverse and backpropagates through each step as it goes: the gradient of exactly the finite
iteration the forward ran, with memory independent of the number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deq_core import (
    AbstractAdjoint,
    AbstractFixedPointSolver,
    DeqConfigError,
    DeqError,
    DeqSolveError,
    FlatMap,
    residual_norms,
)
from deq_core._adjoint import _hooked, _value
from deq_core._graph import Frontier

__all__ = ["Reversible", "ReversibleAdjoint"]


@dataclass(frozen=True)
class Reversible(AbstractFixedPointSolver):
    r"""Reversible relaxed fixed-point iteration (RevDEQ); pair it with :class:`ReversibleAdjoint`.

    The driver's iterate is ``z_n``; the solver state carries ``y_n`` (and ``z_0``). One step costs two
    evaluations of ``f`` (at ``y_{n+1}`` and at ``z_{n+1}``). At a fixed point ``y = z = f(z)``; the iteration
    converges for contractive ``f`` and ``b`` in ``(0, 1)`` (``b`` in ``(1, 2)`` over-relaxes).

    Arguments:
        damping: the relaxation ``b`` in ``(0, 2)``, not 1 (the step divides by ``1 - b`` when inverted).

    The inverse step multiplies round-off by up to about ``1 / |1 - b|`` per step (the forward contracts,
    so its inverse expands), so the reconstructed iterates carry an error of roughly
    ``eps * |1 - b|^{-K}`` after ``K`` steps; :class:`ReversibleAdjoint` measures it on every backward
    (``stats.solver["reconstruction_error"]``, and ``max_error`` to refuse a gradient past a bound).

    Statistics: ``damping``, ``evaluations_per_step`` (2), ``reconstruction_error``: a list to which every
    reversible backward of this solve appends its ``(B,)`` relative reconstruction error (empty until then).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import Reversible, ReversibleAdjoint
        >>> x = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
        >>> sol = fixed_point(lambda z: 0.5 * z + x, torch.zeros(2, 3, dtype=torch.float64),
        ...                   solver=Reversible(damping=0.5), adjoint=ReversibleAdjoint(), rtol=1e-9, max_steps=100)
        >>> bool(torch.allclose(sol.value, 2 * x))
        True
        >>> sol.value.sum().backward(); bool(torch.allclose(x.grad, torch.full_like(x, 2.0), atol=1e-6))
        True
    """

    name: ClassVar[str] = "reversible"
    damping: float = 0.5

    def __post_init__(self) -> None:
        b = self.damping
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not (0.0 < b < 2.0) or b == 1.0:
            raise DeqConfigError(f"Reversible.damping must be a number in (0, 2) other than 1, got {b!r}")

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> _ReversibleState:
        return _ReversibleState(float(self.damping), z, fz)

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: _ReversibleState) -> tuple[Tensor, Tensor, Any]:
        s, b = state, state.damping
        a = 1.0 - b
        y = s.y.mul(a).add_(fz, alpha=b)
        fy = f(y)
        z_next = z.mul(a).add_(fy, alpha=b)
        fz_next = f(z_next)
        s.y, s.z = y, z_next
        s.residuals.append(residual_norms(z_next, fz_next)[0])
        s.steps += 1
        return z_next, fz_next, s

    def stats(self, state: _ReversibleState) -> dict[str, Any]:
        # the list is shared with the state: each reversible backward appends its (B,) reconstruction error
        return {"damping": self.damping, "evaluations_per_step": 2, "reconstruction_error": state.errors}


class _ReversibleState:
    """``y``, ``z``: the last pair ``(y_K, z_K)``; ``z0``; ``residuals``: ``||f(z_n) - z_n||`` per step
    ``(B,)`` for n = 0..K, bitwise as the driver computed them (they identify which iterate it returned);
    ``reconstruction_error`` ``(B,)``: set by the last reversible backward."""

    __slots__ = ("damping", "y", "z", "z0", "residuals", "steps", "reconstruction_error", "errors")

    def __init__(self, damping: float, z: Tensor, fz: Tensor) -> None:
        self.damping = damping
        self.y = self.z = self.z0 = z
        self.residuals = [residual_norms(z, fz)[0]]
        self.steps = 0
        self.reconstruction_error: Tensor | None = None
        self.errors: list[Tensor] = []

    def returned_steps(self, residual: Tensor, steps: Tensor) -> Tensor:
        """Per sample, the step ``n`` whose iterate the driver returned, ``(B,)`` long.

        The driver freezes a sample at the step it converged (``steps``) or returns its best iterate; its
        recorded residual is bitwise the one of that step."""
        hist = torch.stack(self.residuals)  # (K + 1, B)
        match = hist == residual.to(hist.dtype)[None]
        at = steps.clamp(0, self.steps)
        exact = match.gather(0, at[None])[0]
        idx = torch.arange(hist.shape[0], device=hist.device)[:, None]
        latest = torch.where(match, idx, -1).amax(0)
        n = torch.where(exact, at, latest)
        if bool((n < 0).any()):
            bad = (n < 0).nonzero().flatten().tolist()
            raise DeqError(
                f"ReversibleAdjoint: samples {bad[:5]} were returned at no step the reversible solver took "
                "(their residual matches none it recorded); was the forward solve run by another solver?")
        return n


@dataclass(frozen=True)
class ReversibleAdjoint(AbstractAdjoint):
    r"""Exact gradient of the finite :class:`Reversible` iteration, with memory independent of its length.

    The backward starts from the forward solver's final state ``(y_K, z_K)`` (``forward.state``), and for
    ``n = K - 1, ..., 0`` rebuilds ``(y_n, z_n)`` and backpropagates the step ``n -> n + 1`` through the
    two evaluations of ``f`` it needs anyway (two VJPs per step, the graphs of one step alive at a time).
    The cotangent of a sample enters at the step whose iterate the driver returned for it (a sample that
    converged early keeps being stepped with the batch, and is rebuilt back through those extra steps).
    Gradients reach everything ``f`` closes over (parameters and inputs): the sum over steps is handed
    to the rest of the backward pass once, as if it came out of ``f(z*)``'s graph.

    Arguments:
        max_error: raise :class:`DeqSolveError` from the backward when the reconstructed start
            ``(y_0, z_0)`` differs from the true ``z_0`` by more than this, relative to
            ``max(||z_0||, ||z_K||)`` per sample (``None``: only record it). Default ``1e12``: beyond it the
            gradient itself was measured wrong (see below), so the backward refuses rather than return it.

    The rebuilt start is a pessimistic gauge of the gradient: the directions that lose accuracy are those
    the forward contracts fastest, and the cotangent reaching the early steps is damped by as much (measured
    in float64 with tanh: damping 0.8 over 20 steps rebuilds ``z_0`` with relative error 15 while the gradient
    is still right to 4e-10). But not without limit: on ``tanh(z W^T + x)``, ``||W||_2`` 0.3-0.9, damping 0.5 /
    0.8 / 1.2, solved to 1e-13, the gradient matched the implicit one to 1e-8 wherever the rebuilt start's
    error stayed below 1.2e9, and was off by 1.7e-5 to 1.3 where it reached 1.6e19 to 1.6e28 (about 100
    steps at damping 0.5, 50 at 0.8; found by Hypothesis exploring ``check_adjoint``). Hence the default
    ``max_error``. Rebuilt iterates that overflow raise :class:`DeqSolveError`.

    After each backward, ``sol.stats.solver["reconstruction_error"][-1]`` (and
    ``forward.state.reconstruction_error``) holds that relative error ``(B,)``.
    First-order only (a backward with ``create_graph=True`` raises; use :class:`~deq_core.ImplicitAdjoint`).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import Reversible, ReversibleAdjoint
        >>> W = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64, requires_grad=True)
        >>> z0 = torch.zeros(1, 2, dtype=torch.float64)
        >>> sol = fixed_point(lambda z: torch.tanh(z @ W + 1), z0, solver=Reversible(), adjoint=ReversibleAdjoint(),
        ...                   rtol=1e-10, max_steps=100)
        >>> sol.value.sum().backward(); W.grad.shape
        torch.Size([2, 2])
    """

    name: ClassVar[str] = "reversible"
    needs_forward_state: ClassVar[bool] = True
    exact: ClassVar[bool] = True  # the finite iteration's gradient; at a converged forward solve it is the
    # implicit one, (I - J^T)^{-1} v, to the forward tolerance (what check_adjoint holds it to)
    max_error: float | None = 1e12

    def __post_init__(self) -> None:
        e = self.max_error
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float)) or not e > 0):
            raise DeqConfigError(f"ReversibleAdjoint.max_error must be a number > 0 or None, got {e!r}")

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        state = getattr(forward, "state", None)
        if not isinstance(state, _ReversibleState):
            got = "no forward solve" if forward is None else f"the state of {type(solver).__name__}"
            raise DeqConfigError(
                "ReversibleAdjoint needs the forward solve of the Reversible solver (solver='reversible'), "
                f"got {got}")
        z, fz, frontier = Frontier.evaluate(f, z_star)
        if not fz.requires_grad:
            return z_star.detach()
        returned = state.returned_steps(forward.residual, forward.steps)
        max_error = self.max_error

        def hook(v: Tensor) -> Tensor:
            if torch.is_grad_enabled():
                raise DeqConfigError("ReversibleAdjoint gives first-order gradients only (backward with "
                                     "create_graph=True); use ImplicitAdjoint for second-order gradients")
            grads = reverse(f, state, frontier, v, returned)
            err = state.reconstruction_error
            if not bool(torch.isfinite(err).all()):
                raise DeqSolveError(
                    f"ReversibleAdjoint: rebuilding {state.steps} steps overflowed (non-finite iterates), so the "
                    "gradient is not usable; use fewer steps or a damping nearer 0 (round-off grows about "
                    "|1 - damping|^-1 per step)")
            if max_error is not None and bool((err > max_error).any()):
                raise DeqSolveError(
                    f"ReversibleAdjoint: reconstructed start differs from z0 by up to {float(err.max()):.3g} "
                    f"(relative) over {state.steps} steps, above max_error={max_error}; use fewer steps or a "
                    "damping nearer 0 (round-off grows about |1 - damping|^-1 per step)")
            frontier.deliver(grads)
            return torch.zeros_like(v)

        return _value(z_star, _hooked(fz, hook))


def reverse(f: FlatMap, state: _ReversibleState, frontier: Frontier, v: Tensor, returned: Tensor) -> list:
    """Run the reversible backward: rebuild ``(y_n, z_n)`` from ``(y_K, z_K)`` and accumulate the VJPs.

    ``v`` ``(B, N)`` is the cotangent of the returned iterates, entering sample ``i`` at step
    ``returned[i]``. Returns the gradients for ``frontier.edges``; sets ``state.reconstruction_error``."""
    b = state.damping
    a = 1.0 - b
    K = state.steps
    v = v.detach()
    y, z = state.y.detach(), state.z.detach()
    ybar = torch.zeros_like(v)
    zbar = torch.where((returned == K)[:, None], v, ybar)
    first = int(returned.max())  # steps above it carry no cotangent: rebuild only
    acc: list[Tensor | None] = [None] * len(frontier.edges)

    def add(grads: list) -> None:
        for i, g in enumerate(grads):
            if g is not None:
                acc[i] = g if acc[i] is None else acc[i] + g

    for n in range(K - 1, -1, -1):
        live = n < first
        # undo z_{n+1} = a z_n + b f(y_{n+1})
        y1 = y.requires_grad_() if live else y
        with torch.set_grad_enabled(live):
            fy = f(y1)
        z_n = (z - b * fy.detach()) / a
        if live:
            gy, ge = frontier.vjp(fy, y1, b * zbar)
            add(ge)
            ybar = ybar + (gy if gy is not None else 0.0)
            zbar = a * zbar
        del fy
        # undo y_{n+1} = a y_n + b f(z_n)
        zn = z_n.requires_grad_() if live else z_n
        with torch.set_grad_enabled(live):
            fz = f(zn)
        y_n = (y.detach() - b * fz.detach()) / a
        if live:
            gz, ge = frontier.vjp(fz, zn, b * ybar)
            add(ge)
            zbar = zbar + (gz if gz is not None else 0.0)
            ybar = a * ybar
        del fz
        y, z = y_n, z_n.detach()
        if n <= first:
            zbar = torch.where((returned == n)[:, None], zbar + v, zbar)
    acc_t = torch.promote_types(v.dtype, torch.float32)
    z0 = state.z0.detach()
    scale = torch.maximum(torch.linalg.vector_norm(z0, dim=1, dtype=acc_t),
                          torch.linalg.vector_norm(state.z, dim=1, dtype=acc_t)).clamp_min(torch.finfo(acc_t).tiny)
    err = torch.maximum(torch.linalg.vector_norm(y - z0, dim=1, dtype=acc_t),
                        torch.linalg.vector_norm(z - z0, dim=1, dtype=acc_t))
    state.reconstruction_error = err / scale
    state.errors.append(state.reconstruction_error)
    return acc
