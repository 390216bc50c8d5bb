"""``Frontier``: what a map closes over, found from its graph, and gradients delivered there once."""

from __future__ import annotations

import torch

from deq_core._graph import Frontier


def build():
    torch.manual_seed(0)
    W = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = 2 * x0  # an upstream graph, created before f runs

    def f(z):
        return torch.tanh(z @ W.T + h) + 0.1 * (z @ W) + h  # W and h each reached twice
    return W, x0, h, f


def test_frontier_is_the_closed_over_tensors_not_the_point():
    W, x0, h, f = build()
    z, fz, fr = Frontier.evaluate(f, torch.zeros(2, 3, dtype=torch.float64))
    nodes = {type(e.node).__name__ for e in fr.edges}
    assert len(fr.edges) == 2 and nodes == {"AccumulateGrad", "MulBackward0"}
    # VJPs with respect to the edges equal those with respect to the tensors
    p = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out = f(p)
    v = torch.randn_like(out)
    gp, ge = fr.vjp(out, p, v, retain_graph=True)
    gW, gh, gp2 = torch.autograd.grad(out, (W, h, p), v)
    by_node = {type(e.node).__name__: g for e, g in zip(fr.edges, ge)}
    assert torch.allclose(by_node["AccumulateGrad"], gW) and torch.allclose(by_node["MulBackward0"], gh)
    assert torch.allclose(gp, gp2)


def test_deliver_replaces_the_graph_gradient_once_in_the_running_backward():
    W, x0, h, f = build()
    z, fz, fr = Frontier.evaluate(f, torch.zeros(2, 3, dtype=torch.float64))
    gW, gh = torch.full_like(W, 3.0), torch.full_like(h, 5.0)
    order = {type(e.node).__name__: i for i, e in enumerate(fr.edges)}
    grads = [None, None]
    grads[order["AccumulateGrad"]], grads[order["MulBackward0"]] = gW, gh

    out = fz.view_as(fz)
    out.register_hook(lambda g: (fr.deliver(grads), g)[1])
    (out.sum() + (W * 0).sum()).backward(retain_graph=True)
    assert torch.equal(W.grad, gW)  # two sites feed W: the sum arrives once, not twice
    assert torch.equal(x0.grad, 2 * gh)
    # a later backward that does not deliver again sees the graph's own gradients
    W.grad = x0.grad = None
    hooks_off = fz.sum()
    hooks_off.backward(retain_graph=True)
    zl = z.detach().requires_grad_()
    want_W, want_x = torch.autograd.grad(f(zl).sum(), (W, x0))
    assert torch.allclose(W.grad, want_W) and torch.allclose(x0.grad, want_x)


def test_deliver_skips_edges_the_backward_does_not_need():
    W, x0, h, f = build()
    z, fz, fr = Frontier.evaluate(f, torch.zeros(2, 3, dtype=torch.float64))
    grads = [torch.ones_like(W) if type(e.node).__name__ == "AccumulateGrad" else torch.ones_like(h)
             for e in fr.edges]
    out = fz.view_as(fz)
    out.register_hook(lambda g: (fr.deliver(grads), g)[1])
    (gx,) = torch.autograd.grad(out.sum(), x0)  # W's edge is not needed here
    assert torch.equal(gx, torch.full_like(x0, 2.0))
