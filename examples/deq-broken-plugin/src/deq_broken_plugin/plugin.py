"""Fails on import, like a plugin whose optional dependency is missing."""

import deq_dependency_that_is_not_installed  # noqa: F401  (the point of this package)

from deq_core.plugins import SolverEntry, hookimpl


@hookimpl
def deq_solvers():
    return [SolverEntry("never-registered", object, "unreachable")]
