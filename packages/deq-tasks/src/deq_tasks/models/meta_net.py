"""A context-conditioned DEQ for few-shot meta-learning: FiLM of the equilibrium layer by a task context ``v``.

For a task with ``K`` points ``x_k`` (sinusoid abscissae or flattened digit images) and a context ``v`` in R^d,
each point has its own state ``z_k`` in R^H, all driven by the same ``v``::

    inj_k  = E(x_k)                                   (encoder, shared)
    z_k^+  = tanh((1 + gamma(v)) * (g W z_k + inj_k) + beta(v))  gamma, beta = Linear(v) (FiLM), g = gain
    y_k    = h(z_k*)                                  (Linear head)

The task-specific parameters are only ``v``: adaptation optimizes ``v`` (the input ``x`` of the augmented JIIO
DEQ) with the network weights fixed. States are flat ``(T, K * H)`` per task so that the JIIO engine and any
flat solver run on them.

Example:
    >>> import torch
    >>> from deq_core import FixedPointIteration
    >>> from deq_tasks.models.meta_net import ContextDEQ
    >>> net = ContextDEQ(in_dim=1, out_dim=1, solver=FixedPointIteration(), max_steps=5)
    >>> net(torch.rand(3, 10, 1), torch.zeros(3, net.context_dim)).shape
    torch.Size([3, 10, 1])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from deq_core import DEQ, DeqConfigError, DeqInputError, ImplicitAdjoint, resolve_solver

from ._spectral import spectral_norm_at_bound

__all__ = ["ContextDEQ"]


class _Layer(nn.Module):
    def __init__(self, hidden: int, context_dim: int, weight_norm: float | None = 0.97, gain: float = 1.0) -> None:
        super().__init__()
        self.hidden, self.gain = hidden, float(gain)
        self.W = nn.Linear(hidden, hidden, bias=False)
        self.film = nn.Linear(context_dim, 2 * hidden)
        nn.init.zeros_(self.film.bias)
        if weight_norm is not None:   # keep ||W||_2 <= weight_norm (a slow but guaranteed contraction)
            spectral_norm_at_bound(self.W, weight_norm, init_iterations=50)
        else:
            with torch.no_grad():  # start at ||W||_2 = 0.97
                self.W.weight.mul_(0.97 / torch.linalg.matrix_norm(self.W.weight, ord=2))

    def forward(self, z: Tensor, inj_v: tuple[Tensor, Tensor]) -> Tensor:
        inj, v = inj_v
        T, K, H = inj.shape
        zz = z.reshape(T, K, H)
        gamma, beta = self.film(v).unsqueeze(1).chunk(2, dim=-1)
        out = torch.tanh((1 + gamma) * (self.gain * self.W(zz) + inj) + beta)
        return out.reshape(T, K * H)


class ContextDEQ(nn.Module):
    """DEQ regressor/classifier whose equilibrium layer is FiLM-conditioned on a task context ``v``.

    Arguments:
        in_dim: features per point (1 for sinusoids, 196 for 14x14 digits).
        out_dim: outputs per point (1 for regression, N for N-way classification).
        hidden: state width H per point.
        context_dim: size of the task context ``v``.
        solver, max_steps, rtol: the equilibrium solve (also used by the implicit backward).
        weight_norm: spectral-norm cap on ``W`` (``None``: unconstrained, initialized at 0.97).
        gain: fixed factor on ``W z`` (``gain * ||W||`` above 1 makes the layer contractive only through the
            ``tanh`` saturation, so its solve is slow, as a real DEQ's: 2 with ``weight_norm`` 0.99 needs ~20
            Anderson iterations at rtol 1e-4 on the sinusoid tasks, 1 needs ~11).

    Raises:
        DeqConfigError: non-positive sizes.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, context_dim: int = 16, solver: Any = "anderson",
                 max_steps: int = 40, rtol: float = 1e-4, weight_norm: float | None = None, gain: float = 1.0) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden), ("context_dim", context_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DeqConfigError(f"ContextDEQ.{name} must be an int >= 1, got {v!r}")
        self.in_dim, self.out_dim, self.hidden, self.context_dim = in_dim, out_dim, hidden, context_dim
        self.hparams = {"in_dim": in_dim, "out_dim": out_dim, "hidden": hidden, "context_dim": context_dim,
                        "max_steps": max_steps, "rtol": rtol, "weight_norm": weight_norm, "gain": gain}
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        if not (isinstance(gain, (int, float)) and gain > 0):
            raise DeqConfigError(f"ContextDEQ.gain must be a number > 0, got {gain!r}")
        self.layer = _Layer(hidden, context_dim, weight_norm, gain)
        self.head = nn.Linear(hidden, out_dim)
        self.solver = resolve_solver(solver)
        self.deq = DEQ(self.layer, solver=self.solver, adjoint=ImplicitAdjoint(rtol=rtol, max_steps=max_steps),
                       rtol=rtol, atol=1e-8, max_steps=max_steps)
        self.last_info = None

    def check(self, x: Tensor, v: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise DeqInputError(f"expected points of shape (tasks, K, {self.in_dim}), got {tuple(x.shape)}")
        if v.shape != (x.shape[0], self.context_dim):
            raise DeqInputError(f"expected a context of shape ({x.shape[0]}, {self.context_dim}), got {tuple(v.shape)}")

    def inject(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def f(self, z: Tensor, inj: Tensor, v: Tensor) -> Tensor:
        """One layer application on flat states ``z`` (T, K*H) with injection ``inj`` (T, K, H) and context ``v``."""
        return self.layer(z, (inj, v))

    def z0(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], x.shape[1] * self.hidden)

    def predict(self, z: Tensor) -> Tensor:
        """Head on flat states: (T, K*H) -> (T, K, out_dim)."""
        return self.head(z.reshape(z.shape[0], -1, self.hidden))

    def equilibrium(self, x: Tensor, v: Tensor) -> Tensor:
        self.check(x, v)
        z, info = self.deq((self.inject(x), v), z0=self.z0(x))
        self.last_info = info
        return z

    def forward(self, x: Tensor, v: Tensor, unroll: int | None = None) -> Tensor:
        """Predictions (T, K, out_dim). ``unroll=n`` runs ``n`` plain applications of ``f`` from zero instead of
        the DEQ solve (differentiable by ordinary autograd and by ``torch.func``)."""
        if unroll is None:
            return self.predict(self.equilibrium(x, v))
        self.check(x, v)
        inj = self.inject(x)
        z = self.z0(x)
        for _ in range(unroll):
            z = self.layer(z, (inj, v))
        return self.predict(z)
