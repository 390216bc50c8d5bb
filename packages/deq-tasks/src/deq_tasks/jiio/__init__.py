"""JIIO: joint inference and input optimization as one augmented equilibrium (Gurumurthy et al., NeurIPS 2021).

Problem: ``min_{x in C} l(z, x)`` subject to ``z = f(z, x)`` (a DEQ layer ``f``). With the Lagrangian
``L = l(z, x) + mu^T (f(z, x) - z)`` the KKT conditions are

* primal (equilibrium):  ``z = f(z, x)``
* adjoint:               ``mu = (df/dz)^T mu + grad_z l``
* input:                 ``d_x = (df/dx)^T mu + grad_x l = 0``   (projected-gradient fixed point when ``x in C``)

JIIO iterates all three at once on the stacked state ``v = (z, mu, x)`` (:class:`AugmentedMap`, Jacobi order)::

    z+  = z  + beta_z  * (f(z, x) - z)
    mu+ = mu + beta_mu * ((df/dz)^T mu + grad_z l - mu)
    x+  = Proj(x - alpha * d_x)                     (or Proj(x - alpha * d_x / ||d_x||) per sample)

The stacked map is solved on deq-core's loop (:func:`deq_core.run_loop`) by :class:`JIIOSchedule`, a solver that
wraps any registered one (Anderson by default), carries the iteration counter, applies the one-time step-size drop
and the per-sample best-iterate rule of the authors' release, for a fixed budget ``T``. Maximization (adversarial
attacks) is the same engine with the sign of ``l`` flipped.

Modules: ``_problem`` (:class:`JIIOProblem`, :class:`JIIOConfig`, :class:`JIIOResult`), ``_map`` (the augmented map),
``_solve`` (the schedule and :func:`jiio_solve`), ``_training`` (gradients for ``theta``), ``_constraints``
(:func:`l2_ball`, :func:`box`).

Example:
    >>> import torch
    >>> from deq_tasks.jiio import JIIOConfig, JIIOProblem, jiio_solve
    >>> A = 0.5 * torch.eye(3, dtype=torch.float64)
    >>> y = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    >>> prob = JIIOProblem(f=lambda z, x: z @ A + x, objective=lambda z, x: ((z - y) ** 2).sum(1))
    >>> z0 = torch.zeros(1, 3, dtype=torch.float64)
    >>> res = jiio_solve(prob, z0, z0.clone(), JIIOConfig(budget=300, alpha=0.02, solver="fixed-point"))
    >>> bool(torch.allclose(res.x, y / 2, atol=1e-6))     # z* = 2x, so x* = y / 2
    True
"""

from ._constraints import box, l2_ball
from ._map import AugmentedMap, augmented_map
from ._problem import JIIOConfig, JIIOProblem, JIIOResult
from ._solve import JIIORecorder, JIIOSchedule, jiio_solve
from ._training import augmented_equilibrium, equilibrium_with_grad

__all__ = [
    "AugmentedMap", "JIIOConfig", "JIIOProblem", "JIIORecorder", "JIIOResult", "JIIOSchedule",
    "augmented_equilibrium", "augmented_map", "box", "equilibrium_with_grad", "jiio_solve", "l2_ball",
]
