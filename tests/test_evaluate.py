"""Generation and the eval stage: batched greedy equals batch-1 greedy; base vs tuned on the same questions."""

import json

import pytest
import torch

from tunelab.cli import main
from tunelab.config import validate
from tunelab.evaluate import evaluate
from tunelab.evaluate.generate import ANSWER_LINE, generate
from tunelab.rundir import RunDir
from tunelab.train import train


def test_batched_generation_equals_batch_one(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompts = [f"Instruction: what is {i} times {i + 3}, explained {'very ' * i}carefully?\nResponse: "
               for i in range(7)]
    batched, _ = generate(model, tok, prompts, max_new_tokens=12, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0][0] for p in prompts]
    assert [g.completion for g in batched] == [g.completion for g in single]
    assert [g.tokens for g in batched] == [g.tokens for g in single]
    assert all(0 < g.tokens <= 12 for g in batched)


def test_answer_line_stop_rule():
    assert ANSWER_LINE.search("3 + 4 = 7\n#### 7\n")
    assert not ANSWER_LINE.search("3 + 4 = 7\n#### 7")  # the line is not finished yet
    assert not ANSWER_LINE.search("####\n")


@pytest.fixture(scope="module")
def tiny_trained(tiny_model, tmp_path_factory):
    raw = {"name": "tiny", "model": {"name": str(tiny_model)},
           "data": {"source": "synthetic:arith", "template": "Instruction: {question}\nResponse: ",
                    "target": "{answer}", "label_field": "family", "synthetic_rows": 24, "synthetic_test_rows": 6},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"epochs": 1, "batch_size": 8, "lr": 3e-2, "max_length": 128},
           "eval": {"limit": 6, "max_new_tokens": 8}}
    run = RunDir(tmp_path_factory.mktemp("evalrun") / "run")
    cfg = validate(raw, "tiny")
    train(cfg, run)
    return cfg, run


def test_eval_writes_predictions_summary_and_paired_difference(tiny_trained, monkeypatch, tmp_path):
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = tiny_trained
    result = evaluate(cfg, run)
    preds = run.read_jsonl(run.eval_dir / "predictions.jsonl")
    assert sorted({p["model"] for p in preds}) == ["base", "tuned"] and len(preds) == 12
    base_ids = [p["id"] for p in preds if p["model"] == "base"]
    assert base_ids == [p["id"] for p in preds if p["model"] == "tuned"]  # same questions
    p = preds[0]
    assert {"question", "reference", "completion", "strict_answer", "flexible_answer", "strict_correct",
            "flexible_correct", "tokens", "label"} <= set(p)
    summary = run.read_json(run.eval_dir / "summary.json")
    assert summary["base"]["n"] == 6 and 0 <= summary["tuned"]["flexible_accuracy"] <= 1
    assert summary["strict_difference"]["n"] == 6 and len(summary["flexible_difference"]["ci95_pts"]) == 2
    assert "eval" not in run.read_json(run.summary)  # data flows forward: eval writes only eval/
    # the base pass is cached per model + questions; --only tuned keeps it
    again = evaluate(cfg, run, only="tuned")
    assert again.summary["base"] == result.summary["base"] and "flexible_difference" in again.summary
    third = evaluate(cfg, run, only="base")
    assert third.summary["base"]["cached"] is True


def test_eval_cli_on_a_run_without_adapter_exits_2(tiny_trained, tmp_path, capsys):
    cfg, run = tiny_trained
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text(run.config.read_text())
    assert main(["eval", str(bare)]) == 2
    assert "no adapter: train first" in capsys.readouterr().err
    assert not (bare / "eval").exists()


def test_export_merged_and_adapter_only(tiny_trained, tmp_path):
    from transformers import AutoModelForCausalLM
    cfg, run = tiny_trained
    assert main(["export", str(run.path), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k for k in merged.state_dict())
    assert main(["export", str(run.path), str(tmp_path / "ad"), "--adapter-only"]) == 0
    assert (tmp_path / "ad" / "adapter_config.json").is_file()
    assert main(["export", str(run.path), str(tmp_path / "ad")]) == 2  # exists: refused


@pytest.mark.slow
def test_real_smollm2_eval_on_gsm8k_questions(gsm8k, tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")  # no cached base pass
    from tunelab.config import load_recipe
    cfg = load_recipe("gsm8k-smollm2-135m", [f"data.source={gsm8k}", "eval.limit=4", "eval.max_new_tokens=64"])
    run = RunDir(tmp_path / "bare")
    result = evaluate(cfg, run, adapter=False)
    preds = result.predictions
    assert len(preds) == 4 and all(p["model"] == "base" and p["completion"].strip() for p in preds)
    assert all(0 < p["tokens"] <= 64 for p in preds)
    assert result.summary["base"]["tokens_per_second"] > 0
