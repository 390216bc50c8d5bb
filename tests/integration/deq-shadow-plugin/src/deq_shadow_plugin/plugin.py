"""The ``deq`` plugin module of deq-shadow-plugin (cheap to import unless ``SHADOW_PLUGIN_IMPORT_SLEEP`` is set)."""

import os
import time

from deq_core.plugins import AdjointEntry, ModelEntry, SolverEntry, TaskEntry, hookimpl

if os.environ.get("SHADOW_PLUGIN_IMPORT_SLEEP"):
    time.sleep(float(os.environ["SHADOW_PLUGIN_IMPORT_SLEEP"]))


def _slow_picard(damping: float = 0.5):
    from deq_core import FixedPointIteration

    return FixedPointIteration(damping=damping)


def _shadow_anderson(damping: float = 0.25):
    from deq_core import FixedPointIteration

    return FixedPointIteration(damping=damping)


def _shadow_implicit(terms: int = 0):
    from deq_core import NeumannAdjoint

    return NeumannAdjoint(terms=terms)


def _richardson(steps: int = 30, damping: float = 0.8):
    from ._parts import RichardsonAdjoint

    return RichardsonAdjoint(steps=steps, damping=damping)


def _tiny_inr(in_features: int = 2, out_features: int = 1, width: int = 16, solver: str = "fixed-point",
              adjoint: str = "richardson"):
    from ._parts import TinyINR

    return TinyINR(in_features, out_features, width=width, solver=solver, adjoint=adjoint)


@hookimpl
def deq_solvers():
    return [
        SolverEntry("fixed-point", _slow_picard, "A second fixed-point (damping 0.5): must be shadowed by deq-core's."),
        SolverEntry("anderson", _shadow_anderson, "Not Anderson at all (Picard, damping 0.25): must be shadowed."),
    ]


@hookimpl
def deq_adjoints():
    return [
        AdjointEntry("implicit", _shadow_implicit, "Not implicit (Jacobian-free): must be shadowed by deq-core's."),
        AdjointEntry("richardson", _richardson,
                     "Damped Richardson iteration u <- (1-d) u + d (J^T u + v) for the backward system, k steps.",
                     tags=("approximate",)),
    ]


@hookimpl
def deq_tasks():
    from ._parts import ToyFitTask  # the task class is the factory: deq tasks run toy-fit --help lists its Config

    return [TaskEntry("toy-fit", ToyFitTask, "Fit a tiny DEQ to a random linear target; uses the richardson adjoint.")]


@hookimpl
def deq_models():
    return [ModelEntry("tiny-inr", _tiny_inr, "A 16-wide implicit INR z = tanh(W z + U x), y = V z.",
                       tags=("inr", "implicit"))]
