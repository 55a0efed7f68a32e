"""Weights & Biases as a tracker (`train.report_to: [wandb]`), run offline: a real local W&B run directory
whose records hold our step and epoch metrics, the recipe as config, the eval figures and the report artifact."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from tunelab.config import validate
from tunelab.evaluate.stage import evaluate
from tunelab.rundir import RunDir
from tunelab.train import train


def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (.wandb): a ':W&B' header, then LevelDB-style 32 KiB blocks of
    (crc32, length, type) chunks; FULL = 1, FIRST = 2, MIDDLE = 3, LAST = 4."""
    from wandb.proto import wandb_internal_pb2
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def _items(update) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in update}


@pytest.mark.slow
def test_wandb_offline_run_holds_our_metrics_config_eval_and_report(tiny_recipe, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 2, "report_to": ["wandb"]},
           "eval": {**tiny_recipe["eval"], "fewshot": 0, "pass_at_k": 2}}
    cfg = validate(raw, "wandb")
    run = RunDir(tmp_path / "run")
    train(cfg, run)
    evaluate(cfg, run)
    from tunelab.report import write_report
    write_report(run)

    logs = sorted(run.wandb.glob("offline-run-*/run-*.wandb"))
    assert len({p.name for p in logs}) == 1  # train, eval and report continued one W&B run
    records = [r for log in logs for r in wandb_records(log)]
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    steps = run.read_jsonl(run.steps)
    logged = [h["train/loss"] for h in history if "train/loss" in h]
    assert logged == pytest.approx([s["loss"] for s in steps])  # every step's loss, in order
    epochs = [h["epoch/val_loss"] for h in history if "epoch/val_loss" in h]
    assert epochs == pytest.approx([e["val_loss"] for e in run.read_epochs()[1:]])
    config = {k: v for r in records if r.WhichOneof("record_type") == "run" for k, v in _items(r.run.config.update).items()}
    assert config["lora"]["r"] == cfg.lora.r and config["name"] == cfg.name  # the resolved recipe
    summary = {k: v for r in records if r.WhichOneof("record_type") == "summary"
               for k, v in _items(r.summary.update).items()}
    assert summary["eval/tuned_flexible_accuracy"] == run.read_eval_summary()["tuned"]["flexible_accuracy"]
    sampled = run.read_eval_summary()["sampled"]["models"]  # eval.pass_at_k's figures, k named
    assert summary["eval/tuned_pass@2"] == sampled["tuned"]["pass@k"] and summary["eval/base_maj@2"] == \
        sampled["base"]["maj@k"]
    artifacts = {r.artifact.type for r in records if r.WhichOneof("record_type") == "artifact"}
    assert {"eval", "report"} <= artifacts


@pytest.mark.slow
def test_a_second_wandb_start_in_the_same_second_waits_for_the_next(tmp_path):
    from datetime import datetime

    from tunelab.trackers import not_in_the_same_second
    run = RunDir(tmp_path / "run")
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    (run.wandb / f"offline-run-{stamp}-abc123").mkdir(parents=True)
    not_in_the_same_second(run, "abc123")
    assert datetime.now().strftime("%Y%m%d_%H%M%S") != stamp  # its folder will not be the first start's
    started = datetime.now()
    not_in_the_same_second(run, "other")  # another run's folder is no reason to wait
    assert (datetime.now() - started).total_seconds() < 0.5
    ahead = datetime.fromtimestamp(time.time() + 1).strftime("%Y%m%d_%H%M%S")
    (run.wandb / f"run-{ahead}-abc123").mkdir()  # a start stamped ahead of this second (online runs: no prefix)
    not_in_the_same_second(run, "abc123")
    assert datetime.now().strftime("%Y%m%d_%H%M%S") > ahead
