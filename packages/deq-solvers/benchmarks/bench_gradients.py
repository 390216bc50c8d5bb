"""Gradients that read the forward solve: reversible, SHINE and JFB against the implicit and unrolled ones.

    python packages/deq-solvers/benchmarks/bench_gradients.py [--repeats 5] [--quick] [--out bench-out/gradients]

Prints one JSON line per measurement, then a summary of ratios:

1. ``reversible``, exactness: float64 ``f(z) = tanh(z W^T + h U^T + c)`` (batch 4, width 32), damping 0.3/0.5/0.8,
   K steps: largest relative difference of the parameter gradients to autograd through the unrolled
   iteration, and the relative reconstruction error of the start ``z_0`` after the reverse pass.
2. ``reversible``, memory: the dense problem of ``bench_solvers.py`` (batch 64, width 256, float32), damping
   0.3, K = 10 and 100 steps: peak bytes of the tensors autograd keeps for backward (forward and backward
   together; saved-tensor hooks, so it counts the same on CPU and GPU) for ``ReversibleAdjoint`` and
   ``UnrolledAdjoint`` (CPU; the problem is built on the CPU).
3. ``shine`` / ``jfb`` vs ``implicit``: forward by ``Broyden`` to ``rtol`` 1e-5 (float32) on the conv problem of
   ``bench_solvers.py`` and on random dense DEQs (several seeds): backward time (median of ``--repeats``),
   ratio to ``implicit``'s (backward solved by the same Broyden to the forward tolerance), and the cosine
   similarity of the parameter gradient to the exact one (implicit, float64 backward tolerance 1e-10).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from deq_core import ImplicitAdjoint, UnrolledAdjoint, fixed_point
from deq_solvers import Broyden, Reversible, ReversibleAdjoint, ShineAdjoint, jfb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solvers import problem_conv, problem_dense  # noqa: E402


def emit(rows: list[dict], row: dict, out) -> None:
    rows.append(row)
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")


# ------------------------------------------------------------------------------------------------ reversible


def tanh_net(seed: int, batch: int, n: int, m: int, rho: float, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64)
    W = (rho * W / torch.linalg.matrix_norm(W, ord=2)).to(dtype).requires_grad_()
    U = (torch.randn(n, m, generator=g, dtype=torch.float64) / math.sqrt(m)).to(dtype).requires_grad_()
    c = (0.3 * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    x = torch.randn(batch, m, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(batch, n, generator=g, dtype=torch.float64).to(dtype)
    params = [W, U, c]

    def make_f():
        h = 2 * x
        return lambda z: torch.tanh(z @ W.T + h @ U.T + c)

    return make_f, params, torch.zeros(batch, n, dtype=dtype), w


def reversible_exactness(rows, out, steps_list) -> None:
    for damping in (0.3, 0.5, 0.8):
        for K in steps_list:
            make_f, params, z0, w = tanh_net(0, 4, 32, 16, 0.8)
            sol = fixed_point(make_f(), z0, solver=Reversible(damping=damping), adjoint=ReversibleAdjoint(),
                              atol=1e-300, rtol=1e-300, max_steps=K, throw=False)
            got = torch.autograd.grad((sol.value * w).sum(), params)
            f = make_f()
            y = z = z0
            for _ in range(K):
                y = y.mul(1 - damping).add(f(z), alpha=damping)
                z = z.mul(1 - damping).add(f(y), alpha=damping)
            want = torch.autograd.grad((z * w).sum(), params)
            err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, want))
            recon = float(sol.stats.solver["reconstruction_error"][-1].max())
            emit(rows, {"bench": "reversible-exactness", "dtype": "float64", "damping": damping, "steps": K,
                        "grad_rel_err": err, "reconstruction_rel_err": recon,
                        "amplification_bound": abs(1 - damping) ** -K}, out)


class SavedMeter:
    """Live and peak bytes of the tensors autograd saves for backward (freed with their graph)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t):
        return _Held(self, t)

    @staticmethod
    def unpack(held):
        return held.t


class _Held:
    __slots__ = ("meter", "t", "n")

    def __init__(self, meter, t) -> None:
        self.meter, self.t, self.n = meter, t, t.numel() * t.element_size()
        meter.live += self.n
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.n


def reversible_memory(rows, out) -> None:
    for name, make_adjoint in (("reversible", ReversibleAdjoint), ("unrolled", UnrolledAdjoint)):
        for K in (10, 100):
            p = problem_dense(0, slow=False)
            f = p.f
            z0 = torch.zeros(p.shape)
            meter = SavedMeter()
            t0 = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
                sol = fixed_point(f, z0, solver=Reversible(damping=0.3), adjoint=make_adjoint(), atol=1e-300,
                                  rtol=1e-300, max_steps=K, throw=False)
                t1 = time.perf_counter()
                torch.autograd.grad(sol.value.square().sum(), p.params)
            t2 = time.perf_counter()
            emit(rows, {"bench": "reversible-memory", "adjoint": name, "steps": K, "peak_saved_bytes": meter.peak,
                        "forward_s": t1 - t0, "backward_s": t2 - t1}, out)


# ------------------------------------------------------------------------------------------------ SHINE / JFB


def cosine(a, b) -> float:
    fa = torch.cat([t.double().flatten() for t in a])
    fb = torch.cat([t.double().flatten() for t in b])
    return float(torch.nn.functional.cosine_similarity(fa, fb, dim=0))


def shine_vs_implicit(rows, out, problem, repeats: int) -> None:
    name, f, params, shape = problem
    z0 = torch.zeros(shape, dtype=params[0].dtype)
    cot = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=params[0].dtype)
    solver = Broyden(m=30)
    fwd = dict(solver=solver, rtol=1e-5, atol=1e-8, max_steps=100, throw=False)
    exact_sol = fixed_point(f, z0, adjoint=ImplicitAdjoint(rtol=1e-10, atol=1e-12, max_steps=500), **fwd)
    exact = torch.autograd.grad((exact_sol.value * cot).sum(), params)
    adjoints = {"implicit": ImplicitAdjoint(), "shine": ShineAdjoint(), "shine-refine1": ShineAdjoint(refine=1),
                "shine-refine3": ShineAdjoint(refine=3), "jfb": jfb()}
    times = {k: [] for k in adjoints}
    grads = {}
    for rep in range(repeats + 1):  # round 0 warms up and is not timed
        for key, adj in adjoints.items():  # interleaved, so drifts in machine load hit all alike
            sol = fixed_point(f, z0, adjoint=adj, **fwd)
            loss = (sol.value * cot).sum()
            t0 = time.perf_counter()
            grads[key] = torch.autograd.grad(loss, params)
            if rep:
                times[key].append(time.perf_counter() - t0)
    base = statistics.median(times["implicit"])
    for key in adjoints:
        ms = statistics.median(times[key])
        emit(rows, {"bench": "shine-vs-implicit", "problem": name, "adjoint": key, "backward_ms": 1e3 * ms,
                    "time_vs_implicit": ms / base, "cosine_vs_exact": cosine(grads[key], exact),
                    "forward_steps": int(sol.stats.steps.max())}, out)


def dense_deq(seed: int):
    make_f, params, z0, _ = tanh_net(seed, 32, 128, 64, 0.9, dtype=torch.float32)
    return f"dense-seed{seed}", make_f(), params, z0.shape


def conv_problem():
    p = problem_conv(2)
    return "conv", p.f, p.params, p.shape


def summary(rows: list[dict]) -> dict:
    s: dict = {}
    ex = [r for r in rows if r["bench"] == "reversible-exactness"]
    if ex:
        s["reversible_max_grad_rel_err"] = {f"damping={r['damping']},K={r['steps']}": r["grad_rel_err"] for r in ex}
        s["reversible_start_reconstruction_rel_err"] = {
            f"damping={r['damping']},K={r['steps']}": r["reconstruction_rel_err"] for r in ex}
    mem = {(r["adjoint"], r["steps"]): r["peak_saved_bytes"] for r in rows if r["bench"] == "reversible-memory"}
    if mem:
        s["reversible_peak_100_over_10"] = mem["reversible", 100] / mem["reversible", 10]
        s["unrolled_peak_100_over_10"] = mem["unrolled", 100] / mem["unrolled", 10]
        s["reversible_over_unrolled_at_100"] = mem["reversible", 100] / mem["unrolled", 100]
        bw = {(r["adjoint"], r["steps"]): r["backward_s"] for r in rows if r["bench"] == "reversible-memory"}
        s["reversible_backward_time_over_unrolled_at_100"] = bw["reversible", 100] / bw["unrolled", 100]
    sh = [r for r in rows if r["bench"] == "shine-vs-implicit"]
    for key in ("shine", "shine-refine1", "shine-refine3", "jfb"):
        sel = [r for r in sh if r["adjoint"] == key]
        if sel:
            s[f"{key}_weakest_cosine"] = min(r["cosine_vs_exact"] for r in sel)
            s[f"{key}_time_vs_implicit"] = {r["problem"]: round(r["time_vs_implicit"], 4) for r in sel}
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer steps and seeds, no conv problem")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.jsonl and summary.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    out = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        out = (args.out / "results.jsonl").open("w")
    rows: list[dict] = []
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
    reversible_exactness(rows, out, (5, 10, 20) if args.quick else (5, 10, 20, 40))
    reversible_memory(rows, out)
    seeds = (0, 1) if args.quick else (0, 1, 2, 3, 4)
    for seed in seeds:
        shine_vs_implicit(rows, out, dense_deq(seed), args.repeats)
    if not args.quick:
        shine_vs_implicit(rows, out, conv_problem(), args.repeats)
    s = summary(rows)
    print(json.dumps({"summary": s}, indent=1))
    if args.out is not None:
        (args.out / "summary.json").write_text(json.dumps(s, indent=1))
        out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
