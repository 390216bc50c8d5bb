"""Test setup: deq's shared Hypothesis profiles (``dev`` random, ``ci`` derandomized when ``CI`` is set)."""

from __future__ import annotations

from deq_core.testing import register_profiles

register_profiles()
