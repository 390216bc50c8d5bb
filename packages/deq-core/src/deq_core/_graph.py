"""What a map ``f`` closes over, as autograd edges: for adjoints that need ``f``'s VJPs at several points.

An adjoint that evaluates ``f`` at more than one point (the reversible backward reconstructs every iterate)
or at a point that must itself carry a gradient (second-order gradients) cannot let autograd run through the
one graph of ``f(z*)`` that the forward pass built: that graph's VJP is taken at ``z*`` with one cotangent.
It needs, instead, the gradient with respect to *everything ``f`` closes over* (parameters, an injected
input ``x``, a normalised weight computed outside ``f``), summed over points, and to hand that sum to the
rest of the backward pass exactly once, as if it had come out of ``f(z*)``'s graph.

:class:`Frontier` finds those tensors without being told: it walks the graph of one evaluation
``f(z)``; nodes created during that call are ``f``'s own, every edge from one of them to a node created
before the call (a leaf's accumulator or an upstream op, e.g. the encoder that computed ``x``) is a
*frontier edge*. ``torch.autograd.grad`` accepts such edges as inputs, so the VJP of any later evaluation
of ``f`` with respect to the frontier is one call. :meth:`Frontier.deliver` then arms hooks on the nodes of
the walked graph that feed the frontier, so that when autograd runs that graph, the frontier receives the
delivered gradients instead of what the graph computed: parameters' accumulators (and DDP's hooks on them)
fire once, with the full gradient, and upstream graphs are traversed once.

Assumptions (documented limits): ``f`` reaches the same closed-over tensors at every point (no control flow
that swaps parameters), and ``f`` is evaluated on the thread that built the graph (sequence numbers are
per thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, get_gradient_edge

__all__ = ["Frontier", "graph_mark"]

_PROBE = torch.zeros(0, requires_grad=True)


def graph_mark() -> int:
    """Current autograd sequence number of this thread: nodes created later have larger numbers."""
    with torch.enable_grad():
        return _PROBE.view_as(_PROBE).grad_fn._sequence_nr()


class Frontier:
    """The frontier edges of the graph of ``fz = f(z)`` evaluated after ``mark = graph_mark()``.

    Arguments:
        fz: the output of ``f`` (``(B, N)``), with its graph.
        z: the leaf ``f`` was evaluated at (its own accumulator is not part of the frontier).
        mark: :func:`graph_mark` taken just before ``f`` was called.

    Attributes:
        edges: the frontier, one :class:`~torch.autograd.graph.GradientEdge` per closed-over tensor.

    Example:
        >>> import torch
        >>> from deq_core._graph import Frontier, graph_mark
        >>> W = torch.eye(2, requires_grad=True)
        >>> z = torch.ones(1, 2, requires_grad=True)
        >>> mark = graph_mark(); fz = z @ W
        >>> len(Frontier(fz, z, mark).edges)   # W
        1
    """

    def __init__(self, fz: Tensor, z: Tensor, mark: int) -> None:
        own = get_gradient_edge(z).node if z.requires_grad and z.grad_fn is None else None
        index: dict[tuple[int, int], int] = {}
        self.edges: list[GradientEdge] = []
        self._sites: list[list[tuple[object, int]]] = []  # per edge: (inside node, input index) feeding it
        self._pending: Sequence[Tensor | None] | None = None
        self._task = -1
        self._hooked = False
        root = fz.grad_fn
        if root is None:
            return
        stack, seen = [root], {root}
        while stack:
            node = stack.pop()
            for i, (nxt, nr) in enumerate(node.next_functions):
                if nxt is None or nxt is own:
                    continue
                outside = type(nxt).__name__ == "AccumulateGrad" or nxt._sequence_nr() <= mark
                if outside:
                    key = (id(nxt), nr)
                    if key not in index:
                        index[key] = len(self.edges)
                        self.edges.append(GradientEdge(nxt, nr))
                        self._sites.append([])
                    self._sites[index[key]].append((node, i))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)

    @classmethod
    def evaluate(cls, f: Callable[[Tensor], Tensor], z_star: Tensor) -> tuple[Tensor, Tensor, Frontier]:
        """Evaluate ``f`` at a fresh leaf equal to ``z_star``; return ``(z, f(z), frontier)``."""
        z = z_star.detach().requires_grad_()
        mark = graph_mark()
        with torch.enable_grad():
            fz = f(z)
        return z, fz, cls(fz, z, mark)

    def vjp(self, out: Tensor, point: Tensor | None, cotangent: Tensor, *, create_graph: bool = False,
            retain_graph: bool | None = None) -> tuple[Tensor | None, list[Tensor | None]]:
        """``(d<out, cot>/d point, [d<out, cot>/d edge for edge in edges])``; entries are ``None`` where
        ``out`` does not depend on them (``point=None`` skips the point)."""
        inputs: list[Tensor | GradientEdge] = ([] if point is None else [point]) + list(self.edges)
        if not inputs:
            return None, []
        grads = torch.autograd.grad(out, inputs, cotangent, create_graph=create_graph, retain_graph=retain_graph,
                                    allow_unused=True)
        if point is None:
            return None, list(grads)
        return grads[0], list(grads[1:])

    def deliver(self, grads: Sequence[Tensor | None]) -> None:
        """When autograd next runs the walked graph, the frontier gets ``grads`` (one per edge) instead of
        what that graph computes; call before autograd reaches the graph's nodes (from a hook on ``fz``)."""
        if len(grads) != len(self.edges):
            raise ValueError(f"Frontier.deliver expected {len(self.edges)} gradients, got {len(grads)}")
        # only the backward pass running now (its graph task) substitutes: a later pass that runs the same
        # nodes again (double backward through their outputs) must see what the graph computes
        self._pending = list(grads)
        self._task = torch._C._current_graph_task_id()
        if self._hooked:
            return
        self._hooked = True
        for e, sites in enumerate(self._sites):
            for k, (node, i) in enumerate(sites):
                node.register_hook(self._substitute(e, i, first=k == 0))

    def _substitute(self, e: int, i: int, *, first: bool):
        def hook(grad_inputs, grad_outputs):
            if self._pending is None or torch._C._current_graph_task_id() != self._task:
                return None
            out = list(grad_inputs)
            if out[i] is None:  # this backward does not need the edge (autograd.grad with other inputs)
                return None
            g = self._pending[e] if first else None
            out[i] = torch.zeros_like(out[i]) if g is None else g
            return tuple(out)

        return hook
