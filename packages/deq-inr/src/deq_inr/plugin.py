"""deq-inr's registration with the ``deq`` plugin system: the six INR models and the ``deq inr`` commands."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import click

from deq_core.plugins import ModelEntry, hookimpl

from ._build import MODELS, build_model

__all__ = ["deq_models", "deq_commands"]


@hookimpl
def deq_models() -> Iterable[ModelEntry]:
    """``isiren``, ``imfn-fourier``, ``imfn-gabor`` (implicit) and ``siren``, ``mfn-fourier``, ``mfn-gabor``;
    ``factory(in_features=2, out_features=1, **options)`` -> an ``nn.Module``."""
    for name, (family, implicit, summary) in MODELS.items():
        tags = ("inr", "implicit" if implicit else "explicit", family)
        yield ModelEntry(name=name, factory=partial(_factory, name), summary=summary, tags=tags)


def _factory(name: str, in_features: int = 2, out_features: int = 1, **options):
    return build_model(name, in_features, out_features, **options)


@hookimpl
def deq_commands(cli: click.Group) -> None:
    """``deq inr fit`` and ``deq inr render``."""
    from ._cli import inr

    cli.add_command(inr)
