"""A complete run directory made of plain files (no torch, no model): what report and compare read."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab.config import load_recipe, to_yaml


def _png(path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [2, 1, 1.5])
    ax.set_title(title)
    fig.savefig(path)
    plt.close(fig)


def make_run(path: Path, val=(2.31, 1.62, 1.55), train=(1.9, 1.4), epochs_n=2, eval_ci=(4.0, 16.0)) -> Path:
    path.mkdir(parents=True)
    (path / "metrics").mkdir()
    cfg = load_recipe("quickstart", [f"train.epochs={epochs_n}"])
    (path / "config.yaml").write_text(to_yaml(cfg))
    epochs = [{"epoch": i, "train_loss": None if i == 0 else train[i - 1],
               "train_token_accuracy": None if i == 0 else 0.6 + 0.05 * i, "val_loss": v,
               "val_token_accuracy": 0.55 + 0.05 * i, "seconds": 0.0 if i == 0 else 100.0,
               "tokens": 0 if i == 0 else 30000} for i, v in enumerate(val)]
    (path / "metrics" / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    steps = [{"step": s, "epoch": 1 + s // 10, "loss": 2.0 - 0.03 * s, "lr": 1e-3, "grad_norm": 1.0, "tokens": 3000,
              "tokens_per_second": 150.0} for s in range(1, 10 * epochs_n + 1)]
    (path / "metrics" / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    summary = {"recipe": "quickstart", "model": "smollm2-135m-instruct", "data": "synthetic:arith",
               "epochs": epochs_n, "train_examples": 360, "val_examples": 40, "test_examples": 100, "skipped_rows": 0,
               "truncated_examples": 0, "initial_val_loss": val[0], "final_val_loss": val[-1],
               "first_epoch_train_loss": train[0], "final_train_loss": train[-1],
               "train_loss_improvement_pct": round(100 * (train[0] - train[-1]) / train[0], 3),
               "val_loss_improvement_pct": round(100 * (val[0] - val[-1]) / val[0], 3),
               "initial_val_token_accuracy": 0.55, "final_train_token_accuracy": 0.7,
               "final_val_token_accuracy": epochs[-1]["val_token_accuracy"], "best_val_epoch": 2,
               "wall_seconds": 250.0, "train_seconds": 200.0, "train_tokens": 60000,
               "train_tokens_per_second": 300.0, "peak_rss_mib": 4000.0}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "cost.json").write_text(json.dumps({"device": "cpu", "device_hours": 250 / 3600, "usd_per_hour": 0.085,
                                                "cost_usd": 0.0059, "price_source": "test table"}))
    (path / "estimate.json").write_text(json.dumps({"hours": 0.06, "cost_usd": 0.0051, "flops": 3e13,
                                                    "basis": "test basis"}))
    (path / "environment.json").write_text(json.dumps({"device_name": "test CPU", "torch_threads": 2,
                                                       "torch": "2.13.0", "transformers": "5.23.0"}))
    ev = path / "eval"
    ev.mkdir()
    diff = {"n": 100, "delta_pts": 10.0, "ci95_pts": list(eval_ci), "gained": 12, "lost": 2, "mcnemar_p": 0.01}
    (ev / "summary.json").write_text(json.dumps({
        "base": {"n": 100, "strict_accuracy": 0.0, "flexible_accuracy": 0.05, "tokens_per_second": 100, "seconds": 9},
        "tuned": {"n": 100, "strict_accuracy": 0.12, "flexible_accuracy": 0.15, "tokens_per_second": 100, "seconds": 9},
        "strict_difference": {**diff, "delta_pts": 12.0}, "flexible_difference": diff}))
    an = path / "analysis"
    an.mkdir()
    for name in ("wordcloud.png", "umap.png", "cartography.png"):
        _png(an / name, name)
    (an / "summary.json").write_text(json.dumps({
        "rows": 400, "embedder": "minilm", "k": 2, "silhouette": 0.3, "silhouette_by_k": {"2": 0.3, "3": 0.2},
        "outliers": 1, "adjusted_rand_index": 0.9, "purity": 0.95, "rarest_label": "rare", "rarest_label_rows": 4,
        "rarest_label_in_outliers": 1, "cartography": {"easy-to-learn": 300, "hard-to-learn": 60}}))
    (an / "clusters.json").write_text(json.dumps([
        {"cluster": 0, "name": "buys / money / spend", "terms": ["buys"], "size": 200, "mean_loss": 0.4,
         "examples": ["Ava buys 3 apples for $2 each."], "base_accuracy": 0.1, "tuned_accuracy": 0.3},
        {"cluster": 1, "name": "miles / hour / travels", "terms": ["miles"], "size": 200, "mean_loss": 0.5,
         "examples": ["A bus travels at 30 miles per hour."]}]))
    (an / "outliers.json").write_text(json.dumps([{"id": "train-7", "score": 0.99, "why": "isolated (LOF 2.1)",
                                                    "text": "A bacteria colony doubles every 2 hours."}]))
    (an / "terms.json").write_text(json.dumps({"train": [{"term": "buys", "count": 10, "share": 0.1}]}))
    (an / "cartography.json").write_text(json.dumps({"hardest": [{"id": "train-3", "confidence": 0.1,
                                                                   "variability": 0.01, "text": "hard one"}]}))
    return path


def add_eval(path: Path, correct: dict[str, list[bool]], final_epoch: int = 2, fewshot: int = 0,
             labels: list[str] | None = None) -> dict:
    """Replace the run's eval files with prediction rows of these models (True = flexible-correct; strict the
    same) on questions test-0.. (with `labels`: each question's data.label_field value), and the summary tunelab
    computes from them."""
    from tunelab.evaluate.summary import by_category, comparisons
    rows, stats = [], {}
    for model, flags in correct.items():
        for i, ok in enumerate(flags):
            rows.append({"id": f"test-{i}", "model": model, "question": f"Question {i}: how many apples?",
                         "reference": str(i), "completion": f"{model} says {i if ok else i + 1}\n#### {i if ok else i + 1}",
                         "flexible_answer": str(i if ok else i + 1), "strict_correct": ok, "flexible_correct": ok,
                         "tokens": 9, **({"label": labels[i]} if labels else {})})
        acc = sum(flags) / len(flags)
        stats[model] = {"n": len(flags), "strict_accuracy": acc, "flexible_accuracy": acc, "generated_tokens": 9,
                        "seconds": 1.0, "tokens_per_second": 9.0}
    ids = [f"test-{i}" for i in range(len(next(iter(correct.values()))))]
    summary = {**stats, **comparisons(rows, stats, ids, final_epoch, fewshot)}
    if labels and by_category(rows, ids, "data.label_field (family)", "numeric"):
        summary["by_category"] = by_category(rows, ids, "data.label_field (family)", "numeric")
    (path / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "eval" / "summary.json").write_text(json.dumps(summary))
    return summary


def add_val_rows(path: Path, losses: dict[int, list[float]], tokens: int = 20) -> None:
    """metrics/examples.jsonl with these per-example validation losses per epoch (ids val-0..)."""
    rows = [{"id": f"val-{i}", "split": "val", "epoch": epoch, "loss": loss, "tokens": tokens}
            for epoch, values in losses.items() for i, loss in enumerate(values)]
    (path / "metrics" / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
