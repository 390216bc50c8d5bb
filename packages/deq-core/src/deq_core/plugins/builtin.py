"""deq-core's own plugin (entry point ``deq-core = "deq_core.plugins.builtin"``).

It registers what ships inside deq-core, through the same hooks third-party plugins use: the solvers
``fixed-point`` and ``halpern``, the adjoints ``implicit``, ``neumann``, ``phantom``, ``unrolled`` and the OptEq
models. To add more, append records to the lists below.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._hookspecs import hookimpl
from ._types import AdjointEntry, ModelEntry, SolverEntry

__all__ = ["deq_adjoints", "deq_models", "deq_solvers"]


@hookimpl
def deq_solvers() -> Iterable[SolverEntry]:
    """The reference solver ``fixed-point`` (damped Picard iteration, :class:`deq_core.FixedPointIteration`)."""
    from .._picard import FixedPointIteration
    from ..opteq import Halpern

    return [
        SolverEntry(
            name="fixed-point",
            factory=FixedPointIteration,
            summary="Damped Picard iteration z <- (1 - damping) z + damping f(z); the minimal reference solver.",
            tags=("reference", "builtin"),
        ),
        SolverEntry(
            name="halpern",
            factory=Halpern,
            summary="Anchored (Halpern) iteration z <- u/(k+2) + (1 - 1/(k+2)) f(z): the fixed point nearest anchor u.",
            tags=("builtin", "opteq", "nonexpansive"),
        ),
    ]


@hookimpl
def deq_adjoints() -> Iterable[AdjointEntry]:
    """The adjoints of :mod:`deq_core`: ``implicit`` (default), ``neumann``, ``phantom``, ``unrolled``."""
    from .._adjoint import ImplicitAdjoint, NeumannAdjoint, PhantomAdjoint, UnrolledAdjoint

    return [
        AdjointEntry("implicit", ImplicitAdjoint,
                     "Exact implicit gradient: solve u = J^T u + v with a fixed-point solver (default: the forward's).",
                     tags=("builtin", "exact")),
        AdjointEntry("neumann", NeumannAdjoint, "Truncated Neumann series u = sum_{t<=terms} (J^T)^t v.",
                     tags=("builtin", "approximate")),
        AdjointEntry("phantom", PhantomAdjoint,
                     "Phantom gradient: backprop through k damped steps started at z* (Jacobian-free).",
                     tags=("builtin", "approximate")),
        AdjointEntry("unrolled", UnrolledAdjoint,
                     "Backprop through every forward solver step (a reference; memory grows with the steps).",
                     tags=("builtin", "exact", "reference")),
    ]


@hookimpl
def deq_models() -> Iterable[ModelEntry]:
    """OptEq equilibrium models (:class:`deq_core.opteq.OptEq`, :class:`deq_core.opteq.DeepOptEq`)."""
    from ..opteq import DeepOptEq, OptEq

    return [
        ModelEntry(
            name="opteq",
            factory=OptEq,
            summary="OptEq unit layer z* = prox_phi(W^T W z* + Ux + b), the minimizer of an explicit convex objective.",
            tags=("builtin", "opteq"),
        ),
        ModelEntry(
            name="opteq-deep",
            factory=DeepOptEq,
            summary="Deep OptEq: coupled unit layers minimizing one joint convex objective.",
            tags=("builtin", "opteq"),
        ),
    ]
