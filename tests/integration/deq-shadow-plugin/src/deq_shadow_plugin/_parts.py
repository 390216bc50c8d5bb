"""The plugin's adjoint, task and model (imported only when one of them is built)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from deq_core import DEQ, AbstractAdjoint, AbstractTask, DeqConfigError, check_positive, check_range
from deq_core import load as load_checkpoint
from deq_core import save as save_checkpoint


@dataclasses.dataclass(frozen=True)
class RichardsonAdjoint(AbstractAdjoint):
    """``u_0 = v``, ``u <- (1 - d) u + d (J^T u + v)`` for ``steps`` steps: the backward linear system solved by
    damped Richardson iteration with a fixed budget."""

    name: ClassVar[str] = "richardson"
    steps: int = 30
    damping: float = 0.8

    def __post_init__(self) -> None:
        check_positive(self, "steps", self.steps)
        check_range(self, "damping", self.damping, 0.0, 1.0)

    def reference(self, J: Tensor, v: Tensor) -> Tensor:
        u, d = v, self.damping
        for _ in range(self.steps):
            u = (1 - d) * u + d * ((J.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1) + v)
        return u

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        z = z_star.detach().requires_grad_()
        with torch.enable_grad():
            fz = f(z)
        if not fz.requires_grad:
            return z_star.detach()
        steps, d = self.steps, self.damping

        def hook(v: Tensor) -> Tensor:
            u = v
            for _ in range(steps):
                (jtu,) = torch.autograd.grad(fz, z, u, retain_graph=True)
                u = (1 - d) * u + d * (jtu + v)
            return u

        out = fz.view_as(fz)
        out.register_hook(hook)
        return z_star.detach() + (out - out.detach())


class _Layer(nn.Module):
    def __init__(self, width: int, in_features: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width, bias=False)
        self.inj = nn.Linear(in_features, width)
        with torch.no_grad():
            self.lin.weight.mul_(0.3)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.lin(z) + self.inj(x))


class TinyINR(nn.Module):
    """A tiny implicit INR on deq-inr's model contract: ``forward(coords, cache_key=None) -> (y, info)``."""

    name = "tiny-inr"

    def __init__(self, in_features: int = 2, out_features: int = 1, *, width: int = 16,
                 solver: str = "fixed-point", adjoint: str = "richardson") -> None:
        super().__init__()
        if width < 1:
            raise DeqConfigError(f"tiny-inr width must be >= 1, got {width}")
        self.in_features, self.out_features, self.width = in_features, out_features, width
        self.layer = _Layer(width, in_features)
        self.deq = DEQ(self.layer, solver=solver, adjoint=adjoint, rtol=1e-5, max_steps=100)
        self.head = nn.Linear(width, out_features)

    def forward(self, coords: Tensor, *, cache_key: Hashable = None):
        z0 = coords.new_zeros(coords.shape[0], self.width)
        z, info = self.deq(coords, z0, cache_key=cache_key)
        return self.head(z), info

    @torch.no_grad()
    def predict(self, coords: Tensor, chunk: int = 65536) -> Tensor:
        return torch.cat([self(c)[0] for c in coords.split(chunk)])

    def config(self) -> dict[str, Any]:
        return {"model": self.name, "in_features": self.in_features, "out_features": self.out_features,
                "width": self.width, "adjoint": self.deq.adjoint.name}

    def example_input(self) -> Tensor:
        return torch.rand(8, self.in_features, generator=torch.Generator().manual_seed(0)) * 2 - 1


class ToyFitTask(AbstractTask):
    """Fit ``y = TinyINR(x)`` to a random linear target with Adam; the DEQ's adjoint is chosen by name."""

    name = "toy-fit"

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = dataclasses.field(default=20, metadata={"help": "Adam steps."})
        width: int = dataclasses.field(default=8, metadata={"help": "Hidden width of the DEQ."})
        lr: float = dataclasses.field(default=1e-2, metadata={"help": "Adam learning rate."})
        adjoint: str = dataclasses.field(default="richardson", metadata={"help": "Adjoint name (any registered)."})
        seed: int = dataclasses.field(default=0, metadata={"help": "Random seed."})

        def __post_init__(self) -> None:
            if self.steps < 0 or self.width < 1 or not self.lr > 0:
                raise DeqConfigError(f"toy-fit needs steps >= 0, width >= 1, lr > 0; got {self}")

    def run(self, out: Path, *, checkpoint: Path | None = None, progress: bool = True) -> Mapping[str, Any]:
        cfg = self.config
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        model = TinyINR(2, 1, width=cfg.width, adjoint=cfg.adjoint)
        x = torch.rand(64, 2) * 2 - 1
        y = x @ torch.tensor([[0.5], [-0.3]])
        loss = float("nan")
        if checkpoint is not None:
            load_checkpoint(checkpoint, model)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            for _ in range(cfg.steps):
                opt.zero_grad()
                pred, _ = model(x)
                loss_t = (pred - y).square().mean()
                loss_t.backward()
                opt.step()
                loss = float(loss_t.detach())
            save_checkpoint(out / "model.safetensors", model, model.config())
        with torch.no_grad():
            final = float((model(x)[0] - y).square().mean())
        metrics = {"task": self.name, "adjoint": model.deq.adjoint.name, "train_loss": loss, "final_mse": final,
                   "from_checkpoint": checkpoint is not None}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
