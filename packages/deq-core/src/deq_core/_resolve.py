"""Names -> objects, once, at the edge: the one module that turns a solver or adjoint name into an object.

``fixed_point(...)``, ``DEQ(...)``, ``ImplicitAdjoint("anderson")``, configs and the CLI call these; the
numerical modules (``_driver``, ``_loop``, ``_adjoint``) take objects only and never import the registry.
"""

from __future__ import annotations

from typing import Any

from ._errors import DeqConfigError, UnknownNameError

__all__ = ["resolve_adjoint", "resolve_solver"]


def resolve_solver(solver: Any, /, **options: Any) -> Any:
    """A solver object as is, or a registered name (``deq plugins`` lists them) built with ``options``.

    Example:
        >>> from deq_core import resolve_solver
        >>> resolve_solver("fixed-point", damping=0.5).damping
        0.5
    """
    from ._solver import AbstractFixedPointSolver

    if isinstance(solver, AbstractFixedPointSolver):
        if options:
            raise DeqConfigError(f"solver options {sorted(options)} are only accepted with a solver name")
        return solver
    if isinstance(solver, str):
        from . import registry

        return registry.get_solver(solver, **options)
    raise DeqConfigError(
        f"solver must be an AbstractFixedPointSolver or a registered name, got {type(solver).__name__}")


def resolve_adjoint(adjoint: Any, /, **options: Any) -> Any:
    """An adjoint object as is, ``None`` (detached), or a name (``implicit``, ``neumann``, ``phantom``,
    ``unrolled``) built with ``options``.

    Example:
        >>> from deq_core import resolve_adjoint
        >>> resolve_adjoint("neumann", terms=3).terms
        3
    """
    from ._adjoint import AbstractAdjoint, ImplicitAdjoint, NeumannAdjoint, PhantomAdjoint, UnrolledAdjoint

    if adjoint is None or isinstance(adjoint, AbstractAdjoint):
        if options:
            raise DeqConfigError("adjoint options are only accepted with an adjoint name")
        return adjoint
    if isinstance(adjoint, str):
        table = {a.name: a for a in (ImplicitAdjoint, NeumannAdjoint, PhantomAdjoint, UnrolledAdjoint)}
        if adjoint not in table:
            raise UnknownNameError("adjoint", adjoint, table)
        try:
            return table[adjoint](**options)
        except TypeError as e:
            raise DeqConfigError(f"bad options for adjoint {adjoint!r}: {e}") from None
    raise DeqConfigError(f"adjoint must be an AbstractAdjoint, a name or None, got {type(adjoint).__name__}")
