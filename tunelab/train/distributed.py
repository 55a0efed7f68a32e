"""Data-parallel training across processes (torchrun / accelerate launch): gloo on CPU, NCCL on CUDA.

Every rank builds the same batch list (same seed); optimizer step k uses batches
[k*A*W, (k+1)*A*W) of the epoch, rank r taking its A of them (A = grad_accum, W = world size), so a
W-process run sees exactly the global batches of a 1-process run with grad_accum A*W. The loss is
divided by the step's global supervised-token count (known to every rank) and the LoRA gradients
are summed with one all-reduce per step: the same token-weighted objective as one process. Metrics
are summed across ranks; only rank 0 writes the run directory.

Run as: torchrun --nproc_per_node 2 -m tunelab.cli train quickstart --run-dir runs/ddp
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a few numbers over ranks (float64, exact for token counts)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """One all-reduce of all trainable gradients, flattened (LoRA gradients are a few MB)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def gather(self, rows: list) -> list:
        """Every rank's rows, concatenated in rank order (on every rank)."""
        if self.world == 1:
            return rows
        parts: list = [None] * self.world
        dist.all_gather_object(parts, rows)
        return [r for part in parts for r in part]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device_kind: str) -> Dist:
    """Join the process group when launched by torchrun / accelerate (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        cuda = device_kind != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
