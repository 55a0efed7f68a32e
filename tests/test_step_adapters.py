"""train.keep_step_adapters: the adapter at each validation pass inside an epoch, scored by eval beside the epochs'
own — accuracy during training, for runs of one or a few long epochs."""

import pytest

from tunelab.config import validate
from tunelab.errors import UserError
from tunelab.evaluate.stage import evaluate
from tunelab.evaluate.summary import pass_names
from tunelab.rundir import RunDir
from tunelab.train import train


@pytest.mark.slow
def test_step_adapters_are_kept_inside_epochs_and_scored_in_training_order(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "batch_size": 16, "val_every": 1,
                                    "keep_step_adapters": True}}  # 43 train rows: 3 steps an epoch
    cfg, run = validate(raw, "tiny"), RunDir(tmp_path / "run")
    train(cfg, run)
    ends = run.epoch_end_steps()
    assert ends == {0: 0, 1: 3, 2: 6}
    assert list(run.step_adapters()) == [1, 2, 4, 5]  # the passes inside epochs, not their ends
    from safetensors.torch import load_file
    weights = [load_file(folder / "adapter_model.safetensors") for folder in
               (run.step_adapter(1), run.step_adapter(2), run.epoch_adapter(1), run.step_adapter(4))]
    for before, after in zip(weights, weights[1:]):  # each a snapshot of its own step: training moved them
        assert before.keys() == after.keys() and any(not (before[k] == after[k]).all() for k in before)
    s = evaluate(cfg, run).summary
    assert pass_names(s) == ["base", "step-1", "step-2", "epoch-1", "step-4", "step-5", "tuned"]
    points = s["steps"]
    assert [(p["step"], p["epoch"], p["model"]) for p in points] == [
        (1, 0.333, "step-1"), (2, 0.667, "step-2"), (3, 1.0, "epoch-1"), (4, 1.333, "step-4"), (5, 1.667, "step-5"),
        (6, 2.0, "tuned")]
    predictions = evaluate(cfg, run, only="tuned").predictions  # every adapter pass again, the same answers
    right = {name: sum(p["flexible_correct"] for p in predictions if p["model"] == name) for name in s}
    for before, after in zip(["base", *[p["model"] for p in points]], [p["model"] for p in points]):
        step = next(p for p in points if p["model"] == after)
        assert step["vs_previous"]["flexible"]["delta_pts"] == pytest.approx(100 * (right[after] - right[before]) / 8)
    from tunelab.report import eval_lines, write_report
    said = [line for line in eval_lines(s) if line.startswith("accuracy during training")]
    base = f"base {100 * s['base']['flexible_accuracy']:.1f} %"
    assert said == ["accuracy during training (flexible-extract): " + " → ".join(
        [base] + [f"step {p['step']} (epoch {p['epoch']:g}) {100 * p['flexible_accuracy']:.1f} %" for p in points])]
    write_report(run)
    md = run.report_md.read_text()
    assert "During training (train.keep_step_adapters" in md
    val = {r["step"]: r["val_loss"] for r in run.read_validation()}
    from tunelab.export import chosen_epoch, export
    out = export(run, tmp_path / "out", adapter_only=True, epoch=chosen_epoch(run, "step-4"))
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (run.step_adapter(4) / "adapter_model.safetensors").read_bytes()
    assert "This is the adapter saved at step 4 (`adapters/step-4`), inside epoch 2" in (out / "README.md").read_text()
    with pytest.raises(UserError, match=r"--epoch: 'step-3'; .* or a kept step's adapter \(step-1, step-2, step-4, "
                                        r"step-5\)"):
        chosen_epoch(run, "step-3")  # an epoch's end: its adapter is epoch-1's
    assert f"| 4 | 1.333 | {val[4]:.4g} | {100 * points[3]['flexible_accuracy']:.1f} % |" in md
    best = max(points, key=lambda p: (p["flexible_accuracy"], -p["step"]))  # the best point, epochs' ends included
    assert {k: s["best_step"][k] for k in ("step", "model", "points")} == {"step": best["step"], "model": best["model"],
                                                                           "points": 6}
    if best["model"] != "tuned":  # paired with the final adapter on the same questions
        assert s["best_step"]["vs_tuned"]["flexible"]["delta_pts"] == pytest.approx(
            100 * (right[best["model"]] - right["tuned"]) / 8)
    said = f"Best point of training by accuracy | step {best['step']} (epoch {best['epoch']:g})"
    assert (said in md) == best["model"].startswith("step-")  # a step inside an epoch: said, with how to take it
    assert (f"--epoch {best['model']}` exports its adapter" in md) == best["model"].startswith("step-")


def test_the_best_point_inside_an_epoch_is_named_with_why_its_accuracy_is_optimistic():
    from tunelab.report.observations import best_step
    flexible = {"n": 8, "delta_pts": 12.5, "ci95_pts": [0.0, 25.0]}
    evaluation = {"scoring": "numeric", "best_step": {
        "step": 4, "epoch": 1.333, "model": "step-4", "flexible_accuracy": 0.5, "points": 6,
        "vs_tuned": {"flexible": flexible}, "rule": "highest flexible-extract accuracy"}}
    said = best_step(evaluation)
    assert said.text.startswith("Best point of training by GSM8K-style accuracy: step 4 (epoch 1.333, "
                                "adapters/step-4), 50.0 % flexible-extract; vs the final adapter +12.5 pts, 95 % CI +0.0..+25.0, n = 8; picked "
                                "on these same questions as the highest of 6 measured points, so its accuracy "
                                "overstates")
    evaluation["best_step"] |= {"model": "epoch-1", "step": 3}
    assert best_step(evaluation) is None  # an epoch's end: the best epoch says it


def test_step_adapters_need_validation_passes_inside_epochs(tiny_recipe):
    raw = {**tiny_recipe, "train": {**tiny_recipe["train"], "keep_step_adapters": True}}
    with pytest.raises(UserError, match="train.keep_step_adapters: saves the adapter at the validation passes inside "
                                        "epochs, and train.val_every"):
        validate(raw, "tiny")
