"""PEFT's LoRA variants as recipe keys (`lora.use_rslora`, `lora.use_dora`): they reach training, are saved in the
adapter, survive a resume, merge for eval and export, and the report, the model card and the hand-offs name them."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import assert_same_adapter
from tunelab.cli import main
from tunelab.config import validate
from tunelab.rundir import RunDir
from tunelab.train import train


def _recipe(tiny_recipe, epochs: int = 1, **lora) -> dict:
    return {**tiny_recipe, "lora": {**tiny_recipe["lora"], **lora},
            "train": {**tiny_recipe["train"], "epochs": epochs, "batch_size": 4, "checkpoint_every": 2,
                      "keep_checkpoints": 20}}


def _resume_reaches_the_same_adapter(cfg, straight: RunDir, tmp_path) -> None:
    """The run `straight` trained as a crash after its second checkpoint left it, resumed: the same adapter."""
    resumed = RunDir(tmp_path / "resumed")
    shutil.copytree(straight.path, resumed.path)
    for later in sorted(resumed.checkpoints.glob("step-*"))[2:]:
        shutil.rmtree(later)
    for done in (resumed.summary, resumed.adapter / "adapter_model.safetensors"):
        done.unlink()
    train(cfg, resumed, resume=True)
    assert_same_adapter(straight.path, resumed.path, atol=1e-5, rtol=1e-4)


IDS = torch.tensor([[1, 20, 300, 4000, 50, 6]])


def _merged_as_peft_runs_it(tiny_model, run: RunDir):
    """The run's adapter merged into the tiny model as eval loads it, after checking its logits equal PEFT's
    unmerged adapter's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.models import load_adapter
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run.adapter)
        merged = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model), run.adapter)
        torch.testing.assert_close(merged(IDS).logits, unmerged(IDS).logits, atol=1e-4, rtol=1e-4)
    return merged


def _served_merged(run: RunDir) -> None:
    """The hand-offs first write the merged model, and vLLM serves that, not the adapter."""
    from tunelab.handoff import for_run
    served = f"{run.path.resolve()}-merged"
    commands = [c for _, c in for_run(run)]
    assert commands[0] == f"tunelab export {run.path} {served}"
    assert f"vllm serve {served}" in commands and not any("--enable-lora" in c for c in commands)


def _lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@pytest.mark.slow
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
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

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

    _resume_reaches_the_same_adapter(cfg, straight, tmp_path)

    merged = _merged_as_peft_runs_it(tiny_model, straight)
    with torch.no_grad():
        assert not torch.allclose(merged(IDS).logits, base(IDS).logits, atol=1e-3)

    write_report(straight)
    assert "| Method | DoRA r=8," in straight.report_md.read_text()
    card = (straight.adapter / "README.md").read_text()
    assert "a DoRA adapter for" in card and "- dora" in card
    _served_merged(straight)


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


@pytest.mark.slow
def test_modules_to_save_train_the_tied_embeddings_whole_resume_exactly_and_merge_for_eval(tiny_recipe, tiny_model,
                                                                                           tmp_path):
    """lora.modules_to_save: [lm_head] on a model whose input and output embeddings are tied trains one copy of
    both (PEFT's ensure_weight_tying), saved in the adapter under both names; a resume reaches the same adapter, the
    merge eval loads equals PEFT's unmerged adapter and keeps the tie, and the report, card and hand-offs say so."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunelab.models import adapted_counts
    from tunelab.report import write_report
    cfg = validate(_recipe(tiny_recipe, epochs=2, modules_to_save=["lm_head"]), "whole")
    straight = RunDir(tmp_path / "straight")
    train(cfg, straight)

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert base.config.tie_word_embeddings
    weights = load_file(straight.adapter / "adapter_model.safetensors")
    head, embed = weights["base_model.model.lm_head.weight"], weights["base_model.model.model.embed_tokens.weight"]
    torch.testing.assert_close(head, embed, atol=0, rtol=0)  # one trained copy, saved under both names
    assert head.shape == base.lm_head.weight.shape
    assert (head - base.lm_head.weight).abs().max() > 1e-3  # trained away from the base model's
    assert json.loads((straight.adapter / "adapter_config.json").read_text())["modules_to_save"]

    _resume_reaches_the_same_adapter(cfg, straight, tmp_path)

    merged = _merged_as_peft_runs_it(tiny_model, straight)
    assert merged.lm_head.weight is merged.get_input_embeddings().weight  # still tied
    torch.testing.assert_close(merged.lm_head.weight, head)

    write_report(straight)
    md, counts = straight.report_md.read_text(), adapted_counts(cfg.model, cfg.lora)
    plain = adapted_counts(cfg.model, validate(_recipe(tiny_recipe), "plain").lora)["trainable"]
    assert counts["trainable"] == plain + head.numel()  # the adapters and one copy of the tied embeddings
    assert (f"targets all linear layers and lm_head trained whole ({counts['trainable'] / 1e6:.2f} M weights trained, "
            f"{100 * counts['trainable'] / counts['params']:.2g} % of the model's {counts['params'] / 1e6:.2f} M); "
            "completion-only loss |") in md
    assert "on all linear layers and lm_head trained whole," in (straight.adapter / "README.md").read_text()
    _served_merged(straight)


def test_modules_to_save_must_name_a_module_no_adapter_takes_and_the_estimate_counts_them(tiny_recipe, tiny_model,
                                                                                           tmp_path, capsys):
    """Each lora.modules_to_save entry matches modules by the end of their path, as PEFT does; one matching none, or
    a layer the LoRA targets adapt, is refused by `tunelab check` naming the key; the trainable weights the estimate
    prices are the adapters' plus the modules trained whole (tied embeddings once, untied both)."""
    import yaml

    from tunelab.cli import main
    from tunelab.models import adapted_counts
    trainable = {}
    for kind, tied in (("tied", True), ("untied", False)):
        folder = tmp_path / kind  # the tiny model's config alone: the counts build it on the meta device
        folder.mkdir()
        config = json.loads((tiny_model / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": tied}))
        for saved in ([], ["lm_head"], ["embed_tokens", "lm_head"], ["norm"]):
            cfg = validate(_recipe({**tiny_recipe, "model": {"name": str(folder)}}, modules_to_save=saved), "c")
            trainable[kind, tuple(saved)] = adapted_counts(cfg.model, cfg.lora)["trainable"]
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    for kind, copies in (("tied", 1), ("untied", 2)):
        plain = trainable[kind, ()]
        assert trainable[kind, ("lm_head",)] == plain + vocab * hidden
        assert trainable[kind, ("embed_tokens", "lm_head")] == plain + copies * vocab * hidden
        assert trainable[kind, ("norm",)] == plain + 5 * hidden  # every *norm: 2 per layer and the last
    for saved, message in ((["embedding"], "lora.modules_to_save: embedding: no module of LlamaForCausalLM ends with "
                                           "this name; those outside its layers: embed_tokens, lm_head, norm"),
                           (["q_proj"], "lora.modules_to_save: q_proj: model.layers.0.self_attn.q_proj is a layer "
                                        "lora.target_modules adapts")):
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(_recipe(tiny_recipe, modules_to_save=saved)))
        capsys.readouterr()
        assert main(["check", str(tmp_path / "r.yaml")]) == 2
        assert message in capsys.readouterr().err
    narrow = _recipe(tiny_recipe, target_modules=["v_proj"], modules_to_save=["q_proj"])  # not adapted: allowed
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(narrow))
    assert main(["check", str(tmp_path / "r.yaml")]) == 0


@pytest.mark.slow
def test_embedding_lr_trains_the_modules_saved_whole_at_their_own_rate(tiny_recipe, tiny_model, tmp_path):
    """train.embedding_lr: lora.modules_to_save's weights (or lora.trainable_tokens' rows) form an optimizer group of
    their own at that rate, on the schedule the adapters follow (with LoRA+ too); at 1e-9 the tied embeddings stay
    where they started (the base model's rows) while the adapters learn, and without either the key is refused."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunelab.errors import UserError
    from tunelab.models import add_lora, load_model, untrained
    from tunelab.train.forward import SupervisedLM
    from tunelab.train.loop import _optimizer
    for loraplus, lora in ((None, {"modules_to_save": ["lm_head"]}), (4.0, {"modules_to_save": ["lm_head"]}),
                           (None, {"trainable_tokens": [5, 7]})):
        raw = _recipe(tiny_recipe, **lora)
        cfg = validate({**raw, "train": {**raw["train"], "embedding_lr": 5e-5, "loraplus_lr_ratio": loraplus}}, "e")
        model = add_lora(load_model(cfg.model, torch.device("cpu")), cfg.lora)
        optimizer, scheduler = _optimizer(model, SupervisedLM(model, False), cfg, 10)
        rates = {name: group["lr"] for group in optimizer.param_groups for p in group["params"]
                 for name, q in model.named_parameters() if q is p}
        whole = [n for n in rates if ".modules_to_save." in n or ".token_adapter." in n]
        assert len(whole) == 1 and rates[whole[0]] == pytest.approx(5e-5 * scheduler.lr_lambdas[0](0))
        others = {r for n, r in rates.items() if n not in whole}
        assert others == ({cfg.train.lr * scheduler.lr_lambdas[0](0)} if loraplus is None else
                          {cfg.train.lr * scheduler.lr_lambdas[0](0), 4 * cfg.train.lr * scheduler.lr_lambdas[0](0)})
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(rates)  # each weight in one group

    raw = _recipe(tiny_recipe, modules_to_save=["lm_head"])
    run = RunDir(tmp_path / "still")
    train(validate({**raw, "train": {**raw["train"], "embedding_lr": 1e-9}}, "still"), run)
    weights = load_file(run.adapter / "adapter_model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_model).lm_head.weight.detach()
    trained = ~untrained(base)  # the tiny model's padding row (<|im_end|>, its EOS) is zeros: it starts at the mean
    assert (~trained).sum() == 1
    torch.testing.assert_close(weights["base_model.model.lm_head.weight"][trained], base[trained], atol=1e-6, rtol=0)
    assert max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k) > 1e-3  # the adapters learnt
    with pytest.raises(UserError, match="train.embedding_lr: the rate of the embedding weights lora.modules_to_save"):
        validate({**tiny_recipe, "train": {**tiny_recipe["train"], "embedding_lr": 1e-5}}, "bad")


@pytest.mark.slow
def test_trainable_tokens_train_those_embedding_rows_alone_resume_exactly_and_merge_for_eval(tiny_recipe, tiny_model,
                                                                                              tmp_path, capsys):
    """lora.trainable_tokens (PEFT's trainable_token_indices): the embedding rows of the named tokens (a token as
    written, or an id) train beside the adapters and no other row does; a resume reaches the same adapter, the merge
    keeps the tie, vLLM is handed the merge, the estimate counts the rows once, and a string that is not one token
    of the tokenizer is refused naming the key."""
    import yaml
    from transformers import AutoModelForCausalLM

    from tunelab.cli import main
    from tunelab.models import adapted_counts, load_tokenizer
    cfg0 = validate(_recipe(tiny_recipe), "plain")
    tok = load_tokenizer(cfg0.model)
    eos, word = tok.eos_token, tok("Instruction", add_special_tokens=False)["input_ids"][0]  # both in every row
    cfg = validate(_recipe(tiny_recipe, epochs=2, trainable_tokens=[eos, word]), "rows")
    straight = RunDir(tmp_path / "straight")
    train(cfg, straight)
    _resume_reaches_the_same_adapter(cfg, straight, tmp_path)

    base = AutoModelForCausalLM.from_pretrained(tiny_model).get_input_embeddings().weight.detach()
    merged = _merged_as_peft_runs_it(tiny_model, straight)
    assert merged.lm_head.weight is merged.get_input_embeddings().weight  # still tied
    moved = (merged.get_input_embeddings().weight.detach() - base).abs().amax(dim=1) > 1e-4
    assert sorted(moved.nonzero().flatten().tolist()) == sorted([tok.convert_tokens_to_ids(eos), word])
    _served_merged(straight)
    counts = adapted_counts(cfg.model, cfg.lora)["trainable"] - adapted_counts(cfg0.model, cfg0.lora)["trainable"]
    assert counts == 2 * base.shape[1]  # two rows, tied: one copy

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(_recipe(tiny_recipe, trainable_tokens=["Instruction:"])))
    capsys.readouterr()
    assert main(["check", str(tmp_path / "bad.yaml")]) == 2
    pieces = tok.tokenize("Instruction:")
    assert (f"lora.trainable_tokens: Instruction:: not one token of the tokenizer (it writes it as {len(pieces)}: "
            f"{', '.join(pieces)})") in capsys.readouterr().err


@pytest.mark.slow
def test_the_untrained_tokens_benchmark_runs_its_three_ways_on_a_tiny_model():
    """benchmarks/untrained_tokens.py --tiny: the damaged model is flagged by the check, and each way trains and is
    measured, so the benchmark cannot rot between its runs on the real model."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "untrained_tokens.py"), "--tiny"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("tunelab check: 2 tokens of the training rows (<|im_start|>, <|im_end|>;")
    results = json.loads(lines[-1])
    assert list(results) == ["lora alone", "lora.trainable_tokens", "lora.modules_to_save"]
    assert all(r["n"] == 8 and 0 <= r["never_ended"] <= 1 for r in results.values())
    assert len({r["final_val_loss"] for r in results.values()}) == 3  # three different trainings


def _write(tmp_path, raw: dict):
    import yaml
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "r.yaml"


def _with_tokens(tiny_recipe, epochs: int = 1, lora: dict | None = None, **model) -> dict:
    """The tiny recipe with two new tokens, the second its EOS, the first opening every prompt."""
    raw = _recipe(tiny_recipe, epochs, **(lora or {}))
    return {**raw, "model": {**raw["model"], "added_tokens": ["<|q|>", "<|end|>"],
                             "special_tokens": {"eos_token": "<|end|>"}, **model},
            "data": {**raw["data"], "template": "<|q|>{question}\nResponse: "}}


@pytest.mark.slow
def test_added_tokens_grow_the_vocabulary_train_their_rows_resume_and_travel_with_the_adapter(tiny_recipe, tmp_path,
                                                                                              capsys):
    """model.added_tokens: the tokenizer gains them (ids after its last), the embeddings grow by as many rows, each
    starting at the mean trained row, and their rows train (lora.trainable_tokens) and nothing else in the matrix
    does; the EOS of model.special_tokens ends every training target; a resume reaches the same adapter; the
    adapter folder holds the tokenizer, eval's merge equals PEFT's unmerged model, the merged export loads with
    plain transformers, and the card and lm-eval grow the base before loading the adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.config import ModelConfig
    from tunelab.export import export
    from tunelab.handoff import commands
    from tunelab.models import load_adapter, load_model, load_tokenizer
    cfg = validate(_with_tokens(tiny_recipe, epochs=2), "tokens")
    assert cfg.lora.trainable_tokens == ["<|q|>", "<|end|>"]
    tok = load_tokenizer(cfg.model)
    vocab = len(load_tokenizer(ModelConfig(name=cfg.model.name)))
    assert len(tok) == vocab + 2 and tok.convert_tokens_to_ids(["<|q|>", "<|end|>"]) == [vocab, vocab + 1]
    assert tok.eos_token_id == vocab + 1 and tok("<|q|>2+2")["input_ids"][0] == vocab  # one token, never split
    capsys.readouterr()
    assert main(["check", str(_write(tmp_path, _with_tokens(tiny_recipe))), "--show", "1"]) in (0, 1)
    assert "<|end|>⟧" in capsys.readouterr().out  # the new EOS closes the trained span

    straight = RunDir(tmp_path / "straight")
    train(cfg, straight)
    _resume_reaches_the_same_adapter(cfg, straight, tmp_path)
    saved = AutoTokenizer.from_pretrained(straight.adapter)
    assert len(saved) == vocab + 2 and saved.eos_token == "<|end|>"
    assert json.loads((straight.adapter / "adapter_config.json").read_text())["trainable_token_indices"] == [
        vocab, vocab + 1]
    assert (straight.adapter / "adapter_model.safetensors").stat().st_size < 100_000  # rows, not whole matrices

    start = load_model(cfg.model, torch.device("cpu")).get_input_embeddings().weight.detach()
    assert start.shape[0] == vocab + 2
    torch.testing.assert_close(start[vocab], start[:vocab].mean(0))  # the mean trained row (none is untrained)
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(load_model(cfg.model, torch.device("cpu")), straight.adapter)
        merged = load_adapter(load_model(cfg.model, torch.device("cpu")), straight.adapter)
        ids = torch.tensor([[vocab, 20, 300, vocab + 1]])
        torch.testing.assert_close(merged(ids).logits, unmerged(ids).logits, atol=1e-4, rtol=1e-4)
    moved = (merged.get_input_embeddings().weight.detach() - start).abs().amax(dim=1) > 1e-4
    assert moved.nonzero().flatten().tolist() == [vocab, vocab + 1]

    export(straight, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert plain.get_input_embeddings().weight.shape[0] == vocab + 2
    assert len(AutoTokenizer.from_pretrained(tmp_path / "merged")) == vocab + 2
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
    export(straight, tmp_path / "gguf", fmt="gguf", quant="q8_0")  # llama.cpp's vocabulary: the new tokens too
    import gguf
    reader = gguf.GGUFReader(next((tmp_path / "gguf").glob("*.gguf")))
    tokens, kinds = reader.fields["tokenizer.ggml.tokens"], reader.fields["tokenizer.ggml.token_type"]
    assert [bytes(tokens.parts[tokens.data[i]]).decode() for i in (vocab, vocab + 1)] == ["<|q|>", "<|end|>"]
    assert [int(kinds.parts[kinds.data[i]][0]) for i in (vocab, vocab + 1)] == [gguf.TokenType.USER_DEFINED,
                                                                                gguf.TokenType.CONTROL]
    assert int(reader.fields["tokenizer.ggml.eos_token_id"].parts[-1][0]) == vocab + 1
    card = (straight.adapter / "README.md").read_text()
    assert "the embedding rows of <|q|>, <|end|>; <|q|>, <|end|> added to the vocabulary" in card
    assert "base.resize_token_embeddings(max(len(tokenizer), base.get_input_embeddings().num_embeddings))" in card
    path = straight.adapter.resolve()  # lm-eval reads the tokenizer there and grows the base to its length
    assert any(f"peft={path},tokenizer={path}" in c for _, c in commands("base", path, 4, "x", task="gsm8k",
                                                                          own_tokenizer=cfg.model.own_tokenizer))
    _served_merged(straight)  # vLLM: the merge, its tokenizer beside it


@pytest.mark.slow
def test_added_tokens_that_exist_or_would_not_train_are_refused_and_the_vocabulary_rounds_up(tiny_recipe, tmp_path,
                                                                                             capsys):
    """An added token the tokenizer holds already, a special token that is not one token, and lora.modules_to_save
    that trains neither embedding (so the new rows would not train) are refused by `tunelab check` naming the key;
    model.vocab_multiple_of rounds the grown matrices up; with the embeddings trained whole the tokens are not
    added to lora.trainable_tokens."""
    from tunelab.models import load_model, load_tokenizer, meta_model
    for changes, message in (
            ({"model": {"added_tokens": ["<|im_end|>"]}}, "model.added_tokens: <|im_end|>: already a token of"),
            ({"model": {"special_tokens": {"eos_token": "<|stop|>"}}},
             "model.special_tokens.eos_token: <|stop|>: not one token of the tokenizer"),
            ({"lora": {"modules_to_save": ["norm"]}},
             "model.added_tokens: <|q|>: its input and output embedding row would not train (lora.modules_to_save: "
             "norm): add the input and output embedding to lora.modules_to_save, or <|q|> to "
             "lora.trainable_tokens")):
        raw = _with_tokens(tiny_recipe, lora=changes.get("lora"))
        raw["model"].update(changes.get("model", {}))
        capsys.readouterr()
        assert main(["check", str(_write(tmp_path, raw))]) == 2
        assert message in capsys.readouterr().err

    cfg = validate(_with_tokens(tiny_recipe, vocab_multiple_of=64), "round")
    rows = load_model(cfg.model, torch.device("cpu")).get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and 0 < rows - len(load_tokenizer(cfg.model)) < 64
    assert meta_model(cfg.model).get_input_embeddings().weight.shape[0] == rows
    whole = validate(_with_tokens(tiny_recipe, lora={"modules_to_save": ["embed_tokens"]}), "whole")
    assert whole.lora.trainable_tokens == []  # tied: the one matrix trains whole, the new rows with it
    assert main(["check", str(_write(tmp_path, _with_tokens(tiny_recipe, lora={"modules_to_save": ["embed_tokens"]})))
                 ]) in (0, 1)


@pytest.mark.slow
def test_the_added_tokens_benchmark_runs_its_two_ways_on_a_tiny_model():
    """benchmarks/added_tokens.py --tiny: the check names the split markers, and both ways train and are measured,
    the added tokens making every training row shorter, so the benchmark cannot rot between its runs."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "added_tokens.py"), "--tiny"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("tunelab check: the training rows write chat markers the tokenizer splits (<|assistant|>")
    results = json.loads(lines[-1])
    assert list(results) == ["markers as pieces", "model.added_tokens", "difference"]
    pieces, added, difference = results.values()
    assert pieces["n"] == added["n"] == difference["n"] == 8
    assert difference["delta_pts"] == pytest.approx(100 * (added["accuracy"] - pieces["accuracy"]), abs=1e-3)
    assert pieces["tokens_per_row"] - added["tokens_per_row"] >= 10  # four markers a row: 21 pieces against 4 tokens
