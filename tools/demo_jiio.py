"""Demo section 2: JIIO vs the Adam inner loop on block-mask inpainting, objective vs wall time at equal objective.

The run is a plain ``deq tasks run inverse`` (the demo prints the command): it trains an MDEQ decoder through JIIO,
then restores held-out MNIST digits whose 8×8 block is hidden, by JIIO at several iteration budgets (each its own
timed run, its latent ``x*`` re-decoded at an equilibrium ``z = f(z, x*)``, timed with it) and by projected Adam
on the latent (each step a DEQ forward + implicit backward), objective recorded at every step. This module reads
its ``metrics.json`` and draws the JIIO paper's figure 3 for this run: objective vs wall-clock time.

Equal objective: for JIIO at budget ``T`` (objective ``O_T`` in ``t_T`` seconds), Adam's time to first reach
``O_T``; and the reverse, the first JIIO budget whose objective is at most Adam's final one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def command(deq: list[str], out: Path, *, steps: int, n_eval: int, budgets: str, adam_steps: int) -> list[str]:
    return [*deq, "tasks", "run", "inverse", "--mask", "block", "--steps", str(steps), "--n-eval", str(n_eval),
            "--eval-budgets", budgets, "--adam-steps", str(adam_steps), "--no-progress", "--out", str(out)]


def load(d: Path) -> dict[str, Any]:
    return json.loads((d / "metrics.json").read_text())


def adam_time_to(adam: dict[str, Any], objective: float) -> tuple[int | None, float | None]:
    """First Adam step (0 = the start, before any step) whose objective is <= ``objective``, and its time."""
    for i, (v, t) in enumerate(zip(adam["objective_per_step"], adam["seconds_per_step"])):
        if v <= objective:
            return i, t
    return None, None


def plot(m: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = m["comparison"]
    adam, rows = c["adam"], c["jiio"]["per_budget"]
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    ax.plot(adam["seconds_per_step"], adam["objective_per_step"], "-", color="C1", marker=".", ms=4,
            label=f"Adam inner loop (lr {adam['lr']:g}), one point per step, {adam['steps']} steps")
    ax.plot([r["seconds"] for r in rows], [r["objective"] for r in rows], "-o", color="C0", ms=5,
            label="JIIO, one timed run per budget (re-solved at x*)")
    for r in rows:
        ax.annotate(f"T={r['budget']}", (r["seconds"], r["objective"]), textcoords="offset points", xytext=(4, 5),
                    fontsize=7.5, color="C0")
        _, t = adam_time_to(adam, r["objective"])
        if t is not None and t > r["seconds"]:
            ax.plot([r["seconds"], t], [r["objective"]] * 2, ":", color="gray", lw=0.9)
    ax.plot([], [], ":", color="gray", label="same objective: JIIO's time → Adam's time")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "2357" else ""))
    ax.set_xlim(left=0)
    ax.set_xlabel("wall-clock time (s)")
    ax.set_ylabel(f"objective: {c['objective']}\n(mean over {c['n']} digits, log scale)", fontsize=8.5)
    ax.set_title(f"Block inpainting of {c['n']} held-out MNIST digits ({m['training']['steps']}-step JIIO-trained "
                 "decoder)", fontsize=9.5)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
