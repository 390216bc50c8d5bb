"""Per-sample warm starts keyed by dataset index (FixedPointCache), forward and implicit backward."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deq_core import DEQ, DeqConfigError, DeqInputError, FixedPointCache


def _layer(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(5, 5, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.mul_(0.8 / float(torch.linalg.matrix_norm(lin.weight, ord=2)))

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, z, x):
            return torch.tanh(self.lin(z) + x)

    return Layer()


def test_second_epoch_starts_from_each_samples_own_fixed_point() -> None:
    data = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    deq = DEQ(_layer(), cache=FixedPointCache(12), rtol=1e-9, atol=1e-12, max_steps=200)
    order = [torch.tensor([3, 0, 7, 11]), torch.tensor([1, 2, 4, 5, 6]), torch.tensor([8, 9, 10])]
    cold = [int(deq(data[i], index=i)[1].stats.steps.max()) for i in order]
    # the next epoch: other batches, other sizes; every sample was seen, so every solve starts at its z*
    order2 = [torch.tensor([10, 4]), torch.tensor([0, 1, 2, 3, 5, 6, 7]), torch.tensor([8, 9, 11])]
    outs = [deq(data[i], index=i) for i in order2]
    assert all(info.warm for _, info in outs)
    assert max(int(info.stats.steps.max()) for _, info in outs) <= 1 < min(cold)
    ref, _ = DEQ(_layer(), rtol=1e-9, atol=1e-12, max_steps=200)(data)
    for i, (z, _) in zip(order2, outs):
        assert torch.allclose(z, ref[i], atol=1e-8)


def test_backward_solution_is_cached_and_gradients_match_a_cold_solve() -> None:
    data = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    idx = torch.arange(6)
    cache = FixedPointCache(6)
    deq = DEQ(_layer(), cache=cache, rtol=1e-10, atol=1e-12, max_steps=300)
    for _ in range(2):
        deq.zero_grad()
        z, _ = deq(data, index=idx)
        z.square().sum().backward()
    warm_grad = deq.f.lin.weight.grad.clone()
    assert "adjoint" in repr(cache) and "'adjoint': 6" in repr(cache)
    cold = DEQ(_layer(), rtol=1e-10, atol=1e-12, max_steps=300)
    z, _ = cold(data)
    z.square().sum().backward()
    assert torch.allclose(warm_grad, cold.f.lin.weight.grad, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 20), data=st.data())
def test_get_returns_what_was_put_for_any_index_order(size: int, data) -> None:
    cache = FixedPointCache(size)
    idx = torch.tensor(data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=size, unique=True)))
    values = torch.randn(len(idx), 3, 2)
    cache.put(idx, values)
    perm = torch.randperm(len(idx))
    got, hit = cache.get(idx[perm], torch.zeros(len(idx), 3, 2))
    assert bool(hit.all()) and torch.equal(got, values[perm])
    unseen = torch.tensor([i for i in range(size) if i not in idx.tolist()], dtype=torch.long)
    if unseen.numel():
        got, hit = cache.get(unseen, torch.full((len(unseen), 3, 2), 7.0))
        assert not bool(hit.any()) and bool((got == 7.0).all())


def test_bad_indices_and_shapes_are_clear_errors() -> None:
    cache = FixedPointCache(4)
    with pytest.raises(DeqInputError, match=r"lie in \[0, 4\)"):
        cache.get(torch.tensor([1, 4]), torch.zeros(2, 3))
    with pytest.raises(DeqInputError, match="integer tensor"):
        cache.get(torch.tensor([1.0, 2.0]), torch.zeros(2, 3))
    with pytest.raises(DeqInputError, match="2 entries but the batch has 3"):
        cache.get(torch.tensor([1, 2]), torch.zeros(3, 3))
    cache.put(torch.tensor([0]), torch.zeros(1, 3))
    with pytest.raises(DeqInputError, match="per-sample states of shapes"):
        cache.get(torch.tensor([0]), torch.zeros(1, 4))
    with pytest.raises(DeqConfigError, match="no cache"):
        DEQ(_layer())(torch.zeros(1, 5, dtype=torch.float64), index=torch.tensor([0]))
    with pytest.raises(DeqConfigError, match="size"):
        FixedPointCache(0)
