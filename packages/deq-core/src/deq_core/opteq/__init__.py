r"""OptEq: optimization-induced equilibrium layers (Xie et al., arXiv 2105.13228; a reconstruction).

A layer whose activation is the proximal operator of a convex :math:`\varphi` and whose linear kernel is
:math:`W^\top W` with :math:`\|W\|_2 < 1` has an equilibrium that *minimizes an explicit convex objective*:

.. math::  z^\star = \sigma(W^\top W z^\star + Ux + b) \iff
           z^\star = \arg\min_z \sum_j \varphi(z_j) + \tfrac12\|z\|^2 - \tfrac12\|Wz\|^2 - \langle Ux + b, z\rangle.

* proximal operators with their convex functions: :func:`get_prox` (``relu``, ``soft-threshold``, ``clip`` /
  ``hardtanh``, ``leaky-relu``, ``tanh``, ``sigmoid``, ``arctan``);
* the unit layer :class:`OptEqLayer` and model :class:`OptEq` (a :class:`deq_core.DEQ` inside: any solver, any
  adjoint), ``objective(z, x)``, ``gradient_mapping(z, x)``, ``check_convergence()``, :func:`check_after_step`;
* the deep variant :class:`DeepOptEq` (one joint convex objective over several coupled layers);
* priors: an extra convex term (:func:`with_l1`, ``OptEq(..., l1=...)``) and the anchored :class:`Halpern`
  iteration that selects the equilibrium nearest an anchor.

Example:
    >>> import torch
    >>> from deq_core.opteq import OptEq
    >>> model = OptEq(4, 6, prox="tanh", atol=1e-12, rtol=1e-12, max_steps=200).double()
    >>> x = torch.randn(2, 4, dtype=torch.float64)
    >>> z, info = model(x)
    >>> info.result.name
    'CONVERGED'
"""

from ._deep import DeepOptEq, DeepOptEqLayer
from ._layer import ContractiveWeight, OptEq, OptEqLayer, check_after_step
from ._prior import Halpern, L1Prox, with_l1
from ._prox import AbstractProx, Arctan, Clip, LeakyReLU, ReLU, Sigmoid, SoftThreshold, Tanh, get_prox, prox_names

__all__ = [
    "AbstractProx", "Arctan", "Clip", "ContractiveWeight", "DeepOptEq", "DeepOptEqLayer", "Halpern", "L1Prox",
    "LeakyReLU", "OptEq", "OptEqLayer", "ReLU", "Sigmoid", "SoftThreshold", "Tanh", "check_after_step", "get_prox",
    "prox_names", "with_l1",
]
