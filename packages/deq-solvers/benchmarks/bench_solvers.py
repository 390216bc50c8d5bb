"""deq-solvers vs torchdeq 0.1.0 on three seeded fixed-point problems, in one process.

    python packages/deq-solvers/benchmarks/bench_solvers.py [--repeats 7] [--quick] [--out bench-out/solvers]

Problems (relative tolerance 1e-5 for every solver, forward and IFT backward):
  1. ``f(z) = tanh(W z + U x + b)``, batch 64, width 256, Gaussian ``W`` rescaled to ``||W||_2 = 0.9``;
  2. the same with ``W`` symmetric, eigenvalues spread in ``[0, 0.9]`` and weak input injection (slow);
  3. ``f(z) = tanh(conv3x3(z) + u)``, batch 32, 32 channels, 16x16, conv operator norm 0.9 (power iteration).

For every solver of both libraries one JSON line: forward ms (median of repeats), f-evaluations, the final
relative residual ``max_i ||f(z_i) - z_i|| / ||f(z_i)||`` measured here on the returned ``z``, IFT backward ms
and VJPs (counted by an identity autograd function inside ``f``, same for both libraries), the per-iteration
solver overhead in units of one ``f`` evaluation, and ratios to torchdeq's matching solver. Then a markdown
table, and a float16 / bfloat16 check. ``fused-anderson`` is timed only on CUDA (on CPU it would run in the
Triton interpreter, which is for tests, not timing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from deq_core import FixedPointIteration, ImplicitAdjoint, fixed_point
from deq_solvers import Anderson, Broyden, FusedAnderson, Neumann, Picard, triton_status

RTOL = 1e-5


# ----------------------------------------------------------------------------------------------- problems
class _CountVJP(torch.autograd.Function):
    """Identity whose backward counts the VJPs that pass through ``f``."""

    calls = 0

    @staticmethod
    def forward(ctx, z):
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        _CountVJP.calls += 1
        return g


class Problem:
    def __init__(self, name: str, shape: tuple[int, ...], f: Callable, params: list[torch.Tensor], max_iter: int):
        self.name, self.shape, self.f, self.params, self.max_iter = name, shape, f, params, max_iter
        self.nfev = 0

    def counted(self, z: torch.Tensor) -> torch.Tensor:
        self.nfev += 1
        if torch.is_grad_enabled():
            z = _CountVJP.apply(z)
        return self.f(z)


def _spectral_rescale(W: torch.Tensor, target: float) -> torch.Tensor:
    return W * (target / torch.linalg.matrix_norm(W, ord=2))


def problem_dense(seed: int, slow: bool, dtype=torch.float32) -> Problem:
    g = torch.Generator().manual_seed(seed)
    B, d = 64, 256
    if slow:
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = torch.linspace(0.0, 0.9, d, dtype=torch.float64)
        W = (Q * lam) @ Q.T
        scale = 0.05
    else:
        W = _spectral_rescale(torch.randn(d, d, generator=g, dtype=torch.float64), 0.9)
        scale = 1.0
    U = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    Wt = W.T.to(dtype).contiguous().requires_grad_()
    inj = (scale * (x @ U.T + b)).to(dtype).requires_grad_()

    def f(z):
        return torch.tanh(torch.addmm(inj, z, Wt))

    name = "2-dense-slow" if slow else "1-dense"
    return Problem(name, (B, d), f, [Wt, inj], max_iter=400 if slow else 100)


def conv_operator_norm(weight: torch.Tensor, hw: int, iters: int = 60, seed: int = 0) -> float:
    """||conv||_2 by power iteration on conv^T conv (conv_transpose2d is the adjoint)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, weight.shape[1], hw, hw, generator=g, dtype=weight.dtype)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iters):
        u = F.conv2d(v, weight, padding=1)
        v = F.conv_transpose2d(u, weight, padding=1)
        sigma = math.sqrt(float(v.norm()))
        v = v / v.norm()
    return sigma


def problem_conv(seed: int, dtype=torch.float32) -> Problem:
    g = torch.Generator().manual_seed(seed)
    B, C, H = 32, 32, 16
    w = torch.randn(C, C, 3, 3, generator=g, dtype=torch.float64)
    w = w * (0.9 / conv_operator_norm(w, H))
    u = torch.randn(B, C, H, H, generator=g, dtype=torch.float64)
    weight = w.to(dtype).requires_grad_()
    inj = u.to(dtype).requires_grad_()
    N = C * H * H

    def f(z):
        return torch.tanh(F.conv2d(z.view(B, C, H, H), weight, padding=1) + inj).view(B, N)

    return Problem("3-conv", (B, N), f, [weight, inj], max_iter=100)


# ------------------------------------------------------------------------------------------------ runners
def rel_residual(p: Problem, z: torch.Tensor) -> float:
    with torch.no_grad():
        fz = p.f(z)
        r = torch.linalg.vector_norm((fz - z).double(), dim=1) / torch.linalg.vector_norm(fz.double(), dim=1)
    return float(r.max())


def ours_forward(solver, p: Problem, z0):
    sol = fixed_point(p.counted, z0, solver=solver, adjoint=None, atol=0.0, rtol=RTOL, max_steps=p.max_iter,
                      throw=False, record_trace=False)
    return sol.value, sol.stats.solver


def ours_backward(solver, p: Problem, z0):
    adj = ImplicitAdjoint(atol=0.0, rtol=RTOL, max_steps=p.max_iter)
    sol = fixed_point(p.counted, z0, solver=solver, adjoint=adj, atol=0.0, rtol=RTOL, max_steps=p.max_iter,
                      throw=False, record_trace=False)
    return sol.value


def td_solver(name: str):
    from torchdeq.solver import get_solver

    return get_solver(name)


def td_kwargs(name: str, p: Problem, nfev_hint: int | None = None) -> dict:
    kw = {"max_iter": p.max_iter, "tol": RTOL, "stop_mode": "rel"}
    if name == "simple_fixed_point_iter":
        kw = {"max_iter": nfev_hint or p.max_iter}
    return kw


def td_forward(name: str, p: Problem, z0, nfev_hint=None):
    solve = td_solver(name)
    kw = td_kwargs(name, p, nfev_hint)
    if name == "simple_fixed_point_iter":
        func = lambda z, tau=1.0: p.counted(z)  # noqa: E731
    else:
        func = p.counted
    with torch.no_grad():
        z, _, info = solve(func, z0, **kw)
    return z, {}


def td_backward(name: str, p: Problem, z0, nfev_hint=None):
    from torchdeq.grad import backward_factory

    kw = td_kwargs(name, p, nfev_hint)
    solve = td_solver(name)
    if name == "simple_fixed_point_iter":
        b_solver = lambda func, x0, **k: solve(lambda y, tau=1.0: func(y), x0, **k)  # noqa: E731
        fwd = lambda z, tau=1.0: p.counted(z)  # noqa: E731
    else:
        b_solver, fwd = solve, p.counted
    with torch.no_grad():
        z, _, _ = solve(fwd, z0, **kw)
    grad_fn = backward_factory("ift", b_solver=b_solver, b_solver_kwargs=kw)
    return grad_fn(None, p.counted, z)[0]


def time_f(p: Problem, repeats: int = 50) -> tuple[float, float]:
    """Median wall and CPU ms of one evaluation of ``f`` (no autograd)."""
    z = torch.zeros(p.shape, dtype=p.params[0].dtype)
    with torch.no_grad():
        z = p.f(z)
        for _ in range(5):
            p.f(z)
        times, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            p.f(z)
            times.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(times), statistics.median(cpu)


def _costs(row: dict, ms: float, cpu_ms: float, nfev: int, tf: float, tf_cpu: float) -> None:
    row["overhead_per_iter_f"] = round((ms - nfev * tf) / max(nfev, 1) / tf, 3)
    row["overhead_per_iter_f_cpu"] = round((cpu_ms - nfev * tf_cpu) / max(nfev, 1) / tf_cpu, 3)


OURS = {
    "anderson": (Anderson(), "anderson"),
    "broyden": (Broyden(), "broyden"),
    "picard": (Picard(), "fixed_point_iter"),
    "fixed-point": (FixedPointIteration(), "fixed_point_iter"),
    "neumann": (Neumann(), "fixed_point_iter"),
    "fused-anderson": (FusedAnderson(), "anderson"),
}
TORCHDEQ = ["anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter"]


def _backward_once(make_z, p: Problem, cot: torch.Tensor) -> tuple[float, float, int]:
    for q in p.params:
        q.grad = None
    z = make_z()
    loss = (z * cot).sum()
    _CountVJP.calls = 0
    t, c = time.perf_counter(), time.process_time()
    loss.backward()
    return (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3, _CountVJP.calls


def _interleaved(jobs: dict[str, Callable[[], tuple[float, float, object]]], repeats: int, progress):
    """Run every job once per round (after one warm-up round), so background load hits all of them alike.

    A job returns ``(wall_ms, cpu_ms, extra)``; returns ``{name: (median wall, median cpu, last extra)}``.
    """
    for name, job in jobs.items():
        progress(f"warm-up {name}")
        job()
    acc: dict[str, tuple[list[float], list[float], list[object]]] = {k: ([], [], []) for k in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            w, c, extra = job()
            acc[name][0].append(w)
            acc[name][1].append(c)
            acc[name][2][:] = [extra]
    return {k: (statistics.median(w), statistics.median(c), e[0]) for k, (w, c, e) in acc.items()}


def run_problem(p: Problem, repeats: int, progress) -> list[dict]:
    z0 = torch.zeros(p.shape, dtype=p.params[0].dtype)
    cot = torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.params[0].dtype)
    tf, tf_cpu = time_f(p)
    p.nfev = 0
    td_forward("fixed_point_iter", p, z0)
    fp_nfev = p.nfev  # budget of simple_fixed_point_iter, which has no tolerance
    fused_skip = None
    why = triton_status("cuda" if torch.cuda.is_available() else "cpu")
    if why is not None or not torch.cuda.is_available():
        fused_skip = why or "CPU: the Triton interpreter is for tests only, not timing"

    def timed(fn):
        def job():
            p.nfev = 0
            t, c = time.perf_counter(), time.process_time()
            z = fn()
            return (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3, (z, p.nfev)
        return job

    fwd, bwd = {}, {}
    for name in TORCHDEQ:
        key = ("torchdeq", name)
        fwd[key] = timed(lambda name=name: td_forward(name, p, z0, fp_nfev)[0])
        bwd[key] = lambda name=name: _backward_once(lambda: td_backward(name, p, z0, fp_nfev), p, cot)
    for name, (solver, _) in OURS.items():
        if name == "fused-anderson" and fused_skip:
            continue
        key = ("deq", name)
        fwd[key] = timed(lambda solver=solver: ours_forward(solver, p, z0)[0])
        bwd[key] = lambda solver=solver: _backward_once(lambda: ours_backward(solver, p, z0), p, cot)
    F_ = _interleaved(fwd, repeats, progress)
    B_ = _interleaved(bwd, max(3, repeats // 2), progress)

    def base_row(key):
        ms, cpu_ms, (z, nfev) = F_[key]
        bms, bcpu, vjps = B_[key]
        row = {"problem": p.name, "library": key[0], "solver": key[1], "forward_ms": round(ms, 3),
               "forward_cpu_ms": round(cpu_ms, 3), "nfev": nfev, "rel_residual": rel_residual(p, z),
               "backward_ms": round(bms, 3), "backward_cpu_ms": round(bcpu, 3), "backward_vjps": vjps,
               "f_ms": round(tf, 4), "f_cpu_ms": round(tf_cpu, 4)}
        _costs(row, ms, cpu_ms, nfev, tf, tf_cpu)
        return row

    rows: list[dict] = []
    td_rows = {}
    for name in TORCHDEQ:
        row = base_row(("torchdeq", name))
        if name == "simple_fixed_point_iter":
            row["note"] = "no tolerance: max_iter set to fixed_point_iter's f-evaluations"
        td_rows[name] = row
        rows.append(row)
    ok = [r for r in td_rows.values() if r["rel_residual"] <= RTOL * 1.0001]
    fastest = min(ok or td_rows.values(), key=lambda r: r["forward_ms"])
    fastest_cpu = min(ok or td_rows.values(), key=lambda r: r["forward_cpu_ms"])
    tol_driven = [r for r in ok if r["solver"] != "simple_fixed_point_iter"] or ok or list(td_rows.values())
    fastest_tol = min(tol_driven, key=lambda r: r["forward_cpu_ms"])
    for name, (solver, match) in OURS.items():
        if ("deq", name) not in F_:
            rows.append({"problem": p.name, "library": "deq", "solver": name, "matches": match,
                         "skipped": fused_skip})
            continue
        row = base_row(("deq", name))
        ref = td_rows[match]
        st = ours_forward(solver, p, z0)[1]
        row.update({
            "matches": match,
            "stats": {k: v for k, v in st.items() if isinstance(v, (int, float, str))},
            "fwd_ratio_vs_match": round(row["forward_ms"] / ref["forward_ms"], 3),
            "fwd_cpu_ratio_vs_match": round(row["forward_cpu_ms"] / ref["forward_cpu_ms"], 3),
            "bwd_ratio_vs_match": round(row["backward_ms"] / ref["backward_ms"], 3),
            "bwd_cpu_ratio_vs_match": round(row["backward_cpu_ms"] / ref["backward_cpu_ms"], 3),
            "fwd_ratio_vs_td_fastest": round(row["forward_ms"] / fastest["forward_ms"], 3),
            "td_fastest": fastest["solver"],
            "fwd_cpu_ratio_vs_td_fastest": round(row["forward_cpu_ms"] / fastest_cpu["forward_cpu_ms"], 3),
            "td_fastest_cpu": fastest_cpu["solver"],
            "fwd_cpu_ratio_vs_td_fastest_tol": round(row["forward_cpu_ms"] / fastest_tol["forward_cpu_ms"], 3),
            "td_fastest_tol": fastest_tol["solver"],
        })
        rows.append(row)
    return rows


def half_precision_check() -> list[dict]:
    out = []
    for dtype, rtol in ((torch.float16, 3e-3), (torch.bfloat16, 2e-2)):
        p = problem_dense(0, slow=False, dtype=dtype)
        z0 = torch.zeros(p.shape, dtype=dtype)
        for name, solver in (("anderson", Anderson()), ("broyden", Broyden())):
            sol = fixed_point(p.f, z0, solver=solver, adjoint=None, atol=0.0, rtol=rtol, max_steps=100, throw=False)
            out.append({"check": "half", "library": "deq", "solver": name, "dtype": str(dtype), "rtol": rtol,
                        "result": sol.result.name, "nfev": sol.stats.nfev,
                        "rel_residual": rel_residual(p, sol.value)})
        for name in ("anderson", "broyden"):
            row = {"check": "half", "library": "torchdeq", "solver": name, "dtype": str(dtype), "rtol": rtol}
            try:
                with torch.no_grad():
                    z, _, _ = td_solver(name)(p.f, z0, max_iter=100, tol=rtol, stop_mode="rel")
                row.update({"result": "returned", "rel_residual": rel_residual(p, z)})
            except Exception as e:  # noqa: BLE001 - we report what torchdeq raises
                row.update({"result": "raised", "error": f"{type(e).__name__}: {str(e)[:120]}"})
            out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    cols = ["problem", "library", "solver", "fwd ms", "fwd CPU ms", "f-evals", "rel. residual",
            "overhead/iter (x f, CPU)", "bwd ms", "bwd CPU ms", "VJPs", "fwd/match (wall, CPU)",
            "bwd/match (wall, CPU)", "fwd CPU / td fastest tol-driven", "fwd CPU / td fastest any"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['problem']} | {r['library']} | {r['solver']} | skipped: {r['skipped'][:70]} |"
                         + " |" * (len(cols) - 4))
            continue
        ratio = lambda a, b, r=r: f"{r[a]}, {r[b]}" if a in r else ""  # noqa: E731
        tol = f"{r['fwd_cpu_ratio_vs_td_fastest_tol']} ({r['td_fastest_tol']})" if "td_fastest_tol" in r else ""
        lines.append(
            f"| {r['problem']} | {r['library']} | {r['solver']} | {r['forward_ms']:.2f} | {r['forward_cpu_ms']:.2f} "
            f"| {r['nfev']} | {r['rel_residual']:.2e} | {r['overhead_per_iter_f_cpu']:.2f} | {r['backward_ms']:.2f} "
            f"| {r['backward_cpu_ms']:.2f} | {r['backward_vjps']} "
            f"| {ratio('fwd_ratio_vs_match', 'fwd_cpu_ratio_vs_match')} "
            f"| {ratio('bwd_ratio_vs_match', 'bwd_cpu_ratio_vs_match')} "
            f"| {tol} "
            f"| {r.get('fwd_cpu_ratio_vs_td_fastest', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--out", type=Path, default=None, help="also write results.jsonl and table.md here")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    problems = [problem_dense(0, slow=False), problem_dense(1, slow=True), problem_conv(2)]
    total = len(problems) * 2 * (len(TORCHDEQ) + len(OURS))
    bar = tqdm(total=total, file=sys.stderr, leave=False) if tqdm and sys.stderr.isatty() else None

    def progress(msg):
        if bar:
            bar.set_description(msg)
            bar.update(1)

    rows = []
    for p in problems:
        for r in run_problem(p, repeats, progress):
            print(json.dumps(r), flush=True)
            rows.append(r)
    if bar:
        bar.close()
    half = half_precision_check()
    for r in half:
        print(json.dumps(r), flush=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    print(json.dumps({"env": env}))
    table = markdown(rows)
    print()
    print(table)
    print()
    print("| dtype | library | solver | result | rel. residual |")
    print("|---|---|---|---|---|")
    for r in half:
        print(f"| {r['dtype']} | {r['library']} | {r['solver']} | {r['result']} "
              f"| {r.get('rel_residual', r.get('error', ''))} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + half))
        (args.out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
