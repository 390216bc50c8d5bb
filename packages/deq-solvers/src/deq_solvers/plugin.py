"""Registers the deq-solvers solvers with deq (entry point ``deq-solvers = "deq_solvers.plugin"``)."""

from __future__ import annotations

from collections.abc import Iterable

from deq_core.plugins import AdjointEntry, SolverEntry, hookimpl


@hookimpl
def deq_solvers() -> Iterable[SolverEntry]:
    from ._anderson import Anderson
    from ._broyden import Broyden
    from ._fused import FusedAnderson
    from ._neumann import Neumann
    from ._picard import Picard
    from ._reversible import Reversible

    return [
        SolverEntry("picard", Picard, "Damped fixed-point iteration with optional per-sample adaptive damping.",
                    tags=("fixed-point", "low-memory")),
        SolverEntry("anderson", Anderson,
                    "Type-II Anderson acceleration: scaled ridge, float64 small solve, restarts, ring buffer.",
                    tags=("accelerated", "half-precision")),
        SolverEntry("broyden", Broyden, "Limited-memory good Broyden with a lazily grown ring buffer.",
                    tags=("quasi-newton", "half-precision")),
        SolverEntry("neumann", Neumann, "Truncated Neumann series for linear fixed points (backward passes).",
                    tags=("linear", "backward")),
        SolverEntry("fused-anderson", FusedAnderson,
                    "Anderson, Gram update and mixing fused in Triton kernels (CUDA or the Triton interpreter).",
                    aliases=("fused",), tags=("accelerated", "gpu", "triton")),
        SolverEntry("reversible", Reversible,
                    "Reversible relaxed iteration (RevDEQ); with ReversibleAdjoint an exact O(1)-memory backward.",
                    tags=("fixed-point", "reversible", "low-memory")),
    ]


@hookimpl
def deq_adjoints() -> Iterable[AdjointEntry]:
    from ._reversible import ReversibleAdjoint
    from ._shine import ShineAdjoint, jfb

    return [
        AdjointEntry("reversible", ReversibleAdjoint,
                     "Exact backward of the reversible iteration (solver 'reversible'), memory independent of steps.",
                     tags=("exact", "low-memory")),
        AdjointEntry("shine", ShineAdjoint,
                     "SHINE: reuse the forward Broyden inverse-Jacobian estimate, optional refinement steps.",
                     tags=("approximate", "quasi-newton")),
        AdjointEntry("jfb", jfb, "Jacobian-free backprop: one undamped step from z* (phantom, steps=1, damping=1).",
                     tags=("approximate", "jacobian-free")),
    ]
