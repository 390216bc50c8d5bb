"""Demo section 1: residual vs wall-time of deq's and torchdeq's solvers on bench_solvers.py's three problems.

The problems are built by ``packages/deq-solvers/benchmarks/bench_solvers.py`` itself (imported by path), so the
demo and the benchmark solve the same seeded maps. Both libraries get the same ``f`` and ``z0 = 0``, relative
tolerance 1e-5, the benchmark's iteration caps, forward only (no autograd graph).

Two measurements, both taken here:

* **curves**: ``f`` is wrapped so that each evaluation ``f(z)`` also records the relative residual of the point the
  solver evaluated, ``max_i ||f(z_i) - z_i|| / ||f(z_i)||`` (worst sample of the batch), at the wall time since
  the solve started; the time spent computing that norm is subtracted. Median time per evaluation over
  ``repeats`` runs.
* **table**: plain solves (no recording), median wall time over ``repeats`` interleaved rounds (every solver once
  per round, so background load hits all alike), the f-evaluations, and the residual of the returned ``z``.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "packages/deq-solvers/benchmarks/bench_solvers.py"

# (label, deq solver factory, torchdeq solver name); deq's `picard` is matched with torchdeq's `fixed_point_iter`
PAIRS = (("anderson", "anderson"), ("broyden", "broyden"), ("picard", "fixed_point_iter"))
COLORS = {"anderson": "C0", "broyden": "C3", "picard": "C2"}


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_solvers", BENCH)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


class _Recorder:
    """``f`` that also records ``(seconds since start, worst-sample relative residual of z)`` per evaluation."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor]):
        self.f = f
        self.points: list[tuple[float, float]] = []
        self.t0 = 0.0
        self.paused = 0.0

    def start(self) -> None:
        self.points, self.paused, self.t0 = [], 0.0, time.perf_counter()

    def __call__(self, z: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
        fz = self.f(z)
        t = time.perf_counter()
        d = (fz - z.reshape(fz.shape)).flatten(1).double()
        r = float((torch.linalg.vector_norm(d, dim=1) / torch.linalg.vector_norm(fz.flatten(1).double(), dim=1)).max())
        self.points.append((t - self.t0 - self.paused, r))
        self.paused += time.perf_counter() - t
        return fz


def _solvers(bench: Any) -> dict[str, Any]:
    from deq_solvers import Anderson, Broyden, Picard

    return {"anderson": Anderson(), "broyden": Broyden(), "picard": Picard()}


def _ours(bench: Any, solver: Any, f: Callable, z0: torch.Tensor, max_iter: int) -> torch.Tensor:
    from deq_core import fixed_point

    sol = fixed_point(f, z0, solver=solver, adjoint=None, atol=0.0, rtol=bench.RTOL, max_steps=max_iter,
                      throw=False, record_trace=False)
    return sol.value


def _theirs(bench: Any, name: str, f: Callable, z0: torch.Tensor, max_iter: int) -> torch.Tensor:
    from torchdeq.solver import get_solver

    z, _, _ = get_solver(name)(f, z0, max_iter=max_iter, tol=bench.RTOL, stop_mode="rel")
    return z


def _jobs(bench: Any, ours: dict[str, Any], z0: torch.Tensor, max_iter: int) -> dict[tuple[str, str], Callable]:
    jobs: dict[tuple[str, str], Callable[[Callable], torch.Tensor]] = {}
    for ours_name, td_name in PAIRS:
        jobs[("deq", ours_name)] = lambda f, s=ours[ours_name]: _ours(bench, s, f, z0, max_iter)
        jobs[("torchdeq", td_name)] = lambda f, n=td_name: _theirs(bench, n, f, z0, max_iter)
    return jobs


def run(repeats: int = 5) -> dict[str, Any]:
    """Every problem, every pair: recorded curves and plain timings. Returns plain data (JSON-able)."""
    bench = load_bench()
    torch.manual_seed(0)
    problems = [bench.problem_dense(0, slow=False), bench.problem_dense(1, slow=True), bench.problem_conv(2)]
    ours = _solvers(bench)
    out: dict[str, Any] = {"rtol": bench.RTOL, "repeats": repeats, "threads": torch.get_num_threads(),
                           "problems": []}
    for p in problems:
        z0 = torch.zeros(p.shape, dtype=p.params[0].dtype)
        rec = _Recorder(p.f)
        count = {"n": 0}

        def counted(z, *a, _f=p.f, _count=count, **k):
            _count["n"] += 1
            return _f(z)

        jobs = _jobs(bench, ours, z0, p.max_iter)
        with torch.no_grad():
            curves: dict[tuple[str, str], list[list[tuple[float, float]]]] = {k: [] for k in jobs}
            times: dict[tuple[str, str], list[float]] = {k: [] for k in jobs}
            final: dict[tuple[str, str], tuple[int, float]] = {}
            for job in jobs.values():  # warm-up round
                job(counted)
            for _ in range(repeats):
                for k, job in jobs.items():
                    count["n"] = 0
                    t = time.perf_counter()
                    z = job(counted)
                    times[k].append(1e3 * (time.perf_counter() - t))
                    final[k] = (count["n"], bench.rel_residual(p, z))
                    rec.start()
                    job(rec)
                    curves[k].append(rec.points)
        rows = []
        for k in jobs:
            runs = curves[k]
            n = min(len(r) for r in runs)
            curve = [(statistics.median(r[i][0] for r in runs) * 1e3, runs[0][i][1]) for i in range(n)]
            rows.append({"library": k[0], "solver": k[1], "ms": statistics.median(times[k]),
                         "ms_all": [round(t, 3) for t in times[k]], "nfev": final[k][0],
                         "rel_residual": final[k][1], "curve_ms_residual": curve})
        out["problems"].append({"name": p.name, "shape": list(p.shape), "max_iter": p.max_iter, "runs": rows})
    return out


def describe(name: str) -> str:
    return {
        "1-dense": "tanh(Wz + Ux + b), batch 64 x 256, ||W||₂ = 0.9",
        "2-dense-slow": "same, W symmetric with eigenvalues spread in [0, 0.9], weak injection (slow)",
        "3-conv": "tanh(conv3x3(z) + u), batch 32, 32 ch, 16×16, conv norm 0.9",
    }.get(name, name)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = result["problems"]
    fig, axes = plt.subplots(1, len(probs), figsize=(5.2 * len(probs), 4.4))
    for ax, prob in zip(axes, probs):
        for ours_name, td_name in PAIRS:
            for lib, name, style in (("deq", ours_name, "-"), ("torchdeq", td_name, "--")):
                row = next(r for r in prob["runs"] if r["library"] == lib and r["solver"] == name)
                t, r = zip(*row["curve_ms_residual"])
                ax.plot(t, r, style, color=COLORS[ours_name], lw=1.6 if lib == "deq" else 1.3,
                        marker="o" if lib == "deq" else "x", ms=2.5, label=f"{lib} {name}")
        ax.axhline(result["rtol"], color="k", lw=0.8, ls=":", label=f"tolerance {result['rtol']:g}")
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("wall time since the solve started (ms, log scale)")
        ax.set_title(f"{prob['name']}: {describe(prob['name'])}", fontsize=8.5)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("relative residual ‖f(z)−z‖/‖f(z)‖ (worst sample)")
    axes[0].legend(fontsize=7.5, loc="lower left")
    fig.suptitle(f"Fixed-point solvers, deq (solid) vs torchdeq 0.1.0 (dashed): residual of each evaluated point "
                 f"vs wall time (median time over {result['repeats']} run(s); CPU, {result['threads']} thread(s))",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
