"""The Hypothesis profiles every deq test suite (and a plugin's) runs under, defined once.

* ``dev`` (default): random examples, a new sample of problems on every run (failures are replayed from the
  local ``.hypothesis`` database), 1.5x the ``ci`` budget for tests that do not set their own.
* ``ci`` (selected when the ``CI`` environment variable is set): derandomized, so CI is reproducible;
  failures print the blob that reproduces them.
* ``explore``: many random examples (:func:`example_budget` scales explicit budgets by
  :data:`EXPLORE_FACTOR`), for bug hunting: ``nox -s fuzz`` or ``pytest --hypothesis-profile=explore``.

A test suite's ``conftest.py`` needs one line::

    from deq_core.testing import register_profiles

    register_profiles()          # dev, or ci when CI is set; --hypothesis-profile=NAME still wins

Tests that set their own budget write ``@settings(max_examples=example_budget(10))`` so that ``explore``
scales them too; :func:`deq_core.testing.check_solver` does this for its ``max_examples``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["EXPLORE_FACTOR", "PROFILES", "current_profile", "example_budget", "register_profiles"]

EXPLORE_FACTOR = 20
"""How many times more examples ``explore`` runs than ``dev`` / ``ci`` (explicit budgets included)."""

_BASE = 20  # examples of a test that does not set its own budget (dev and ci)
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])

PROFILES: dict[str, dict] = {
    "dev": dict(_COMMON, max_examples=_BASE * 3 // 2),
    "ci": dict(_COMMON, max_examples=_BASE, derandomize=True, print_blob=True),
    "explore": dict(_COMMON, max_examples=_BASE * EXPLORE_FACTOR, print_blob=True),
}
"""Profile name -> keyword arguments of :class:`hypothesis.settings`."""


def register_profiles(environ: dict[str, str] | None = None) -> str:
    """Register ``dev``, ``ci`` and ``explore`` and load ``ci`` if ``CI`` is set (non-empty), else ``dev``.

    Hypothesis' pytest plugin applies ``--hypothesis-profile=NAME`` after conftest files ran, so the command
    line still wins. Calling this twice is harmless.

    Arguments:
        environ: the environment to read ``CI`` from (default ``os.environ``).

    Returns:
        The name of the profile loaded.

    Example:
        >>> active = current_profile()
        >>> register_profiles({"CI": "true"})
        'ci'
        >>> settings().derandomize, example_budget(5)
        (True, 5)
        >>> register_profiles({})
        'dev'
        >>> settings.load_profile(active)        # back to the profile this session runs under
    """
    env = os.environ if environ is None else environ
    for name, kwargs in PROFILES.items():
        settings.register_profile(name, **kwargs)
    name = "ci" if env.get("CI") else "dev"
    settings.load_profile(name)
    return name


def example_budget(n: int) -> int:
    """``n`` examples under ``dev`` / ``ci`` (or any other profile), ``n * EXPLORE_FACTOR`` under ``explore``.

    Evaluated when a test module is imported (decorators), i.e. after the command line chose the profile.

    Example:
        >>> active = current_profile()
        >>> _ = register_profiles()
        >>> settings.load_profile("explore")
        >>> example_budget(10)
        200
        >>> settings.load_profile(active)
    """
    if n < 1:
        raise ValueError(f"example_budget needs n >= 1, got {n!r}")
    return n * EXPLORE_FACTOR if current_profile().startswith("explore") else n  # also explore-with-...


def current_profile() -> str:
    """The name of the Hypothesis profile loaded now (``"default"`` before any was)."""
    getter = getattr(settings, "get_current_profile_name", None)  # Hypothesis >= 6.131
    return getter() if getter is not None else getattr(settings, "_current_profile", None) or "default"
