"""Shared test settings: Hypothesis profiles ``dev`` and ``ci`` (``CI`` set: derandomized, no deadline)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", deadline=None, max_examples=20)
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=20)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
