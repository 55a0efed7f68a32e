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
    next_group: int = 0  # optimizer steps already taken in this epoch
    step: int = 0  # optimizer steps taken in total
    epochs: list = field(default_factory=list)  # finished epoch rows (epoch 0 = before training)
    step_log: list = field(default_factory=list)
    example_log: list = field(default_factory=list)
    epoch_sums: dict = field(default_factory=dict)  # this epoch's PassStats so far
    epoch_seconds: float = 0.0  # training seconds spent in this epoch so far
    train_seconds: float = 0.0
    train_tokens: int = 0


def directory(run: RunDir) -> Path:
    return run.path / "checkpoints"


def latest(run: RunDir) -> Path | None:
    done = sorted(p for p in directory(run).glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def save(run: RunDir, model, optimizer, scheduler, state: State, keep: int) -> Path:
    """Write checkpoint `step-NNNNNNN` atomically and prune to the last `keep`.

    Raises:
        UserError: disk full or unwritable run dir; the earlier checkpoints are intact.
    """
    root = directory(run)
    final = root / f"step-{state.step:07d}"
    with atomic_folder(final) as tmp:
        torch.save({"trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng_torch": torch.get_rng_state(), "rng_python": random.getstate(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "weights.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))  # written last: marks the checkpoint complete
    for old in sorted(p for p in root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, model, optimizer, scheduler) -> State:
    blob = torch.load(path / "weights.pt", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in blob["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng_torch"])
    random.setstate(blob["rng_python"])
    if blob["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng_cuda"])
    return State(**json.loads((path / "state.json").read_text()))
