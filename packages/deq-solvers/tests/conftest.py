"""Test setup: deq's shared Hypothesis profiles and the Triton interpreter for the fused solver on CPU.

``TRITON_INTERPRET`` must be set before the Triton kernels are defined; deq_solvers defines them lazily on
the first fused solve, and this file runs before any test module imports deq_solvers.
"""

import os

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from deq_core.testing import register_profiles  # noqa: E402

register_profiles()  # dev (random), ci (derandomized, when CI is set); --hypothesis-profile=explore wins
