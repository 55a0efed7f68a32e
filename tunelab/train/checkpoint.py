"""Checkpoints: adapter weights, optimizer, scheduler, RNG states, data position and metrics so far.

Written atomically (temp folder + rename) under `checkpoints/step-NNNNNNN`, keeping the last K, so a
crash at any moment leaves the previous checkpoint intact. Resuming repeats and skips no optimizer step.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunelab.rundir import RunDir, atomic_folder


@dataclass
class State:
    """Everything the loop needs to continue exactly where it stopped."""
    epoch: int = 1  # the epoch in progress
    epoch_step: int = 0  # optimizer steps already taken in this epoch
    step: int = 0  # optimizer steps taken in total
    epochs: list = field(default_factory=list)  # finished epoch rows (epoch 0 = before training)
    step_log: list = field(default_factory=list)
    val_log: list = field(default_factory=list)  # every validation pass: step, epoch, loss, token accuracy
    example_log: list = field(default_factory=list)
    epoch_examples: list = field(default_factory=list)  # this epoch's per-row train losses so far (all ranks')
    epoch_sums: dict = field(default_factory=dict)  # this epoch's PassStats so far
    epoch_seconds: float = 0.0  # training seconds spent in this epoch so far
    train_seconds: float = 0.0
    train_tokens: int = 0
    processes: int = 1  # the global batch is grad_accum x processes: a resume must keep it


def latest(run: RunDir) -> Path | None:
    done = sorted(p for p in run.checkpoints.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def trainable_state(net) -> dict[str, torch.Tensor]:
    """The full (unsharded) trainable weights on CPU, on rank 0; other ranks get {}.

    A collective under FSDP: every rank calls it. Keys are the parameter names under `net`.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    names = {n for n, p in net.named_parameters(remove_duplicate=False) if p.requires_grad}  # tied: both names
    full = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                              ignore_frozen_params=True))
    return {k: v for k, v in full.items() if k in names}  # a tied, frozen LM head can slip through


def save(run: RunDir, net, optimizer, scheduler, state: State, keep: int, main: bool = True,
         best: dict | None = None) -> Path:
    """Write checkpoint `step-NNNNNNN` atomically (rank 0) and prune to the last `keep`. `best`: the lowest
    validation pass's weights the loop holds for adapters/best-loss/ (a resume gets them back).

    Weights and optimizer state are stored whole, whatever the sharding, so a run can resume with
    another number of processes. Every rank calls this (gathering is a collective); only `main` writes.

    Raises:
        UserError: disk full or unwritable run dir; the earlier checkpoints are intact.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    blob = {"trainable": trainable_state(net),
            "optimizer": get_optimizer_state_dict(net, optimizer, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True)),
            "best": best, "scheduler": scheduler.state_dict(), "rng_torch": torch.get_rng_state(),
            "rng_python": random.getstate(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    root = run.checkpoints
    final = root / f"step-{state.step:07d}"
    if not main:
        return final
    with atomic_folder(final) as tmp:
        torch.save(blob, tmp / "weights.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))  # written last: marks the checkpoint complete
    for old in sorted(p for p in root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, net, optimizer, scheduler) -> tuple[State, dict | None]:
    """Restore a checkpoint into `net` and `optimizer` (sharded or not); every rank calls this. Returns the loop
    state and the lowest validation pass's weights the loop held (`save`'s `best`)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    blob = torch.load(path / "weights.pt", weights_only=False)
    whole = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(net, blob["trainable"], options=whole)
    set_optimizer_state_dict(net, optimizer, blob["optimizer"], options=whole)
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng_torch"])
    random.setstate(blob["rng_python"])
    if blob["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng_cuda"])
    return read_state(path), blob.get("best")


def read_state(path: Path) -> State:
    """The loop state of checkpoint `path` (without loading its tensors)."""
    return State(**json.loads((path / "state.json").read_text()))
