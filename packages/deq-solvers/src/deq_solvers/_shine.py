r"""``shine``: the backward pass reuses the forward Broyden's inverse-Jacobian estimate (SHINE, Ramzi et al.,
ICLR 2022); ``jfb``: the Jacobian-free backward (Fung et al., AAAI 2022), a named case of the phantom adjoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from deq_core import AbstractAdjoint, DeqConfigError, PhantomAdjoint
from deq_core._adjoint import _hooked, _reengage, _value

from ._broyden import _BroydenState
from ._util import check_int

__all__ = ["ShineAdjoint", "jfb"]


@dataclass(frozen=True)
class ShineAdjoint(AbstractAdjoint):
    r"""SHINE: ``u = (I - J^T)^{-1} v`` approximated with the forward :class:`~deq_solvers.Broyden`'s estimate.

    The forward Broyden keeps, per sample, ``B = -I + sum_i u_i v_i^T``, an estimate of the inverse
    Jacobian of ``g(z) = f(z) - z``, i.e. of ``(J - I)^{-1}``. Hence ``(I - J^T)^{-1} v ~ -B^T v
    = v - sum_i v_i (u_i . v)``: a few dot products instead of a backward solve (no VJP at all with
    ``refine=0``). ``refine=k`` then takes ``k`` steps of the exact backward fixed point
    ``u <- J^T u + v`` started at that estimate (one VJP each), which converge to the implicit gradient.

    With no usable history (the forward took no step, or the memory just restarted) the estimate is
    ``u = v``, the Jacobian-free gradient. The estimate is the Broyden state after the last forward step (the
    secant pair of that last step is not in it); for samples frozen earlier it still reflects the updates
    that followed, taken near their fixed point.

    Arguments:
        refine: refinement steps ``u <- J^T u + v`` after the estimate (``>= 0``).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import Broyden, ShineAdjoint
        >>> A = torch.tensor([[0.5, 0.2], [-0.1, 0.3]], dtype=torch.float64)
        >>> x = torch.ones(1, 2, dtype=torch.float64, requires_grad=True)
        >>> def grad(adjoint):
        ...     x.grad = None
        ...     sol = fixed_point(lambda z: z @ A.T + x, torch.zeros(1, 2, dtype=torch.float64), solver=Broyden(),
        ...                       adjoint=adjoint, rtol=1e-10)
        ...     sol.value.sum().backward()
        ...     return [round(float(g), 4) for g in x.grad[0]]
        >>> grad(ShineAdjoint())              # no VJP: the secants of the 4 forward steps
        [1.5624, 1.8475]
        >>> grad(ShineAdjoint(refine=30))     # refined: the exact (I - A^T)^{-1} 1
        [1.6216, 1.8919]
    """

    name: ClassVar[str] = "shine"
    needs_forward_state: ClassVar[bool] = True
    refine: int = 0

    def __post_init__(self) -> None:
        check_int(self, "refine", self.refine, 0)

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        state = getattr(forward, "state", None)
        if not isinstance(state, _BroydenState):
            got = "no forward solve" if forward is None else f"the state of {type(solver).__name__}"
            raise DeqConfigError(
                f"ShineAdjoint needs the forward solve of the Broyden solver (solver='broyden'), got {got}")
        z, fz = _reengage(f, z_star)
        if not fz.requires_grad:
            return z_star.detach()
        refine = self.refine

        def hook(v: Tensor) -> Tensor:
            with torch.no_grad():
                u = inverse_transpose(state, v)
                for _ in range(refine):
                    (jtu,) = torch.autograd.grad(fz, z, u, retain_graph=True)
                    u = jtu + v
            return u

        return _value(z_star, _hooked(fz, hook))


def inverse_transpose(state: _BroydenState, v: Tensor) -> Tensor:
    """``-B^T v = v - sum_i live_i v_i (u_i . v)`` per sample, in the history dtype, returned in ``v``'s."""
    n = state.n
    if n == 0 or state.U is None:
        return v
    x = v.to(state.dtype)
    c = torch.bmm(x[:, None, :], state.U[:, :n].transpose(1, 2)) * state.live[:, None, :n]  # (B, 1, n): u_i . v
    return torch.baddbmm(x[:, None, :], c, state.V[:, :n], alpha=-1.0)[:, 0].to(v.dtype)


def jfb() -> PhantomAdjoint:
    """Jacobian-free backpropagation (Fung et al., AAAI 2022): backprop through one undamped step
    ``f(z*)``, i.e. ``PhantomAdjoint(steps=1, damping=1.0)`` (gradient ``(df/dtheta)^T v``).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import jfb
        >>> x = torch.tensor([[1.0]], requires_grad=True)
        >>> sol = fixed_point(lambda z: 0.5 * z + x, torch.zeros(1, 1), adjoint=jfb())
        >>> sol.value.sum().backward(); float(x.grad)   # the exact gradient would be 2
        1.0
    """
    return PhantomAdjoint(steps=1, damping=1.0)
