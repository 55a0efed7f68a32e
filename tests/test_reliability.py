"""Reliability: SIGKILL + resume equals an uninterrupted run; Ctrl-C saves a checkpoint; the lock; the NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import assert_same_adapter
from tunelab import status
from tunelab.cli import main
from tunelab.config import validate
from tunelab.errors import UserError
from tunelab.rundir import RunDir
from tunelab.train import train


@pytest.fixture
def recipe(tiny_recipe, tmp_path):
    raw = {**tiny_recipe, "data": {**tiny_recipe["data"], "synthetic_rows": 240},
           "train": {**tiny_recipe["train"], "epochs": 2, "checkpoint_every": 4, "batch_size": 4,
                     "val_every": 10, "scheduler": "constant"}}  # constant: the lowest pass falls inside epoch 2
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, path


def _start(path, run_dir):
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli", "-q", "train", str(path), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, run_dir, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if list((run_dir / "checkpoints").glob("step-*/state.json")):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(recipe, tmp_path):
    raw, path = recipe
    killed = tmp_path / "killed"
    proc = _start(path, killed)
    _wait_for_checkpoint(proc, killed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    seen = status.describe(RunDir(killed))  # `tunelab ls`: the lock's pid is dead; where the checkpoint is
    step = int(max((killed / "checkpoints").glob("step-*/state.json")).parent.name.removeprefix("step-"))
    assert seen["running"] is None and seen["next"] == f"tunelab run {killed / 'config.yaml'} --run-dir {killed}"
    assert seen["state"].startswith("stopped") and seen["state"].endswith(f"; resumes from step {step}")
    assert main(["-q", "train", "--resume", str(killed)]) == 0

    straight = RunDir(tmp_path / "straight")
    result = train(validate(raw, "straight"), straight)
    resumed = RunDir(killed)
    a, b = resumed.read_jsonl(resumed.epochs), result.epochs
    assert [e["epoch"] for e in a] == [0, 1, 2]  # complete, not duplicated
    for x, y in zip(a, b):  # tolerance: 1e-5 absolute on losses and accuracies (float summation order)
        for key in ("train_loss", "val_loss", "val_token_accuracy"):
            assert x[key] == pytest.approx(y[key], abs=1e-5), key
    steps = [s["step"] for s in resumed.read_jsonl(resumed.steps)]
    assert steps == list(range(1, len(steps) + 1))  # no optimizer step repeated or skipped
    logged = [{(e["split"], e["epoch"], e["id"]): e["loss"] for e in run.read_examples()}
              for run in (resumed, straight)]
    assert logged[0].keys() == logged[1].keys()  # every row's loss, those before the kill included, logged once
    assert len(resumed.read_examples()) == len(straight.read_examples())
    assert all(abs(logged[0][k] - logged[1][k]) < 1e-4 for k in logged[1])
    validation = [(v["step"], v["epoch_end"]) for v in resumed.read_jsonl(resumed.validation)]
    assert validation == [(v["step"], v["epoch_end"]) for v in straight.read_jsonl(straight.validation)]
    assert len(validation) == len(set(validation)) > 3  # train.val_every's passes, none repeated by the resume
    assert_same_adapter(straight.path, resumed.path, atol=1e-5, rtol=1e-4)
    assert resumed.read_json(resumed.summary)["resumed_from"]
    assert straight.best_loss_adapter.is_dir(), "the lowest of this curve's passes falls between epoch ends"
    assert_same_adapter(straight.best_loss_adapter.parent, resumed.best_loss_adapter.parent, atol=1e-5, rtol=1e-4,
                        folder="best-loss")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(recipe, tmp_path):
    raw, path = recipe
    run_dir = tmp_path / "interrupted"
    proc = _start(path, run_dir)
    _wait_for_checkpoint(proc, run_dir)
    before = {p.name for p in (run_dir / "checkpoints").glob("step-*")}
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved at" in err and f"tunelab train --resume {run_dir}" in err
    after = {p.name for p in (run_dir / "checkpoints").glob("step-*")}
    saved = Path(err.split("checkpoint saved at ", 1)[1].split(";", 1)[0])
    # the checkpoint at the interrupted step: a new one, or the one just written when Ctrl-C came while it was saved
    assert (saved / "state.json").is_file() and saved.name == max(after) >= max(before)
    assert not (run_dir / ".lock").exists()
    run = RunDir(run_dir)  # the curves so far are on disk, up to the checkpoint's step: a run can be watched
    steps = [s["step"] for s in run.read_jsonl(run.steps)]
    assert steps == list(range(1, int(saved.name.removeprefix("step-")) + 1)) and not run.summary.exists()
    assert run.read_jsonl(run.epochs)[0]["epoch"] == 0  # the validation before the first step


def test_lock_refuses_a_second_process_and_takes_over_a_stale_one(recipe, tmp_path, capsys):
    raw, path = recipe
    run_dir = tmp_path / "locked"
    run_dir.mkdir()
    # a second process that really holds the kernel lock, as a running tunelab would
    hold = ("import fcntl, json, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write(json.dumps({'pid': os.getpid(), 'command': 'train'})); f.flush(); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", str(path), "--run-dir", str(run_dir)]) == 2
        assert f"in use by tunelab process {holder.pid} (train)" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    with RunDir(run_dir).lock("test"):  # the holder is dead: its lock is stale and taken over
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    assert not (run_dir / ".lock").exists()


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(recipe, tmp_path, monkeypatch):
    raw, _ = recipe
    import tunelab.train.loop as engine
    real = engine.forward_tokens
    calls = {"n": 0}

    def poisoned(model, batch, device):
        losses, ok, rows = real(model, batch, device)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 6:
                losses = losses * float("nan")
        return losses, ok, rows

    monkeypatch.setattr(engine, "forward_tokens", poisoned)
    run = RunDir(tmp_path / "nan")
    with pytest.raises(UserError) as err:
        train(validate(raw, "nan"), run)
    text = str(err.value)
    assert text.startswith("step 6: loss is nan; training stopped, no update applied.")
    assert "Last good checkpoint: " in text and "step-0000004" in text
    assert (run.path / "checkpoints" / "step-0000004" / "state.json").exists()
    assert not run.summary.exists()


@pytest.mark.slow
def test_disk_full_while_checkpointing_stops_cleanly_and_keeps_the_last_checkpoint(recipe, tmp_path, monkeypatch):
    import errno
    import tunelab.train.checkpoint as ckpt
    raw, _ = recipe
    real = ckpt.torch.save
    calls = {"n": 0}

    def filling(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: half a file, then the disk is full
            Path(path).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(ckpt.torch, "save", filling)
    run = RunDir(tmp_path / "full")
    with pytest.raises(UserError) as err:
        train(validate(raw, "full"), run)
    assert str(err.value) == (f"{run.path / 'checkpoints' / 'step-0000008'}: cannot write (No space left on device); "
                              "the previous version is kept")
    left = sorted(p.name for p in (run.path / "checkpoints").iterdir())
    assert left == ["step-0000004"]  # no half-written folder beside it
    assert ckpt.latest(run).name == "step-0000004" and not run.summary.exists()


def test_resume_with_another_number_of_processes_is_refused(tiny_recipe, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    train(validate({**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1}}, "p"), run)
    state = next((run.path / "checkpoints").glob("step-*")) / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "processes": 2}))
    assert main(["train", "--resume", str(run.path)]) == 2
    assert (f"--resume {run.path}: {state.parent.name} was written by 2 process(es), this is 1; resume with 2 so "
            "the global batch") in capsys.readouterr().err


def test_ctrl_c_at_the_last_step_of_max_steps_resumes_without_another_step(tiny_recipe, tmp_path, monkeypatch):
    """A stop requested at train.max_steps' last step saves a checkpoint inside the (cut short) epoch; the resume
    takes no further step: it validates that epoch's end and writes the adapter."""
    from tunelab.train import loop as engine
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "batch_size": 4, "max_steps": 5}}
    real, taken = engine._guarded_step, []

    def step_then_ctrl_c(*args):
        row = real(*args)
        taken.append(1)
        if len(taken) == 5:
            os.kill(os.getpid(), signal.SIGINT)  # the handler's flag: a checkpoint after this step
        return row
    monkeypatch.setattr(engine, "_guarded_step", step_then_ctrl_c)
    run = RunDir(tmp_path / "steps")
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved at .*step-0*5;"):
        train(validate(raw, "steps"), run)
    monkeypatch.setattr(engine, "_guarded_step", real)
    train(validate(raw, "steps"), run, resume=True)
    assert [s["step"] for s in run.read_steps()] == [1, 2, 3, 4, 5] and len(taken) == 5
    assert [e["epoch"] for e in run.read_epochs()] == [0, 1] and run.read_json(run.summary)["steps"] == 5
