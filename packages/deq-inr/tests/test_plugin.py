"""Registration through the deq entry point: six ModelEntry records and the `inr` command group."""

import click
import torch

from deq_inr import MODELS, SIZED_MODELS, plugin


def test_hooks_directly():
    entries = list(plugin.deq_models())
    assert sorted(e.name for e in entries) == sorted([*MODELS, *SIZED_MODELS])
    big = next(e for e in entries if e.name == "imfn-gabor-1l-512d")
    assert "1L-512D" in big.tags and big.factory().readout.in_features == 512
    m = next(e for e in entries if e.name == "imfn-fourier").factory(in_features=2, out_features=3, width=8)
    assert m(torch.zeros(4, 2))[0].shape == (4, 3)
    group = click.Group("deq")
    plugin.deq_commands(group)
    assert set(group.commands["inr"].commands) == {"fit", "render"}


def test_registry_view():
    from deq_core import registry

    assert set(MODELS) <= set(registry.models())
    m = registry.get_model("isiren", in_features=1, out_features=1, width=8)
    assert m.implicit and m.name == "isiren"
