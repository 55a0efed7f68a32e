"""The model card (adapter/README.md) and the Hub id in adapter_config.json: written by the train stage,
refreshed by the eval stage, parsed by huggingface_hub's own model-card reader, every number from the run."""

from __future__ import annotations

import json
import shlex

import pytest

from tunelab.config import ModelConfig, validate
from tunelab.evaluate.stage import evaluate
from tunelab.handoff import hub_id
from tunelab.rundir import RunDir
from tunelab.train import train


def test_hub_id_is_the_original_model_never_a_local_path(tmp_path):
    assert hub_id(ModelConfig(name="smollm2-135m-instruct")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id(ModelConfig(name="mistralai/Mistral-7B-v0.1")) == "mistralai/Mistral-7B-v0.1"
    assert hub_id(ModelConfig(name=str(tmp_path))) is None  # a local folder: unknown unless the recipe says
    assert hub_id(ModelConfig(name=str(tmp_path), hub_id="me/my-model")) == "me/my-model"
    assert hub_id(ModelConfig(name="models/x.gguf")) is None


@pytest.mark.slow
def test_card_is_written_after_training_and_refreshed_after_eval(tiny_recipe, tmp_path):
    from huggingface_hub import ModelCard
    raw = {**tiny_recipe, "model": {**tiny_recipe["model"], "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
           "train": {**tiny_recipe["train"], "epochs": 1}, "eval": {**tiny_recipe["eval"], "fewshot": 0}}
    cfg = validate(raw, "card")
    run = RunDir(tmp_path / "run")
    train(cfg, run)
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # not the local folder
    assert json.loads((run.epoch_adapter(1) / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"

    card = ModelCard.load(run.adapter / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    assert "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct" in card.data.tags
    summary = run.read_summary()
    (val,) = card.data.eval_results  # before eval: the validation loss only
    assert (val.metric_type, val.metric_value, val.dataset_split) == ("loss", round(summary["final_val_loss"], 4),
                                                                       "validation")
    assert "Not evaluated yet" in card.text and f"{summary['final_val_loss']:.4f}" in card.text

    evaluate(cfg, run)
    card = ModelCard.load(run.adapter / "README.md")
    tuned = run.read_eval_summary()["tuned"]
    by_name = {r.metric_name: r for r in card.data.eval_results}
    assert by_name["strict-match accuracy"].metric_value == round(tuned["strict_accuracy"], 4)
    assert by_name["flexible-extract accuracy"].metric_value == round(tuned["flexible_accuracy"], 4)
    assert by_name["flexible-extract accuracy"].dataset_split == "test"
    assert "Not evaluated yet" not in card.text and f"| tuned | {tuned['n']} |" in card.text
    assert card.data.to_dict()["model-index"][0]["name"] == cfg.name  # the metadata round-trips
    assert "lm_eval" not in card.text  # lm-evaluation-harness has no task for synthetic:arith
    assert f"--lora-modules {cfg.name}-lora={run.adapter.resolve()}" in card.text
    from tunelab.report import write_report
    write_report(run)  # the report carries the same hand-offs
    report = run.report_md.read_text()
    assert "## Take it further" in report and f"{cfg.name}-lora={run.adapter.resolve()}" in report
    assert "Commands filled in for this run: serve it with vLLM, publish it" in report  # no lm-eval line to name
    run.config.write_text(run.config.read_text().replace("source: null", "source: openai/gsm8k", 1))
    write_report(run)  # scored on GSM8K: lm-eval's task, its lines and the sentence naming them
    report = run.report_md.read_text()
    assert "Commands filled in for this run: re-score the adapter with lm-evaluation-harness, serve it" in report
    assert "--tasks gsm8k" in report


def test_card_without_a_known_hub_id_says_so_and_keeps_peft_path(tiny_recipe, tmp_path):
    from huggingface_hub import ModelCard
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1}}
    run = RunDir(tmp_path / "run")
    train(validate(raw, "local"), run)
    card = ModelCard.load(run.adapter / "README.md")
    assert card.data.base_model is None and "Set `model.hub_id`" in card.text
    assert json.loads((run.adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        tiny_recipe["model"]["name"]


def test_handoff_commands_are_filled_in_for_the_run(tmp_path):
    from tunelab.handoff import commands
    pairs = dict(commands("mistralai/Mistral-7B-v0.1", tmp_path / "adapter", 32, "m7b-lora", 200, task="gsm8k"))
    adapter = (tmp_path / "adapter").resolve()
    hf, vllm = [c for c in pairs.values() if c.startswith("lm_eval")]
    assert hf == (f"lm_eval --model hf --model_args pretrained=mistralai/Mistral-7B-v0.1,peft={adapter} "
                  "--tasks gsm8k --batch_size auto --limit 200")
    assert f"enable_lora=True,lora_local_path={adapter},max_lora_rank=32" in vllm  # r > vLLM's default 16
    serve = next(c for c in pairs.values() if c.startswith("vllm serve"))
    assert serve.endswith(f"--lora-modules m7b-lora={adapter} --max-lora-rank 32")
    assert not any(c.startswith("lm_eval") for _, c in commands("m", tmp_path, 8, "x", task=None))


def test_the_lm_eval_limit_is_the_number_of_questions_the_eval_asked(tmp_path):
    """The re-score commands ask lm-eval for as many questions as tunelab's eval scored (`tunelab eval --limit` or
    --set eval.limit may differ from the recipe's eval.limit), and the recipe's before any eval."""
    from fixture_run import add_eval, make_run
    from tunelab.config import load_recipe, to_yaml
    from tunelab.handoff import for_run
    path = make_run(tmp_path / "r")
    cfg = load_recipe(str(path / "config.yaml"), ["data.source=openai/gsm8k", "data.config=main", "eval.limit=200"])
    (path / "config.yaml").write_text(to_yaml(cfg))
    run = RunDir(path)
    (path / "eval" / "summary.json").unlink()
    assert [c.endswith("--limit 200") for _, c in for_run(run) if c.startswith("lm_eval")] == [True, True]
    add_eval(path, {"base": [False] * 40, "tuned": [True] * 40})
    lm_eval = [c for _, c in for_run(run) if c.startswith("lm_eval")]
    assert len(lm_eval) == 2 and all(c.endswith("--tasks gsm8k --batch_size auto --limit 40") for c in lm_eval)
    summary = json.loads((path / "eval" / "summary.json").read_text())  # an eval read after a template's thinking
    summary["tuned"].update(think_end="</think>", max_new_tokens=2048)
    (path / "eval" / "summary.json").write_text(json.dumps(summary))
    lm_eval = [shlex.split(c) for _, c in for_run(run) if c.startswith("lm_eval")]
    assert all(c[c.index("--model_args") + 1].endswith(",think_end_token=</think>")  # quoted: the shell reads it so
               and c[-2:] == ["--gen_kwargs", "max_gen_toks=2048"] for c in lm_eval) and len(lm_eval) == 2
    serve = next(c for _, c in for_run(run) if c.startswith("vllm serve"))
    assert "--reasoning-parser" not in serve  # the tokenizer writes <think> as text: vLLM's parsers would not start
    summary["tuned"]["think_tokens"] = True
    (path / "eval" / "summary.json").write_text(json.dumps(summary))
    serve = next(c for _, c in for_run(run) if c.startswith("vllm serve"))
    assert serve.startswith("vllm serve HuggingFaceTB/SmolLM2-135M-Instruct ")
    assert serve.endswith(" --reasoning-parser deepseek_r1")  # not a Qwen3 model


def test_the_reasoning_parser_follows_the_marker_and_the_model_family():
    from tunelab.handoff import reasoning_parser
    read = {"think_end": "</think>", "think_tokens": True}
    assert reasoning_parser("Qwen/Qwen3-8B", read) == "qwen3"
    assert reasoning_parser("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", read) == "deepseek_r1"
    assert reasoning_parser("Qwen/Qwen3-8B", {**read, "think_end": "<|/r|>"}) is None  # no parser knows it
    assert reasoning_parser("Qwen/Qwen3-8B", {}) is None  # an eval that read whole replies
