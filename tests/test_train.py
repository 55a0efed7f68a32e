"""Training engine on tiny random models: loss falls, only LoRA weights move, the run dir is complete and sane."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_adapter, make_tiny_model
from tunelab.config import validate
from tunelab.rundir import RunDir
from tunelab.train import train
from tunelab.train.batching import IGNORE, batches, tokenize


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    raw = {
        "name": "tiny", "model": {"name": str(tiny_model)},
        "data": {"source": "synthetic:arith", "template": "Instruction: {question}\nResponse: ",
                 "target": "{answer}", "label_field": "family", "synthetic_rows": 64, "synthetic_test_rows": 8},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"epochs": 3, "batch_size": 8, "lr": 3e-2, "max_length": 128, "warmup_ratio": 0.0},
    }
    run = RunDir(tmp_path_factory.mktemp("run") / "tiny")
    result = train(validate(raw, "tiny"), run)
    return run, result, raw


@pytest.mark.slow
def test_loss_falls_on_a_learnable_task(tiny_run):
    run, result, _ = tiny_run
    epochs = result.epochs
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert epochs[0]["train_loss"] is None and epochs[0]["val_loss"] > 0
    assert epochs[-1]["val_loss"] < 0.9 * epochs[0]["val_loss"]
    assert epochs[-1]["train_loss"] < epochs[1]["train_loss"]
    assert epochs[-1]["val_token_accuracy"] > epochs[0]["val_token_accuracy"]


def test_lora_weights_change_and_base_weights_do_not(tiny_run, tiny_model):
    run, _, _ = tiny_run
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, str(run.adapter))
    adapter = load_file(run.adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means trained
    for name, p in tuned.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace("base_layer.", "")
            assert torch.equal(p, before[key]), name
    adapted = {k.split(".")[-3] for k in adapter if "lora_A" in k}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_run_dir_artifacts_have_sane_values(tiny_run):
    run, result, raw = tiny_run
    for path in (run.config, run.environment, run.steps, run.epochs, run.examples, run.summary, run.cost,
                 run.adapter / "adapter_config.json"):
        assert path.exists(), path
    epochs = run.read_jsonl(run.epochs)
    assert set(epochs[1]) == {"epoch", "train_loss", "train_token_accuracy", "val_loss", "val_token_accuracy",
                              "seconds", "tokens", "val_seconds", "val_tokens"}
    assert all(e["val_tokens"] == epochs[0]["val_tokens"] > 0 and e["val_seconds"] > 0 for e in epochs)
    assert all(0 <= e["val_token_accuracy"] <= 1 for e in epochs)
    summary = run.read_json(run.summary)
    assert summary["train_examples"] + summary["val_examples"] == 64
    expected = 100 * (epochs[0]["val_loss"] - epochs[-1]["val_loss"]) / epochs[0]["val_loss"]
    assert summary["val_loss_improvement_pct"] == pytest.approx(expected, abs=1e-2)
    assert summary["train_tokens_per_second"] > 0 and summary["peak_rss_mib"] > 0
    steps = run.read_jsonl(run.steps)
    assert len(steps) == 3 * -(-summary["train_examples"] // 8)  # log_every=1: one line per optimizer step
    assert all(s["tokens"] > 0 and s["grad_norm"] >= 0 and s["lr"] >= 0 for s in steps)
    assert sum(s["tokens"] for s in steps) == summary["train_tokens"]
    examples = run.read_jsonl(run.examples)
    per = {(e["split"], e["epoch"]) for e in examples}
    assert per == {("val", 0), ("test", 0), ("train", 1), ("val", 1), ("train", 2), ("val", 2), ("train", 3),
                   ("val", 3)}
    assert sum(1 for e in examples if e["split"] == "train" and e["epoch"] == 1) == summary["train_examples"]
    # token-weighted: the epoch loss is the token-weighted mean of the per-example losses
    val0 = [e for e in examples if e["split"] == "val" and e["epoch"] == 0]
    weighted = sum(e["loss"] * e["tokens"] for e in val0) / sum(e["tokens"] for e in val0)
    assert weighted == pytest.approx(epochs[0]["val_loss"], rel=1e-4)
    cost = run.read_json(run.cost)
    assert cost["cost_usd"] == pytest.approx(cost["device_hours"] * cost["usd_per_hour"], rel=1e-3, abs=1e-8)
    saved = run.config.read_text()
    assert "completion_only: true" in saved and "Response: " in saved
    env = json.loads(run.environment.read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["peft"]


@pytest.mark.slow
def test_the_base_models_loss_on_each_scored_test_row_is_logged_before_training(tiny_run, tiny_model, tiny_recipe,
                                                                                tmp_path):
    """Epoch 0 logs the base model's loss on the test rows the eval stage scores (the familiarity check's input):
    each row's equals transformers' own loss of the base model on that row; eval.limit bounds them; another
    source's rows (eval.source) are not measured."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.data import load_splits
    from tunelab.train.batching import tokenize_with
    run, _, raw = tiny_run
    cfg = validate(raw, "tiny")
    logged = {e["id"]: e for e in run.read_jsonl(run.examples) if e["split"] == "test"}
    splits = load_splits(cfg.data, cfg.eval)
    assert {e["epoch"] for e in logged.values()} == {0} and sorted(logged) == sorted(e.id for e in splits.test)
    items, _ = tokenize_with(cfg, splits.test, AutoTokenizer.from_pretrained(tiny_model))
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    for item in items:
        with torch.no_grad():
            loss = base(input_ids=torch.tensor([item.input_ids]), labels=torch.tensor([item.labels])).loss
        row = logged[splits.test[item.index].id]
        assert row["loss"] == pytest.approx(loss.item(), rel=1e-4) and row["tokens"] == item.supervised
    tiny_recipe["train"]["epochs"] = 1
    tiny_recipe["eval"]["limit"] = 3
    short = RunDir(tmp_path / "short")
    train(validate(tiny_recipe, "tiny"), short)
    assert sorted(e["id"] for e in short.read_jsonl(short.examples) if e["split"] == "test") == \
        ["test-0", "test-1", "test-2"]
    tiny_recipe["eval"]["source"] = "synthetic:arith"
    other = RunDir(tmp_path / "other")
    train(validate(tiny_recipe, "tiny"), other)
    assert not [e for e in other.read_jsonl(other.examples) if e["split"] == "test"]


@pytest.mark.slow
def test_same_seed_same_metrics(tiny_run, tmp_path):
    run, result, raw = tiny_run
    again = train(validate(raw, "tiny"), RunDir(tmp_path / "again"))
    assert [e["val_loss"] for e in again.epochs] == [e["val_loss"] for e in result.epochs]


def test_loss_passes_show_their_rows_before_and_during_training(tiny_run, tmp_path, monkeypatch):
    """The validation and test passes before training count their rows on a bar of their own; each validation
    pass during training shows its rows in the train bar's info column, the bar left at its step."""
    from conftest import recording_bar
    run, _, raw = tiny_run
    seen = recording_bar(monkeypatch, "tunelab.train.loop")
    train(validate({**raw, "train": {**raw["train"], "epochs": 1}}, "tiny"), RunDir(tmp_path / "one"))
    val, test = (sum(1 for e in run.read_examples() if e["split"] == split and e["epoch"] == 0)
                 for split in ("val", "test"))
    start, training = seen.index(("before training: losses", val + test)), seen.index(next(s for s in seen
                                                                                             if s[0] == "train"))
    before = seen[start + 1:training]
    assert sum(n for n, _ in before) == val + test and before[-1][1] == {"test": f"{test}/{test} rows"}
    during = [(n, fields) for n, fields in seen[training + 1:] if "val" in fields]  # the epoch-end validation
    assert {n for n, _ in during} == {0} and during[-1][1] == {"val": f"{val}/{val} rows"}


def test_completion_only_masks_the_prompt_and_ends_with_eos(smollm2_dir):
    from transformers import AutoTokenizer
    from tunelab.data import Example
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ex = [Example("a", "Instruction: 2+2?\nResponse: ", "4\n#### 4", {}), Example("b", "Q " * 200, "x", {})]
    items, truncated = tokenize(ex, tok, 64, completion_only=True)
    assert truncated == 1 and len(items) == 1  # the long one kept no target token: dropped and counted
    item = items[0]
    n_prompt = len(tok("Instruction: 2+2?\nResponse: ")["input_ids"])
    assert item.labels[:n_prompt] == [IGNORE] * n_prompt and item.labels[-1] == tok.eos_token_id
    full, _ = tokenize(ex[:1], tok, 64, completion_only=False)
    assert IGNORE not in full[0].labels


def test_a_sentencepiece_target_continues_its_prompt_with_no_spurious_space_token(gsm8k, mistral_dir, smollm2_dir):
    """Mistral-7B-v0.1's tokenizer puts a word-start marker (▁, id 28705) before a text that starts the input;
    a target tokenized apart from its prompt has none: every GSM8K row of the flagship's template reads back as its
    prompt and answer with one space between them, the loss starting on the answer's first piece. A chat
    conversation's replies tokenize as the whole conversation does. SmolLM2's byte-level tokenizer adds no such
    marker: its targets tokenize as they did."""
    from transformers import AutoTokenizer

    from tunelab.config import ModelConfig
    from tunelab.data import Example, chat
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import boundary_merges, continuation_ids
    tok = AutoTokenizer.from_pretrained(mistral_dir)
    pieces = lambda texts, after="Q:": [tok.convert_ids_to_tokens(ids)  # noqa: E731
                                        for ids in continuation_ids(tok, texts, [after] * len(texts))]
    assert tok.tokenize("4") == ["▁", "4"] and pieces(["4"]) == [["4"]]
    rows = [json.loads(line) for line in (gsm8k / "train.jsonl").read_text().splitlines()[:50]]
    ex = [Example(str(i), f"Instruction: {r['question']}\nResponse: ", r["answer"], {}) for i, r in enumerate(rows)]
    items, _ = tokenize(ex, tok, 1024, completion_only=True)
    for e, item in zip(ex, items):
        assert tok.decode(item.input_ids[1:-1]) == e.prompt + e.target  # one space after "Response:", not two
        first = next(k for k, x in enumerate(item.labels) if x != IGNORE)
        assert tok.convert_ids_to_tokens(item.input_ids[first - 1:first]) == ["▁"] != tok.convert_ids_to_tokens(
            item.input_ids[first:first + 1])  # the prompt's space, then the answer's first piece
    assert boundary_merges(ex, tok)["example"] == {"id": "0", "prompt_end": " ", "together": " Natal"}  # ▁ ▁Natal
    assert pieces([" A", "B", "\nC"]) == [["▁A"], ["B"], ["<0x0A>", "C"]]
    assert pieces(["Once upon"], after="") == [["▁Once", "▁upon"]]  # after no prompt: the input's start
    (text,), _ = tokenize([Example("t", "", "Once upon a time", {})], tok, 64, completion_only=False)
    assert text.input_ids == tok("Once upon a time")["input_ids"] + [tok.eos_token_id]  # a completion row
    smol = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = [e.target for e in ex] + [" A", "\n\nB"]
    assert continuation_ids(smol, texts, ["Q:"] * len(texts)) == smol(texts, add_special_tokens=False)["input_ids"]
    chatml = load_tokenizer(ModelConfig(name=str(mistral_dir), chat_template="chatml",
                                        added_tokens=["<|im_start|>", "<|im_end|>"],
                                        special_tokens={"eos_token": "<|im_end|>"}))
    history = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    row = Example("c", "And doubled?", "8", {"user": "And doubled?", "assistant": "8", chat.HISTORY: history})
    (item,), _ = tokenize([row], chatml, 256, completion_only=True, chat=True)
    whole = chatml.apply_chat_template(history + [{"role": "user", "content": "And doubled?"},
                                                  {"role": "assistant", "content": "8"}], tokenize=False)
    assert item.input_ids == chatml(whole.rstrip())["input_ids"]
    assert chatml.convert_ids_to_tokens([x for x in item.labels if x != IGNORE]) == ["4", "<|im_end|>", "8",
                                                                                     "<|im_end|>"]


def weighted_recipe(data_weight: float, mix_weight: float) -> tuple:
    """A recipe with data.source and one data.mix entry, its train split (30 + 10 rows) and their items."""
    from tunelab.data import Example
    from tunelab.train.batching import Tokenized
    cfg = validate({"name": "w", "model": {"name": "m"},
                    "data": {"source": "main.jsonl", "template": "{q}", "target": "{a}", "weight": data_weight,
                             "mix": [{"source": "extra.jsonl", "weight": mix_weight}]}}, "w")
    examples = [Example(f"train-{i}", "p", "t", {}) for i in range(30)] + [
        Example(f"extra:train-{i}", "p", "t", {}) for i in range(10)]
    items = [Tokenized(k, [1] * (3 + k % 5), [IGNORE, 2, 2] + [2] * (k % 5)) for k in range(len(examples))]
    return cfg, examples, items


def test_source_weights_repeat_and_draw_rows_per_epoch_exactly_and_afresh():
    from collections import Counter
    from tunelab.train.batching import weights
    cfg, examples, items = weighted_recipe(0.5, 2.5)
    plan = weights(cfg, examples, items)
    assert plan.rows == 15 + 25  # half of 30, and 10 rows 2.5 times
    epochs = [Counter(int(i) for b in batches(items, 8, 0, seed, False, plan) for i in b.index) for seed in (1, 2)]
    for seen in epochs:
        main, extra = [seen[k] for k in range(30)], [seen[k] for k in range(30, 40)]
        assert sorted(main) == [0] * 15 + [1] * 15 and sorted(extra) == [2] * 5 + [3] * 5
    assert {k for k in range(30) if epochs[0][k]} != {k for k in range(30) if epochs[1][k]}  # drawn afresh
    again = batches(items, 8, 0, 1, True, plan)  # a resumed epoch: the same seed gives the same batches
    assert [b.index.tolist() for b in again] == [b.index.tolist() for b in batches(items, 8, 0, 1, True, plan)]
    same = weights(*weighted_recipe(1, 1))
    assert same is None  # every weight 1: the plan of a run without weights, batch for batch
    assert [b.index.tolist() for b in batches(items, 8, 0, 4, True)] == [
        b.index.tolist() for b in batches(items, 8, 0, 4, True, same)]


def test_source_weights_count_in_the_estimate_and_a_weight_that_draws_nothing_stops():
    from tunelab import cost
    from tunelab.errors import UserError
    from tunelab.train.batching import weights
    cfg, examples, items = weighted_recipe(1, 3)
    plan = weights(cfg, examples, items)
    lengths = [len(i.input_ids) for i in items]
    work = cost.flops(lengths, [10], 1, 1000, 2, 4, False, train_weights=plan.per_item())
    assert work["train_tokens_per_epoch"] == sum(lengths[:30]) + 3 * sum(lengths[30:])
    assert work["flops"] == cost.flops(lengths[:30] + lengths[30:] * 3, [10], 1, 1000, 2, 4, False)["flops"]
    with pytest.raises(UserError, match=r"^data.mix.0.weight: 0.01 × 10 train rows trains none of them per epoch"):
        weights(*weighted_recipe(1, 0.01))
    with pytest.raises(UserError, match=r"^data.weight: 0.01 × 30 train rows"):
        weights(*weighted_recipe(0.01, 1))


def test_length_grouping_keeps_every_example_once_and_cuts_padding(smollm2_dir):
    from transformers import AutoTokenizer
    from tunelab.data import Example
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ex = [Example(str(i), "word " * (1 + (i * 7) % 40), "y", {}) for i in range(64)]
    items, _ = tokenize(ex, tok, 512, True)
    grouped = batches(items, 8, tok.pad_token_id, seed=3, group_by_length=True)
    plain = batches(items, 8, tok.pad_token_id, seed=3, group_by_length=False)
    assert sorted(int(i) for b in grouped for i in b.index) == list(range(64))
    padded = lambda bs: sum(b.input_ids.numel() for b in bs)
    assert padded(grouped) < padded(plain)
    assert sum(b.real_tokens for b in grouped) == sum(b.real_tokens for b in plain)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
@pytest.mark.slow
def test_other_architectures_train_with_default_target_modules(arch, tmp_path, smollm2_dir, tiny_recipe):
    model = make_tiny_model(tmp_path / arch, smollm2_dir, arch)
    raw = {**tiny_recipe, "model": {"name": str(model)}, "train": {**tiny_recipe["train"], "epochs": 1}}
    run = RunDir(tmp_path / "run")
    result = train(validate(raw, arch), run)
    assert result.epochs[1]["val_loss"] < result.epochs[0]["val_loss"]
    adapter = load_file(run.adapter / "adapter_model.safetensors")
    assert {k.split(".")[-3] for k in adapter if "lora_A" in k} >= {"q_proj", "v_proj", "down_proj"}


def test_split_grouped_and_packed_batches_give_the_same_per_token_loss(tiny_model):
    """Length grouping, token-budget splitting and packing change memory and speed, never the objective."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.data import Example
    from tunelab.train.forward import SupervisedLM, forward_tokens
    from tunelab.train.batching import split
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ex = [Example(str(i), f"Q{i}: " + "two plus " * (i % 9 + 1), f"{i}\n#### {i}", {}) for i in range(16)]
    items, _ = tokenize(ex, tok, 256, True)
    cpu = torch.device("cpu")

    def per_token(batch_list, net=model):
        out = {}
        for b in batch_list:
            losses, _, rows = forward_tokens(net, b, cpu)
            counts = {}
            for loss, r in zip(losses.tolist(), rows.tolist()):
                i = int(b.index[r])
                out[(i, counts.setdefault(i, 0))] = loss
                counts[i] += 1
        return out

    with torch.no_grad():
        one_by_one = per_token(batches(items, 1, tok.pad_token_id, None, False))
        grouped = per_token(batches(items, 8, tok.pad_token_id, seed=5, group_by_length=True))
        sliced = per_token([s for b in batches(items, 8, tok.pad_token_id, seed=5, group_by_length=False)
                            for s in split(b, 40)])
        packed = per_token(batches(items, 8, tok.pad_token_id, seed=5, group_by_length=False),
                           SupervisedLM(model, pack=True))
    assert one_by_one.keys() == grouped.keys() == sliced.keys() == packed.keys()
    for key, loss in one_by_one.items():
        for other in (grouped, sliced, packed):
            assert other[key] == pytest.approx(loss, abs=1e-4)
    big = batches(items, 8, tok.pad_token_id, None, False)[0]
    parts = split(big, 40)
    assert len(parts) > 1 and all(p.input_ids.numel() <= 40 or p.input_ids.shape[0] == 1 for p in parts)
    assert sum(p.supervised for p in parts) == big.supervised and sum(p.real_tokens for p in parts) == big.real_tokens


@pytest.mark.parametrize("dropout,dtype", [(0.0, torch.float32), (0.2, torch.float32), (0.0, torch.bfloat16)])
def test_fast_lora_forward_gives_pefts_loss_and_gradients(tiny_model, dropout, dtype):
    """Same loss and gradients as PEFT's forward; under a bf16 base (PEFT keeps the adapter in fp32) within bf16
    rounding, with the gradients still reaching the fp32 adapter weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.config import LoraConfig
    from tunelab.data import Example
    from tunelab.models import add_lora
    from tunelab.train import fast_lora
    from tunelab.train.forward import forward_tokens
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ex = [Example(str(i), f"Q{i}: " + "two plus " * (i % 5 + 1), f"{i}\n#### {i}", {}) for i in range(6)]
    batch = batches(tokenize(ex, tok, 128, True)[0], 6, tok.pad_token_id, None, False)[0]

    def loss_and_grads(fast: bool, dtype: torch.dtype = dtype):
        torch.manual_seed(0)
        model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype),
                         LoraConfig(r=4, alpha=8, dropout=dropout), False)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: make the LoRA product count
                torch.nn.init.normal_(p, std=0.5)
        if fast:
            assert fast_lora.install(model) == 14  # 7 projections x 2 layers
        model.train()
        torch.manual_seed(1)  # the same dropout masks
        losses, _, _ = forward_tokens(model, batch, torch.device("cpu"))
        losses.mean().backward()
        return losses.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    (peft_loss, peft_grads), (fast_loss, fast_grads) = loss_and_grads(False), loss_and_grads(True)
    assert peft_grads.keys() == fast_grads.keys()
    assert all(g.dtype == torch.float32 for g in fast_grads.values())  # the adapter trains in fp32 whatever the base
    if dtype == torch.float32:
        torch.testing.assert_close(fast_loss, peft_loss, atol=1e-5, rtol=1e-5)
        for name in peft_grads:
            torch.testing.assert_close(fast_grads[name], peft_grads[name], atol=1e-5, rtol=1e-4)
        return
    # bf16: both differ from the fp32 model by rounding (this tiny model, initialised wide, amplifies it: ~40 % for
    # PEFT, whose LoRA product runs in fp32); the lean forward, whose product runs in bf16, stays within 1.75x of
    # PEFT's error. Dropping the LoRA scale, say, lands at ~110 %.
    _, ref_grads = loss_and_grads(False, torch.float32)

    def error(grads: dict) -> float:
        flat = torch.cat([(grads[n] - ref_grads[n]).flatten() for n in ref_grads])
        return float(flat.norm() / torch.cat([g.flatten() for g in ref_grads.values()]).norm())

    assert float(fast_loss.float().mean()) == pytest.approx(float(peft_loss.float().mean()), rel=1e-2)
    assert error(fast_grads) < 1.75 * error(peft_grads), (error(fast_grads), error(peft_grads))


@pytest.mark.slow
def test_packed_training_matches_padded_training(tiny_run, tmp_path):
    _, result, raw = tiny_run
    packed = train(validate({**raw, "train": {**raw["train"], "packing": True}}, "packed"), RunDir(tmp_path / "p"))
    for a, b in zip(result.epochs, packed.epochs):  # tolerance: 1e-4 relative (attention summation order)
        for key in ("train_loss", "val_loss", "val_token_accuracy", "tokens"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-4), key


@pytest.mark.slow
def test_compiled_layers_train_like_eager_ones(tiny_run, tmp_path, caplog):
    """train.compile: the same losses and accuracies as eager training (fused kernels: rounding order only), and the
    adapter is saved under the same names. ~1 min of compiling on CPU."""
    run, result, raw = tiny_run
    compiled_run = RunDir(tmp_path / "c")
    caplog.set_level("INFO", logger="tunelab.train.loop")
    compiled = train(validate({**raw, "train": {**raw["train"], "compile": True}}, "compiled"), compiled_run)
    for a, b in zip(result.epochs, compiled.epochs):
        for key in ("train_loss", "val_loss", "val_token_accuracy", "tokens"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-3), key
    assert "train.compile: 2 decoder layers compiled" in caplog.text
    assert load_file(compiled_run.adapter / "adapter_model.safetensors").keys() == \
        load_file(run.adapter / "adapter_model.safetensors").keys()


def test_compile_is_refused_with_fsdp_sharding(tiny_recipe):
    from tunelab.errors import UserError
    with pytest.raises(UserError, match="train.compile: not with train.sharding=fsdp"):
        validate({**tiny_recipe, "train": {**tiny_recipe["train"], "compile": True, "sharding": "fsdp"}}, "r")


def test_random_init_builds_the_configs_model_with_the_same_weights_every_time(tiny_model, tmp_path):
    """model.init=random: the config's architecture with fresh weights (the saved ones are not read), identical in
    the train and eval stages (seed 0), leaving the caller's random stream as it was."""
    from tunelab.config import ModelConfig
    from tunelab.models import load_model
    cpu = torch.device("cpu")
    pretrained = load_model(ModelConfig(name=str(tiny_model)), cpu)
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(1.0)
    pretrained.save_pretrained(tmp_path / "shifted")  # weights that no random draw gives
    torch.manual_seed(123)
    a = load_model(ModelConfig(name=str(tmp_path / "shifted"), init="random"), cpu)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the global RNG was not consumed
    b = load_model(ModelConfig(name=str(tiny_model), init="random"), cpu)
    sa, sb, sp = a.state_dict(), b.state_dict(), pretrained.state_dict()
    assert sa.keys() == sp.keys() and all(sa[k].shape == sp[k].shape for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.mlp.up_proj.weight"], sp["model.layers.0.mlp.up_proj.weight"])
    assert not any(p.requires_grad for p in a.parameters()) and a.dtype == torch.float32


def test_default_micro_batch_is_512_tokens_on_cpu_and_sized_to_free_memory_on_cuda(monkeypatch):
    from transformers import MistralConfig
    from tunelab.train import runtime
    mistral = MistralConfig()  # 4096 hidden, 32 layers: ~13 MB of activations per token
    assert runtime.micro_batch_tokens(None, torch.device("cpu"), mistral) == 512
    assert runtime.micro_batch_tokens(2048, torch.device("cpu"), mistral) == 2048  # the recipe's value wins
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * 2**30, 24 * 2**30))
    small = runtime.micro_batch_tokens(None, torch.device("cuda"), mistral)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (125 * 2**30, 141 * 2**30))
    big = runtime.micro_batch_tokens(None, torch.device("cuda"), mistral)
    assert 1200 < small < 1400 and big > 6400  # a 24 GB card splits a batch of 16 GSM8K rows, an H200 does not
    assert runtime.micro_batch_tokens(0, torch.device("cuda"), mistral) == 0  # 0 = never split


@pytest.mark.slow
def test_neftune_noises_the_embeddings_while_training_only(tiny_recipe, tmp_path):
    """train.neftune_alpha switches on transformers' NEFTune hook: training feels it, validation never does."""
    epochs = {}
    for alpha in (None, 5.0):
        raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1, "neftune_alpha": alpha}}
        epochs[alpha] = train(validate(raw, "neft"), RunDir(tmp_path / str(alpha))).epochs
    assert epochs[None][0]["val_loss"] == epochs[5.0][0]["val_loss"]  # validation sees no noise
    assert epochs[None][1]["train_loss"] != pytest.approx(epochs[5.0][1]["train_loss"], rel=1e-4)
    from tunelab.report import write_report
    write_report(RunDir(tmp_path / "5.0"))
    assert "; NEFTune noise alpha 5 |" in RunDir(tmp_path / "5.0").report_md.read_text()


@pytest.mark.slow
def test_val_every_adds_validation_passes_between_epochs_without_changing_the_training(tiny_recipe, tmp_path):
    """train.val_every: validation every N optimizer steps inside an epoch (no dropout, no RNG drawn), so the
    epochs, steps and adapter equal a run without it; every pass is in metrics/validation.jsonl."""
    runs = {}
    for every in (0, 2):
        raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "batch_size": 4, "lr": 1e-2, "val_every": every}}
        runs[every] = RunDir(tmp_path / str(every))
        train(validate(raw, "val-every"), runs[every])
    plain, fine = runs[0], runs[2]
    losses = ("train_loss", "val_loss", "val_token_accuracy", "tokens")
    assert [[e[k] for k in losses] for e in fine.read_epochs()] == [[e[k] for k in losses] for e in plain.read_epochs()]
    assert [s["loss"] for s in fine.read_steps()] == [s["loss"] for s in plain.read_steps()]
    assert_same_adapter(plain.path, fine.path, atol=0, rtol=0)
    per_epoch = -(-fine.read_json(fine.summary)["train_examples"] // 4)
    validation = fine.read_jsonl(fine.validation)
    assert [v["step"] for v in validation] == sorted({0, *range(2, 2 * per_epoch + 1, 2), per_epoch, 2 * per_epoch})
    ends = [v for v in validation if v["epoch_end"]]
    assert [(v["epoch"], v["val_loss"]) for v in ends] == [(e["epoch"], e["val_loss"]) for e in fine.read_epochs()]
    assert [v["step"] for v in plain.read_jsonl(plain.validation)] == [0, per_epoch, 2 * per_epoch]
    assert fine.read_examples() == plain.read_examples()  # per-row losses at epoch ends only
    estimates = [r.read_json(r.estimate) for r in (plain, fine)]  # the estimate counts every validation pass
    assert [e["val_passes"] for e in estimates] == [3, len(validation)]
    per_pass = (estimates[1]["flops"] - estimates[0]["flops"]) / (len(validation) - 3)
    assert per_pass == pytest.approx(2 * estimates[0]["n_params"] * estimates[0]["val_tokens"], rel=0.2)
    from tunelab.report import write_report
    write_report(fine)
    assert f"Over {len(validation)} validation passes the loss was lowest at step" in fine.report_md.read_text()


@pytest.mark.slow
def test_loraplus_moves_the_b_matrices_ratio_times_as_far(tiny_recipe, tmp_path):
    """train.loraplus_lr_ratio (PEFT's LoRA+ groups): in the first AdamW step each B entry moves lr·sign(grad), so
    with ratio 16 the B matrices come out exactly 16× those of plain LoRA; the A matrices, whose gradient is zero
    while B is, stay at their (seeded) initial values in both."""
    adapters = {}
    for ratio in (None, 16.0):
        raw = {**tiny_recipe, "data": {**tiny_recipe["data"], "synthetic_rows": 10, "val_fraction": 0.2},
               "train": {**tiny_recipe["train"], "epochs": 1, "loraplus_lr_ratio": ratio}}
        run = RunDir(tmp_path / str(ratio))
        train(validate(raw, "lora-plus"), run)
        assert run.read_json(run.summary)["train_examples"] == 8  # one batch: one optimizer step
        adapters[ratio] = load_file(run.adapter / "adapter_model.safetensors")
    plain, plus = adapters[None], adapters[16.0]
    b_keys = [k for k in plain if "lora_B" in k]
    assert b_keys and all(plain[k].abs().max() > 0 for k in b_keys)
    for k in b_keys:
        torch.testing.assert_close(plus[k], 16 * plain[k], rtol=1e-4, atol=1e-7)
    for k in (k for k in plain if "lora_A" in k):
        assert torch.equal(plus[k], plain[k])


@pytest.mark.slow
def test_the_lowest_validation_pass_inside_an_epoch_is_kept_as_adapters_best_loss(tiny_recipe, tmp_path, capsys,
                                                                                  monkeypatch):
    """With train.val_every the lowest validation pass can fall between epoch ends, where no adapter is saved:
    its weights are held (and checkpointed) and written to adapters/best-loss/ when training ends (TRL's
    load_best_model_at_end checkpoint). They are the weights of that step's checkpoint; a resume after the last
    checkpoint writes them again; `--epoch best-loss`, the card and the report name them."""
    import shutil
    from tunelab.cli import main
    from tunelab.rundir import lowest_pass
    from tunelab.train import loop as train_loop
    measured = train_loop._validate

    def dipped(loop, epoch, log_rows=True):  # step 16's pass (mid epoch 2) the lowest, wherever a CPU's curve bottoms
        val = measured(loop, epoch, log_rows)
        if loop.state.step == 16:
            val.loss_sum -= 5.0 * val.supervised_tokens
        return val

    monkeypatch.setattr(train_loop, "_validate", dipped)
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 3, "batch_size": 4, "scheduler": "constant",
                                    "val_every": 2, "checkpoint_every": 2, "keep_checkpoints": 100}}
    run = RunDir(tmp_path / "run")
    train(validate(raw, "best-loss"), run)
    passes, summary = run.read_jsonl(run.validation), run.read_json(run.summary)
    lowest = lowest_pass(passes)
    assert (lowest["step"], lowest["epoch"], lowest["epoch_end"], summary["steps"]) == (16, 2, False, 33)
    assert summary["best_val_step"] == lowest["step"] and summary["best_loss_adapter"] is True
    kept = load_file(run.best_loss_adapter / "adapter_model.safetensors")
    at_step = torch.load(run.checkpoints / f"step-{lowest['step']:07d}" / "weights.pt")["trainable"]
    assert kept.keys() == {k.removeprefix("lm.").replace(".default", "") for k in at_step}
    assert all(kept[k.removeprefix("lm.").replace(".default", "")].equal(v) for k, v in at_step.items())
    final = load_file(run.adapter / "adapter_model.safetensors")
    assert not all(final[k].equal(kept[k]) for k in kept)

    for folder in (run.adapter, run.best_loss_adapter):  # killed after the last checkpoint, before the outputs
        shutil.rmtree(folder)
    run.summary.unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(run.path)]) == 0
    assert f"lowest validation loss {lowest['val_loss']:.4f} at step {lowest['step']} (epoch {lowest['epoch']}; " \
           f"{summary['final_val_loss']:.4f} at the end): kept in adapters/best-loss" in \
        " ".join(capsys.readouterr().out.split())  # the console wraps at its width
    again = load_file(run.best_loss_adapter / "adapter_model.safetensors")
    assert all(again[k].equal(kept[k]) for k in kept)

    _best_loss_is_exported_carded_reported_and_scored(run, raw, kept, lowest, summary, tmp_path, capsys)


def _best_loss_is_exported_carded_reported_and_scored(run: RunDir, raw: dict, kept: dict, lowest: dict,
                                                     summary: dict, tmp_path, capsys) -> None:
    from tunelab.cli import main
    from tunelab.report import write_report
    capsys.readouterr()
    assert main(["export", str(run.path), str(tmp_path / "out"), "--epoch", "best-loss", "--adapter-only"]) == 0
    assert f"(step {lowest['step']}'s adapter, the lowest validation loss)" in capsys.readouterr().out
    exported = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert all(exported[k].equal(kept[k]) for k in kept)
    from tunelab.evaluate.inference import run_models  # tunelab generate --epoch best-loss
    (tuned,) = run_models(run, "best-loss", base=False)
    assert (tuned.adapter, tuned.title) == (run.best_loss_adapter,
                                            f"tuned (step {lowest['step']}'s adapter, the lowest validation loss)")
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"adapter for {raw['model']['name']}, step {lowest['step']} of {summary['steps']}" in card
    assert f"This is the adapter saved at step {lowest['step']} (`adapters/best-loss`), inside epoch " \
           f"{lowest['epoch']}: the validation pass with the lowest loss ({lowest['val_loss']:.4f}" in card
    assert f"value: {round(lowest['val_loss'], 4)}" in card  # model-index: that pass's validation loss
    write_report(run)  # before eval: the validation loss names the adapter to take
    assert f"The lowest validation loss is step {lowest['step']}'s ({lowest['val_loss']:.4f}, against " \
           f"{summary['final_val_loss']:.4f} after the last step): `tunelab export {run.path} OUT --epoch best-loss` " \
           f"exports its adapter (adapters/best-loss)" in " ".join(run.report_md.read_text().split())
    import yaml
    from tunelab.evaluate.stage import evaluate
    from tunelab.evaluate.summary import pass_names
    result = evaluate(validate(raw, "best-loss"), run)  # eval scores it beside the epochs, on the same questions
    assert pass_names(result.summary) == ["base", "epoch-1", "epoch-2", "best-loss", "tuned"]
    assert result.summary["best_loss"]["vs_tuned"]["flexible"]["n"] == 8
    assert main(["export", str(run.path), str(tmp_path / "scored"), "--epoch", "best-loss", "--adapter-only"]) == 0
    meta = yaml.safe_load((tmp_path / "scored" / "README.md").read_text().split("---")[1])
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[1]["value"] == round(result.summary["best-loss"]["flexible_accuracy"], 4)
    write_report(run)
    assert f"lowest at step {lowest['step']} (inside epoch {lowest['epoch']})" in run.report_md.read_text()
    assert "That pass's adapter is kept in adapters/best-loss (`tunelab export RUN OUT --epoch best-loss`)" in \
        run.report_md.read_text()


@pytest.mark.slow
def test_max_steps_trains_that_many_steps_and_cuts_the_last_epoch_short(tiny_recipe, tmp_path):
    """train.max_steps (Trainer's max_steps, in place of train.epochs): the steps run on into a second epoch that
    ends at the last step — validated once there, its adapter kept —, the schedule spans those steps (linear decay
    reaches lr / steps at the last), the estimate counts them, and the report says the last epoch was partial."""
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 5, "batch_size": 4, "lr": 1e-2,
                                    "scheduler": "linear", "max_steps": 15, "val_every": 3}}
    run = RunDir(tmp_path / "steps")
    train(validate(raw, "steps"), run)
    summary = run.read_json(run.summary)
    per_epoch = -(-summary["train_examples"] // 4)
    assert 7 < per_epoch < 15  # the 15 steps end inside epoch 2
    assert (summary["steps"], summary["steps_planned"], summary["epochs"], summary["epochs_planned"],
            summary["steps_per_epoch"]) == (15, 15, 2, 2, per_epoch)
    steps = run.read_steps()
    assert [s["step"] for s in steps] == list(range(1, 16)) and steps[-1]["lr"] == pytest.approx(1e-2 / 15)
    epochs = run.read_epochs()
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and (run.path / "adapters" / "epoch-2").is_dir()
    assert sum(e["tokens"] for e in epochs) == sum(s["tokens"] for s in steps)
    assert epochs[2]["tokens"] < epochs[1]["tokens"]
    passes = [v["step"] for v in run.read_jsonl(run.validation)]
    assert passes == sorted({0, per_epoch, 15, *(s for s in range(3, 15, 3) if s % per_epoch)})  # 15: once
    estimate = run.read_json(run.estimate)
    assert (estimate["steps"], estimate["epochs"], estimate["val_passes"]) == (15, 2, len(passes))
    assert estimate["train_tokens"] == round(estimate["train_tokens_per_epoch"] * 15 / per_epoch)
    from tunelab.report import write_report
    write_report(run)
    text = run.report_md.read_text()
    last = 15 - per_epoch
    assert f"| Epochs | 2, max_steps 15: the last epoch's {last} of {per_epoch} steps (batch 4 " in text
    assert f"| 2 ({last} of {per_epoch} steps) |" in text
    from tunelab import card
    assert f"2 epoch(s), the last {last} of its {per_epoch} steps (max_steps 15)" in card.render(run)


@pytest.mark.slow
def test_continue_from_keeps_training_an_earlier_adapter_and_refuses_one_that_does_not_fit(tiny_recipe, tmp_path,
                                                                                           capsys):
    """lora.continue_from (Axolotl's lora_model_dir): the run starts from the earlier run's adapter — its epoch-0
    validation loss is that run's last one, on the same split —, keeps a copy in adapters/start/, and trains it on;
    an adapter whose rank or modules differ from lora.* is refused before anything is written."""
    from tunelab.errors import UserError
    first = RunDir(tmp_path / "first")
    train(validate({**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1}}, "first"), first)
    raw = {**tiny_recipe, "lora": {**tiny_recipe["lora"], "continue_from": str(first.path)},
           "train": {**tiny_recipe["train"], "epochs": 1, "lr": 1e-2}}
    second = RunDir(tmp_path / "second")
    train(validate(raw, "second"), second)
    assert second.read_epochs()[0]["val_loss"] == pytest.approx(first.read_epochs()[-1]["val_loss"], rel=1e-5)
    assert second.read_epochs()[1]["val_loss"] != pytest.approx(second.read_epochs()[0]["val_loss"], rel=1e-4)
    assert_same_adapter(first.adapter, second.start_adapter, 0, 0, folder=".")
    start, end = load_file(second.start_adapter / "adapter_model.safetensors"), load_file(second.adapter_weights)
    assert start.keys() == end.keys() and any(not torch.equal(start[k], end[k]) for k in start)
    from tunelab.evaluate.stage import evaluate
    from tunelab.report import write_report
    scored = evaluate(validate(raw, "second"), second).summary  # the start adapter is scored beside the base model
    assert {"base", "start", "tuned"} <= set(scored) and scored["epochs"][0]["vs_previous"] == scored["continued"][
        "tuned_vs_start"]
    again = evaluate(validate(tiny_recipe, "first"), first, only="tuned").summary
    assert scored["start"]["flexible_accuracy"] == again["tuned"]["flexible_accuracy"]  # same adapter, same answers
    assert ("start", "tuned") in [(f["from"], f["to"]) for f in scored["flips"]]
    from tunelab.report import eval_lines
    start, base = (f"{100 * scored[m]['flexible_accuracy']:.1f} %" for m in ("start", "base"))
    assert any(f": base {base} → start adapter {start} → epoch 1 " in line for line in eval_lines(scored))
    write_report(second)
    text = second.report_md.read_text()
    assert "| Continued from | the adapter in " in text and "accuracy is that of the adapter the run continued" in text
    assert "from the adapter this run continued to its own (flexible" in text
    assert "vs the adapter this run continued training" in text and "prompting baseline" not in text
    assert "accuracy of the adapter the run continued (epoch 0)" in text
    assert "the training data?) was not made: this run continued an adapter" in text  # no base-model losses
    from tunelab import card
    assert "Epoch 0 is the adapter continued before the first step" in card.render(second)
    for change, named in (({"r": 4}, "lora.r"), ({"target_modules": ["q_proj", "v_proj"]}, "lora.target_modules"),
                          ({"modules_to_save": ["lm_head"]}, r"trained no module whole, the recipe's lora.modules_to_save"),
                          ({"trainable_tokens": [7]}, r"tokens none, the recipe's lora.trainable_tokens give \[7\]")):
        bad = {**raw, "lora": {**raw["lora"], **change}}
        with pytest.raises(UserError, match=named):
            train(validate(bad, "bad"), RunDir(tmp_path / "bad"))
        assert not (tmp_path / "bad").exists()
    import yaml
    from tunelab.cli import main
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["check", str(tmp_path / "good.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["continue_from"] == str(first.adapter)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**raw, "lora": {**raw["lora"], "alpha": 8}}))
    assert main(["check", str(tmp_path / "bad.yaml")]) == 2  # tunelab check says it before any training
    with pytest.raises(UserError, match="no adapter_config.json"):
        train(validate({**raw, "lora": {**raw["lora"], "continue_from": str(tmp_path)}}, "bad"),
              RunDir(tmp_path / "bad"))


@pytest.mark.slow
def test_warmup_is_train_warmup_steps_or_the_ratio_of_the_steps(tiny_recipe, tmp_path):
    """The learning rate climbs linearly for train.warmup_steps optimizer steps (else warmup_ratio of them, to the
    nearest step), then decays; the summary and the report say how many."""
    from tunelab.train.loop import warmup_steps
    ratio = validate({**tiny_recipe, "train": {**tiny_recipe["train"], "warmup_ratio": 0.03}}, "w")
    assert [warmup_steps(ratio, n) for n in (10, 50, 100, 117)] == [0, 2, 3, 4]  # 0.3, 1.5, 3, 3.51
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1, "batch_size": 4, "lr": 1e-2,
                                    "scheduler": "constant", "warmup_steps": 4, "warmup_ratio": 0.5}}
    run = RunDir(tmp_path / "warm")
    train(validate(raw, "warm"), run)
    lrs = [s["lr"] for s in run.read_steps()]
    assert lrs[:5] == pytest.approx([0.0, 0.0025, 0.005, 0.0075, 0.01]) and set(lrs[4:]) == {0.01}  # as Trainer steps
    assert run.read_summary()["warmup_steps"] == 4
    from tunelab.report import write_report
    write_report(run)
    assert "lr 0.01, constant schedule after 4 warmup steps, max length 128)" in run.report_md.read_text()
