"""deq-tasks: JIIO joint inference and input optimization on deep equilibrium models.

:mod:`deq_tasks.jiio` is the engine (the augmented equilibrium over ``(z, mu, x)``); the task modules
(:mod:`deq_tasks.generative`, :mod:`deq_tasks.inverse`, :mod:`deq_tasks.adversarial`, :mod:`deq_tasks.meta`) build
on it, each with its conventional baseline.
"""

from .jiio import (
    AugmentedMap,
    JIIOConfig,
    JIIOProblem,
    JIIOResult,
    augmented_equilibrium,
    augmented_map,
    box,
    equilibrium_with_grad,
    jiio_solve,
    l2_ball,
)

__version__ = "0.1.0"

__all__ = [
    "AugmentedMap", "JIIOConfig", "JIIOProblem", "JIIOResult", "augmented_equilibrium", "augmented_map", "box",
    "equilibrium_with_grad", "jiio_solve", "l2_ball", "__version__",
]
