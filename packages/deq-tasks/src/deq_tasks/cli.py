"""``deq tasks``: list and run the JIIO tasks (filled in below)."""

from __future__ import annotations

import click

__all__ = ["tasks_group"]


@click.group("tasks")
def tasks_group() -> None:
    """JIIO tasks: generative, inverse, adversarial, meta-learning (each with its baseline)."""
