"""`tunelab ls`: where each run directory stands (running, stopped, stages left, done), from its files alone."""

import json
import os
import shlex
import socket
import subprocess
import sys
import time

import pytest

from fixture_run import make_run
from tunelab import pipeline, status
from tunelab.cli import main
from tunelab.config import to_yaml
from tunelab.rundir import RunDir


def _trained(path):
    """A fixture run whose train stage finished (its adapter written)."""
    make_run(path)
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_config.json").write_text("{}")
    return RunDir(path)


def _report(run: RunDir):
    run.report_html.write_text("<html></html>")
    later = time.time() + 5
    os.utime(run.report_html, (later, later))


def _mid_training(path, step=8, tokens=500, planned_tokens=10_000):
    """A fixture run stopped in epoch 1 of 2 after a checkpoint at `step`: its curves so far, no summary."""
    run = _trained(path)
    run.summary.unlink()
    run.adapter_config.unlink()
    (path / "eval" / "summary.json").unlink()
    run.analysis_summary.unlink()
    epochs = run.read_epochs()[:1]  # only the validation before the first step
    run.write_jsonl(run.epochs, epochs)
    run.write_jsonl(run.steps, [{"step": s, "epoch": 1, "loss": 1.0, "tokens": tokens, "tokens_per_second": 100.0,
                                 "seconds": s * 5.0} for s in range(1, step + 1)])
    run.write_json(run.estimate, {"train_tokens_per_epoch": planned_tokens // 2, "epochs": 2})
    checkpoint = run.checkpoints / f"step-{step:07d}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text("{}")
    return run


def test_finds_runs_at_any_depth_but_not_inside_a_run_or_in_hidden_folders(tmp_path):
    make_run(tmp_path / "a")
    make_run(tmp_path / "sweep" / "lr=1e-3")
    make_run(tmp_path / ".trash" / "old")
    (tmp_path / "a" / "eval" / "also" / "x").mkdir(parents=True)
    (tmp_path / "a" / "eval" / "also" / "x" / "config.yaml").write_text("not a run")
    assert [r.path for r in status.find([str(tmp_path)])] == [tmp_path / "a", tmp_path / "sweep" / "lr=1e-3"]
    assert [r.path for r in status.find([str(tmp_path / "a")])] == [tmp_path / "a"]  # a run dir itself
    with pytest.raises(Exception, match="nowhere: no such folder"):
        status.find([str(tmp_path / "nowhere")])


def test_a_run_whose_config_no_longer_validates_is_listed_with_why(tmp_path, capsys):
    run = _trained(tmp_path / "old")
    run.config.write_text(run.config.read_text().replace("epochs: 2", "epochs: -1"))
    d = status.describe(run)
    assert d["state"].startswith("config.yaml unreadable:") and "train.epochs" in d["state"] and d["next"] is None
    assert d["val_loss"] == [2.31, 1.55]  # what its files say is still shown
    assert main(["ls", str(tmp_path)]) == 0


def test_a_finished_run_is_done_until_a_stage_writes_after_its_report(tmp_path):
    run = _trained(tmp_path / "r")
    _report(run)
    d = status.describe(run)
    assert d["state"] == "done: trained 2 epochs" and d["next"] is None and d["running"] is None
    assert d["val_loss"] == [2.31, 1.55] and d["cost_usd"] == {"train": 0.0059, "eval": None}
    assert d["accuracy"] == {"scoring": "numeric", "base": 0.05, "tuned": 0.15, "n": 100, "delta_pts": 10.0,
                             "ci95_pts": [4.0, 16.0]}
    run.write_json(run.report_json, {"observations": [{"kind": "watch", "text": "Overlap.", "rule": "r"},
                                                      {"kind": "good", "text": "Better.", "rule": "r"}]})
    assert status.describe(run)["state"] == "done: trained 2 epochs; 1 to watch (report)"
    later = time.time() + 10  # a re-run eval: the report no longer shows what the run holds
    os.utime(run.eval_summary, (later, later))
    d = status.describe(run)
    assert d["state"] == "trained 2 epochs; report stale" and d["next"] == f"tunelab report {run.path}"
    summary = run.read_json(run.summary)  # train.max_steps 15 at 9 steps an epoch: epoch 2 ends after 6 of them
    run.write_json(run.summary, {**summary, "max_steps": 15, "steps": 15, "steps_planned": 15, "steps_per_epoch": 9,
                                 "epochs_planned": 2})
    assert status.describe(run)["state"].startswith("trained 2 epochs, the last 6 of its 9 steps (max_steps 15)")


def test_a_trained_run_lists_the_stages_left_and_a_command_that_resumes_it(tmp_path, monkeypatch):
    run = _trained(tmp_path / "r")
    run.eval_summary.unlink()
    run.analysis_summary.unlink()
    d = status.describe(run)
    assert d["state"] == "trained 2 epochs; eval, analyze left" and d["accuracy"] is None
    resumed = []
    monkeypatch.setattr(pipeline, "_stages", lambda cfg, r, base, source=None: resumed.append(r.path))
    assert main(shlex.split(d["next"])[1:]) == 0  # the same recipe: `tunelab run` takes the run dir up again
    assert resumed == [run.path]

    run.write_json(run.eval_skipped, {"reason": "data.target: prose"})  # eval skipped for its data: not left
    assert status.describe(run)["state"] == "trained 2 epochs; analyze left"
    assert status.describe(run)["accuracy"] == {"skipped": "data.target: prose"}
    run.write_json(run.eval_skipped, {"reason": "data.target: prose", "by_loss": True})  # replies to measure by loss
    assert status.describe(run)["state"] == "trained 2 epochs; eval, analyze left"
    held_out = run.eval_dir / "loss"
    held_out.mkdir(parents=True)
    (held_out / "summary.json").write_text(json.dumps({
        "scoring": "loss", "losses": {"base": {}, "tuned": {}},
        "loss_difference": {"means": [2.0, 1.5], "delta": -0.5, "ci95": [-0.7, -0.3]}}))
    d = status.describe(run)
    assert d["state"] == "trained 2 epochs; analyze left"
    assert d["accuracy"] == {"skipped": "data.target: prose", "loss": [2.0, 1.5], "loss_delta": -0.5,
                             "loss_ci95": [-0.7, -0.3]}


def test_an_eval_also_set_not_yet_scored_is_a_stage_left(tmp_path):
    run = _trained(tmp_path / "r")
    cfg = run.read_recipe(["eval.also=[{source: synthetic:arith, name: extra}]"])
    run.write_text(run.config, to_yaml(cfg))
    _report(run)
    assert status.describe(run)["state"] == "trained 2 epochs; eval.also left"
    extra = run.eval_dir / "also" / "extra"
    extra.mkdir(parents=True)
    (extra / "summary.json").write_text(json.dumps({"scoring": "loss", "losses": {"base": {}, "tuned": {}}}))
    assert status.describe(run)["state"] == "trained 2 epochs; eval.also left"  # measured by loss: its replies left
    (extra / "replies").mkdir()
    (extra / "replies" / "summary.json").write_text(json.dumps({"base": {}, "tuned": {}}))
    earlier = run.report_html.stat().st_mtime - 10
    for done in (extra / "summary.json", extra / "replies" / "summary.json"):
        os.utime(done, (earlier, earlier))
    assert status.describe(run)["state"] == "done: trained 2 epochs"  # its replies scored too, before the report
    later = time.time() + 10
    os.utime(extra / "replies" / "summary.json", (later, later))  # its replies scored again after it: stale
    assert status.describe(run)["state"] == "trained 2 epochs; report stale"
    run.write_text(run.config, to_yaml(run.read_recipe(["eval.overlap=false"])))
    (extra / "replies" / "summary.json").unlink()
    assert status.describe(run)["state"] == "done: trained 2 epochs"  # replies not asked for: not a stage left


def test_a_run_killed_mid_training_shows_where_it_stopped_and_resumes_from_its_checkpoint(tmp_path):
    run = _mid_training(tmp_path / "r")
    (tmp_path / "r" / ".lock").write_text(json.dumps({"pid": 2 ** 22 + 1, "command": "run",
                                                      "host": socket.gethostname()}))  # a dead pid
    d = status.describe(run)
    assert d["running"] is None
    assert d["state"] == "stopped; epoch 1 of 2, step 8 (40 % of the training tokens); resumes from step 8"
    assert d["next"] == f"tunelab run {run.config} --run-dir {run.path}"
    assert d["val_loss"] == [2.31, 2.31]
    run.steps.unlink()  # killed after writing a checkpoint, before the curves that follow it
    assert status.describe(run)["state"] == "stopped; resumes from step 8"


def test_a_running_train_stage_shows_its_progress_and_time_left(tmp_path):
    run = _mid_training(tmp_path / "r", step=10, tokens=500, planned_tokens=26_000)
    checkpointed = time.time() - 90  # the last checkpoint wrote the curves 90 s ago
    os.utime(run.steps, (checkpointed, checkpointed))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.lock_file.write_text(json.dumps({"pid": holder.pid, "command": "train",
                                             "host": socket.gethostname()}))
        d = status.describe(run)
    finally:
        holder.kill()
        holder.wait()
    assert d["running"]["pid"] == holder.pid and d["next"] is None
    # 21,000 tokens left at the last steps' 100 tokens/s: 210 s from the checkpoint, 90 of them spent
    assert d["state"] == (f"running: tunelab train, pid {holder.pid}; epoch 1 of 2, step 10 (19 % of the training "
                          "tokens), ~2 min of training left")


def test_an_imported_run_is_finished_stage_by_stage(tmp_path):
    run = _trained(tmp_path / "r")
    run.write_json(run.summary, {**run.read_summary(), "imported": {"source": "trl-out"}})
    run.eval_summary.unlink()
    assert status.describe(run)["next"] == f"tunelab eval {run.path}"  # not `tunelab run`: it would train
    run.write_json(run.eval_summary, {"base": {"n": 4, "flexible_accuracy": 0.25},
                                      "tuned": {"n": 4, "flexible_accuracy": 0.5}})
    run.analysis_summary.unlink()
    assert status.describe(run)["next"] == f"tunelab analyze {run.path}"


def test_ls_prints_a_table_and_the_next_commands_or_json(tmp_path, capsys):
    done = _trained(tmp_path / "done")
    _report(done)
    stopped = _mid_training(tmp_path / "stopped")
    assert main(["ls", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "done: trained 2 epochs" in out and "15.0 %" in out and "+10.0 pts (+4.0..+16.0)" in out
    assert f"{stopped.path}: tunelab run {stopped.config} --run-dir {stopped.path}" in out
    assert f"{done.path}:" not in out  # nothing left to run
    assert main(["ls", str(tmp_path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["next"] is None) for r in rows] == [(str(done.path), True), (str(stopped.path), False)]
    assert main(["ls", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
