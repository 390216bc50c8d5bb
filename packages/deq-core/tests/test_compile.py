"""torch.compile: a model containing a DEQ compiles, its gradients equal eager mode's, the DEQ's loop is not
re-traced for every batch, and ``compile_f`` compiles the layer inside the loop."""

from __future__ import annotations

import copy

import pytest
import torch

from deq_core import DEQ


class Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.mul_(0.3)

    def forward(self, z, x):
        return torch.tanh(self.lin(z) + x)


class Model(torch.nn.Module):
    def __init__(self, **deq_options) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(4, 8, dtype=torch.float64)
        self.deq = DEQ(Layer(), rtol=1e-10, atol=1e-12, **deq_options)
        self.out = torch.nn.Linear(8, 2, dtype=torch.float64)

    def forward(self, x):
        z, _ = self.deq(self.inp(x))
        return self.out(z)


def _grads(model, x):
    return torch.autograd.grad(model(x).square().sum(), list(model.parameters()))


class _Counting:
    """A torch.compile backend that counts the graphs it is given (compiles and recompiles)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_model_with_a_deq_matches_eager_without_retracing_per_batch() -> None:
    torch._dynamo.reset()
    model = Model()
    backend = _Counting()
    compiled = torch.compile(model, backend=backend)
    gen = torch.Generator().manual_seed(1)
    counts = []
    for batch in (5, 7, 9, 11, 5):
        x = torch.randn(batch, 4, dtype=torch.float64, generator=gen)
        for a, b in zip(_grads(compiled, x), _grads(model, x)):
            assert torch.allclose(a, b, atol=1e-12, rtol=0)
        counts.append(backend.graphs)
    # a recompile once the batch size changes (dynamic shapes), then none: the DEQ's loop is never traced
    assert counts[-1] == counts[1], counts


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compile_f_runs_the_compiled_layer_inside_the_loop() -> None:
    torch._dynamo.reset()
    eager = Model()
    fast = Model(compile_f={"backend": "aot_eager", "dynamic": False})
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for a, b in zip(_grads(fast, x), _grads(eager, x)):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert fast.deq._f_compiled is not None
    assert set(fast.state_dict()) == set(eager.state_dict())          # f's weights are not stored twice
    clone = copy.deepcopy(fast)                                      # the compiled layer is dropped, rebuilt
    assert clone.deq._f_compiled is None
    for a, b in zip(_grads(clone, x), _grads(eager, x)):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
