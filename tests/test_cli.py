"""The real CLI end to end: train writes a run; user mistakes exit 2 with a message and write nothing."""

import pytest

from tunelab.cli import main


@pytest.mark.slow
def test_train_command_end_to_end(tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["-q", "train", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=24",
               "--set", "train.epochs=1", "--set", "train.max_length=96", "--run-dir", str(run)])
    assert rc == 0
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "summary.json").is_file()
    out = capsys.readouterr().out
    assert "val loss improvement" in out and "tokens/s" in out


@pytest.mark.parametrize("args, message", [
    (["--set", "train.epochs=-1"], "train.epochs: must be greater than or equal to 1 (got -1)"),
    (["--set", "data.val_fraction=1.5"], "data.val_fraction: must be less than 1 (got 1.5)"),
    (["--set", "train.epoch=2"], "--set train.epoch: no such key in the recipe schema (did you mean train.epochs?)"),
    (["--set", "lora.r=big"], "lora.r: must be a valid integer"),
    (["--set", r"data.template=Q: {qestion}\nA: "], "data.template: unknown placeholder {qestion}; fields are: "
                                                   "answer, family, question"),
    (["--set", "model.name=./no/such/model"], "model.name: ./no/such/model: no such local path"),
    (["--set", "data.source=./missing.jsonl"], "data.source: ./missing.jsonl: no such file or directory"),
    (["--set", "model.name=nosuchorg/nosuchmodel"], "model.name: nosuchorg/nosuchmodel: not a local model and not "
                                                    "loadable from the Hugging Face hub"),
    (["--set", "data.synthetic_rows=6"], "data.source: synthetic:arith: 5 train examples, fewer than "
                                         "train.batch_size=8; lower train.batch_size or add rows"),
    (["--set", "data.template=Q: {question"], "data.template: expected '}' before end of string"),
    (["--set", "data.optional_fields=[answr]"], "data.optional_fields: 'answr' is not a placeholder"),
])
def test_user_mistakes_exit_2_naming_the_key_and_write_nothing(args, message, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "quickstart", *args, "--run-dir", str(run)]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_eval_or_generate_of_a_folder_that_is_no_run_or_a_missing_path_exits_2(command, tmp_path, capsys):
    assert main([command, str(tmp_path)]) == 2
    assert f"{tmp_path}: not a run directory (no config.yaml); give a run directory or a recipe" in \
        capsys.readouterr().err
    assert main([command, str(tmp_path / "runs" / "smok")]) == 2  # a mistyped run directory: not "no such recipe"
    assert f"{tmp_path / 'runs' / 'smok'}: no such run directory or recipe file; built-in recipes are: " in \
        capsys.readouterr().err


def test_recipes_lists_builtins(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "gsm8k-mistral-7b" in out and "quickstart" in out and "gsm8k-smollm2-135m" in out


def test_a_corrupt_gguf_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(7))  # a GGUF magic, then a truncated header
    run = tmp_path / "run"
    assert main(["train", "quickstart", "--set", f"model.name={bad}", "--run-dir", str(run)]) == 2
    assert f"model.name: {bad}: not a readable GGUF model" in capsys.readouterr().err
    assert not run.exists() and not list((tmp_path / "cache").rglob("*.safetensors"))


def test_stage_flags_are_recipe_overrides_validated_like_any_key(tmp_path, capsys):
    from tunelab.cli import _parser
    args = _parser().parse_args(["eval", "r", "--limit", "5", "--set", "eval.max_new_tokens=9", "--batch-size", "2"])
    assert args.overrides == ["eval.limit=5", "eval.max_new_tokens=9", "eval.batch_size=2"]
    assert _parser().parse_args(["analyze", "r", "-k", "4", "--embedder", "model"]).overrides == \
        ["analysis.k=4", "analysis.embedder=model"]
    assert main(["eval", "quickstart", "--limit", "0", "--run-dir", str(tmp_path / "e")]) == 2
    assert "eval.limit: must be greater than or equal to 1 (got 0)" in capsys.readouterr().err
    assert main(["analyze", "--recipe", "quickstart", "-k", "x", "--run-dir", str(tmp_path / "a")]) == 2
    assert "analysis.k: must be a valid integer" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "a").exists()


def test_set_on_a_run_directory_is_limited_to_the_commands_own_sections(tmp_path, capsys):
    from fixture_run import make_run
    run = make_run(tmp_path / "r")
    assert main(["eval", str(run), "--set", "train.lr=0.1", "--set", "eval.limit=5"]) == 2
    assert "--set train.lr: on a run directory only eval.* keys can be overridden" in capsys.readouterr().err
    assert main(["analyze", str(run), "--set", "model.name=x"]) == 2
    assert "only analysis.* / checks.* / eval.* keys" in capsys.readouterr().err


def test_the_hub_clients_warnings_are_printed_once():
    """huggingface_hub logs through a handler of its own; propagated to tunelab's too, each retry of an unreachable
    Hub was printed twice."""
    import subprocess
    import sys
    code = ("import logging\nfrom tunelab.cli import main\nmain(['recipes'])\n"
            "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr.count("Retrying in 1s") == 1, proc.stderr


@pytest.mark.slow
def test_train_and_eval_import_only_what_training_needs(tiny_recipe, tmp_path):
    """`tunelab train` and `eval` run on a GPU machine that has torch, transformers, peft and accelerate but none of
    the analysis, plotting or benchmark packages: a fresh process that trains and evaluates imports none of them."""
    import json
    import subprocess
    import sys
    import yaml
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1},
                                      "eval": {**tiny_recipe["eval"], "fewshot": 0}}))
    code = ("import sys, json\nfrom tunelab.cli import main\n"
            f"for argv in (['train', {str(recipe)!r}, '--run-dir', {str(tmp_path / 'run')!r}], "
            f"['eval', {str(tmp_path / 'run')!r}]):\n"
            "    assert main(['-q', *argv]) == 0\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"torch", "transformers", "peft", "pydantic"} <= loaded  # it did train and evaluate
    # (scipy is left out: transformers imports it itself wherever it is installed)
    unneeded = {"matplotlib", "sklearn", "umap", "plotly", "wordcloud", "sentence_transformers", "selenium", "trl",
                "datasets", "pandas", "pyarrow", "numba", "gguf"}
    assert not loaded & unneeded, loaded & unneeded
