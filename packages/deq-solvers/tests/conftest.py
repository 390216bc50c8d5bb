"""Test setup: Hypothesis profiles and the Triton interpreter for the fused solver on CPU.

``TRITON_INTERPRET`` must be set before the Triton kernels are defined; deq_solvers defines them lazily on
the first fused solve, and this file runs before any test module imports deq_solvers.
"""

import os

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

settings.register_profile("dev", max_examples=10, deadline=None)
settings.register_profile("ci", max_examples=10, deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
