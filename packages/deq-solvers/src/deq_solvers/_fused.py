"""``fused-anderson``: Anderson acceleration with Triton kernels and its own loop (few host syncs)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deq_core import (
    DeqConfigError,
    FlatMap,
    LoopControl,
    LoopOutcome,
    Result,
)

from ._anderson import _AndersonState, mixing_weights
from ._util import AndersonOptions, check_int

__all__ = ["FusedAnderson", "triton_status"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_status(device: torch.device | str | None = None) -> str | None:
    """``None`` when the fused kernels can run on ``device`` (default: CUDA if present, else CPU), else why not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return ("the fused solver needs Triton, which is not installed: pip install 'deq-solvers[fused]' "
                "(or use solver='anderson')")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if dev.type == "cpu" and _interpreting():
        return None
    return (f"the fused solver runs Triton kernels on CUDA, or on CPU only under the Triton interpreter; got a "
            f"{dev.type} tensor and TRITON_INTERPRET is not set. Set TRITON_INTERPRET=1 before the first fused "
            f"solve (slow, for tests) or use solver='anderson'")


_KERNEL_MODE: list[bool] = []  # interpreter flag the kernels module was (re)loaded under


def _kernels(device: torch.device):
    """The kernels module, (re)defined under the current ``TRITON_INTERPRET`` setting."""
    why = triton_status(device)
    if why is not None:
        raise DeqConfigError(why)
    import importlib

    from . import _fused_kernels

    mode = _interpreting()
    if _KERNEL_MODE and _KERNEL_MODE[0] != mode:
        _fused_kernels = importlib.reload(_fused_kernels)
    _KERNEL_MODE[:] = [mode]
    return _fused_kernels


def _launch_guard():
    """Under the interpreter the kernels run in numpy: nan / inf must propagate silently as on a GPU."""
    if _interpreting():
        import numpy as np

        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def meets_tolerance(res: Tensor, fnorm: Tensor, atol: float, rtol: float) -> Tensor:
    """Per-sample ``res <= atol + rtol * fnorm`` (the driver's stopping test)."""
    return torch.sub(res, fnorm, alpha=rtol) <= atol


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class FusedAnderson(AndersonOptions):
    r"""Type-II Anderson (same maths and safeguards as :class:`deq_solvers.Anderson`) with fused kernels.

    Per step two Triton kernels touch the ``(B, m, N)`` histories once each:

    * ``push_gram`` reads ``z``, ``f(z)`` and ``G``; writes the new ring entries and returns the new Gram
      row together with ``||f(z) - z||^2`` and ``||f(z)||^2`` (the loop's residuals come for free);
    * ``mix`` forms ``z_next = sum_i a_i f(z_i) - (1 - beta) sum_i a_i g_i``.

    The ``(m, m)`` system is solved on the device as in :class:`Anderson`. The solver owns its loop: per
    sample convergence, best iterate and non-finite / divergence detection as in the driver, with the host
    looking at the flags only every ``check_every`` steps. On CUDA with ``cuda_graph=True`` blocks of ``m``
    steps are captured once as a CUDA graph and replayed (``f`` must then be graph-capturable: static
    shapes, no host syncs); if capture fails the loop runs eagerly and ``stats['cuda_graph']`` says why.

    Runs on CUDA, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1`` set before the first fused
    solve; slow, meant for tests); otherwise it raises :class:`deq_core.DeqConfigError` saying so.
    Requires ``pip install 'deq-solvers[fused]'`` (Triton).

    Arguments:
        m, beta, ridge, max_alpha, restart_growth, history_dtype, solve_dtype: as in :class:`Anderson`.
        check_every: host convergence check every this many steps (at least the driver's ``check_every``).
        block: elements per kernel block (a power of two).
        cuda_graph: capture blocks of steps as CUDA graphs on CUDA devices.

    Example:
        >>> import os, torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import FusedAnderson, triton_status
        >>> if triton_status("cpu") is None:   # CUDA, or TRITON_INTERPRET=1 on CPU
        ...     sol = fixed_point(lambda z: 0.5 * z + 1, torch.zeros(2, 8), solver=FusedAnderson(), rtol=1e-6)
    """

    name: ClassVar[str] = "fused-anderson"
    check_every: int = 4
    block: int = 256
    cuda_graph: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "check_every", self.check_every, 1)
        check_int(self, "block", self.block, 16)
        if self.block & (self.block - 1):
            raise DeqConfigError(f"FusedAnderson.block must be a power of two, got {self.block}")
        if not isinstance(self.cuda_graph, bool):
            raise DeqConfigError(f"FusedAnderson.cuda_graph must be a bool, got {self.cuda_graph!r}")

    # ---- protocol (used when something drives this solver through deq_core.run_loop) ----
    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> _FusedState:
        return _FusedState(self, z)

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: _FusedState) -> tuple[Tensor, Tensor, Any]:
        state.push(z, fz)
        z_next = state.mix()
        return z_next, f(z_next), state

    def stats(self, state: _FusedState) -> dict[str, Any]:
        s = state.a
        return {"restarts": int(s.restarts.sum()), "history_bytes": s.nbytes(), "m": self.m,
                "cuda_graph": state.graph_note}

    # ---- own loop ----
    def solve(self, f: FlatMap, z: Tensor, fz: Tensor, control: LoopControl) -> LoopOutcome:
        z, fz = z.contiguous(), fz.contiguous()
        st = _FusedState(self, z)
        res, fnorm = st.push(z, fz)
        book = _Book(z, fz, res, fnorm, control)
        result = Result.CONVERGED
        every = max(self.check_every, control.check_every)
        if not bool(book.done.all()):
            result = Result.MAX_STEPS

            def body() -> None:
                z = st.mix()
                fz = f(z).contiguous()
                book.update(z, fz, *st.push(z, fz))

            graph = None
            if z.device.type == "cuda" and self.cuda_graph:
                graph, st.graph_note = _Graph.build(self, st, book, body, every, control.max_steps)
            while book.k < control.max_steps:
                if graph is not None and book.k + graph.steps <= control.max_steps:
                    graph.replay(st, book)
                else:
                    for _ in range(min(every, control.max_steps - book.k)):
                        body()
                        st.nfev += 1
                verdict = book.check()
                if verdict is not None:
                    result = verdict
                    break
        out = book.outcome(result, st.nfev)
        out.solver_stats = self.stats(st)
        return out


class _Graph:
    """A block of ``steps`` loop iterations captured once as a CUDA graph, replayed until the loop ends."""

    def __init__(self, graph, steps: int) -> None:
        self.graph, self.steps = graph, steps

    @staticmethod
    def build(solver, st, book, body, every, max_steps):
        m = solver.m
        steps = m * max(1, -(-every // m))  # a multiple of m: ring slots repeat identically on every replay
        # warm-up (real, counted iterations) on a side stream: compiles the kernels, aligns the ring slot
        warm = (-st.a.k) % m or m
        if book.k + warm + steps > max_steps:
            return None, "not used: step budget too small for a captured block"
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warm):
                body()
                st.nfev += 1
        torch.cuda.current_stream().wait_stream(side)
        saved = (st.a.k, book.k)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for _ in range(steps):
                    body()
        except Exception as e:  # f (or a library call) is not capturable: run eagerly instead
            st.a.k, book.k = saved
            torch.cuda.synchronize()
            return None, f"not used: capture failed ({type(e).__name__}: {str(e)[:100]})"
        st.a.k, book.k = saved  # capture ran no kernels: the host counters advance on replay
        return _Graph(graph, steps), f"captured blocks of {steps} steps"

    def replay(self, st, book) -> None:
        self.graph.replay()
        st.a.k += self.steps
        book.k += self.steps
        st.nfev += self.steps


class _FusedState:
    """Anderson state plus kernel launch parameters; ``push`` and ``mix`` launch the kernels."""

    def __init__(self, solver: FusedAnderson, z: Tensor) -> None:
        self.solver = self.cfg = solver  # has every field mixing_weights / _AndersonState read
        self.K = _kernels(z.device)
        self.a = _AndersonState(self.cfg, z)
        B, N = z.shape
        self.B, self.N, self.m = B, N, solver.m
        self.M_PAD = max(2, _pow2(self.m))
        self.BLOCK = min(solver.block, max(16, _pow2(N)))
        blocks = -(-N // self.BLOCK)
        self.S = max(1, min(blocks, 64 if z.device.type == "cuda" else 1))
        self.CHUNK = -(-blocks // self.S) * self.BLOCK
        self.S = -(-N // self.CHUNK)
        self.part = torch.empty(B, self.S, self.M_PAD + 2, dtype=self.a.G.dtype, device=z.device)
        self.out_dtype = z.dtype
        self.alpha = torch.zeros(B, self.m, dtype=self.a.F.dtype, device=z.device)
        self.nfev = 0
        self.graph_note = "not used" if z.device.type == "cuda" else "not used: not a CUDA device"

    def push(self, z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
        a, m = self.a, self.m
        slot = a.k % m
        with _launch_guard():
            self.K.push_gram[(self.B, self.S)](
                z, fz, a.F, a.G, self.part, slot, self.N, self.CHUNK, self.S,
                M=m, M_PAD=self.M_PAD, BLOCK=self.BLOCK)
        sums = self.part.sum(dim=1) if self.S > 1 else self.part[:, 0]
        acc = torch.promote_types(z.dtype, torch.float32)
        res = sums[:, self.M_PAD].to(acc).sqrt()
        fnorm = sums[:, self.M_PAD + 1].to(acc).sqrt()
        if m > 1:
            self.alpha.copy_(mixing_weights(self.cfg, a, slot, sums[:, :m]))
        else:
            a.k += 1
            self.alpha.fill_(1.0)
        return res, fnorm

    def mix(self) -> Tensor:
        a = self.a
        alpha = self.alpha
        out = torch.empty(self.B, self.N, dtype=self.out_dtype, device=a.F.device)
        beta = self.solver.beta
        grid = (self.B, -(-self.N // self.BLOCK))
        with _launch_guard():
            self.K.mix[grid](alpha, a.F, a.G, out, self.N, -(1.0 - beta),
                             M=self.m, M_PAD=self.M_PAD, BLOCK=self.BLOCK, USE_G=beta != 1.0)
        return out


class _Book:
    """Per-sample bookkeeping with the rules of ``deq_core.run_loop``, on the device (no host sync per step).

    Converged samples are frozen (value, residual, step count, trace); divergence and non-finite values are
    judged on the samples still running; the host reads one small flag tensor every ``check_every`` steps.
    Every tensor is updated in place and the step counter lives on the device, so the update can be
    captured in a CUDA graph and replayed.
    """

    def __init__(self, z, fz, res, fnorm, control: LoopControl) -> None:
        self.c = control
        self.done = meets_tolerance(res, fnorm, control.atol, control.rtol)
        self.limit = control.divergence * res
        self.best_z, self.best_fz = z.clone(), fz.clone()
        self.best_res, self.best_fn = res.clone(), fnorm.clone()
        self.done_at = torch.zeros_like(res, dtype=torch.long)
        self.bad = torch.zeros_like(self.done)
        self.nonfinite = torch.zeros_like(self.done)
        self.step = torch.zeros((), dtype=torch.long, device=res.device)  # device twin of self.k
        self.k = 0
        self.trace = None
        if control.record_trace:
            self.trace = res.new_zeros(control.max_steps + 1, 2, res.numel())
            self.trace[0, 0], self.trace[0, 1] = res, fnorm

    def update(self, z, fz, res, fnorm) -> None:
        c = self.c
        self.k += 1
        self.step += 1
        if self.trace is not None:
            self.trace.index_copy_(0, self.step[None], torch.stack([res, fnorm])[None])
        active = ~self.done
        newly = active & meets_tolerance(res, fnorm, c.atol, c.rtol)
        better = active & ((res < self.best_res) | newly)
        keep = better[:, None]
        self.best_z.copy_(torch.where(keep, z, self.best_z))
        self.best_fz.copy_(torch.where(keep, fz, self.best_fz))
        self.best_res.copy_(torch.where(better, res, self.best_res))
        self.best_fn.copy_(torch.where(better, fnorm, self.best_fn))
        self.done_at.copy_(torch.where(newly, self.step, self.done_at))
        self.bad |= active & ~(res <= self.limit)
        self.nonfinite |= active & ~torch.isfinite(res)
        self.done |= newly

    def check(self) -> Result | None:
        nonfinite, bad, done = torch.stack([self.nonfinite.any(), self.bad.any(), self.done.all()]).tolist()
        if nonfinite:
            return Result.NONFINITE
        if bad:
            return Result.DIVERGED
        if done:
            return Result.CONVERGED
        return None

    def outcome(self, result: Result, nfev: int) -> LoopOutcome:
        c = self.c
        converged = meets_tolerance(self.best_res, self.best_fn, c.atol, c.rtol)
        if result is Result.CONVERGED and not bool(converged.all()):
            result = Result.MAX_STEPS
        steps = torch.where(self.done, self.done_at, self.k)
        if self.trace is not None:
            t = self.trace[: self.k + 1]
            rel = t[:, 0] / t[:, 1].clamp_min(torch.finfo(t.dtype).tiny)
            rows = torch.arange(rel.shape[0], device=rel.device)[:, None]
            trace = rel.gather(0, torch.minimum(rows, steps[None, :]))
        else:
            trace = self.best_res.new_zeros(0, self.best_res.numel())
        return LoopOutcome(self.best_z, self.best_fz, result, steps, self.best_res, self.best_fn,
                           converged, trace, nfev)
