"""`tunelab import`: an adapter trained by TRL's SFTTrainer becomes a run — its epoch checkpoints scored as epochs,
its losses measured by tunelab's rules (checked here against transformers' own loss), resumable — and bad folders
are refused before anything is written."""

import json
import shutil
from itertools import takewhile

import pytest

from tunelab.cli import main
from tunelab.config import to_yaml, validate
from tunelab.rundir import RunDir

from conftest import recording_bar, write_jsonl


def _recipe(tiny_model, folder) -> dict:
    return {"name": "tinyimport", "model": {"name": str(tiny_model)},
            "data": {"source": str(folder), "template": "Instruction: {question}\nResponse: ", "target": "{answer}"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "train": {"epochs": 3, "batch_size": 8, "max_length": 128},
            "eval": {"limit": 5, "max_new_tokens": 12}}


def _write_recipe(raw: dict, path):
    path.write_text(to_yaml(validate(raw, "test")))
    return str(path)


@pytest.fixture(scope="module")
def trl_output(tiny_model, tmp_path_factory):
    """A 2-epoch TRL SFTTrainer LoRA run (r=4, alpha=8: not the recipe's) on the recipe's train rows, with a
    checkpoint at each epoch's end, as a TRL user would have it."""
    from tunelab.data.synthetic import generate as synthetic
    folder = tmp_path_factory.mktemp("import-data")
    rows = synthetic(37, 3)
    write_jsonl(folder / "train.jsonl", rows[:32])
    write_jsonl(folder / "test.jsonl", rows[32:])
    recipe = _write_recipe(_recipe(tiny_model, folder), folder / "recipe.yaml")
    out = _trl_train(tiny_model, folder, tmp_path_factory.mktemp("trl") / "out", num_train_epochs=2)
    return out, recipe, folder


def _trl_train(tiny_model, folder, out, **settings):
    """TRL's SFTTrainer on the recipe's train rows (the validation rows held out, as tunelab holds them out), LoRA
    r=4, alpha=8, a checkpoint at each epoch's end; `settings`: the run's length."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from tunelab.data import load_splits
    train_rows = load_splits(validate(_recipe(tiny_model, folder), "test").data).train
    data = Dataset.from_list([{"prompt": e.prompt, "completion": e.target} for e in train_rows])
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=8, learning_rate=3e-2, bf16=False,
                     logging_steps=1, report_to=[], save_strategy="epoch", use_cpu=True, dataloader_num_workers=0,
                     max_length=128, seed=0, **settings)
    torch.manual_seed(0)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(tiny_model),
                         peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    trainer.train()
    trainer.save_model()
    trainer.save_state()
    return out


@pytest.fixture(scope="module")
def imported_run(trl_output, tmp_path_factory):
    out, recipe, _ = trl_output
    run = tmp_path_factory.mktemp("imported") / "run"
    assert main(["import", recipe, str(out), "--run-dir", str(run)]) == 0
    return RunDir(run)


def _hf_loss(model, cfg, rows, tok) -> float:
    """Token-weighted loss of `rows` computed by transformers itself (labels shifted inside the model)."""
    import torch
    from tunelab.train.batching import IGNORE, tokenize_with
    items, _ = tokenize_with(cfg, rows, tok)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for it in items:
            n = sum(1 for x in it.labels[1:] if x != IGNORE)
            out = model(input_ids=torch.tensor([it.input_ids]), labels=torch.tensor([it.labels]))
            total, tokens = total + float(out.loss) * n, tokens + n
    return total / tokens


@pytest.mark.slow
def test_a_trl_run_is_imported_with_each_epoch_scored_and_its_losses_measured(trl_output, imported_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.data import load_splits
    out, _, _ = trl_output
    run = imported_run
    cfg = run.read_recipe()
    assert cfg.lora.target_modules == "all-linear"  # PEFT saved the list of every linear layer
    splits = load_splits(cfg.data, cfg.eval)
    # the adapter as TRL saved it, and the one of epoch 1's checkpoint (batch 8: a step per 8 train rows)
    assert (run.adapter / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()
    assert (run.epoch_adapter(1) / "adapter_model.safetensors").read_bytes() == \
        (out / f"checkpoint-{-(-len(splits.train) // 8)}" / "adapter_model.safetensors").read_bytes()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.train.epochs) == (4, 8, 2)  # from the adapter, not the recipe's 8/16/3
    # losses by tunelab's rule equal transformers' own loss on the same rows, for the base model and epoch 2
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    epochs = run.read_epochs()
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name).eval()
    assert epochs[0]["val_loss"] == pytest.approx(_hf_loss(base, cfg, splits.val, tok), rel=1e-4)
    tuned = PeftModel.from_pretrained(base, str(out)).eval()
    assert epochs[2]["val_loss"] == pytest.approx(_hf_loss(tuned, cfg, splits.val, tok), rel=1e-4)
    assert epochs[2]["train_loss"] == pytest.approx(_hf_loss(tuned, cfg, splits.train, tok), rel=1e-4)
    assert epochs[2]["val_loss"] < epochs[0]["val_loss"]  # TRL's training moved the adapter
    # per-row losses for the data map (train rows per epoch) and the familiarity check (test rows, epoch 0)
    examples = run.read_examples()
    assert sorted({(x["split"], x["epoch"]) for x in examples}) == \
        [("test", 0), ("train", 1), ("train", 2), ("val", 0), ("val", 1), ("val", 2)]
    assert sum(1 for x in examples if x["split"] == "train" and x["epoch"] == 2) == len(splits.train)
    # the Trainer's own step log, marked as such
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert [(s["step"], s["loss"], s["logged_by"]) for s in run.read_steps()] == \
        [(h["step"], h["loss"], "trainer") for h in logged]
    # eval scored the base model, epoch 1 and the final adapter on the same questions; the report says where from
    evaluation = run.read_eval_summary()
    assert [r["epoch"] for r in evaluation["epochs"]] == [1, 2]
    assert evaluation["base"]["n"] == evaluation["tuned"]["n"] == 5
    report = run.report_md.read_text()
    assert f"imported from `{out}`" in report and "after each epoch over the train rows" in report
    assert "- Cost = the other trainer's train_runtime" in report and "Cost = measured wall hours" not in report
    assert "- Accuracy interval = 95 % paired bootstrap" in report
    summary = run.read_summary()
    assert summary["imported"]["train_runtime_seconds"] > 0 and not run.cost.exists()  # no price in the recipe
    assert "Trained outside tunelab" in (run.adapter / "README.md").read_text()
    # the template ends in a space: TRL tokenized prompt + answer together, merging it into the answer's first token
    assert summary["imported"]["boundary_merges"]["rows"] > 0


@pytest.mark.slow
def test_an_import_resumes_at_the_first_epoch_not_measured(trl_output, imported_run, tmp_path, monkeypatch):
    out, recipe, _ = trl_output
    run = RunDir(tmp_path / "run")
    shutil.copytree(imported_run.path, run.path)
    before_epochs, before_examples = imported_run.read_epochs(), imported_run.read_examples()
    run.summary.unlink()  # as if killed after epoch 1's measurements
    run.write_jsonl(run.epochs, before_epochs[:2])
    seen = recording_bar(monkeypatch)
    assert main(["import", recipe, str(out), "--run-dir", str(run.path)]) == 0
    start = seen.index(next(s for s in seen if s[0] == "import: loss passes"))
    total, steps = seen[start][1], list(takewhile(lambda s: isinstance(s[0], int), seen[start + 1:]))  # its own
    measured = [x for x in before_examples if x["epoch"] == 2]  # epoch 2's train and validation rows, one by one
    assert total == len(measured) == sum(n for n, _ in steps) and {f["epoch"] for _, f in steps} == {2}
    after = run.read_epochs()
    assert after[:2] == before_epochs[:2]  # kept as measured (their seconds too): not measured again
    assert [{**e, "val_seconds": 0} for e in after[2:]] == [{**e, "val_seconds": 0} for e in before_epochs[2:]]
    assert sorted(map(json.dumps, run.read_examples())) == sorted(map(json.dumps, before_examples))


@pytest.mark.slow
def test_an_imported_run_compares_with_one_tunelab_trained(trl_output, imported_run, tmp_path, capsys):
    out, recipe, _ = trl_output
    native = tmp_path / "native"
    assert main(["train", recipe, "--set", "train.epochs=2", "--set", "lora.r=4", "--set", "lora.alpha=8",
                 "--run-dir", str(native)]) == 0
    capsys.readouterr()
    assert main(["compare", str(native), str(imported_run.path), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Train loss follows two rules here: run (imported)" in text
    # the same LoRA settings: PEFT's saved list of every linear layer reads back as the recipe's all-linear
    assert "lora.target_modules" not in text and "| lora.r |" not in text
    # same recipe, so only the record of what the folder holds keeps an import from resuming into the wrong run
    _refused(["import", recipe, str(out), "--run-dir", str(native)], capsys, "holds a run trained by tunelab")
    last = max(out.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))  # the final adapter, elsewhere
    _refused(["import", recipe, str(last), "--run-dir", str(imported_run.path)], capsys,
             f"holds an import of {out}, not of {last}")


@pytest.mark.slow
def test_a_hub_repo_is_imported_and_its_trainers_runtime_priced(trl_output, tmp_path, monkeypatch):
    out, recipe, _ = trl_output
    # the TRL output pushed to the Hub as someone/tiny-lora, as huggingface_hub caches a download of it (offline here)
    snapshot = tmp_path / "hub" / "models--someone--tiny-lora" / "snapshots" / "c0ffee"
    shutil.copytree(out, snapshot)
    (tmp_path / "hub" / "models--someone--tiny-lora" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-lora" / "refs" / "main").write_text("c0ffee")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    run = RunDir(tmp_path / "run")
    assert main(["import", recipe, "someone/tiny-lora", "--run-dir", str(run.path), "--set", "cost.usd_per_hour=3.6",
                 "--set", "eval.scoring=none"]) == 0
    assert run.read_summary()["imported"]["source"] == "someone/tiny-lora"
    assert [e["epoch"] for e in run.read_epochs()] == [0, 1, 2]
    runtime = json.loads((out / "trainer_state.json").read_text())["log_history"][-1]["train_runtime"]
    assert run.read_json(run.cost)["cost_usd"] == pytest.approx(runtime / 3600 * 3.6)
    assert "× the other trainer's train_runtime" in run.report_md.read_text()


@pytest.mark.parametrize("method", ["lora", "dora", "whole", "rows", "added"])
@pytest.mark.slow
def test_a_tunelab_adapter_imported_measures_what_its_training_run_measured(tiny_recipe, tmp_path, method):
    """A run's own adapter/ folder (PEFT format, no trainer_state.json: epochs from the recipe) imported: its
    validation loss and token accuracy equal those the training loop measured after the last epoch (with the LM
    head trained whole too, method "whole": lora.modules_to_save; with embedding rows, "rows":
    lora.trainable_tokens; with new tokens, "added": model.added_tokens, the base grown before the adapter loads)."""
    from tunelab import imported
    from tunelab.models import adapted_counts
    from tunelab.train import train
    raw = {**tiny_recipe, "lora": {**tiny_recipe["lora"], "use_dora": method == "dora",
                                   "modules_to_save": ["lm_head"] if method == "whole" else [],
                                   "trainable_tokens": ["<|im_end|>", 5] if method == "rows" else []}}
    if method == "added":
        raw["model"] = {**raw["model"], "added_tokens": ["<|q|>", "<|end|>"], "special_tokens": {"eos_token": "<|end|>"}}
        raw["data"] = {**raw["data"], "template": "<|q|>{question}\nResponse: "}
    native = RunDir(tmp_path / "native")
    train(validate(raw, "tiny"), native)
    cfg = validate({**raw, "lora": {"r": 2, "alpha": 4}}, "tiny")  # the adapter's settings replace these
    source = imported.find(native.adapter, cfg.train.epochs)
    cfg = imported.prepare(cfg, source)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.use_dora) == (8, 16, method == "dora")
    trained = validate(raw, "tiny")  # the recipe it came from trains the same weights (PEFT names them its way)
    assert adapted_counts(cfg.model, cfg.lora) == adapted_counts(trained.model, trained.lora)
    assert bool(cfg.lora.modules_to_save) == (method == "whole")
    assert bool(cfg.lora.trainable_tokens) == (method in ("rows", "added"))
    run = RunDir(tmp_path / "imported")
    imported.import_run(cfg, run, source)
    ours, theirs = run.read_epochs(), native.read_epochs()
    assert [e["epoch"] for e in ours] == [0, 2]  # no epoch checkpoint in a bare adapter folder
    for a, b in ((ours[0], theirs[0]), (ours[-1], theirs[-1])):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=2e-5)
        assert a["val_token_accuracy"] == pytest.approx(b["val_token_accuracy"], abs=1e-6)
    summary = run.read_summary()
    assert summary["train_loss_improvement_pct"] is None  # one measured epoch: no change to state
    from tunelab.report import train_loss_change, write_report
    assert train_loss_change(summary) == f"train loss {summary['final_train_loss']:.4f} (epoch 2 only measured)"
    write_report(run)
    assert "| Train loss improvement | — (one epoch measured) |" in run.report_md.read_text()


@pytest.mark.slow
def test_an_imported_run_that_continued_an_adapter_measures_epoch_0_on_that_adapter(tiny_recipe, tmp_path):
    """An adapter trained on from another (Axolotl's lora_model_dir, lora.continue_from in the recipe): imported,
    its epoch 0 is the adapter it continued, as in the run that trained it, which is kept in adapters/start/."""
    from tunelab import imported
    from tunelab.train import train
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1}}
    first, second = RunDir(tmp_path / "first"), RunDir(tmp_path / "second")
    train(validate(raw, "tiny"), first)
    raw["lora"] = {**raw["lora"], "continue_from": str(first.path)}
    train(validate(raw, "tiny"), second)
    source = imported.find(second.adapter, 1)
    run = RunDir(tmp_path / "imported")
    imported.import_run(imported.prepare(validate(raw, "tiny"), source), run, source)
    for ours, theirs in zip(run.read_epochs(), second.read_epochs(), strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=2e-5)
    assert (run.start_adapter / "adapter_model.safetensors").read_bytes() == first.adapter_weights.read_bytes()
    from tunelab.errors import UserError
    with pytest.raises(UserError, match="lora.r"):  # the adapter continued must fit the imported one
        imported.prepare(validate({**raw, "lora": {**raw["lora"], "continue_from": _rank_2_adapter(
            raw["model"]["name"], tmp_path / "rank-2")}}, "tiny"),
                         source)


def _rank_2_adapter(model_name: str, out) -> str:
    """A PEFT LoRA adapter of rank 2 on every linear layer of `model_name`, saved to `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_name)
    get_peft_model(model, LoraConfig(r=2, lora_alpha=16, target_modules="all-linear")).save_pretrained(out)
    return str(out)


def _adapter_folder(path, **config):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                          "target_modules": ["q_proj", "v_proj"], **config}))
    return path


def _refused(args, capsys, *needles) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err
    return err


def test_folders_that_are_not_a_lora_run_are_refused_naming_the_file(tiny_model, tmp_path, capsys):
    recipe = _write_recipe(_recipe(tiny_model, "synthetic:arith"), tmp_path / "r.yaml")
    run = tmp_path / "run"
    _refused(["import", recipe, str(tmp_path / "nowhere"), "--run-dir", str(run)], capsys, "not a folder")
    (tmp_path / "empty").mkdir()
    _refused(["import", recipe, str(tmp_path / "empty"), "--run-dir", str(run)], capsys, "no adapter_config.json")
    ia3 = _adapter_folder(tmp_path / "ia3", peft_type="IA3")
    _refused(["import", recipe, str(ia3), "--run-dir", str(run)], capsys, "IA3 adapter")
    half = _adapter_folder(tmp_path / "half")
    (half / "trainer_state.json").write_text(json.dumps({"epoch": 1.5, "log_history": []}))
    _refused(["import", recipe, str(half), "--run-dir", str(run)], capsys, "trainer_state.json", "epoch 1.5")
    broken = _adapter_folder(tmp_path / "broken")
    (broken / "trainer_state.json").write_text("{not json")
    _refused(["import", recipe, str(broken), "--run-dir", str(run)], capsys, "trainer_state.json: not readable JSON")
    _refused(["import", recipe, "someone/gsm8k-lora", "--run-dir", str(run)], capsys,  # offline here
             "someone/gsm8k-lora: not a folder here, and not a Hub repo this machine could download")
    assert not run.exists()  # nothing written


def test_an_adapter_of_another_model_is_refused_before_anything_is_written(tiny_model, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file
    run = tmp_path / "run"
    mistral = _adapter_folder(tmp_path / "mistral", base_model_name_or_path="mistralai/Mistral-7B-v0.1")
    _refused(["import", "quickstart", str(mistral), "--run-dir", str(run)], capsys,
             "base_model_name_or_path is mistralai/Mistral-7B-v0.1", "HuggingFaceTB/SmolLM2-135M-Instruct")
    recipe = _write_recipe(_recipe(tiny_model, "synthetic:arith"), tmp_path / "r.yaml")
    wide = _adapter_folder(tmp_path / "wide")  # the tiny model's layers are 32 wide, this adapter's 48
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 48),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(32, 4)},
              str(wide / "adapter_model.safetensors"))
    _refused(["import", recipe, str(wide), "--run-dir", str(run)], capsys, "adapter_model.safetensors",
             "q_proj.lora_A.weight is 4×48", "maps 32 → 32")
    alien = _adapter_folder(tmp_path / "alien")
    save_file({"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": torch.zeros(4, 32)},
              str(alien / "adapter_model.safetensors"))
    _refused(["import", recipe, str(alien), "--run-dir", str(run)], capsys,
             "no linear layer transformer.h.0.attn.c_attn")
    assert not run.exists()


def test_rows_whose_prompt_merges_into_the_answer_when_tokenized_together_are_counted(tiny_model):
    from transformers import AutoTokenizer
    from tunelab.data import Example
    from tunelab.train.batching import boundary_merges
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [Example("a", "Instruction: How far?\nResponse: ", "Distance is 5 km.", {}),
            Example("b", "Instruction: How far?\nResponse:", " Distance is 5 km.", {}),
            Example("c", "Instruction: How far?\nResponse:\n", "Distance is 5 km.", {})]
    found = boundary_merges(rows, tok)
    assert (found["rows"], found["of"]) == (1, 3)
    assert found["example"] == {"id": "a", "prompt_end": " ", "together": " Distance"}
    assert boundary_merges(rows[1:], tok) == {"rows": 0, "of": 2}


def test_a_train_loss_far_above_the_other_trainers_is_flagged_with_the_merging_rows():
    from tunelab.report.observations import imported_tokens
    merges = {"rows": 288, "of": 288, "example": {"id": "train-7", "prompt_end": " ", "together": " Each"}}
    summary = {"final_train_loss": 0.447, "imported": {"logged_last_epoch_loss": 0.02, "boundary_merges": merges}}
    found = imported_tokens(summary)
    assert found.kind == "watch"
    assert "0.447, 22× the other trainer's own logged loss over its last epoch (0.020)" in found.text
    assert "On 288 of 288 training rows" in found.text and "' ' + the answer becomes ' Each'" in found.text
    no_merge = imported_tokens({**summary, "imported": {"logged_last_epoch_loss": 0.02,
                                                         "boundary_merges": {"rows": 0, "of": 288}}})
    assert no_merge.kind == "watch" and "Check that the recipe's template and target" in no_merge.text
    assert imported_tokens({**summary, "final_train_loss": 0.09}).kind == "info"  # within 2x + 0.05
    assert imported_tokens({"final_train_loss": 0.4, "imported": {"logged_last_epoch_loss": None}}) is None
    assert imported_tokens({"final_train_loss": 0.4}) is None  # trained by tunelab


@pytest.mark.slow
def test_a_run_that_max_steps_ended_inside_an_epoch_is_imported_with_its_last_epoch_cut_short(
        trl_output, tiny_model, tmp_path, capsys):
    """TRL with max_steps 6 at 4 steps an epoch: checkpoint-4 at epoch 1, the final adapter at epoch 1.5 — the
    run's end, not a crash — imported as epochs 1 and 2, the last 2 of its 4 steps; a Trainer stopped inside an
    epoch before its max_steps stays refused."""
    _, recipe, folder = trl_output
    out = _trl_train(tiny_model, folder, tmp_path / "out", max_steps=6)
    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["global_step"], state["max_steps"], state["epoch"]) == (6, 6, 1.5)
    run = RunDir(tmp_path / "run")
    assert main(["import", recipe, str(out), "--run-dir", str(run.path), "--set", "eval.limit=2"]) == 0
    assert [e["epoch"] for e in run.read_epochs()] == [0, 1, 2]
    assert (run.epoch_adapter(1) / "adapter_model.safetensors").read_bytes() == \
        (out / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
    summary = run.read_summary()
    assert (summary["steps"], summary["steps_per_epoch"], summary["max_steps"]) == (6, 4, 6)
    assert "| Epochs | 2, max_steps 6: the last epoch's 2 of 4 steps: adapters of epochs 1, 2 imported" in \
        run.report_md.read_text()
    (out / "trainer_state.json").write_text(json.dumps({**state, "max_steps": 8}))  # stopped at step 6 of 8
    capsys.readouterr()
    _refused(["import", recipe, str(out), "--run-dir", str(tmp_path / "other")], capsys, "trainer_state.json",
             "epoch 1.5, not at an epoch's end nor at the run's max_steps")
