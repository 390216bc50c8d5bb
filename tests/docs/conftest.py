import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # for the shared _snippets helper (pytest runs with importlib mode)
os.environ.setdefault("MPLBACKEND", "Agg")
