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
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._control import LoopControl, LoopOutcome
from ._errors import DeqConfigError, DeqSolveError
from ._loop import run_loop
from ._solver import AbstractFixedPointSolver, FlatMap
from ._validate import check_int, check_range, check_tolerances

__all__ = ["AbstractAdjoint", "ImplicitAdjoint", "NeumannAdjoint", "PhantomAdjoint", "UnrolledAdjoint"]


class AbstractAdjoint(abc.ABC):
    """Base class: ``attach(f, z_star, ...)`` returns ``z_star`` with a gradient path through ``f``.

    An adjoint states its definition, which :func:`deq_core.testing.check_adjoint` holds it to: with
    ``J = df/dz`` at ``z*`` and the incoming gradient ``v = dL/dz*``, the gradient it sends into ``f``'s other
    inputs (parameters, ``x``) is ``(df/dtheta)^T u`` with ``u = reference(J, v)``. ``exact = True`` (implicit,
    unrolled) means ``u = (I - J^T)^{-1} v``, the implicit-function-theorem gradient, which the default
    :meth:`reference` computes by a dense solve; an approximate adjoint sets ``exact = False`` and overrides
    :meth:`reference` with its own formula (a truncated series, ``k`` damped steps, ...).
    """

    name: ClassVar[str] = "abstract"
    #: backpropagates through the forward iterations (the solve runs with a graph)
    needs_forward_graph: ClassVar[bool] = False
    #: ``attach`` needs the forward solver's final state (``forward=``), e.g. SHINE's quasi-Newton matrix
    needs_forward_state: ClassVar[bool] = False
    exact: ClassVar[bool] = False

    def reference(self, J: Tensor, v: Tensor) -> Tensor:
        """The vector ``u`` this adjoint back-propagates into ``f``'s inputs, by definition (dense, for tests).

        Arguments:
            J: ``(B, N, N)`` per-sample Jacobians ``df/dz`` at ``z*``.
            v: ``(B, N)`` incoming gradient ``dL/dz*``.

        Returns:
            ``(B, N)``: ``(I - J^T)^{-1} v`` for an exact adjoint.

        Raises:
            NotImplementedError: an approximate adjoint (``exact = False``) that does not override it.

        Example:
            >>> import torch
            >>> from deq_core import ImplicitAdjoint
            >>> J = torch.full((1, 1, 1), 0.5, dtype=torch.float64)
            >>> ImplicitAdjoint().reference(J, torch.ones(1, 1, dtype=torch.float64))   # 1 / (1 - 0.5)
            tensor([[2.]], dtype=torch.float64)
        """
        if not self.exact:
            raise NotImplementedError(
                f"{type(self).__name__} is not exact (exact = False) and does not state its gradient: override "
                "reference(J, v) with the u it back-propagates (see AbstractAdjoint)")
        eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device).expand_as(J)
        return torch.linalg.solve(eye - J.transpose(-1, -2), v.unsqueeze(-1)).squeeze(-1)

    def options(self) -> dict[str, Any]:
        """Hyperparameters as a plain dict (for configs and checkpoints): the dataclass fields, if any.

        ``type(adjoint)(**adjoint.options())`` rebuilds an equal adjoint.

        Example:
            >>> from deq_core import NeumannAdjoint
            >>> NeumannAdjoint(terms=4).options()
            {'terms': 4}
        """
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {}

    @abc.abstractmethod
    def attach(self, f: FlatMap, z_star: Tensor, *, solver: AbstractFixedPointSolver, control: LoopControl,
               init: Tensor | None = None, forward: LoopOutcome | None = None) -> Tensor:
        """``f`` and ``z_star`` are flat ``(B, N)``; return a ``(B, N)`` tensor equal to ``z_star``.

        ``solver`` / ``control`` are the forward solve's, ``init`` a warm start for a backward solve, and
        ``forward`` the forward :class:`LoopOutcome` (``forward.state`` is the solver's final state), for
        adjoints that reuse what the forward solve built (``None`` when there was no forward loop).
        """


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
                out = run_loop(back_solver, forward_map, u_bar, forward_map(u_bar), back_control)
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
    exact: ClassVar[bool] = True

    def __init__(self, solver: AbstractFixedPointSolver | str | None = None, *, atol: float | None = None,
                 rtol: float | None = None, max_steps: int | None = None, throw: bool = False,
                 **options: Any) -> None:
        if isinstance(solver, str):  # a name, resolved once, here at construction (the edge)
            from ._resolve import resolve_solver

            solver = resolve_solver(solver, **options)
        elif options:
            raise DeqConfigError(
                f"ImplicitAdjoint got solver options {sorted(options)} without a solver name; "
                "pass e.g. ImplicitAdjoint('anderson', m=5)"
            )
        elif solver is not None and not isinstance(solver, AbstractFixedPointSolver):
            raise DeqConfigError(
                f"ImplicitAdjoint.solver must be a solver, a name or None, got {type(solver).__name__}"
            )
        check_tolerances(1.0 if atol is None else atol, 1.0 if rtol is None else rtol,
                         1 if max_steps is None else max_steps, "ImplicitAdjoint")
        self.solver, self.atol, self.rtol, self.max_steps, self.throw = solver, atol, rtol, max_steps, throw

    def options(self) -> dict[str, Any]:
        """As :meth:`AbstractAdjoint.options`; a backward solver comes as its name plus its own options.

        Example:
            >>> from deq_core import ImplicitAdjoint
            >>> ImplicitAdjoint("fixed-point", damping=0.5, rtol=1e-6).options()
            {'solver': 'fixed-point', 'atol': None, 'rtol': 1e-06, 'max_steps': None, 'throw': False, 'damping': 0.5}
        """
        solver = self.solver
        head = {"solver": None if solver is None else solver.name, "atol": self.atol, "rtol": self.rtol,
                "max_steps": self.max_steps, "throw": self.throw}
        return head if solver is None else {**head, **solver.options()}

    def __repr__(self) -> str:
        return (f"ImplicitAdjoint(solver={self.solver!r}, atol={self.atol}, rtol={self.rtol}, "
                f"max_steps={self.max_steps}, throw={self.throw})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImplicitAdjoint) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def attach(self, f, z_star, *, solver, control, init=None, forward=None, warm_rows=None, keep=None):
        """As :meth:`AbstractAdjoint.attach`; besides, ``warm_rows`` ``(B,)`` bool limits the warm start ``init``
        to those rows (the others start at ``v``), and ``keep(u)`` receives the backward solution (both are how
        :class:`deq_core.FixedPointCache` warm-starts the backward solve per sample)."""
        return self._attach(f, z_star, solver, control, init, None, warm_rows, keep)

    def _attach(self, f, z_star, solver, control, init, gate, warm_rows=None, keep=None):
        z, fz, mark = _reengage_marked(f, z_star)
        if not fz.requires_grad:
            return z_star.detach()
        back_solver = self.solver if isinstance(self.solver, AbstractFixedPointSolver) else solver
        back_control = LoopControl(
            control.atol if self.atol is None else self.atol,
            control.rtol if self.rtol is None else self.rtol,
            control.max_steps if self.max_steps is None else self.max_steps,
            control.check_every, control.divergence, record_trace=False, sync_ranks=control.sync_ranks,
            group=control.group,
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
                if warm is not None and warm_rows is not None:
                    u0 = torch.where(warm_rows[:, None], u0, v)
                out = run_loop(back_solver, backward_map, u0, backward_map(u0), back_control)
            if throw and not bool(out.converged.all()):
                raise DeqSolveError(f"implicit backward solve {out.result.message}")
            if keep is not None:
                keep(out.z)
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
        check_int(self, "terms", self.terms, 0)

    def reference(self, J: Tensor, v: Tensor) -> Tensor:
        """``u = sum_{t=0..terms} (J^T)^t v``."""
        total, term = v, v
        for _ in range(self.terms):
            term = (J.transpose(-1, -2) @ term.unsqueeze(-1)).squeeze(-1)
            total = total + term
        return total

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
        check_int(self, "steps", self.steps, 1)
        check_range(self, "damping", self.damping, 0.0, 1.0)

    def reference(self, J: Tensor, v: Tensor) -> Tensor:
        """``u = d * sum_{j<steps} ((1 - d) I + d J^T)^j v`` (``d = damping``): ``steps`` damped steps from ``z*``."""
        d = self.damping
        total, term = torch.zeros_like(v), v
        for _ in range(self.steps):
            total = total + d * term
            term = (1 - d) * term + d * (J.transpose(-1, -2) @ term.unsqueeze(-1)).squeeze(-1)
        return total

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
    exact: ClassVar[bool] = True  # to the forward tolerance: the unrolled solve's derivative tends to (I - J)^-1

    def attach(self, f, z_star, *, solver, control, init=None, forward=None):
        return z_star

