"""CUDA paths (bf16 by default, QLoRA 4-bit, FSDP over NCCL): skipped without GPUs; run them where they exist."""

import pytest
import torch

from tunelab.config import validate
from tunelab.rundir import RunDir
from tunelab.train import train

pytestmark = pytest.mark.gpu


def test_bf16_training_on_cuda(tiny_recipe, tmp_path):
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "device": "cuda", "epochs": 1}}
    run = RunDir(tmp_path / "cuda")
    result = train(validate(raw, "cuda"), run)
    assert result.epochs[1]["val_loss"] < result.epochs[0]["val_loss"]
    assert run.read_json(run.environment)["device"] == "cuda"
    estimate = run.read_json(run.estimate)  # the peak memory on this GPU, whatever the table knows of it
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    assert estimate["memory_gib"] == round(total, 1) and estimate["gpu_memory"]["fits"]


def test_qlora_4bit_loads_and_trains(tiny_recipe, tmp_path):
    pytest.importorskip("bitsandbytes")
    raw = {**tiny_recipe, "model": {**tiny_recipe["model"], "load_in_4bit": True},
           "train": {**tiny_recipe["train"], "device": "cuda", "epochs": 1}}
    import tunelab.train.loop as loop
    seen = {}
    real_start = loop._start

    def start(*args, **kwargs):  # keep the loaded model to check that its base weights are really 4-bit
        seen["loop"] = real_start(*args, **kwargs)
        return seen["loop"]

    loop._start = start
    try:
        result = train(validate(raw, "qlora"), RunDir(tmp_path / "qlora"))
    finally:
        loop._start = real_start
    kinds = {type(m).__name__ for m in seen["loop"].model.modules()}
    assert "Linear4bit" in kinds, kinds  # bitsandbytes NF4 base layers under the LoRA adapters
    assert result.epochs[1]["val_loss"] < result.epochs[0]["val_loss"]  # and it learns


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_fsdp_on_two_gpus_matches_one_gpu(tiny_recipe, tmp_path):
    """NCCL + FSDP2 on CUDA, bf16: 2 GPUs with sharding match 1 GPU with grad_accum 2 (bf16 tolerance)."""
    import os
    import subprocess
    import sys
    import yaml

    def recipe(name, accum):
        raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "device": "cuda", "epochs": 1, "batch_size": 4,
                                        "grad_accum": accum}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    subprocess.run([sys.executable, "-m", "tunelab.cli", "-q", "train", recipe("one", 2), "--run-dir",
                    str(tmp_path / "one")], check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tunelab.cli",
                           "-q", "train", recipe("two", 1), "--set", "train.sharding=fsdp", "--run-dir",
                           str(tmp_path / "two")], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (RunDir(tmp_path / n).read_jsonl(RunDir(tmp_path / n).epochs) for n in ("one", "two"))
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=2e-2)
    assert RunDir(tmp_path / "two").read_json(RunDir(tmp_path / "two").summary)["sharding"] == "fsdp"
