"""The ``deq`` plugin of deq-tasks: the task records and the ``deq tasks`` command group.

Kept cheap to import: the task modules (torch models, data) load only when a task is built.
Each factory is a task class on the task contract (``Config`` + ``run(out, *, checkpoint=None, progress=True)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from deq_core.plugins import TaskEntry, hookimpl

__all__ = ["deq_commands", "deq_tasks"]


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    """The task class ``deq_tasks.<module>.<attr>`` (imported when the hook runs: torch is already loaded by
    deq-core, the task modules add little)."""
    mod = importlib.import_module(f"deq_tasks.{module}")
    return getattr(mod, attr)


_TASKS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    # (name, module, class, summary, tags) -- other task modules append here with one line each
    ("generative", "generative", "GenerativeTask",
     "Decoder-only DEQ generative model, latents by JIIO vs Adam-40; GMM samples; VAE comparison (MNIST-5k).",
     ("jiio", "generative")),
    ("inverse", "inverse", "InverseTask",
     "Denoising / inpainting (random or block mask) with a JIIO-trained DEQ decoder vs Adam-40; PSNR.",
     ("jiio", "inverse")),
    ("adversarial", "adversarial", "AdversarialTask",
     "Adversarial training of an MDEQ classifier (L2 eps 1, MNIST-5k): JIO vs PGD-20; clean/PGD/JIO accuracy table.",
     ("jiio", "adversarial")),
    ("meta-learning", "meta", "MetaLearningTask",
     "Meta-learning with the task context as JIIO input (sinusoids, 5-way MNIST) vs Adam-20 and MAML-style loops.",
     ("jiio", "meta-learning")),
)


@hookimpl
def deq_tasks() -> Iterable[TaskEntry]:
    return [TaskEntry(name, _lazy(mod, cls), summary, tags=tags) for name, mod, cls, summary, tags in _TASKS]


@hookimpl
def deq_commands(cli: Any) -> None:
    from .cli import tasks_group

    cli.add_command(tasks_group)
