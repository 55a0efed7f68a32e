"""`tunelab sweep`: every combination of --vary values runs as its own `tunelab run`, resumably, then the finished
runs are compared; bad combinations are refused before anything runs, a failing one does not stop the others."""

import json
import re

import pytest

from tunelab.cli import main
from tunelab.errors import UserError
from tunelab.rundir import RunDir
from tunelab.sweep import parse_vary, plan


def test_vary_values_split_at_top_level_commas_and_every_combination_gets_a_named_folder():
    vary = parse_vary(["train.lr=1e-4,3e-4", "lora.target_modules=[q_proj, v_proj],all-linear"])
    assert vary == [("train.lr", ["1e-4", "3e-4"]), ("lora.target_modules", ["[q_proj, v_proj]", "all-linear"])]
    assert plan(vary) == [
        ("lr=1e-4_target_modules=q_proj+v_proj", ["train.lr=1e-4", "lora.target_modules=[q_proj, v_proj]"]),
        ("lr=1e-4_target_modules=all-linear", ["train.lr=1e-4", "lora.target_modules=all-linear"]),
        ("lr=3e-4_target_modules=q_proj+v_proj", ["train.lr=3e-4", "lora.target_modules=[q_proj, v_proj]"]),
        ("lr=3e-4_target_modules=all-linear", ["train.lr=3e-4", "lora.target_modules=all-linear"])]
    # two keys ending alike: folders spell the whole key
    assert [name for name, _ in plan(parse_vary(["data.limit=8", "eval.limit=4"]))] == ["data.limit=8_eval.limit=4"]
    for bad, message in [("train.lr", "expected dotted.key=value1,value2"), ("train.lr=1e-4,", "expected dotted"),
                         ("=3", "expected dotted")]:
        with pytest.raises(UserError, match=message):
            parse_vary([bad])
    with pytest.raises(UserError, match="--vary train.lr: given twice"):
        parse_vary(["train.lr=1", "train.lr=2"])


@pytest.mark.slow
def test_sweep_runs_each_combination_once_then_compares_them(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    args = ["sweep", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=40",
            "--set", "data.synthetic_test_rows=6", "--set", "eval.limit=6", "--set", "eval.max_new_tokens=8",
            "--set", "train.epochs=1", "--set", "train.max_length=128", "--set", "analysis.k_max=3",
            "--vary", "lora.r=4,8"]
    folder = tmp_path / "sweep"
    assert main([*args, "--vary", "lora.r=4,x", "--run-dir", str(folder)]) == 2  # refused before anything runs
    err = capsys.readouterr().err
    assert "--vary lora.r: given twice" in err and not folder.exists()
    assert main([*args[:-1], "lora.r=4,big", "--run-dir", str(folder)]) == 2
    assert "sweep: 1 of 2 combinations have problems\n  r=big: " in capsys.readouterr().err
    assert not folder.exists()

    assert main([*args, "--run-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    runs = [RunDir(folder / "r=4"), RunDir(folder / "r=8")]
    assert all(r.report_html.exists() for r in runs)
    assert [r.read_recipe().lora.r for r in runs] == [4, 8]
    record = json.loads((folder / "sweep.json").read_text())
    assert [(e["name"], e["state"]) for e in record["runs"]] == [("r=4", "done"), ("r=8", "done")]
    compared = (folder / "compare.md").read_text()
    assert "| lora.r | 4 | 8 |" in compared and "r=4" in compared and "r=8" in compared
    assert "paired bootstrap 95 % CI of r=8's tuned adapter − r=4's over the same questions" in compared
    assert "r=4" in out and "r=8" in out and f"wrote {folder / 'compare.md'}" in out
    assert re.search(r"r=8\s*│\s*done\s*│\s*1\s*│\s*\d+\.\d{4}\s*│", out)  # epochs trained, then final val loss
    assert sorted(p.name for p in folder.iterdir()) == ["compare.html", "compare.md", "compare.png", "r=4", "r=8",
                                                         "sweep.json"]  # its lock file goes with its holder
    with RunDir(folder).lock("sweep"):  # another sweep of this folder is under way
        assert main([*args, "--run-dir", str(folder)]) == 2
    assert "in use by tunelab process" in capsys.readouterr().err

    stamps = [r.summary.stat().st_mtime_ns for r in runs]
    assert main([*args, "--run-dir", str(folder)]) == 0  # resumed: every run finished, nothing retrained
    assert [r.summary.stat().st_mtime_ns for r in runs] == stamps
    assert main([*args[:-1], "lora.r=4,16", "--run-dir", str(folder)]) == 2
    assert "holds another sweep" in capsys.readouterr().err

    from tunelab import pipeline
    real = pipeline.run_all

    def diverging(recipe, overrides, run_dir, baseline):
        if "lora.r=8" in overrides:
            raise UserError("train: loss is nan at step 3")
        return real(recipe, overrides, run_dir, baseline)
    monkeypatch.setattr(pipeline, "run_all", diverging)
    assert main([*args, "--run-dir", str(tmp_path / "again")]) == 1  # the failure is named, the rest still runs
    record = json.loads((tmp_path / "again" / "sweep.json").read_text())
    assert [(e["name"], e["state"]) for e in record["runs"]] == [("r=4", "done"),
                                                                 ("r=8", "failed: train: loss is nan at step 3")]
    assert (tmp_path / "again" / "r=4" / "report.html").exists() and "failed: train: loss is nan" in \
        capsys.readouterr().out
