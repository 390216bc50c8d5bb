"""Weight reparameterizations for DEQ layers that need no manual reset.

``spectral_norm(module, max_norm=0.97)`` keeps ``||W||_2 <= max_norm`` (``W <- W / max(1, sigma / max_norm)``,
``sigma`` from power iteration); ``weight_norm(module)`` uses ``W = g * V / ||V||`` per output row.

Unlike ``torch.nn.utils.parametrize``, the normalized weight is computed **once per DEQ forward**
(:class:`deq_core.DEQ` freezes it for the whole solve, so the map does not change between solver
iterations and power iteration runs once per training step), modules stay picklable and deep-copyable,
and nothing has to be reset by hand. Outside a DEQ the weight is recomputed at every call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import DeqConfigError

__all__ = ["spectral_norm", "weight_norm", "frozen_weights", "remove_norm"]

_FROZEN = "_deq_norm_frozen"


class _Reparam:
    """A forward pre-hook (picklable) that writes ``module.<name>`` from ``<name>_orig``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def compute(self, module: nn.Module, update: bool) -> Tensor:
        raise NotImplementedError

    def __call__(self, module: nn.Module, inputs: object) -> None:
        if not getattr(module, _FROZEN, False):
            setattr(module, self.name, self.compute(module, update=module.training))


class _SpectralNorm(_Reparam):
    def __init__(self, name: str, max_norm: float, n_power_iterations: int, eps: float, tol: float = 1e-7,
                 max_power_iterations: int = 100) -> None:
        super().__init__(name)
        self.max_norm, self.n_power_iterations, self.eps = max_norm, n_power_iterations, eps
        self.tol, self.max_power_iterations = tol, max(max_power_iterations, n_power_iterations)

    def compute(self, module: nn.Module, update: bool) -> Tensor:
        w = getattr(module, self.name + "_orig")
        mat = w.reshape(w.shape[0], -1)
        u, v = getattr(module, self.name + "_u"), getattr(module, self.name + "_v")
        if update:
            # warm-started power iteration: at least n_power_iterations, then on until the estimate settles.
            # A fixed single iteration lags behind a weight that moves (Adam, lr 1e-2: ||W||_2 reached
            # 1.3 x max_norm); the estimate never exceeds the true sigma, so it must have converged.
            tol = getattr(self, "tol", 0.0)
            most = getattr(self, "max_power_iterations", self.n_power_iterations)
            with torch.no_grad():
                previous = None
                for i in range(most):
                    v = F.normalize(mat.t() @ u, dim=0, eps=self.eps)
                    mv = mat @ v
                    estimate = torch.linalg.vector_norm(mv)
                    u = mv / estimate.clamp_min(self.eps)
                    if i + 1 >= self.n_power_iterations:
                        current = float(estimate)
                        if previous is not None and abs(current - previous) <= tol * current:
                            break
                        previous = current
            # new buffers, not in-place writes: a graph built with the previous u, v (e.g. by a backward that
            # re-evaluates f, as the reversible adjoint does) stays valid
            setattr(module, self.name + "_u", u)
            setattr(module, self.name + "_v", v)
        sigma = torch.dot(u, mat @ v)
        return w / torch.clamp(sigma / self.max_norm, min=1.0)


class _WeightNorm(_Reparam):
    def compute(self, module: nn.Module, update: bool) -> Tensor:
        v = getattr(module, self.name + "_orig")
        g = getattr(module, self.name + "_g")
        norm = v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        return v * (g / norm).reshape(-1, *([1] * (v.dim() - 1)))


def _install(module: nn.Module, name: str, hook: _Reparam) -> nn.Module:
    if not isinstance(getattr(module, name, None), nn.Parameter):
        raise DeqConfigError(f"{type(module).__name__} has no parameter {name!r} to normalize")
    if any(isinstance(h, _Reparam) and h.name == name for h in module._forward_pre_hooks.values()):
        raise DeqConfigError(f"{type(module).__name__}.{name} is already normalized")
    w = getattr(module, name)
    del module._parameters[name]
    module.register_parameter(name + "_orig", nn.Parameter(w.detach().clone()))
    return w


def spectral_norm(module: nn.Module, name: str = "weight", *, max_norm: float = 1.0, n_power_iterations: int = 1,
                  init_iterations: int = 15, eps: float = 1e-12, tol: float = 1e-7,
                  max_power_iterations: int = 100) -> nn.Module:
    """Constrain ``||W||_2 <= max_norm`` (W reshaped to ``(out, -1)``); returns ``module``.

    At construction the vectors are the exact top singular pair (an SVD; ``init_iterations`` power iterations
    where the SVD is unavailable), so the bound holds before any training forward. Then ``sigma`` comes from
    power iteration warm-started at the previous vectors: in training mode at least ``n_power_iterations``
    per forward, continued (up to ``max_power_iterations``) until the estimate changes by less than ``tol``
    relative, so the bound holds while the optimizer moves the weight.

    Example:
        >>> import torch
        >>> from deq_core.nn import spectral_norm
        >>> lin = spectral_norm(torch.nn.Linear(8, 8), max_norm=0.5, init_iterations=100)
        >>> _ = lin(torch.zeros(1, 8))
        >>> bool(torch.linalg.matrix_norm(lin.weight, ord=2) <= 0.5 + 1e-4)
        True
    """
    if not 0 < max_norm:
        raise DeqConfigError(f"spectral_norm max_norm must be > 0, got {max_norm!r}")
    w = _install(module, name, _SpectralNorm(name, max_norm, n_power_iterations, eps, tol, max_power_iterations))
    mat = w.detach().reshape(w.shape[0], -1)
    try:   # the exact top singular pair: an evaluation before any training forward sees ||W||_2 <= max_norm
        left, _, right = torch.linalg.svd(mat.double(), full_matrices=False)
        u, v = left[:, 0].to(mat.dtype), right[0].to(mat.dtype)
    except (RuntimeError, NotImplementedError):   # no SVD for this device / dtype: power iteration
        g = torch.Generator().manual_seed(0)
        u = F.normalize(torch.randn(mat.shape[0], generator=g, dtype=mat.dtype).to(mat.device), dim=0)
        v = F.normalize(torch.randn(mat.shape[1], generator=g, dtype=mat.dtype).to(mat.device), dim=0)
        for _ in range(init_iterations):
            v = F.normalize(mat.t() @ u, dim=0, eps=eps)
            u = F.normalize(mat @ v, dim=0, eps=eps)
    module.register_buffer(name + "_u", u)
    module.register_buffer(name + "_v", v)
    hook = _SpectralNorm(name, max_norm, n_power_iterations, eps, tol, max_power_iterations)
    module.register_forward_pre_hook(hook)
    setattr(module, name, hook.compute(module, update=False).detach())
    return module


def weight_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """``W = g * V / ||V||`` per output row (``V`` = ``<name>_orig``, ``g`` = ``<name>_g``); returns ``module``."""
    w = _install(module, name, _WeightNorm(name))
    module.register_parameter(name + "_g", nn.Parameter(w.detach().reshape(w.shape[0], -1).norm(dim=1)))
    hook = _WeightNorm(name)
    module.register_forward_pre_hook(hook)
    setattr(module, name, hook.compute(module, update=False).detach())
    return module


def remove_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Bake the current normalized weight back into a plain parameter."""
    for key, h in list(module._forward_pre_hooks.items()):
        if isinstance(h, _Reparam) and h.name == name:
            w = h.compute(module, update=False).detach()
            del module._forward_pre_hooks[key]
            for suffix in ("_orig", "_g"):
                module._parameters.pop(name + suffix, None)
            for suffix in ("_u", "_v"):
                module._buffers.pop(name + suffix, None)
            if name in module.__dict__:
                del module.__dict__[name]
            module.register_parameter(name, nn.Parameter(w))
            return module
    raise DeqConfigError(f"{type(module).__name__}.{name} is not normalized")


@contextmanager
def frozen_weights(root: nn.Module) -> Iterator[None]:
    """Compute every normalized weight under ``root`` once and keep it fixed inside the block."""
    touched = []
    for m in root.modules() if isinstance(root, nn.Module) else ():  # a plain callable f has nothing to freeze
        hooks = [h for h in m._forward_pre_hooks.values() if isinstance(h, _Reparam)]
        if hooks and not getattr(m, _FROZEN, False):
            for h in hooks:
                setattr(m, h.name, h.compute(m, update=m.training))
            m.__dict__[_FROZEN] = True
            touched.append((m, hooks))
    try:
        yield
    finally:
        for m, hooks in touched:
            m.__dict__[_FROZEN] = False
            for h in hooks:  # keep a detached copy so the module stays deep-copyable and picklable
                setattr(m, h.name, getattr(m, h.name).detach())
