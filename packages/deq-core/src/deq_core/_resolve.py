"""Names -> objects, in one place: :func:`resolve_solver` and :func:`resolve_adjoint`.

APIs take solver and adjoint objects; a name (``fixed_point(..., solver="anderson")``, ``DEQ(adjoint="neumann")``,
a config field, a CLI option) is resolved here, once, at construction, through :mod:`deq_core.registry`. The
registry is imported inside the functions, so the numerical modules (``_driver``, ``_adjoint``, ``_loop``)
can import this module without importing the plugin system.
"""

from __future__ import annotations

from typing import Any

from ._adjoint import AbstractAdjoint
from ._errors import DeqConfigError
from ._solver import AbstractFixedPointSolver

__all__ = ["resolve_adjoint", "resolve_solver"]


def resolve_solver(spec: AbstractFixedPointSolver | str, /, **options: Any) -> AbstractFixedPointSolver:
    """A solver object as is, or a registered name built with ``options``.

    Arguments:
        spec: an :class:`AbstractFixedPointSolver`, or a name ``deq plugins`` lists (``"anderson"``, an alias,
            or ``"dist:name"`` for the one a given plugin provides).
        options: hyperparameters for a named solver (``m=5``); refused with an object (set them on it).

    Raises:
        UnknownNameError: no such solver (lists the known ones, and the package to install for deq's own).
        DeqConfigError: options with an object, an option the solver does not take, or a ``spec`` of another type.

    Example:
        >>> from deq_core import FixedPointIteration, resolve_solver
        >>> resolve_solver("fixed-point", damping=0.5)
        FixedPointIteration(damping=0.5)
        >>> s = FixedPointIteration(); resolve_solver(s) is s
        True
    """
    if isinstance(spec, AbstractFixedPointSolver):
        if options:
            raise DeqConfigError(f"solver options {sorted(options)} are only accepted with a solver name; "
                                 f"got the object {spec!r} (set them when building it)")
        return spec
    if isinstance(spec, str):
        from . import registry

        return registry.get_solver(spec, **options)
    raise DeqConfigError(
        f"solver must be an AbstractFixedPointSolver or a registered name, got {type(spec).__name__}")


def resolve_adjoint(spec: AbstractAdjoint | str | None, /, **options: Any) -> AbstractAdjoint | None:
    """An adjoint object as is, ``None`` (detached), or a registered name built with ``options``.

    Arguments:
        spec: an :class:`AbstractAdjoint`, ``None``, or a registered adjoint name (``"implicit"``, ``"neumann"``,
            ``"phantom"``, ``"unrolled"``, or a plugin's; ``"dist:name"`` selects a given plugin's).
        options: the adjoint's options (``terms=2``); refused with an object or ``None``.

    Raises:
        UnknownNameError: no such adjoint (lists the known ones).
        DeqConfigError: options without a name, an option the adjoint does not take, or a ``spec`` of another type.

    Example:
        >>> from deq_core import resolve_adjoint
        >>> resolve_adjoint("neumann", terms=2)
        NeumannAdjoint(terms=2)
        >>> resolve_adjoint(None) is None
        True
    """
    if spec is None or isinstance(spec, AbstractAdjoint):
        if options:
            raise DeqConfigError(f"adjoint options {sorted(options)} are only accepted with an adjoint name, "
                                 f"got {spec!r}")
        return spec
    if isinstance(spec, str):
        from . import registry

        return registry.get_adjoint(spec, **options)
    raise DeqConfigError(f"adjoint must be an AbstractAdjoint, a name or None, got {type(spec).__name__}")
