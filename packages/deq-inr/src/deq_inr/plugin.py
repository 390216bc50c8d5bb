"""deq-inr's registration with the ``deq`` plugin system: the six INR models (and their 18 sized names, the
paper's 1L-256D / 1L-512D / 4L-256D) and the ``deq inr`` commands."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import click

from deq_core.plugins import ModelEntry, hookimpl

from ._build import MODELS, SIZED_MODELS, build_model

__all__ = ["deq_models", "deq_commands"]


@hookimpl
def deq_models() -> Iterable[ModelEntry]:
    """``isiren``, ``imfn-fourier``, ``imfn-gabor`` (implicit) and ``siren``, ``mfn-fourier``, ``mfn-gabor``
    (``width`` / ``layers`` / ``arch`` options, default 1L-256D), and each at the paper's sizes under a sized name
    (``isiren-1l-512d``: layers and width fixed by the name); ``factory(in_features=2, out_features=1, **options)``
    -> an ``nn.Module``."""
    for name, (family, implicit, summary) in MODELS.items():
        tags = ("inr", "implicit" if implicit else "explicit", family)
        yield ModelEntry(name=name, factory=partial(_factory, name), summary=summary, tags=tags)
    for name, (base, layers, width) in SIZED_MODELS.items():
        family, implicit, _ = MODELS[base]
        size = f"{layers}L-{width}D"
        tags = ("inr", "implicit" if implicit else "explicit", family, size)
        yield ModelEntry(name=name, factory=partial(_factory, name), summary=f"{base} at {size}", tags=tags)


def _factory(name: str, in_features: int = 2, out_features: int = 1, **options):
    return build_model(name, in_features, out_features, **options)


@hookimpl
def deq_commands(cli: click.Group) -> None:
    """``deq inr fit`` and ``deq inr render``."""
    from ._cli import inr

    cli.add_command(inr)
