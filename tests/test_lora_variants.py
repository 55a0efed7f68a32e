"""PEFT's LoRA variants as recipe keys (`lora.use_rslora`, `lora.use_dora`): they reach training, are saved in the
adapter, survive a resume, merge for eval and export, and the report, the model card and the hand-offs name them."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import assert_same_adapter
from tunelab.config import validate
from tunelab.rundir import RunDir
from tunelab.train import train


def _recipe(tiny_recipe, epochs: int = 1, **lora) -> dict:
    return {**tiny_recipe, "lora": {**tiny_recipe["lora"], **lora},
            "train": {**tiny_recipe["train"], "epochs": epochs, "batch_size": 4, "checkpoint_every": 2,
                      "keep_checkpoints": 20}}


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def test_rslora_scales_the_update_by_alpha_over_the_square_root_of_r(tiny_recipe, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    cfg = validate(_recipe(tiny_recipe, use_rslora=True), "rs")
    assert cfg.lora.method == "rsLoRA"
    run = train(cfg, RunDir(tmp_path / "rs"))
    assert json.loads((tmp_path / "rs" / "adapter" / "adapter_config.json").read_text())["use_rslora"] is True
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "rs" / "adapter")
    r, alpha = cfg.lora.r, cfg.lora.alpha
    assert [m.scaling["default"] for m in _lora_layers(reloaded)] == pytest.approx([alpha / math.sqrt(r)] * 14)
    plain = train(validate(_recipe(tiny_recipe), "plain"), RunDir(tmp_path / "plain"))
    # same seed, same data: only the scale (alpha/sqrt(8) = 2.8x alpha/8) differs, and training felt it
    assert run.epochs[1]["train_loss"] != pytest.approx(plain.epochs[1]["train_loss"], rel=1e-3)


@pytest.mark.slow
def test_dora_trains_magnitudes_resumes_exactly_and_merges_for_eval(tiny_recipe, tiny_model, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunelab.models import load_adapter
    from tunelab.report import write_report
    cfg = validate(_recipe(tiny_recipe, epochs=2, use_dora=True), "dora")
    straight = RunDir(tmp_path / "straight")
    train(cfg, straight)

    weights = load_file(straight.adapter / "adapter_model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    adapted = [name for name, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in name]
    magnitudes = {k: v for k, v in weights.items() if k.endswith("lora_magnitude_vector")}
    assert len(magnitudes) == len(adapted)  # one per adapted Linear
    start = {f"base_model.model.{n}.lora_magnitude_vector": base.get_submodule(n).weight.norm(dim=1) for n in adapted}
    moved = [k for k in magnitudes if not torch.allclose(magnitudes[k], start[k], atol=1e-4)]
    assert len(moved) == len(magnitudes)  # DoRA initialises them to the weight norms; every one was trained

    resumed = RunDir(tmp_path / "resumed")  # the run as a crash after its second checkpoint left it
    shutil.copytree(straight.path, resumed.path)
    for later in sorted(resumed.checkpoints.glob("step-*"))[2:]:
        shutil.rmtree(later)
    for done in (resumed.summary, resumed.adapter / "adapter_model.safetensors"):
        done.unlink()
    train(cfg, resumed, resume=True)
    assert_same_adapter(straight.path, resumed.path, atol=1e-5, rtol=1e-4)

    ids = torch.tensor([[1, 20, 300, 4000, 50, 6]])
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), straight.adapter)
        merged = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model), straight.adapter)  # as eval does
        torch.testing.assert_close(merged(ids).logits, unmerged(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-3)

    write_report(straight)
    assert "| Method | DoRA r=8," in straight.report_md.read_text()
    card = (straight.adapter / "README.md").read_text()
    assert "a DoRA adapter for" in card and "- dora" in card
    served = f"{straight.path.resolve()}-merged"
    commands = [c for _, c in __import__("tunelab.handoff", fromlist=["for_run"]).for_run(straight)]
    assert commands[0] == f"tunelab export {straight.path} {served}"
    assert f"vllm serve {served}" in commands and not any("--enable-lora" in c for c in commands)


def test_the_estimate_counts_doras_second_base_pass_only_with_dropout(tiny_recipe):
    from tunelab import cost
    from tunelab.data import load_splits
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize_with
    per_token = {}
    for dora, dropout in [(False, 0.05), (True, 0.0), (True, 0.05)]:
        cfg = validate(_recipe(tiny_recipe, use_dora=dora, dropout=dropout), "est")
        items, _ = tokenize_with(cfg, load_splits(cfg.data).train[:4], load_tokenizer(cfg.model))
        per_token[dora, dropout] = cost.recipe_work(cfg, items, items)["flops_per_train_token"]
    assert per_token[True, 0.0] == per_token[False, 0.05]  # the same matmuls (the norm's cost is not FLOPs here)
    assert per_token[True, 0.05] == 2 * per_token[False, 0.05]
