"""deq_core.save / load: bit-exact round trips, atomic writes, and clear refusals."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import deq_core
from deq_core import DEQ, DeqInputError, FixedPointIteration, _checkpoint, load, save
from deq_core.testing import example_budget

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Arbitrary bit patterns (NaN payloads, infinities, subnormals included) of the given dtype."""
    g = torch.Generator().manual_seed(seed)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = int(torch.tensor(shape).prod()) if shape else 1
    raw = torch.randint(0, 256, (n * itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


keys = st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True)
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
entries = st.tuples(st.sampled_from(DTYPES), shapes, st.integers(0, 2**31 - 1))
configs = st.none() | st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers(-10**6, 10**6)
                                      | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                                      max_size=4)


@settings(max_examples=example_budget(40))
@given(state=st.dictionaries(keys, entries, min_size=1, max_size=6), config=configs)
def test_round_trip_is_bit_exact(state, config):
    tensors = {k: random_tensor(dtype, shape, seed) for k, (dtype, shape, seed) in state.items()}
    with tempfile.TemporaryDirectory() as d:
        path = save(Path(d) / "ckpt.safetensors", tensors, config)
        loaded, cfg = load(path)
        assert os.listdir(d) == ["ckpt.safetensors"]  # no temporary file left behind
    assert cfg == config
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and loaded[k].shape == t.shape, k
        assert bits(loaded[k]) == bits(t), k


def small_deq() -> DEQ:
    torch.manual_seed(0)

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.register_buffer("scale", torch.tensor(0.3))

        def forward(self, z, x):
            return torch.tanh(self.scale * self.lin(z) + x)

    return DEQ(Layer(), solver=FixedPointIteration(), rtol=1e-6)


def test_module_round_trip_with_config(tmp_path):
    deq = small_deq()
    config = {"width": 4, "solver": "fixed-point", "rtol": 1e-6, "layers": [1, 2]}
    path = save(tmp_path / "deq.safetensors", deq, config)
    other = small_deq()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    state, cfg = load(path, other)
    assert cfg == config
    for (k, a), (k2, b) in zip(deq.state_dict().items(), other.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert set(state) == set(deq.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(deq(x)[0], other(x)[0], rtol=0, atol=0)


def test_metadata_is_plain_safetensors(tmp_path):
    from safetensors import safe_open

    path = save(tmp_path / "m.safetensors", {"w": torch.ones(2)}, {"a": (1, 2)})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["deq.format"] == "deq-checkpoint" and meta["deq.format_version"] == "1"
    assert json.loads(meta["deq.config"]) == {"a": [1, 2]}  # tuples come back as lists
    assert len(meta["deq.sha256"]) == 64 and meta["deq.version"] == deq_core.__version__
    assert load(path)[1] == {"a": [1, 2]}


def test_tied_and_view_tensors_are_saved(tmp_path):
    w = torch.randn(4, 3)
    path = save(tmp_path / "t.safetensors", {"a": w, "b": w, "c": w[1:], "d": w.t()})
    state, _ = load(path)
    assert torch.equal(state["a"], w) and torch.equal(state["b"], w)
    assert torch.equal(state["c"], w[1:]) and torch.equal(state["d"], w.t())


def test_file_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save(tmp_path / "p.safetensors", {"w": torch.ones(1)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# -- atomic writes --------------------------------------------------------------------------------------------
def test_write_goes_through_a_temp_file_in_the_same_directory_and_os_replace(tmp_path, monkeypatch):
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((Path(src), Path(dst)))
        assert Path(src).exists() and Path(src).parent == Path(dst).parent
        real_replace(src, dst)

    monkeypatch.setattr(_checkpoint.os, "replace", spy)
    path = save(tmp_path / "a.safetensors", {"w": torch.ones(2)})
    (src, dst), = calls
    assert dst == path and src.name.startswith("a.safetensors.tmp") and not src.exists()


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save(tmp_path / "a.safetensors", {"w": torch.ones(2)}, {"v": 1})
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"w": torch.zeros(2)}, {"v": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.safetensors"]
    assert load(path)[1] == {"v": 1}


# -- refusals -------------------------------------------------------------------------------------------------
@pytest.fixture
def ckpt(tmp_path):
    return save(tmp_path / "c.safetensors", {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3)}, {"k": 1})


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -1, -7])
def test_truncated_file_is_refused(ckpt, keep):
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(DeqInputError, match=rf"checkpoint {ckpt} cannot be read as safetensors \(truncated"):
        load(ckpt)


def test_flipped_tensor_byte_fails_the_checksum(ckpt):
    data = bytearray(ckpt.read_bytes())
    data[-3] ^= 0x01
    ckpt.write_bytes(bytes(data))
    with pytest.raises(DeqInputError, match=rf"checkpoint {ckpt} failed its checksum"):
        load(ckpt)


def test_edited_config_fails_the_checksum(ckpt):
    data = ckpt.read_bytes()
    assert data.count(b'{\\"k\\": 1}') == 1
    ckpt.write_bytes(data.replace(b'{\\"k\\": 1}', b'{\\"k\\": 7}'))
    with pytest.raises(DeqInputError, match="failed its checksum"):
        load(ckpt)


def test_plain_safetensors_file_is_not_a_deq_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(DeqInputError, match="not a deq checkpoint"):
        load(path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "new.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"deq.format": "deq-checkpoint", "deq.format_version": "2"})
    with pytest.raises(DeqInputError, match="format version '2'; this deq-core reads versions up to 1"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.safetensors")


def test_module_key_mismatch_names_the_keys(ckpt):
    with pytest.raises(DeqInputError) as info:
        load(ckpt, torch.nn.Linear(4, 3, bias=False))
    msg = str(info.value)
    assert str(ckpt) in msg and "does not match Linear" in msg
    assert "missing keys ['weight']" in msg and "unexpected keys ['b', 'w']" in msg


def test_module_shape_mismatch_names_the_shapes(tmp_path):
    path = save(tmp_path / "l.safetensors", torch.nn.Linear(3, 5))
    target = torch.nn.Linear(3, 4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(DeqInputError, match=r"shape mismatch \(bias: checkpoint \(5,\) vs module \(4,\); "
                                            r"weight: checkpoint \(5, 3\) vs module \(4, 3\)\)"):
        load(path, target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched


@pytest.mark.parametrize(("obj", "match"), [
    ({"w": [1.0, 2.0]}, "entry 'w' is a list, expected a torch.Tensor"),
    ({1: torch.ones(1)}, "keys must be str"),
    ([torch.ones(1)], "save expects an nn.Module or a dict of tensors, got list"),
])
def test_save_refuses_non_tensor_state(tmp_path, obj, match):
    with pytest.raises(DeqInputError, match=match):
        save(tmp_path / "x.safetensors", obj)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("config", [{"f": object()}, {"x": float("nan")}, ["not", "a", "dict"]])
def test_save_refuses_configs_that_are_not_json(tmp_path, config):
    with pytest.raises(DeqInputError, match="config must be"):
        save(tmp_path / "x.safetensors", {"w": torch.ones(1)}, config)
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        save(tmp_path / "no" / "such" / "dir.safetensors", {"w": torch.ones(1)})
