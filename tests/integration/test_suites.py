"""Every test suite noxfile.py runs loads deq's shared Hypothesis profiles, so `nox -s fuzz`
(`--hypothesis-profile=explore` for every suite) can run each of them (the integration suite could not:
"Profile 'explore' is not registered")."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITES = [*sorted(ROOT.glob("packages/*/tests")), ROOT / "tests" / "integration", ROOT / "tests" / "docs",
          ROOT / "examples" / "deq-solver-example" / "tests"]


def test_every_suite_registers_the_shared_profiles():
    assert len(SUITES) == 7, SUITES
    missing = [str(s.relative_to(ROOT)) for s in SUITES
               if "register_profiles()" not in (s / "conftest.py").read_text(encoding="utf-8")]
    assert not missing, f"conftest.py without deq_core.testing.register_profiles(): {missing}"
