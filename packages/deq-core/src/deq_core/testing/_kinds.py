"""Conformance checks of the other plugin kinds: :func:`check_adjoint`, :func:`check_task`, :func:`check_model`."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from .._adjoint import AbstractAdjoint
from .._fixed_point import fixed_point
from .._resolve import resolve_adjoint, resolve_solver
from .._solver import AbstractFixedPointSolver
from .._task import AbstractTask, TaskOption

__all__ = ["check_adjoint", "check_model", "check_task"]


# -- adjoints -----------------------------------------------------------------------------------------------
def check_adjoint(adjoint: AbstractAdjoint | str, *, solver: AbstractFixedPointSolver | str = "fixed-point",
                  max_examples: int = 10, rho: tuple[float, float] = (0.1, 0.8), batch: int = 3, width: int = 5,
                  rtol: float = 1e-6, atol: float = 1e-9, device: torch.device | str = "cpu") -> None:
    """Assert that ``adjoint`` computes the gradient it says it computes; raise ``AssertionError`` if not.

    On ``max_examples`` random float64 problems ``z* = tanh(z* W^T + x)`` (``B = batch`` samples of width
    ``N = width``, ``||W||_2 = rho`` drawn from ``rho``), solved to ``1e-13`` with ``solver``:

    1. it states its definition: ``exact = True``, or a ``reference(J, v)`` of its own;
    2. the value ``fixed_point(..., adjoint=adjoint)`` returns is the forward fixed point (to ``1e-12``);
    3. the gradients of ``sum(v * z*)`` with respect to ``x`` and ``W`` equal the adjoint's own definition,
       ``(df/dx)^T u`` and ``(df/dW)^T u`` with ``u = adjoint.reference(J, v)`` computed densely from the
       per-sample Jacobians ``J = df/dz`` (for an exact adjoint, ``exact = True``: ``u = (I - J^T)^{-1} v``, a
       float64 dense solve; ``neumann``: the truncated series; ``phantom``: ``k`` damped steps), to
       ``rtol * max|reference| + atol``;
    4. under ``torch.no_grad()`` the value carries no graph;
    5. the adjoint survives ``pickle`` and ``copy.deepcopy`` (a ``DEQ`` holding it must).

    Arguments:
        adjoint: the adjoint object (or a registered name) with the options to test.
        solver: forward solver (object or name); adjoints that need a particular forward solver's state pass it.
        max_examples: Hypothesis examples (seed and ``rho`` drawn).
        rho, batch, width: problem class.
        rtol, atol: gradient tolerance.
        device: where problems live.

    Raises:
        AssertionError: naming the failed property, the problem (seed, rho) and the largest error.

    Example:
        >>> from deq_core import NeumannAdjoint
        >>> from deq_core.testing import check_adjoint
        >>> check_adjoint(NeumannAdjoint(terms=3), max_examples=3)
        >>> check_adjoint("implicit", max_examples=3)
    """
    adjoint_obj = resolve_adjoint(adjoint)
    if not isinstance(adjoint_obj, AbstractAdjoint):
        raise AssertionError(f"check_adjoint: expected an AbstractAdjoint, got {adjoint_obj!r}")
    solver_obj = resolve_solver(solver)
    if not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be an int >= 1, got {max_examples!r}")
    for what, clone in (("pickle", lambda a: pickle.loads(pickle.dumps(a))), ("copy.deepcopy", copy.deepcopy)):
        try:
            again = clone(adjoint_obj)
        except Exception as e:  # noqa: BLE001 - report any failure as the property that failed
            raise AssertionError(f"check_adjoint: {adjoint_obj!r} does not survive {what}: {e}") from e
        if type(again) is not type(adjoint_obj):
            raise AssertionError(f"check_adjoint: {what} changed the type of {adjoint_obj!r} to {type(again)}")

    if not adjoint_obj.exact:
        try:
            adjoint_obj.reference(torch.zeros(1, 1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
        except NotImplementedError as e:
            raise AssertionError(f"check_adjoint: {type(adjoint_obj).__name__} does not state its gradient: {e}") from e

    @settings(settings(), max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
              phases=(Phase.explicit, Phase.reuse, Phase.generate), report_multiple_bugs=False)
    @given(st.integers(0, 2**31 - 1), st.floats(*rho))
    def gradients(seed: int, r: float) -> None:
        _check_adjoint_problem(adjoint_obj, solver_obj, seed, r, batch, width, rtol, atol, torch.device(device))

    gradients()


def _check_adjoint_problem(adjoint: AbstractAdjoint, solver: AbstractFixedPointSolver, seed: int, rho: float,
                           batch: int, width: int, rtol: float, atol: float, device: torch.device) -> None:
    dt = torch.float64
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(width, width, generator=g, dtype=dt)
    W = (rho * q / torch.linalg.matrix_norm(q, ord=2)).to(device).requires_grad_()
    x = torch.randn(batch, width, generator=g, dtype=dt).to(device).requires_grad_()
    v = torch.randn(batch, width, generator=g, dtype=dt).to(device)
    problem = f"z* = tanh(z* W^T + x), B={batch}, N={width}, ||W||_2={rho:.3g}, seed={seed}"

    def f(z: Tensor) -> Tensor:
        return torch.tanh(z @ W.T + x)

    z0 = torch.zeros(batch, width, dtype=dt, device=device)
    kw = {"solver": solver, "atol": 1e-13, "rtol": 1e-13, "max_steps": 5000}
    plain = fixed_point(f, z0, adjoint=None, **kw).value.detach()
    sol = fixed_point(f, z0, adjoint=adjoint, **kw)
    gap = float((sol.value.detach() - plain).abs().max())
    if not gap <= 1e-12:
        raise AssertionError(f"check_adjoint: {adjoint!r} changed the forward value by {gap:.3g}\n  problem: {problem}")
    if not sol.value.requires_grad:
        raise AssertionError(f"check_adjoint: {adjoint!r} returned a value without a gradient path\n"
                             f"  problem: {problem}")
    gx, gW = torch.autograd.grad((sol.value * v).sum(), (x, W), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gW = torch.zeros_like(W) if gW is None else gW

    with torch.no_grad():
        pre = plain @ W.T + x
        s = 1 - torch.tanh(pre) ** 2                       # (B, N)
        J = s.unsqueeze(-1) * W.unsqueeze(0)              # (B, N, N): df/dz = diag(s) W
        # an exact adjoint is held to the dense solve itself, not to a reference() it may override
        u = AbstractAdjoint.reference(adjoint, J, v) if adjoint.exact else adjoint.reference(J, v)
        if not (isinstance(u, Tensor) and u.shape == v.shape):
            raise AssertionError(f"check_adjoint: {type(adjoint).__name__}.reference(J, v) must return a "
                                 f"{tuple(v.shape)} tensor, got {getattr(u, 'shape', type(u).__name__)}")
        ref_x = s * u                                     # (df/dx)^T u
        ref_W = ref_x.T @ plain                           # (df/dW)^T u = sum_b (s_b u_b) z*_b^T
    what = "the implicit-function-theorem gradient (I - J^T)^-1 v" if adjoint.exact else "its reference(J, v)"
    for name, got, ref in (("x", gx, ref_x), ("W", gW, ref_W)):
        err = float((got - ref).abs().max())
        bound = rtol * float(ref.abs().max()) + atol
        if not err <= bound:
            raise AssertionError(
                f"check_adjoint: the gradient of {adjoint!r} with respect to {name} differs from {what} by "
                f"{err:.3g} (allowed {bound:.3g})\n  problem: {problem}")
    with torch.no_grad():
        quiet = fixed_point(f, z0, adjoint=adjoint, **kw).value
    if quiet.requires_grad:
        raise AssertionError(f"check_adjoint: {adjoint!r} attached a graph under torch.no_grad()\n  problem: {problem}")


# -- tasks --------------------------------------------------------------------------------------------------
def check_task(task: AbstractTask, out: str | Path, *, require_help: bool = True) -> Mapping[str, Any]:
    """Run ``task`` (build it with tiny options) and assert it keeps the :class:`deq_core.AbstractTask` contract.

    Checks: ``task`` is an ``AbstractTask`` with a lower-case ``name``; its ``Config`` (if any) is a frozen
    dataclass and ``options()`` lists its fields as :class:`deq_core.TaskOption` with unique names (and help
    text, with ``require_help``); ``task.run(out, progress=False)`` returns a mapping and writes
    ``out/metrics.json`` holding a JSON object; if it wrote ``out/model.safetensors``, then
    ``task.run(out2, checkpoint=that, progress=False)`` (``out2`` = ``out`` + ``"-from-checkpoint"``) works and
    writes ``metrics.json`` too.

    Arguments:
        task: the task object, built with options small enough to run in seconds.
        out: output directory for the run (created by the task).
        require_help: every option must have help text (``deq tasks run NAME --help`` shows it).

    Returns:
        The metrics of the first run.

    Raises:
        AssertionError: naming the broken part of the contract.

    Example (a plugin's test)::

        def test_my_task_conforms(tmp_path):
            check_task(MyTask(steps=3, width=4), tmp_path / "run")
    """
    if not isinstance(task, AbstractTask):
        raise AssertionError(f"check_task: expected an AbstractTask (deq_core.AbstractTask), got {type(task).__name__}")
    cls = type(task)
    if not isinstance(cls.name, str) or not cls.name or cls.name != cls.name.lower():
        raise AssertionError(f"check_task: {cls.__name__}.name must be the lower-case task name, got {cls.name!r}")
    if cls.Config is not None:
        params = vars(cls.Config).get("__dataclass_params__")
        if params is None or not params.frozen:
            raise AssertionError(f"check_task: {cls.__name__}.Config must be a @dataclasses.dataclass(frozen=True)")
    options = cls.options()
    if not isinstance(options, tuple) or not all(isinstance(o, TaskOption) for o in options):
        raise AssertionError(f"check_task: {cls.__name__}.options() must return a tuple of TaskOption, got {options!r}")
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        raise AssertionError(f"check_task: {cls.__name__}.options() repeats a name: {names}")
    if require_help:
        bare = [o.name for o in options if not o.help.strip()]
        if bare:
            raise AssertionError(f"check_task: options without help text (give the Config field "
                                 f"metadata={{'help': '...'}}): {bare}")
    out = Path(out)
    metrics = task.run(out, progress=False)
    if not isinstance(metrics, Mapping):
        raise AssertionError(f"check_task: run() must return a mapping of metrics, got {type(metrics).__name__}")
    _metrics_json(out)
    ckpt = out / "model.safetensors"
    if ckpt.is_file():
        out2 = out.with_name(out.name + "-from-checkpoint")
        again = task.run(out2, checkpoint=ckpt, progress=False)
        if not isinstance(again, Mapping):
            raise AssertionError(f"check_task: run(checkpoint=...) must return a mapping, got {type(again).__name__}")
        _metrics_json(out2)
    return metrics


def _metrics_json(out: Path) -> dict[str, Any]:
    path = out / "metrics.json"
    if not path.is_file():
        raise AssertionError(f"check_task: run() did not write {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise AssertionError(f"check_task: {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise AssertionError(f"check_task: {path} must hold a JSON object, got {type(data).__name__}")
    return data


# -- models -------------------------------------------------------------------------------------------------
def check_model(model: nn.Module, example: Tensor | tuple[Any, ...] | None = None) -> None:
    """Assert that ``model`` is a usable ``nn.Module``: it runs, gives finite outputs, trains and round-trips.

    Checks: ``model`` is an ``nn.Module``; ``model(*example)`` runs in train and eval mode and its tensor outputs
    are finite, with the input's batch size first; ``sum(outputs).backward()`` reaches at least one parameter
    with finite gradients (when it has parameters); ``copy.deepcopy`` and a ``state_dict`` saved with
    ``torch.save`` and loaded into a re-initialized copy reproduce the eval-mode outputs exactly.

    Arguments:
        model: the model (for a registered name: ``registry.get_model(name, **tiny_options)``).
        example: the positional inputs, a tensor or a tuple; default: ``model.example_input()`` if the model has
            it, else ``randn(4, model.in_features)``.

    Raises:
        AssertionError: naming the failed property.

    Example:
        >>> import torch
        >>> from deq_core.testing import check_model
        >>> check_model(torch.nn.Linear(3, 2))
    """
    if not isinstance(model, nn.Module):
        raise AssertionError(f"check_model: expected an nn.Module, got {type(model).__name__}")
    args = _example(model, example)
    batch = next((a.shape[0] for a in args if isinstance(a, Tensor) and a.ndim), None)
    torch.manual_seed(0)
    model.train()
    outs = _tensors(model(*args))
    _finite(outs, batch, "train mode")
    params = [p for p in model.parameters() if p.requires_grad]
    if params:
        loss = sum(o.float().sum() for o in outs if o.requires_grad or o.grad_fn is not None)
        if not isinstance(loss, Tensor):
            raise AssertionError("check_model: no output depends on the parameters (nothing to train)")
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            raise AssertionError("check_model: backward() reached no parameter")
        if not all(bool(torch.isfinite(gr).all()) for gr in grads):
            raise AssertionError("check_model: non-finite parameter gradients")
        model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        ref = _tensors(model(*args))
        _finite(ref, batch, "eval mode")
        clone = copy.deepcopy(model)
        _same(ref, _tensors(clone(*args)), "copy.deepcopy")
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        buf.seek(0)
        other = copy.deepcopy(model)
        for p in other.parameters():
            p.add_(torch.randn_like(p))
        other.load_state_dict(torch.load(buf, weights_only=True))
        _same(ref, _tensors(other(*args)), "a state_dict round trip (torch.save / load_state_dict)")


def _example(model: nn.Module, example: Any) -> tuple[Any, ...]:
    if example is None:
        make = getattr(model, "example_input", None)
        if callable(make):
            example = make()
        elif isinstance(getattr(model, "in_features", None), int):
            p = next(model.parameters(), None)
            example = torch.randn(4, model.in_features, dtype=p.dtype if p is not None else None,
                                  generator=torch.Generator().manual_seed(0))
        else:
            raise AssertionError(f"check_model: pass example=... (the inputs of {type(model).__name__}): it has "
                                 "neither example_input() nor an int in_features")
    return example if isinstance(example, tuple) else (example,)


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, Mapping):
        return [t for o in out.values() for t in _tensors(o)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return []  # info records (DEQInfo, ...): not outputs
    return []


def _finite(outs: list[Tensor], batch: int | None, mode: str) -> None:
    if not outs:
        raise AssertionError(f"check_model: the forward ({mode}) returned no tensor")
    first = outs[0]
    if batch is not None and (first.ndim == 0 or first.shape[0] != batch):
        raise AssertionError(f"check_model: the first output ({mode}) has shape {tuple(first.shape)}, expected the "
                             f"batch size {batch} first")
    for o in outs:
        if o.is_floating_point() and not bool(torch.isfinite(o).all()):
            raise AssertionError(f"check_model: non-finite outputs in {mode}")


def _same(a: list[Tensor], b: list[Tensor], what: str) -> None:
    if len(a) != len(b) or not all(x.shape == y.shape and torch.allclose(x, y, rtol=1e-6, atol=1e-7)
                                   for x, y in zip(a, b)):
        worst = max((float((x - y).abs().max()) for x, y in zip(a, b) if x.shape == y.shape), default=math.inf)
        raise AssertionError(f"check_model: eval-mode outputs changed after {what} (max difference {worst:.3g})")
