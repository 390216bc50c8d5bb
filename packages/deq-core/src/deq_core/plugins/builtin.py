"""deq-core's own plugin (entry point ``deq-core = "deq_core.plugins.builtin"``).

It registers what ships inside deq-core, through the same hooks third-party plugins use. To add more,
append records to the lists below or add another ``@hookimpl`` function (``deq_models``, ``deq_tasks``).
"""

from __future__ import annotations

from collections.abc import Iterable

from ._hookspecs import hookimpl
from ._types import SolverEntry

__all__ = ["deq_solvers"]


@hookimpl
def deq_solvers() -> Iterable[SolverEntry]:
    """The reference solver ``fixed-point`` (damped Picard iteration, :class:`deq_core.FixedPointIteration`)."""
    from .._picard import FixedPointIteration

    return [
        SolverEntry(
            name="fixed-point",
            factory=FixedPointIteration,
            summary="Damped Picard iteration z <- (1 - damping) z + damping f(z); the minimal reference solver.",
            tags=("reference", "builtin"),
        ),
    ]
