"""Multi-process data-parallel training on CPU (gloo): 2 processes match 1 process with the same global batch."""

import os
import subprocess
import sys

import pytest
import yaml

from tunelab.rundir import RunDir


def _recipe(tiny_recipe, tmp_path, name, grad_accum):
    raw = {**tiny_recipe, "name": name, "data": {**tiny_recipe["data"], "synthetic_rows": 72},
           "train": {**tiny_recipe["train"], "epochs": 2, "batch_size": 4, "grad_accum": grad_accum, "threads": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tiny_recipe, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "tunelab.cli", "-q", "train", str(_recipe(tiny_recipe, tmp_path, "one", 2)),
                    "--run-dir", str(one)], check=True, env=env, capture_output=True)
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29517", "-m", "tunelab.cli", "-q", "train", str(_recipe(tiny_recipe, tmp_path, "two", 1)),
                           "--run-dir", str(two)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = RunDir(one).read_jsonl(RunDir(one).epochs), RunDir(two).read_jsonl(RunDir(two).epochs)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):  # tolerance: 1e-4 relative (float summation order differs across ranks)
        for key in ("train_loss", "val_loss", "val_token_accuracy", "train_token_accuracy", "tokens"):
            if x[key] is not None:
                assert y[key] == pytest.approx(x[key], rel=1e-4), key
    summary = RunDir(two).read_json(RunDir(two).summary)
    assert summary["processes"] == 2 and summary["train_examples"] == RunDir(one).read_json(RunDir(one).summary)["train_examples"]
    examples = RunDir(two).read_jsonl(RunDir(two).examples)
    assert sum(1 for e in examples if e["split"] == "train" and e["epoch"] == 1) == summary["train_examples"]
    assert sum(1 for e in examples if e["split"] == "val" and e["epoch"] == 0) == summary["val_examples"]


def test_eval_shards_questions_across_processes(tiny_recipe, tmp_path):
    import shutil
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNELAB_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "tunelab.cli", "-q", "train", str(_recipe(tiny_recipe, tmp_path, "e", 1)),
                    "--run-dir", str(run)], check=True, env=env, capture_output=True)
    shutil.copytree(run, tmp_path / "copy")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29518", "-m", "tunelab.cli", "-q", "eval", str(run), "--only", "tuned", "--limit", "7"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "tunelab.cli", "-q", "eval", str(tmp_path / "copy"), "--only", "tuned",
                    "--limit", "7"], check=True, env=env, capture_output=True)
    sharded = RunDir(run).read_jsonl(RunDir(run).eval_dir / "predictions.jsonl")
    single = RunDir(tmp_path / "copy").read_jsonl(RunDir(tmp_path / "copy").eval_dir / "predictions.jsonl")
    assert len(sharded) == 7 and [(p["id"], p["completion"]) for p in sharded] == \
        [(p["id"], p["completion"]) for p in single]
