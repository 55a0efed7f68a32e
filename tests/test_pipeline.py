"""`tunelab run` end to end on a tiny model: every stage writes its files; a re-run redoes nothing."""

import pytest

from tunelab.cli import main
from tunelab.pipeline import stages_done
from tunelab.rundir import RunDir


def test_run_all_stages_then_resume_without_redoing(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    args = ["run", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=40",
            "--set", "data.synthetic_test_rows=6", "--set", "eval.limit=6", "--set", "eval.max_new_tokens=8",
            "--set", "train.epochs=2", "--set", "train.max_length=128", "--set", "analysis.k_max=4",
            "--run-dir", str(tmp_path / "q")]
    assert main(args) == 0
    run = RunDir(tmp_path / "q")
    assert stages_done(run) == {"train": True, "eval": True, "analyze": True}
    out = capsys.readouterr().out
    assert f"report: {run.report_html}" in out and "accuracy (flexible)" in out and "cost $" in out
    md = run.report_md.read_text()
    assert "## Insights from model analysis" in md and "GSM8K-style accuracy (flexible)" in md
    assert "## Data" in md and run.read_json(run.data_checks)["rows"]["test"] == 6  # analyze ran the data checks
    assert "accuracy per epoch (flexible): base" in out and "## Questions gained and lost" in md
    stamp = run.summary.stat().st_mtime_ns, (run.eval_dir / "summary.json").stat().st_mtime_ns
    assert main(args) == 0  # resumed: nothing to redo but the report
    assert (run.summary.stat().st_mtime_ns, (run.eval_dir / "summary.json").stat().st_mtime_ns) == stamp
    assert main([*args[:-2], "--set", "train.lr=0.5", "--run-dir", str(tmp_path / "q")]) == 2
    assert "holds a run of a different recipe" in capsys.readouterr().err
    # a run made before a key existed (here model.hub_id) still resumes: the key takes its default
    run.config.write_text("".join(line for line in run.config.read_text().splitlines(keepends=True)
                                  if not line.strip().startswith("hub_id:")))
    assert main(args) == 0
