"""Adjoints: how gradients flow back through a fixed point ``z* = f(z*)``.

With ``J = df/dz`` at ``z*`` and an incoming gradient ``v = dL/dz*``, the exact (implicit-function-theorem)
gradient is ``(df/dtheta)^T u`` with ``u = (I - J^T)^{-1} v``, i.e. the fixed point of ``u = J^T u + v``.

* :class:`ImplicitAdjoint` solves that linear fixed point with any solver (exact up to tolerance).
* :class:`NeumannAdjoint` truncates ``u = sum_{t=0..T} (J^T)^t v`` (``terms = T``; ``T = 0`` is Jacobian-free).
* :class:`PhantomAdjoint` differentiates ``k`` damped steps ``z <- (1 - d) z + d f(z)`` started at ``z*``.
* :class:`UnrolledAdjoint` differentiates through the whole solver loop (a reference; memory grows with steps).

Every adjoint returns the solved value itself (numerically ``z*``), carrying the gradient path, so
gradients reach everything ``f`` closes over (parameters and inputs) in train and eval mode.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._errors import DeqConfigError, UnknownNameError
from ._loop import LoopControl, LoopOutcome
from ._solver import AbstractFixedPointSolver, FlatMap, check_positive, check_range

__all__ = [
    "AbstractAdjoint", "ImplicitAdjoint", "NeumannAdjoint", "PhantomAdjoint", "UnrolledAdjoint", "resolve_adjoint",
]


class AbstractAdjoint(abc.ABC):
    """Base class: ``attach(f, z_star, ...)`` returns ``z_star`` with a gradient path through ``f``."""

    name: ClassVar[str] = "abstract"
    needs_forward_graph: ClassVar[bool] = False

    @abc.abstractmethod
    def attach(self, f: FlatMap, z_star: Tensor, *, solver: AbstractFixedPointSolver, control: LoopControl,
               init: Tensor | None = None, forward: LoopOutcome | None = None) -> Tensor:
        """``f`` and ``z_star`` are flat ``(B, N)``; return a ``(B, N)`` tensor equal to ``z_star``.
        ``forward`` is the forward solve's :class:`LoopOutcome` (``forward.state``: the solver's final state)."""


def _reengage(f: FlatMap, z_star: Tensor) -> tuple[Tensor, Tensor]:
    z = z_star.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z)
    return z, fz


def _reengage_marked(f: FlatMap, z_star: Tensor) -> tuple[Tensor, Tensor, int]:
    # as _reengage, plus the autograd sequence mark taken just before f ran: the graph of f(z) can then
    # be walked for what f closes over (deq_core._graph.Frontier), which second-order gradients need
    from ._graph import graph_mark

    mark = graph_mark()
    z, fz = _reengage(f, z_star)
    return z, fz, mark


def _implicit_second_order(adjoint: ImplicitAdjoint, f: FlatMap, z_star: Tensor, z: Tensor, fz: Tensor, mark: int,
                           v: Tensor, u_star: Tensor, back_solver: AbstractFixedPointSolver,
                           back_control: LoopControl, solver: AbstractFixedPointSolver,
                           control: LoopControl) -> Tensor:
    """The implicit hook's answer in a backward with ``create_graph=True``: a gradient that is itself
    differentiable, second-order terms through ``z*`` included.

    With ``u*`` the solved ``(I - J^T)^{-1} v``: a fresh implicit attachment ``z^`` of ``z*`` (equal to it,
    carrying ``dz*/dtheta``), ``G = v + J(z^)^T u*`` with its graph, ``u = u* + (G - G.detach())`` whose hook
    solves the transposed system ``w = J w + u_bar`` (JVPs by double VJP) for the next backward, and the
    gradient for everything ``f`` closes over, ``(df/dtheta at z^)^T u``, handed to the walked graph's
    frontier. Returns the (zero) gradient for ``f(z*)``'s own graph, which the frontier overrides."""
    from ._graph import Frontier

    frontier = Frontier(fz, z, mark)
    gate = _Gate()
    z_hat = adjoint._attach(f, z_star, solver, control, None, gate)
    with torch.enable_grad():
        f_hat = f(z_hat)
        u_var = u_star.detach().requires_grad_()
        (jtu,) = torch.autograd.grad(f_hat, z_hat, u_var, create_graph=True, retain_graph=True)

        def transposed(u_bar: Tensor) -> Tensor:
            def forward_map(w: Tensor) -> Tensor:
                (jw,) = torch.autograd.grad(jtu, u_var, w, retain_graph=True)
                return jw + u_bar

            with torch.no_grad():
                out = back_solver.solve(forward_map, u_bar, forward_map(u_bar), back_control)
            return out.z

        u = _value(u_star, _hooked(v + jtu, transposed))
        gate.closed = True  # this VJP is first order: nothing may flow on through z^ (it would count J^T u twice)
        try:
            _, grads = frontier.vjp(f_hat, None, u, create_graph=True, retain_graph=True)
        finally:
            gate.closed = False
    frontier.deliver(grads)
    return torch.zeros_like(v)


class _Gate:
    """While ``closed``, an implicit attachment's hook passes zero on (see ``_implicit_second_order``)."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False


def _hooked(fz: Tensor, hook) -> Tensor:
    # The hook sits on a view of f(z*): the VJPs it runs start at f(z*) itself and never re-enter it.
    out = fz.view_as(fz)
    out.register_hook(hook)
    return out


def _value(z_star: Tensor, fz: Tensor) -> Tensor:
    # numerically z_star, differentiable like f(z_star)
    return z_star.detach() + (fz - fz.detach())


class ImplicitAdjoint(AbstractAdjoint):
    """Exact implicit gradient: solve ``u = J^T u + v`` with a fixed-point solver.

    Arguments:
        solver: solver object or registered name for the backward solve; ``None`` reuses the forward one.
        atol, rtol, max_steps: tolerances of the backward solve (``None``: the forward ones).
        throw: raise :class:`DeqSolveError` if the backward solve fails.
        **options: hyperparameters of the named solver (``ImplicitAdjoint("anderson", m=5)``).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point, ImplicitAdjoint
        >>> x = torch.tensor([[1.0]], requires_grad=True)
        >>> sol = fixed_point(lambda z: 0.5 * z + x, torch.zeros(1, 1), adjoint=ImplicitAdjoint(rtol=1e-8))
        >>> sol.value.sum().backward(); round(float(x.grad), 4)   # z* = 2x
        2.0
    """

    name: ClassVar[str] = "implicit"

    def __init__(self, solver: AbstractFixedPointSolver | str | None = None, *, atol: float | None = None,
                 rtol: float | None = None, max_steps: int | None = None, throw: bool = False,
                 **options: Any) -> None:
        if isinstance(solver, str):
            from .registry import get_solver

            solver = get_solver(solver, **options)
        elif options:
            raise DeqConfigError(
                f"ImplicitAdjoint got solver options {sorted(options)} without a solver name; "
                "pass e.g. ImplicitAdjoint('anderson', m=5)"
            )
        elif solver is not None and not isinstance(solver, AbstractFixedPointSolver):
            raise DeqConfigError(
                f"ImplicitAdjoint.solver must be a solver, a name or None, got {type(solver).__name__}"
            )
        from ._driver import check_tolerances

        check_tolerances(1.0 if atol is None else atol, 1.0 if rtol is None else rtol,
                         1 if max_steps is None else max_steps)
        self.solver, self.atol, self.rtol, self.max_steps, self.throw = solver, atol, rtol, max_steps, throw

    def __repr__(self) -> str:
        return (f"ImplicitAdjoint(solver={self.solver!r}, atol={self.atol}, rtol={self.rtol}, "
                f"max_steps={self.max_steps}, throw={self.throw})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImplicitAdjoint) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        return self._attach(f, z_star, solver, control, init, None)

    def _attach(self, f, z_star, solver, control, init, gate):
        z, fz, mark = _reengage_marked(f, z_star)
        if not fz.requires_grad:
            return z_star.detach()
        back_solver = self.solver if isinstance(self.solver, AbstractFixedPointSolver) else solver
        back_control = LoopControl(
            control.atol if self.atol is None else self.atol,
            control.rtol if self.rtol is None else self.rtol,
            control.max_steps if self.max_steps is None else self.max_steps,
            control.check_every, control.divergence, record_trace=False,
        )
        throw = self.throw
        warm = init

        def hook(v: Tensor) -> Tensor:
            if gate is not None and gate.closed:
                return torch.zeros_like(v)

            def backward_map(u: Tensor) -> Tensor:
                (jtu,) = torch.autograd.grad(fz, z, u, retain_graph=True)
                return jtu + v

            with torch.no_grad():
                u0 = v if warm is None else warm.to(v.dtype)
                out = back_solver.solve(backward_map, u0, backward_map(u0), back_control)
            if throw and not bool(out.converged.all()):
                from ._errors import DeqSolveError

                raise DeqSolveError(f"implicit backward solve {out.result.message}")
            if torch.is_grad_enabled():  # backward with create_graph=True: a differentiable gradient
                return _implicit_second_order(self, f, z_star, z, fz, mark, v, out.z, back_solver, back_control,
                                              solver, control)
            return out.z

        return _value(z_star, _hooked(fz, hook))


@dataclass(frozen=True)
class NeumannAdjoint(AbstractAdjoint):
    """Truncated Neumann series ``u = sum_{t=0..terms} (J^T)^t v`` (``terms=0``: Jacobian-free).

    Example:
        >>> import torch
        >>> from deq_core import fixed_point, NeumannAdjoint
        >>> x = torch.tensor([[1.0]], requires_grad=True)
        >>> sol = fixed_point(lambda z: 0.5 * z + x, torch.zeros(1, 1), adjoint=NeumannAdjoint(terms=1))
        >>> sol.value.sum().backward(); float(x.grad)   # 1 + 0.5
        1.5
    """

    name: ClassVar[str] = "neumann"
    terms: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.terms, bool) or not isinstance(self.terms, int) or self.terms < 0:
            raise DeqConfigError(f"NeumannAdjoint.terms must be an int >= 0, got {self.terms!r}")

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        z, fz = _reengage(f, z_star)
        if not fz.requires_grad:
            return z_star.detach()
        terms = self.terms

        def hook(v: Tensor) -> Tensor:
            total, term = v, v
            for _ in range(terms):
                (term,) = torch.autograd.grad(fz, z, term, retain_graph=True)
                total = total + term
            return total

        return _value(z_star, _hooked(fz, hook) if terms else fz)


@dataclass(frozen=True)
class PhantomAdjoint(AbstractAdjoint):
    """Phantom gradient: backprop through ``steps`` damped iterations ``z <- (1 - damping) z + damping f(z)``
    started at the detached fixed point.

    Example:
        >>> import torch
        >>> from deq_core import fixed_point, PhantomAdjoint
        >>> x = torch.tensor([[1.0]], requires_grad=True)
        >>> sol = fixed_point(lambda z: 0.5 * z + x, torch.zeros(1, 1), adjoint=PhantomAdjoint(steps=2, damping=1.0))
        >>> sol.value.sum().backward(); float(x.grad)   # d/dx of f(f(z)) = 0.5 + 1
        1.5
    """

    name: ClassVar[str] = "phantom"
    steps: int = 5
    damping: float = 0.5

    def __post_init__(self) -> None:
        check_positive(self, "steps", self.steps)
        if not isinstance(self.steps, int):
            raise DeqConfigError(f"PhantomAdjoint.steps must be an int >= 1, got {self.steps!r}")
        check_range(self, "damping", self.damping, 0.0, 1.0)

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        z = z_star.detach()
        with torch.enable_grad():
            for _ in range(self.steps):
                z = z.lerp(f(z), self.damping) if self.damping != 1.0 else f(z)
        if not z.requires_grad:
            return z_star.detach()
        return _value(z_star, z)


@dataclass(frozen=True)
class UnrolledAdjoint(AbstractAdjoint):
    """Backpropagate through every solver step (reference for tests; memory grows with the step count)."""

    name: ClassVar[str] = "unrolled"
    needs_forward_graph: ClassVar[bool] = True

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        return z_star


_ADJOINTS: dict[str, type[AbstractAdjoint]] = {
    a.name: a for a in (ImplicitAdjoint, NeumannAdjoint, PhantomAdjoint, UnrolledAdjoint)
}


def resolve_adjoint(adjoint: AbstractAdjoint | str | None, **options: Any) -> AbstractAdjoint | None:
    """An adjoint object as is, ``None``, or one of ``implicit``, ``neumann``, ``phantom``, ``unrolled``."""
    if adjoint is None or isinstance(adjoint, AbstractAdjoint):
        if options:
            raise DeqConfigError("adjoint options are only accepted with an adjoint name")
        return adjoint
    if isinstance(adjoint, str):
        if adjoint not in _ADJOINTS:
            raise UnknownNameError("adjoint", adjoint, _ADJOINTS)
        try:
            return _ADJOINTS[adjoint](**options)
        except TypeError as e:
            raise DeqConfigError(f"bad options for adjoint {adjoint!r}: {e}") from None
    raise DeqConfigError(f"adjoint must be an AbstractAdjoint, a name or None, got {type(adjoint).__name__}")
