"""Train a DEQ classifier with DistributedDataParallel: one process per GPU (or per CPU slot with gloo).

Run it with PyTorch's launcher, e.g. two processes on one machine::

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --epochs 3 --out ddp-out

(``--nproc_per_node=gpu`` starts one process per visible GPU). NCCL is used when CUDA is available, gloo
otherwise, so the same command runs on a laptop's CPU. Data: scikit-learn's bundled 8x8 digits (no download);
each rank reads its own shard through ``DistributedSampler``.

What matters for a DEQ under DDP:

* the solve is rank-local: ranks may take different numbers of solver steps (no collective runs inside it);
  the implicit backward runs inside autograd, before DDP all-reduces the parameter gradients once per backward;
* the warm-start cache (``DEQ(reuse=True)``) belongs to each process: key it by what the rank sees;
* solver statistics differ per rank: ``deq_core.reduce_stats`` turns them into the global batch's numbers
  (every rank must call it; only rank 0 prints);
* only rank 0 writes the checkpoint (``deq_core.save``), from the unwrapped module ``ddp.module``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from deq_core import DEQ, ImplicitAdjoint, reduce_stats, save
from deq_core.nn import spectral_norm


class Layer(nn.Module):
    """``f(z, x) = tanh(W z + U x)`` with ``||W||_2 <= 0.9`` (a contraction, so the fixed point exists)."""

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.W = spectral_norm(nn.Linear(width, width, bias=False), max_norm=0.9)
        self.U = nn.Linear(features, width)
        self.width = width

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.W(z) + self.U(x))

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.width)


class Classifier(nn.Module):
    def __init__(self, features: int = 64, width: int = 64, classes: int = 10, solver: str = "fixed-point") -> None:
        super().__init__()
        self.deq = DEQ(Layer(features, width), solver=solver, adjoint=ImplicitAdjoint(rtol=1e-4), rtol=1e-4,
                       max_steps=60)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor):
        z, info = self.deq(x)
        return self.head(z), info


def digits() -> TensorDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="per-process batch size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--solver", default="fixed-point", help="any registered solver name, e.g. anderson")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None, help="cut epochs short (smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("ddp-out"))
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's at construction)
    model = Classifier(solver=args.solver).to(device)
    ddp = DDP(model, device_ids=[local_rank] if cuda else None)
    data = digits()
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler, drop_last=True)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)

    log = []
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a different shuffle per epoch, the same on every rank
        for i, (x, y) in enumerate(loader):
            if args.max_steps_per_epoch is not None and i >= args.max_steps_per_epoch:
                break
            x, y = x.to(device), y.to(device)
            logits, info = ddp(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()  # implicit backward on this rank, then DDP's all-reduce of parameter gradients
            opt.step()
            stats = reduce_stats(info.stats)  # collective: every rank calls it
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= world
            log.append({"epoch": epoch, "step": i, "loss": mean_loss.item(), **stats})
        if rank == 0:
            last = log[-1]
            print(f"epoch {epoch}: loss {last['loss']:.4f}  solver steps max {last['steps_max']} "
                  f"mean {last['steps_mean']:.1f}  converged {last['converged']}/{last['batch']}  "
                  f"({world} processes, {time.perf_counter() - t0:.1f} s)", flush=True)

    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        save(args.out / "model.safetensors", ddp.module, {"deq": ddp.module.deq.config(), "world_size": world})
        (args.out / "log.json").write_text(json.dumps(log, indent=1))
        print(f"wrote {args.out / 'model.safetensors'} and {args.out / 'log.json'}", flush=True)
    del ddp  # free DDP's reducer before the process group goes away
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
