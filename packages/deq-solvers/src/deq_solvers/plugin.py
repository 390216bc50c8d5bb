"""Registers the deq-solvers solvers with deq (entry point ``deq-solvers = "deq_solvers.plugin"``)."""

from __future__ import annotations

from collections.abc import Iterable

from deq_core.plugins import SolverEntry, hookimpl


@hookimpl
def deq_solvers() -> Iterable[SolverEntry]:
    from ._anderson import Anderson
    from ._broyden import Broyden
    from ._fused import FusedAnderson
    from ._neumann import Neumann
    from ._picard import Picard

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
    ]
