"""The eval summary's comparisons: paired differences between models on the same questions, accuracy per
epoch, the best epoch, the few-shot baseline, and the questions each compared pair gained and lost.

Torch-free (plain prediction rows in, JSON-ready dicts out), so it is tested on constructed rows.

Run as: tunelab eval runs/smoke --set eval.epochs=all --set eval.fewshot=5
"""

from __future__ import annotations

from tunelab.evaluate.scoring import flips
from tunelab.stats import paired_difference

METRICS = ("strict", "flexible")


def pass_names(summary: dict) -> list[str]:
    """The models an eval summary holds stats for (base, base-<N>shot, epoch-<K>, tuned), in its order."""
    return [k for k, v in summary.items() if isinstance(v, dict) and {"n", "strict_accuracy", "tokens_per_second"} <= set(v)]


def comparisons(predictions: list[dict], stats: dict, ids: list[str], final_epoch: int, fewshot: int,
                flexible: str = "flexible-extract") -> dict:
    """What eval/summary.json holds beside each model's stats, from the prediction rows of every model.

    Args:
        stats: per model name (base, base-<N>shot, epoch-<K>, tuned), its n and accuracies.
        ids: the scored question ids, in order.
        final_epoch: the epoch the final adapter (`tuned`) is from.
        fewshot: N of the few-shot baseline (0 = none).
        flexible: what the scoring mode calls its flexible variant (the best-epoch rule names it).
    """
    by = {}
    for r in predictions:
        by.setdefault(r["model"], {})[r["id"]] = r

    def diff(a: str, b: str) -> dict | None:
        if a not in by or b not in by or not all(i in by[a] and i in by[b] for i in ids):
            return None
        return {m: paired_difference([by[a][i][f"{m}_correct"] for i in ids], [by[b][i][f"{m}_correct"] for i in ids])
                for m in METRICS}

    out: dict = {}
    base_tuned = diff("base", "tuned")
    if base_tuned:
        out.update({f"{m}_difference": base_tuned[m] for m in METRICS})
    epochs = _epoch_rows(stats, diff, final_epoch)
    if epochs:
        out["epochs"] = epochs
        best = max(epochs, key=lambda e: (e["flexible_accuracy"], -e["epoch"]))
        out["best_epoch"] = {"epoch": best["epoch"], "model": best["model"],
                             "flexible_accuracy": best["flexible_accuracy"],
                             "rule": f"highest {flexible} accuracy; a tie goes to the earlier epoch"}
    name = f"base-{fewshot}shot"
    if fewshot and diff(name, "tuned"):
        out["fewshot"] = {"model": name, "shots": fewshot, "tuned_vs_fewshot": diff(name, "tuned")}
    pairs = [("base", "tuned")] + [(a["model"], b["model"]) for a, b in zip(epochs, epochs[1:])]
    out["flips"] = [{"from": a, "to": b, "metric": "flexible", **flips(by[a], by[b], ids)} for a, b in pairs
                    if a in by and b in by]
    return out


def _epoch_rows(stats: dict, diff, final_epoch: int) -> list[dict]:
    """Accuracy after each scored epoch (epoch-K passes and the final adapter), with paired differences."""
    names = sorted((n for n in stats if n.startswith("epoch-")), key=lambda n: int(n.split("-")[1]))
    if "tuned" in stats:
        names.append("tuned")
    rows, previous = [], None
    for name in names:
        s = stats[name]
        epoch = int(name.split("-")[1]) if name != "tuned" else final_epoch
        rows.append({"epoch": epoch, "model": name, "n": s["n"], "strict_accuracy": s["strict_accuracy"],
                     "flexible_accuracy": s["flexible_accuracy"], "vs_base": diff("base", name),
                     "vs_previous": diff(previous, name) if previous else None})
        previous = name
    return rows
