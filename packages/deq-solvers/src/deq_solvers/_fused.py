"""``fused-anderson``: Anderson acceleration with the Gram update and the mixing fused in Triton kernels."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from deq_core import DeqConfigError, FlatMap

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


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class FusedAnderson(AndersonOptions):
    r"""Type-II Anderson (same maths and safeguards as :class:`deq_solvers.Anderson`) with fused kernels.

    Per step two Triton kernels touch the ``(B, m, N)`` histories once each:

    * ``push_gram`` reads ``z``, ``f(z)`` and ``G``; writes the new ring entries and returns the new Gram
      row together with ``||f(z) - z||^2`` and ``||f(z)||^2`` (the loop's residuals come for free);
    * ``mix`` forms ``z_next = sum_i a_i f(z_i) - (1 - damping) sum_i a_i g_i``.

    The ``(m, m)`` system is solved on the device as in :class:`Anderson`. It runs on deq's one loop
    (:func:`deq_core.run_loop`) like every solver: per-sample convergence, best iterate, fault isolation;
    pass ``check_every=k`` to ``fixed_point`` / ``DEQ`` so the host looks at the flags only every ``k``
    steps (no host sync in between).

    Runs on CUDA, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1`` set before the first fused
    solve; slow, meant for tests); otherwise it raises :class:`deq_core.DeqConfigError` saying so.
    Requires ``pip install 'deq-solvers[fused]'`` (Triton).

    Arguments:
        m, damping, ridge, max_alpha, restart_growth, history_dtype, solve_dtype: as in :class:`Anderson`.
        block: elements per kernel block (a power of two).

    Example:
        >>> import os, torch
        >>> from deq_core import fixed_point
        >>> from deq_solvers import FusedAnderson, triton_status
        >>> if triton_status("cpu") is None:   # CUDA, or TRITON_INTERPRET=1 on CPU
        ...     sol = fixed_point(lambda z: 0.5 * z + 1, torch.zeros(2, 8), solver=FusedAnderson(), rtol=1e-6)
    """

    name: ClassVar[str] = "fused-anderson"
    renamed: ClassVar[Mapping[str, str]] = {
        "beta": "damping",
        "check_every": "check_every= of the solve (fixed_point(..., check_every=k), DEQ(check_every=k))",
        "cuda_graph": "nothing: CUDA-graph capture was removed with the solver's private loop",
    }
    block: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "block", self.block, 16)
        if self.block & (self.block - 1):
            raise DeqConfigError(f"FusedAnderson.block must be a power of two, got {self.block}")

    def init(self, f: FlatMap, z: Tensor, fz: Tensor) -> _FusedState:
        return _FusedState(self, z)

    def step(self, f: FlatMap, z: Tensor, fz: Tensor, state: _FusedState) -> tuple[Tensor, Tensor, Any]:
        state.push(z, fz)
        z_next = state.mix()
        return z_next, f(z_next), state

    def stats(self, state: _FusedState) -> dict[str, Any]:
        s = state.a
        return {"restarts": int(s.restarts.sum()), "history_bytes": s.nbytes(), "m": self.m}


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
        beta = self.solver.damping
        grid = (self.B, -(-self.N // self.BLOCK))
        with _launch_guard():
            self.K.mix[grid](alpha, a.F, a.G, out, self.N, -(1.0 - beta),
                             M=self.m, M_PAD=self.M_PAD, BLOCK=self.BLOCK, USE_G=beta != 1.0)
        return out
