"""deq-tasks: JIIO joint inference and input optimization on deep equilibrium models.

:mod:`deq_tasks.jiio` is the engine (the augmented equilibrium over ``(z, mu, x)``, its schedule a solver on
deq-core's loop); the tasks (:class:`GenerativeTask`, :class:`InverseTask`, :class:`AdversarialTask`,
:class:`MetaLearningTask`) build on it, each a frozen ``Config`` (with a nested ``JIIOConfig``) and a ``run``
method on deq-core's task contract, each with its conventional baseline, each taking the user's data
(``--data PATH``) and scoring everything at an equilibrium.
"""

from .jiio import (
    AugmentedMap,
    JIIOConfig,
    JIIOProblem,
    JIIORecorder,
    JIIOResult,
    JIIOSchedule,
    augmented_equilibrium,
    augmented_map,
    box,
    equilibrium_with_grad,
    jiio_solve,
    l2_ball,
)

__version__ = "0.1.0"

_TASKS = {"GenerativeTask": "generative", "InverseTask": "inverse", "AdversarialTask": "adversarial",
          "MetaLearningTask": "meta"}


def __getattr__(name: str) -> object:   # the task classes load their modules (models, data) on first use
    if name in _TASKS:
        import importlib

        return getattr(importlib.import_module(f"deq_tasks.{_TASKS[name]}"), name)
    raise AttributeError(f"module 'deq_tasks' has no attribute {name!r}")


__all__ = [
    "AdversarialTask", "AugmentedMap", "GenerativeTask", "InverseTask", "JIIOConfig", "JIIOProblem", "JIIORecorder",
    "JIIOResult", "JIIOSchedule", "MetaLearningTask", "augmented_equilibrium", "augmented_map", "box",
    "equilibrium_with_grad", "jiio_solve", "l2_ball", "__version__",
]
