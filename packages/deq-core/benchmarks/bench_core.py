"""Driver overhead per iteration, as a multiple of one bare evaluation of ``f``.

``f(z) = tanh(W z + U x)`` with batch 64, width 256, ``||W||_2 = 0.9`` (seeded; the injection ``U x`` is
computed once, as a DEQ layer does, so ``f`` is one fused ``addmm`` + ``tanh`` and the ratio is strict).

    overhead = (time per solver step of fixed-point iteration through the driver) - (time of one bare f)
    ratio    = overhead / (time of one bare f)

reported as the median over repeats of the per-repeat ratio (the definition) and, because other processes
only ever add time, also from the best (minimum) times of each.

measured for deq-core's ``fixed_point(f, z0, solver="fixed-point")`` and for torchdeq 0.1.0's
``torchdeq.solver.fixed_point_iter`` in the same process, interleaved, median over repeats. Two regimes:

* ``fixed``: a fixed number of steps (an unreachable tolerance), the pure per-step cost;
* ``to-tol``: a realistic solve to ``rtol = 1e-4`` (per-sample convergence, freezing and the tail
  included); time per step = total / steps taken. Here the whole call counts: argument checks, the
  driver's evaluation of ``f(z0)`` (torchdeq starts iterating without measuring ``z0``), statistics; with
  ~9 steps these fixed costs weigh more per step.

Run: ``python packages/deq-core/benchmarks/bench_core.py [--repeats 15] [--steps 50] [--device cpu]``
(on a busy machine: ``OMP_NUM_THREADS=1 python ... --clock cpu``).
Prints one JSON object per line, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from deq_core import FixedPointIteration, fixed_point


def _problem(batch: int, width: int, rho: float, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=g)
    W = (rho * W / torch.linalg.matrix_norm(W, ord=2)).to(device)
    U = (torch.randn(width, width, generator=g) / width**0.5).to(device)
    x = torch.randn(batch, width, generator=g).to(device)
    ux = x @ U.T
    Wt = W.T.contiguous()

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.addmm(ux, z, Wt))

    return f, torch.zeros(batch, width, device=device)


def _timer(device: str, clock: str) -> Callable[[Callable[[], object]], float]:
    now = time.process_time if clock == "cpu" else time.perf_counter

    def run(fn: Callable[[], object]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = now()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return now() - t

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--rho", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=50, help="steps of the fixed-step regime (torchdeq's default)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: this process's CPU time (stable on a busy machine, use it with "
                         "OMP_NUM_THREADS=1, since CPU time adds up all threads)")
    args = ap.parse_args()

    import torchdeq
    from torchdeq.solver import fixed_point_iter

    f, z0 = _problem(args.batch, args.width, args.rho, args.device)
    timed = _timer(args.device, args.clock)
    K = args.steps
    solver = FixedPointIteration()

    def bare() -> None:
        z = z0
        for _ in range(K):
            z = f(z)

    cases = {
        ("fixed", "deq-core fixed_point"): lambda: fixed_point(
            f, z0, solver=solver, adjoint=None, atol=1e-30, rtol=0.0, max_steps=K, throw=False).stats.nfev - 1,
        ("fixed", "deq-core fixed_point, record_trace=False"): lambda: fixed_point(
            f, z0, solver=solver, adjoint=None, atol=1e-30, rtol=0.0, max_steps=K, throw=False,
            record_trace=False).stats.nfev - 1,
        ("fixed", "torchdeq fixed_point_iter"): lambda: (fixed_point_iter(f, z0, max_iter=K, tol=-1.0), K)[1],
        ("to-tol", "deq-core fixed_point"): lambda: int(fixed_point(
            f, z0, solver=solver, adjoint=None, atol=1e-6, rtol=1e-4, max_steps=500).stats.steps.max()),
        ("to-tol", "torchdeq fixed_point_iter"): lambda: int(fixed_point_iter(
            f, z0, max_iter=500, tol=1e-4, stop_mode="rel")[2]["nstep"].max()),
    }
    ratios: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
    per_step: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
    steps_taken: dict[tuple[str, str], int] = {}
    f_times: list[float] = []
    with torch.no_grad():
        for fn in [bare, *cases.values()]:  # warm-up
            fn()
        for _ in range(args.repeats):
            bare()
            t_f = timed(bare) / K
            f_times.append(t_f)
            for key, fn in cases.items():
                fn()  # back-to-back: the allocator is in this case's steady state, not the previous case's
                box: list[int] = []
                t = timed(lambda fn=fn, box=box: box.append(fn()))
                steps = max(int(box[0]), 1)
                steps_taken[key] = steps
                per_step[key].append(t / steps)
                ratios[key].append((t / steps - t_f) / t_f)
    t_f = statistics.median(f_times)
    rows = []
    for key in cases:
        regime, name = key
        row = {
            "bench": "core-overhead", "regime": regime, "impl": name, "device": args.device,
            "batch": args.batch, "width": args.width, "rho": args.rho, "steps": steps_taken[key],
            "f_us": round(t_f * 1e6, 2), "step_us": round(statistics.median(per_step[key]) * 1e6, 2),
            "overhead_ratio": round(statistics.median(ratios[key]), 3),
            # min of times is robust to other processes (they only ever add time)
            "f_us_min": round(min(f_times) * 1e6, 2), "step_us_min": round(min(per_step[key]) * 1e6, 2),
            "overhead_ratio_min": round((min(per_step[key]) - min(f_times)) / min(f_times), 3),
            "repeats": args.repeats,
            "torch": torch.__version__, "torchdeq": getattr(torchdeq, "__version__", "0.1.0"),
            "threads": torch.get_num_threads(), "clock": args.clock,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"Driver overhead per iteration, f(z) = tanh(Wz + Ux), batch {args.batch}, width {args.width}, "
          f"||W||_2 = {args.rho}, {args.device}, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"one bare f = {t_f * 1e6:.1f} us "
          f"(median of {args.repeats}), {min(f_times) * 1e6:.1f} us (best).")
    print()
    print("| regime | implementation | steps | time/step (us, median) | overhead / f (median of ratios) | "
          "overhead / f (from best times) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['regime']} | {r['impl']} | {r['steps']} | {r['step_us']:.1f} | {r['overhead_ratio']:.2f} | "
              f"{r['overhead_ratio_min']:.2f} |")


if __name__ == "__main__":
    main()
