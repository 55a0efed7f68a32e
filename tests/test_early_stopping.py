"""train.early_stopping_patience: a run stops where its own validation curve says, resumes to the same stop, and
the eval, report and model card know how many epochs ran."""

import random
import shutil

import pytest

from conftest import write_jsonl
from tunelab.config import validate
from tunelab.errors import UserError
from tunelab.rundir import RunDir, last_improvement
from tunelab.train import train
from tunelab.train.loop import stale_epochs

PLANNED = 8


@pytest.fixture(scope="module")
def recipe(tiny_model, tmp_path_factory):
    """Answers drawn at random per row: nothing generalises, so at a high constant learning rate the validation
    loss wanders up and down after the first epochs."""
    rng = random.Random(0)
    words = ["red", "blue", "green", "cat", "dog", "seven", "tree", "moon"]
    data = write_jsonl(tmp_path_factory.mktemp("data") / "random.jsonl",
                       [{"question": f"item {i}", "answer": " ".join(rng.choice(words) for _ in range(4))}
                        for i in range(60)])
    return {"name": "es", "model": {"name": str(tiny_model)},
            "data": {"source": str(data), "template": "{question}: ", "target": "{answer}", "val_fraction": 0.25},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "train": {"epochs": PLANNED, "batch_size": 4, "lr": 0.1, "scheduler": "constant", "max_length": 64,
                      "warmup_ratio": 0.0},
            "eval": {"scoring": "none"}}


@pytest.fixture(scope="module")
def full(recipe, tmp_path_factory):
    """Every planned epoch, no early stopping: the curve the patience runs must cut."""
    return train(validate(recipe, "es"), RunDir(tmp_path_factory.mktemp("full") / "run")).epochs


def expected_stop(epochs: list[dict], patience: int, threshold: float = 0.0) -> int:
    """The first epoch after which `patience` epochs in a row did not go more than `threshold` below the best
    loss before them, counted the way Keras' EarlyStopping counts (a wait counter, reset by an improvement)."""
    best, wait = epochs[0]["val_loss"], 0
    for end in range(1, len(epochs)):
        if epochs[end]["val_loss"] < best - threshold:
            best, wait = epochs[end]["val_loss"], 0
        else:
            wait += 1
        if wait >= patience:
            return end
    return len(epochs) - 1


def test_stale_epochs_counts_epochs_since_the_lowest_validation_loss_and_a_tie_is_no_improvement():
    rows = [{"val_loss": v} for v in (2.0, 1.5, 1.6, 1.5)]
    assert stale_epochs(rows[:2]) == 0
    assert stale_epochs(rows[:3]) == 1
    assert stale_epochs(rows) == 2  # 1.5 again is not below 1.5
    assert stale_epochs([{"val_loss": 1.0}, {"val_loss": 1.2}]) == 1  # epoch 0 (before training) counts


def test_a_threshold_counts_only_gains_larger_than_it_and_keeps_the_reference_where_it_was():
    losses = [2.0, 1.5, 1.45, 1.42, 1.3]
    assert [last_improvement(losses[:n + 1]) for n in range(5)] == [0, 1, 2, 3, 4]
    assert [last_improvement(losses[:n + 1], 0.1) for n in range(5)] == [0, 1, 1, 1, 4]  # 1.3 is 0.2 below 1.5
    assert stale_epochs([{"val_loss": v} for v in losses[:4]], 0.1) == 2
    assert last_improvement([1.0, 0.9], 0.1) == 0  # exactly the threshold is no improvement


def test_a_threshold_without_patience_is_refused_by_name(recipe):
    with pytest.raises(UserError, match="train.early_stopping_threshold: needs train.early_stopping_patience"):
        validate({**recipe, "train": {**recipe["train"], "early_stopping_threshold": 0.05}}, "es")


@pytest.mark.slow
def test_a_run_with_a_threshold_stops_where_the_curve_and_the_threshold_say(recipe, full, tmp_path):
    thresholds = [t for t in (0.01, 0.03, 0.1, 0.3, 1.0) if expected_stop(full, 1, t) < expected_stop(full, 1)]
    assert thresholds, "some threshold must make patience 1 stop earlier on this curve"
    threshold = thresholds[0]
    stop = expected_stop(full, 1, threshold)
    raw = {**recipe, "train": {**recipe["train"], "early_stopping_patience": 1,
                               "early_stopping_threshold": threshold}}
    run = RunDir(tmp_path / "run")
    epochs = train(validate(raw, "es"), run).epochs
    assert [e["val_loss"] for e in epochs] == [e["val_loss"] for e in full[:stop + 1]]
    summary = run.read_json(run.summary)
    assert (summary["epochs"], summary["early_stopping_threshold"]) == (stop, threshold)
    from tunelab.report import write_report
    write_report(run)
    report = run.report_md.read_text()
    assert f"| Epochs | {stop} of {PLANNED}, stopped early by patience 1 (threshold {threshold:g})" in report
    assert f"by more than {threshold:g} for" in report
    assert f"not more than {threshold:g} below that of the last epoch that improved by more (epoch 0 first)" in report


@pytest.mark.parametrize("patience", [1, 2])
@pytest.mark.slow
def test_a_run_stops_where_its_own_validation_curve_says_and_keeps_that_prefix(recipe, full, patience, tmp_path):
    stop = expected_stop(full, patience)  # patience 2 may find no two stale epochs in a row: then all 8 run
    assert patience > 1 or stop < PLANNED, "the random-answer data must give the curve a non-improving epoch"
    raw = {**recipe, "train": {**recipe["train"], "early_stopping_patience": patience}}
    run = RunDir(tmp_path / "run")
    epochs = train(validate(raw, "es"), run).epochs
    assert [e["val_loss"] for e in epochs] == [e["val_loss"] for e in full[:stop + 1]]  # same seed, same prefix
    summary = run.read_json(run.summary)
    assert (summary["epochs"], summary["epochs_planned"], summary["early_stopping_patience"]) == \
        (stop, PLANNED, patience)
    assert run.epoch_adapter(stop).is_dir() and not run.epoch_adapter(stop + 1).exists()
    assert {s["epoch"] for s in run.read_jsonl(run.steps)} == set(range(1, stop + 1))


@pytest.mark.slow
def test_a_run_killed_after_stopping_resumes_to_the_same_stop(recipe, full, tmp_path):
    from tunelab.cli import main
    stop = expected_stop(full, 1)
    raw = {**recipe, "train": {**recipe["train"], "early_stopping_patience": 1}}
    run = RunDir(tmp_path / "run")
    train(validate(raw, "es"), run)
    run.summary.unlink()  # as if killed after the last epoch's checkpoint, before the outputs were written
    shutil.rmtree(run.adapter)
    assert main(["-q", "train", "--resume", str(run.path)]) == 0
    assert run.read_json(run.summary)["epochs"] == stop
    assert [e["epoch"] for e in run.read_epochs()] == list(range(stop + 1))


@pytest.mark.slow
def test_the_report_the_card_and_the_eval_plan_count_the_epochs_that_ran(recipe, full, tmp_path):
    from tunelab.evaluate.stage import _plan
    from tunelab.report import write_report
    stop = expected_stop(full, 1)
    cfg = validate({**recipe, "train": {**recipe["train"], "early_stopping_patience": 1}}, "es")
    run = RunDir(tmp_path / "run")
    train(cfg, run)
    write_report(run)
    report = run.report_md.read_text()
    assert f"| Epochs | {stop} of {PLANNED}, stopped early by patience 1 (batch 4" in report
    assert f"Early stopping ended training after epoch {stop} of {PLANNED}:" in report
    assert f"for the {stop} of {PLANNED} planned epochs trained" in report  # the estimate is scaled to them
    assert f"{stop} of {PLANNED} planned epochs (early stopping)" in (run.adapter / "README.md").read_text()
    best = run.read_json(run.summary)["best_val_epoch"]
    assert best == stop - 1  # patience 1: the epoch before the stop had the lowest validation loss
    assert f"The lowest validation loss is epoch {best}'s" in report and "--epoch best-loss`" in report
    every = validate({**recipe, "train": {**recipe["train"], "early_stopping_patience": 1},
                      "eval": {**recipe["eval"], "epochs": "all"}}, "es")  # by default all only up to 5 epochs
    passes = _plan(every, run, [], [], "tuned", True, tok=None)  # numeric mode: no tokenizer needed to plan
    assert [(p.name, p.epoch) for p in passes] == [*((f"epoch-{k}", k) for k in range(1, stop)), ("tuned", stop)]


@pytest.mark.slow
def test_export_best_loss_takes_the_epoch_with_the_lowest_validation_loss(recipe, full, tmp_path, capsys):
    from safetensors.torch import load_file
    from tunelab.cli import main
    run = RunDir(tmp_path / "run")
    train(validate({**recipe, "train": {**recipe["train"], "early_stopping_patience": 1}}, "es"), run)
    best = run.read_json(run.summary)["best_val_epoch"]
    assert main(["export", str(run.path), str(tmp_path / "out"), "--epoch", "best-loss", "--adapter-only"]) == 0
    exported, kept = (load_file(f / "adapter_model.safetensors") for f in (tmp_path / "out", run.epoch_adapter(best)))
    assert exported.keys() == kept.keys() and all(exported[k].equal(kept[k]) for k in kept)
    assert "the epoch with the lowest validation loss" in (tmp_path / "out" / "README.md").read_text()
    passes = run.read_jsonl(run.validation)
    run.write_jsonl(run.validation, [{**passes[0], "val_loss": 0.0}, *passes[1:]])  # the base model's pass lowest
    assert main(["export", str(run.path), str(tmp_path / "none"), "--epoch", "best-loss"]) == 2
    assert "no validation pass of" in capsys.readouterr().err and not (tmp_path / "none").exists()
    run.write_jsonl(run.validation, passes)
    off = RunDir(tmp_path / "off")  # without epoch adapters the lowest epoch's weights go to adapters/best-loss
    train(validate({**recipe, "train": {**recipe["train"], "early_stopping_patience": 1,
                                        "keep_epoch_adapters": False}}, "es"), off)
    assert not off.epoch_adapter(best).exists() and off.read_json(off.summary)["best_loss_adapter"]
    assert main(["export", str(off.path), str(tmp_path / "off-out"), "--epoch", "best-loss", "--adapter-only"]) == 0
    exported = load_file(tmp_path / "off-out" / "adapter_model.safetensors")
    assert exported.keys() == kept.keys() and all(exported[k].equal(kept[k]) for k in kept)
    assert f"at the end of epoch {best}: the validation pass with the lowest loss" in \
        (tmp_path / "off-out" / "README.md").read_text()


@pytest.mark.slow
def test_early_stopping_on_validation_passes_stops_inside_an_epoch_where_the_passes_say(recipe, tmp_path):
    """train.early_stopping_on=validation counts train.val_every's passes too (TRL's EarlyStoppingCallback with
    eval_steps): the run stops at the pass that spends the patience, inside an epoch, with the passes of a run that
    did not stop up to there; that epoch ends at the stop (its adapter, its row); a resume stops there again; the
    report, the card and the console say at which step."""
    from tunelab.cli import main
    from tunelab.report import write_report
    every = {**recipe["train"], "epochs": 3, "val_every": 4}
    reference = RunDir(tmp_path / "reference")
    train(validate({**recipe, "train": every}, "es"), reference)
    passes, per_epoch = reference.read_jsonl(reference.validation), reference.read_json(reference.summary)["steps"] // 3
    stops = [(t, expected_stop(passes, 1, t)) for t in (0.0, 0.03, 0.1, 0.3)]
    inside = [(t, stop) for t, stop in stops if passes[stop]["step"] % per_epoch and stop < len(passes) - 1]
    assert inside, f"some threshold must stop patience 1 inside an epoch on this curve: {stops}"
    threshold, stop = inside[0]
    with pytest.raises(UserError, match="train.early_stopping_on: validation counts validation passes inside epochs; "
                                        "it needs train.early_stopping_patience and train.val_every"):
        validate({**recipe, "train": {**recipe["train"], "early_stopping_on": "validation"}}, "es")
    raw = {**recipe, "train": {**every, "early_stopping_patience": 1, "early_stopping_threshold": threshold,
                               "early_stopping_on": "validation"}}
    run = RunDir(tmp_path / "run")
    train(validate(raw, "es"), run)
    ran = run.read_jsonl(run.validation)
    assert [(p["step"], p["val_loss"]) for p in ran] == [(p["step"], p["val_loss"]) for p in passes[:stop + 1]]
    assert ran[-1]["epoch_end"]  # the stop ends its epoch: that pass logs every row's loss, once
    at, epoch = passes[stop]["step"], passes[stop]["epoch"]
    summary = run.read_json(run.summary)
    assert (summary["steps"], summary["steps_planned"], summary["epochs"]) == (at, 3 * per_epoch, epoch)
    best = min(range(stop + 1), key=lambda i: passes[i]["val_loss"])  # the stop's own pass, or one before it
    from tunelab.report import early_stopping_line
    said = f", threshold {threshold:g}" if threshold else ""  # a threshold of 0 (the default) goes unsaid
    assert early_stopping_line(summary) == (f"early stopping: {epoch} of 3 epochs, step {at} of {3 * per_epoch}, "
                                            f"validation loss lowest at step {passes[best]['step']} (patience 1 "
                                            f"validation passes{said})")
    assert [e["epoch"] for e in run.read_epochs()] == list(range(epoch + 1)) and run.epoch_adapter(epoch).is_dir()
    assert max(s["step"] for s in run.read_jsonl(run.steps)) == at
    run.summary.unlink()  # killed after the stop's checkpoint, before the outputs were written
    shutil.rmtree(run.adapter)
    assert main(["-q", "train", "--resume", str(run.path)]) == 0
    assert run.read_json(run.summary)["steps"] == at and len(run.read_jsonl(run.validation)) == stop + 1
    write_report(run)
    report = run.report_md.read_text()
    assert f"| Epochs | {epoch} of 3, stopped early at step {at} of {3 * per_epoch} by patience 1 (validation " \
           f"passes{said})" in report
    assert f"Early stopping ended training at step {at} of {3 * per_epoch}, in epoch {epoch} of 3:" in report
    assert f"for the {at} of {3 * per_epoch} planned steps trained" in report
    assert (", the lowest validation loss of any pass." if best == stop else
            f"is adapters/epoch-{passes[best]['epoch']}" if passes[best]["epoch_end"] else
            "is adapters/best-loss (`tunelab export RUN OUT --epoch best-loss`)") in report
    assert run.best_loss_adapter.is_dir() == (best != stop and not passes[best]["epoch_end"])
    assert f"{epoch} of 3 planned epochs, to step {at} of {3 * per_epoch} (early stopping)" in \
        (run.adapter / "README.md").read_text()
