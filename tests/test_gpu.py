"""CUDA paths (bf16 by default, QLoRA 4-bit): skipped without a GPU; run them where one is available."""

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


def test_qlora_4bit_loads_and_trains(tiny_recipe, tmp_path):
    pytest.importorskip("bitsandbytes")
    raw = {**tiny_recipe, "model": {**tiny_recipe["model"], "load_in_4bit": True},
           "train": {**tiny_recipe["train"], "device": "cuda", "epochs": 1}}
    result = train(validate(raw, "qlora"), RunDir(tmp_path / "qlora"))
    assert torch.isfinite(torch.tensor(result.epochs[1]["val_loss"]))
