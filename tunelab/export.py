"""Export a run: the merged model (HF safetensors + tokenizer) or just the PEFT adapter.

Run as: tunelab export runs/smoke out/smoke-merged
        tunelab export runs/smoke out/smoke-adapter --adapter-only
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.errors import UserError
from tunelab.rundir import RunDir, atomic_folder


def export(run: RunDir, out: Path, adapter_only: bool = False) -> Path:
    """Write the run's model to `out` (must not exist); loadable by `AutoModelForCausalLM.from_pretrained`.

    Raises:
        UserError: no adapter in the run, `out` already exists, or disk full / unwritable.
    """
    run.require(run.adapter_config, "adapter: train first (tunelab train)")
    if out.exists():
        raise UserError(f"{out}: already exists; choose a new output folder")
    with atomic_folder(out) as tmp:
        if adapter_only:
            shutil.copytree(run.adapter, tmp, dirs_exist_ok=True)
        else:
            import torch
            from tunelab.models import load_adapter, load_model, load_tokenizer
            cfg = run.read_recipe()
            model = load_adapter(load_model(cfg.model.model_copy(update={"load_in_4bit": False}),
                                            torch.device("cpu")), run.adapter, merge=True)
            model.save_pretrained(tmp)
            load_tokenizer(cfg.model).save_pretrained(tmp)
    return out
