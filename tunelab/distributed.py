"""Multi-process training and evaluation (torchrun / accelerate launch): data parallel, or sharded with PyTorch FSDP2.

Every rank builds the same batch list (same seed); optimizer step k uses batches
[k*A*W, (k+1)*A*W) of the epoch, rank r taking its A of them (A = grad_accum, W = world size), so a
W-process run sees exactly the global batches of a 1-process run with grad_accum A*W. The loss is
divided by the step's global supervised-token count (known to every rank) and gradients are summed
over ranks: the same token-weighted objective as one process. Metrics are summed across ranks; only
rank 0 writes the run directory.

Two ways to share the work (`train.sharding`):
- `none`: every rank holds the whole model; the LoRA gradients are summed with one all-reduce per
  step (a few MB), after the step's last backward.
- `fsdp`: PyTorch FSDP2 (`fully_shard`, one unit per decoder layer plus the root) shards the frozen
  base weights, the LoRA weights, their gradients and the optimizer state across ranks; weights are
  all-gathered layer by layer in forward and backward, gradients reduce-scattered after the step's
  last backward. Every forward is a collective, so all ranks run the same number of forwards (a
  rank with fewer micro-batches runs zero-weight ones). `accelerate launch --use_fsdp` selects it.

gloo on CPU, NCCL on CUDA.

Run as: torchrun --nproc_per_node 2 -m tunelab.cli train quickstart --run-dir runs/ddp
        accelerate launch --multi_gpu --num_processes 2 -m tunelab.cli train quickstart --run-dir runs/ddp
        accelerate launch --use_fsdp --num_processes 2 -m tunelab.cli train quickstart --run-dir runs/fsdp
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from tunelab.errors import UserError

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate (or a single process): the one that writes the run dir, logs and
    holds its lock. Read from the launcher's RANK so that torch-free commands (report, compare) can ask too."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sharded: bool = False  # FSDP: weights, gradients and optimizer state split across ranks
    fsdp_options: dict = field(default_factory=dict)  # fully_shard keyword arguments

    @property
    def main(self) -> bool:
        return self.rank == 0  # == is_main_process(): the launcher's RANK is the process group's rank

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a few numbers over ranks (float64, exact for token counts)."""
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: int) -> int:
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t)

    def sum_grads(self, params: list) -> None:
        """One all-reduce of all trainable gradients, flattened (LoRA gradients are a few MB).
        Under FSDP the gradients were already reduce-scattered in backward."""
        if self.world == 1 or self.sharded:
            return
        import torch
        import torch.distributed as dist
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
        import torch.distributed as dist
        parts: list = [None] * self.world
        dist.all_gather_object(parts, rows)
        return [r for part in parts for r in part]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def shard(self, net, layers) -> None:
        """FSDP2: one unit per decoder layer, the rest (embeddings, final norm, LM head) in the root unit."""
        from torch.distributed.fsdp import fully_shard
        for layer in layers:
            fully_shard(layer, **self.fsdp_options)
        fully_shard(net, **self.fsdp_options)

    @property
    def loss_scale(self) -> float:
        """FSDP averages gradients over ranks (gloo has no pre-multiplied sum); scaling the loss by W makes
        that average the sum the token-weighted objective needs."""
        return float(self.world) if self.sharded else 1.0

    def sync_gradients(self, net, now: bool) -> None:
        """FSDP: reduce-scatter gradients only after the step's last backward (earlier ones accumulate)."""
        if self.sharded:
            net.set_requires_gradient_sync(now)


def setup(device_kind: str, sharding: str = "none") -> Dist:
    """Join the process group when launched by torchrun / accelerate (WORLD_SIZE > 1).

    Raises:
        UserError: launched by `accelerate launch --use_deepspeed` (tunelab shards with FSDP instead).
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise UserError("accelerate launch --use_deepspeed: tunelab does not run on DeepSpeed; launch with "
                        "--use_fsdp (or set train.sharding=fsdp): FSDP full sharding is ZeRO-3's equivalent")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        sharding = "fsdp"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if sharding == "fsdp":
            log.warning("train.sharding=fsdp with one process: nothing to shard, training unsharded")
        return Dist()
    import torch
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device_kind != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, sharding == "fsdp", fsdp_options())


def fsdp_options(env=os.environ) -> dict:
    """The `accelerate launch --use_fsdp` settings tunelab honours, as `fully_shard` arguments.

    FULL_SHARD (ZeRO-3 style) by default; SHARD_GRAD_OP or FSDP_RESHARD_AFTER_FORWARD=false keep each
    layer's gathered weights from forward to backward (ZeRO-2 style: more memory, less traffic);
    FSDP_OFFLOAD_PARAMS=true keeps the shards in CPU memory between uses.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy
    options: dict = {}
    if env.get("FSDP_RESHARD_AFTER_FORWARD", "").lower() == "false" or \
            env.get("FSDP_SHARDING_STRATEGY", "") in ("SHARD_GRAD_OP", "2"):
        options["reshard_after_forward"] = False
    if env.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true":
        options["offload_policy"] = CPUOffloadPolicy()
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true":
        log.warning("FSDP_ACTIVATION_CHECKPOINTING is not read: set train.gradient_checkpointing=true instead")
    return options
