import os
import sys

from deq_core.testing import register_profiles

# deq's Hypothesis profiles (dev, ci, explore): `nox -s fuzz` passes --hypothesis-profile=explore to every suite
register_profiles()

sys.path.insert(0, os.path.dirname(__file__))  # for the shared _snippets helper (pytest runs with importlib mode)
os.environ.setdefault("MPLBACKEND", "Agg")
