"""The plugin module named by the ``deq`` entry point in pyproject.toml.

deq imports this module lazily, the first time someone looks a name up, inside a guard: if it fails to
import, deq marks the plugin broken and keeps working without it.
"""

from __future__ import annotations

from collections.abc import Iterable

from deq_core.plugins import SolverEntry, hookimpl


@hookimpl
def deq_solvers() -> Iterable[SolverEntry]:
    from ._heavy_ball import HeavyBall  # import inside the hook: loading the plugin stays cheap

    return [
        SolverEntry(
            name="heavy-ball",
            factory=HeavyBall,
            summary="Fixed-point iteration with Polyak momentum: z += relaxation*(f(z)-z) + momentum*(z-z_prev).",
            aliases=("momentum",),
            tags=("example", "momentum"),
        )
    ]
