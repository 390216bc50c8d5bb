"""The match-equilibrium task: find the input x whose DEQ equilibrium z*(x) = tanh(W z* + x) is a target."""

import dataclasses
import json
from pathlib import Path

import torch

from deq_core import AbstractTask, DeqConfigError, fixed_point, load, save


class MatchEquilibrium(AbstractTask):
    """Gradient descent on x through the implicit gradient of z*(x); writes metrics.json and x."""

    name = "match-equilibrium"

    @dataclasses.dataclass(frozen=True)
    class Config:
        width: int = dataclasses.field(default=8, metadata={"help": "State width N."})
        steps: int = dataclasses.field(default=100, metadata={"help": "Adam steps on x."})
        lr: float = dataclasses.field(default=0.5, metadata={"help": "Adam learning rate."})
        seed: int = dataclasses.field(default=0, metadata={"help": "Seed of W and the target."})

        def __post_init__(self):
            if self.width < 1 or self.steps < 1 or not self.lr > 0:
                raise DeqConfigError(f"need width >= 1, steps >= 1, lr > 0; got {self}")

    def run(self, out, *, checkpoint=None, progress=True):
        cfg, out = self.config, Path(out)
        out.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(cfg.seed)
        W = torch.randn(cfg.width, cfg.width, generator=g, dtype=torch.float64)
        W = 0.5 * W / torch.linalg.matrix_norm(W, ord=2)
        target = 0.5 * torch.rand(4, cfg.width, generator=g, dtype=torch.float64)

        def equilibrium(x):
            return fixed_point(lambda z: torch.tanh(z @ W.T + x), torch.zeros_like(x), rtol=1e-10).value

        if checkpoint is not None:                      # a previous run's x: evaluate it, do not optimize
            x = load(checkpoint)[0]["x"]
        else:
            x = torch.zeros_like(target, requires_grad=True)
            opt = torch.optim.Adam([x], lr=cfg.lr)
            for _ in range(cfg.steps):
                loss = (equilibrium(x) - target).square().sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            x = x.detach()
            save(out / "model.safetensors", {"x": x}, dataclasses.asdict(cfg))
        with torch.no_grad():
            metrics = {"loss": float((equilibrium(x) - target).square().sum()),
                       "steps": 0 if checkpoint is not None else cfg.steps,   # optimization steps taken
                       "from_checkpoint": checkpoint is not None}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
