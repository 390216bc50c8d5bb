"""The augmented map ``G(v)`` of JIIO on flat stacked states ``v = [z | mu | x]``.

With ``d_x = (df/dx)^T mu + grad_x l`` (one reverse pass of the pair ``(l, f)`` with cotangents ``(1, mu)``)::

    z+  = z  + beta_z  * (f(z, x) - z)
    mu+ = mu + beta_mu * ((df/dz)^T mu + grad_z l - mu)
    x+  = Proj(x - alpha * d_x)                     (or Proj(x - alpha * d_x / ||d_x||) per sample)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deq_core import DeqInputError, State, StateLayout

from ._constraints import project_checked
from ._problem import JIIOConfig, JIIOProblem, check_objective, check_x

__all__ = ["AugmentedMap", "augmented_map"]


class AugmentedMap:
    """The augmented map ``G(v)`` on flat stacked states ``v = [z | mu | x]`` of shape ``(B, 2 N_z + N_x)``.

    ``alpha`` (step size) and ``z_only`` (warm-up phase) are the map's phase, set per iteration by
    :class:`~deq_tasks.jiio.JIIOSchedule`, the solver that carries the iteration counter. With
    ``create_graph=True`` the map is itself differentiable (in ``v`` and in what ``f`` closes over), for the full
    augmented implicit gradient.
    """

    def __init__(self, problem: JIIOProblem, config: JIIOConfig, z_layout: StateLayout, x_shape: torch.Size, *,
                 create_graph: bool = False) -> None:
        self.problem, self.config = problem, config
        self.z_layout, self.x_shape = z_layout, torch.Size(x_shape)
        self.nz, self.nx = z_layout.numel, math.prod(self.x_shape[1:])
        self.alpha = config.alpha_at(0)
        xs = config.x_scale
        self.x_scale = 1.0 if xs is None else float(config.alpha) if xs == "alpha" else float(xs)
        self.create_graph = create_graph
        self.sign = -1.0 if problem.maximize else 1.0
        self.calls = 0
        self._checked = False
        self.last_input: Tensor | None = None
        self.last_cost: Tensor | None = None
        self.z_only = False   # warm-up phase: mu and x are held (set by JIIOSchedule)

    # ----------------------------------------------------------------- layout
    def split(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, 2 N_z + N_x)`` -> flat ``z``, ``mu`` ``(B, N_z)`` and shaped ``x``."""
        zf, muf, xf = v.split([self.nz, self.nz, self.nx], dim=1)
        if self.x_scale != 1.0:
            xf = xf * self.x_scale
        return zf, muf, xf.reshape(self.x_shape)

    def stack(self, zf: Tensor, muf: Tensor, x: Tensor) -> Tensor:
        xf = x.reshape(x.shape[0], -1)
        return torch.cat([zf, muf, xf if self.x_scale == 1.0 else xf / self.x_scale], dim=1)

    # ----------------------------------------------------------------- pieces
    def pieces(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """At ``v = (z, mu, x)``: ``f(z, x)`` (flat), ``(df/dz)^T mu + grad_z l`` (flat), ``d_x`` (shaped) and the
        signed per-sample cost ``s * l(z, x)`` (``s = -1`` when maximizing), from one reverse pass."""
        zf, muf, x = self.split(v)
        if self.create_graph and v.requires_grad:
            z_in, x_in = zf, x
        else:
            z_in, x_in = zf.detach().requires_grad_(), x.detach().requires_grad_()
            muf = muf if self.create_graph else muf.detach()
        self.calls += 1
        with torch.enable_grad():
            z_struct = self.z_layout.unpack(z_in)
            fz = self.problem.f(z_struct, x_in)
            if not self._checked:
                self.z_layout.check(fz, "f(z, x)")
            fz_flat = self.z_layout.pack(fz)
            obj = self.problem.objective(z_struct, x_in)
            if not self._checked:
                check_objective(obj, v.shape[0])
                self._checked = True
            cost = self.sign * obj
            outs, cots = [fz_flat], [muf]
            if cost.requires_grad:
                outs.append(cost)
                cots.append(torch.ones_like(cost))
            if not any(o.requires_grad for o in outs):
                raise DeqInputError("neither f(z, x) nor the objective depends on z or x; nothing to optimize")
            outs_g = [o for o in outs if o.requires_grad]
            cots_g = [c for o, c in zip(outs, cots) if o.requires_grad]
            gz, gx = torch.autograd.grad(outs_g, (z_in, x_in), cots_g, allow_unused=True,
                                         create_graph=self.create_graph)
        gz = torch.zeros_like(zf) if gz is None else gz
        gx = torch.zeros_like(x) if gx is None else gx
        if not self.create_graph:
            fz_flat, cost = fz_flat.detach(), cost.detach()
        return fz_flat, gz, gx, cost

    def __call__(self, v: Tensor) -> Tensor:
        cfg = self.config
        zf, muf, x = self.split(v)
        if self.z_only and self._checked and not self.create_graph:   # warm-up: f only, no reverse pass
            self.calls += 1
            z_struct = self.z_layout.unpack(zf)
            fz, cost = self.z_layout.pack(self.problem.f(z_struct, x)), self.sign * self.problem.objective(z_struct, x)
        else:
            fz, adj, dx, cost = self.pieces(v)
        z_next = zf + cfg.beta_z * (fz - zf)
        if self.z_only:
            self.last_input, self.last_cost = v, cost
            return self.stack(z_next, muf, x)
        mu_next = muf + cfg.beta_mu * (adj - muf)
        if cfg.normalized_step:
            norm = dx.reshape(dx.shape[0], -1).norm(dim=1).clamp_min(1e-12)
            dx = dx / norm.reshape(-1, *([1] * (dx.dim() - 1)))
        step = self.alpha * dx
        if cfg.max_step is not None:
            length = step.reshape(step.shape[0], -1).norm(dim=1).clamp_min(1e-30)
            step = step * torch.clamp(cfg.max_step / length, max=1.0).reshape(-1, *([1] * (step.dim() - 1)))
        if cfg.tangent_step and self.problem.project is not None:
            step = self._tangent(x, step)
        x_next = x - step
        if self.problem.project is not None:
            x_next = project_checked(self.problem.project, x_next)
        self.last_input, self.last_cost = v, cost
        return self.stack(z_next, mu_next, x_next)

    def _tangent(self, x: Tensor, step: Tensor) -> Tensor:
        """For samples on the boundary of an L2-ball constraint whose step points outward, the step without its
        outward radial part (a step along the sphere). The projection of ``x - step`` would otherwise shrink the
        tangential move by ``r / (r + alpha |d_n|)``: with a strong outward gradient ``d_n`` the latent barely
        moves along the boundary. Fixed points are unchanged: at a KKT point on the boundary ``d_x`` is normal, so the
        step is 0 either way. Other constraint sets (no ``radius`` on the projection): the step as it is."""
        radius = getattr(self.problem.project, "radius", None)
        if not isinstance(radius, (int, float)) or getattr(self.problem.project, "center", None) is not None:
            return step
        flat_x, flat_s = x.reshape(x.shape[0], -1), step.reshape(step.shape[0], -1)
        norm = flat_x.norm(dim=1, keepdim=True)
        xhat = flat_x / norm.clamp_min(1e-30)
        outward = -(flat_s * xhat).sum(1, keepdim=True)          # radial component of the move -step
        on = (norm >= radius * (1 - 1e-5)) & (outward > 0)
        return torch.where(on, flat_s + outward * xhat, flat_s).reshape(step.shape)

    def cost(self, v: Tensor) -> Tensor:
        """Signed cost at ``v`` (from the last evaluation when it was at ``v``)."""
        if self.last_input is v and self.last_cost is not None:
            return self.last_cost
        zf, _, x = self.split(v)
        with torch.no_grad():
            obj = self.problem.objective(self.z_layout.unpack(zf), x)
        return self.sign * obj

    def kkt(self, v: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Per-sample KKT residuals at ``v`` and the (unsigned) objective there."""
        zf, muf, x = self.split(v)
        fz, adj, dx, cost = self.pieces(v)
        r_x = dx
        if self.problem.project is not None:
            r_x = (x - project_checked(self.problem.project, x - self.alpha * dx)) / self.alpha
        out = {
            "z": (fz - zf).norm(dim=1),
            "mu": (adj - muf).norm(dim=1),
            "x": r_x.reshape(r_x.shape[0], -1).norm(dim=1),
        }
        return {k: t.detach() for k, t in out.items()}, (self.sign * cost).detach()


def augmented_map(problem: JIIOProblem, config: JIIOConfig, z_like: State, x_like: Tensor, *,
                  create_graph: bool = False) -> AugmentedMap:
    """Build the augmented map ``G`` for states shaped like ``z_like`` and inputs shaped like ``x_like``.

    Example:
        >>> import torch
        >>> prob = JIIOProblem(f=lambda z, x: 0.5 * z + x, objective=lambda z, x: (z ** 2).sum(1))
        >>> G = augmented_map(prob, JIIOConfig(alpha=0.1), torch.zeros(2, 3), torch.zeros(2, 3))
        >>> tuple(G(torch.zeros(2, 9)).shape)
        (2, 9)
    """
    layout = StateLayout.of(z_like, "z0")
    check_x(x_like, layout)
    return AugmentedMap(problem, config, layout, x_like.shape, create_graph=create_graph)
