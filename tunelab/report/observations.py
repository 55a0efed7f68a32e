"""Observations are rules over measured numbers, never free text: each states its numbers and its rule.

    verdict = overfitting(epochs)        # Observation(kind="good"|"watch"|"info", text=..., rule=...)

A change smaller than TOLERANCE (relative) counts as no change: one epoch's noise is not a trend.
"""

from __future__ import annotations

from dataclasses import dataclass

TOLERANCE = 0.01  # 1 % relative change


@dataclass
class Observation:
    kind: str  # good | watch | info
    text: str  # the finding with its numbers
    rule: str  # how it was decided


def _arrow(values: list[float], spec: str = ".3f") -> str:
    return " → ".join(format(v, spec) for v in values)


def _changed(a: float, b: float) -> int:
    """-1 fell, +1 rose, 0 within tolerance."""
    if abs(b - a) <= TOLERANCE * abs(a):
        return 0
    return 1 if b > a else -1


def overfitting(epochs: list[dict]) -> Observation:
    """Verdict on the validation curve (epoch 0 = before training) against the train curve."""
    val = [e["val_loss"] for e in epochs]
    train = [e["train_loss"] for e in epochs]
    rule = (f"compare validation loss epoch by epoch; a change within {TOLERANCE * 100:.0f} % counts as none; "
            "overfitting = validation rose after its minimum while train loss fell")
    steps = [_changed(a, b) for a, b in zip(val, val[1:])]
    best = min(range(len(val)), key=val.__getitem__)
    last = len(val) - 1
    if steps and all(s < 0 for s in steps):
        return Observation("good", f"Validation loss fell in every epoch ({_arrow(val)}): no sign of overfitting.", rule)
    if best < last and _changed(val[best], val[last]) > 0 and best >= 1 and _changed(train[best], train[last]) < 0:
        return Observation("watch", f"Validation loss rose after epoch {best} ({val[best]:.3f} → {val[last]:.3f}) "
                           f"while train loss fell ({train[best]:.3f} → {train[last]:.3f}): likely overfitting; the "
                           f"epoch-{best} checkpoint had the lowest validation loss.", rule)
    overall = _changed(val[0], val[last])
    if overall == 0:
        return Observation("watch", f"Validation loss did not change beyond {TOLERANCE * 100:.0f} % ({_arrow(val)}): "
                           "no measurable learning on held-out rows.", rule)
    if overall > 0:
        return Observation("watch", f"Validation loss rose overall ({_arrow(val)}): the fine-tune made held-out "
                           "loss worse.", rule)
    if steps and steps[-1] == 0:
        return Observation("info", f"Validation loss fell, then flattened in the last epoch ({_arrow(val)}): "
                           "more epochs are unlikely to help.", rule)
    return Observation("info", f"Validation loss fell overall ({_arrow(val)}) but not in every epoch: a noisy "
                       "curve (more validation rows would steady it); no sign of overfitting at the end.", rule)


def train_trend(epochs: list[dict], summary: dict) -> Observation:
    train = [e["train_loss"] for e in epochs[1:]]
    rule = "train loss improvement % = (first-epoch train loss − last-epoch train loss) / first-epoch train loss"
    pct = summary["train_loss_improvement_pct"]
    if len(train) < 2:
        return Observation("info", f"One epoch: train loss {train[0]:.3f} (no epoch-to-epoch trend to judge).", rule)
    kind = "good" if _changed(train[0], train[-1]) < 0 else "watch"
    verb = "fell" if kind == "good" else "did not fall beyond 1 %"
    return Observation(kind, f"Train loss {verb} across epochs ({_arrow(train)}; {pct:+.1f} %).", rule)


def token_accuracy(epochs: list[dict]) -> Observation:
    acc = [e["val_token_accuracy"] for e in epochs]
    delta = 100 * (acc[-1] - acc[0])
    kind = "good" if delta > 0.5 else ("watch" if delta < -0.5 else "info")
    return Observation(kind, f"Validation token accuracy {_arrow([100 * a for a in acc], '.1f')} % "
                       f"({delta:+.1f} pts from before training).",
                       "correct argmax next-token predictions / supervised tokens; ±0.5 pts counts as no change")


def generalisation_gap(epochs: list[dict]) -> Observation | None:
    last = epochs[-1]
    gap = (last["val_loss"] - last["train_loss"]) / last["val_loss"] if last["val_loss"] else 0
    if gap <= 0.10 or last["val_loss"] - last["train_loss"] < 0.05:  # tiny losses: a ratio of noise
        return None
    return Observation("watch", f"Final validation loss is {100 * gap:.0f} % above final train loss "
                       f"({last['val_loss']:.3f} vs {last['train_loss']:.3f}): the model fits training rows "
                       "better than held-out ones.", "flag when (val − train) / val > 10 % and val − train > 0.05 in the last epoch")


def accuracy_change(difference: dict, metric: str, base: float, tuned: float) -> Observation:
    """Base → tuned exact-match accuracy, judged by the 95 % CI of the paired difference."""
    lo, hi = difference["ci95_pts"]
    d = difference["delta_pts"]
    numbers = (f"{100 * base:.1f} % → {100 * tuned:.1f} %, {d:+.1f} pts, 95 % CI {lo:+.1f}..{hi:+.1f}, "
               f"n = {difference['n']}")
    rule = "paired bootstrap 95 % CI of tuned − base over the same questions; beyond noise = CI excludes 0"
    if lo > 0:
        return Observation("good", f"GSM8K-style accuracy ({metric}) rose beyond noise ({numbers}).", rule)
    if hi < 0:
        return Observation("watch", f"GSM8K-style accuracy ({metric}) fell beyond noise ({numbers}).", rule)
    return Observation("info", f"GSM8K-style accuracy ({metric}) did not change beyond noise ({numbers}).", rule)


def truncation(summary: dict) -> Observation | None:
    n = summary.get("truncated_examples", 0)
    if not n:
        return None
    return Observation("watch", f"{n} examples were longer than train.max_length and were truncated.",
                       "count of examples cut by max_length (examples left with no target token are dropped)")


def cost_accuracy(estimate: dict, actual: dict) -> Observation | None:
    if not estimate or not estimate.get("hours") or not actual:
        return None
    ratio = actual["device_hours"] / estimate["hours"]
    kind = "info" if 0.5 <= ratio <= 2 else "watch"
    return Observation(kind, f"The run took {ratio:.2f}× its estimated time ({actual['device_hours'] * 60:.1f} min "
                       f"measured vs {estimate['hours'] * 60:.1f} min estimated; ${actual['cost_usd']:.4f} vs "
                       f"${estimate['cost_usd']:.4f}).",
                       "measured device-hours (whole train stage, model loading included) / estimated hours; "
                       "outside 0.5–2× is flagged")


def versus_baseline(this: dict, base: dict, this_name: str, base_name: str) -> list[Observation]:
    """Compare headline figures with a baseline run."""
    out = []
    rule = f"difference of final figures; a change within {TOLERANCE * 100:.0f} % counts as none"
    a, b = base["final_val_loss"], this["final_val_loss"]
    change = _changed(a, b)
    verb = {-1: "lower (better)", 0: "the same within 1 %", 1: "higher (worse)"}[change]
    out.append(Observation({-1: "good", 0: "info", 1: "watch"}[change],
                           f"Final validation loss of {this_name} is {verb} than {base_name}: {b:.3f} vs {a:.3f} "
                           f"({100 * (b - a) / a:+.1f} %).", rule))
    ev_a, ev_b = base.get("eval") or {}, this.get("eval") or {}
    if "tuned_flexible_accuracy" in ev_a and "tuned_flexible_accuracy" in ev_b:
        d = 100 * (ev_b["tuned_flexible_accuracy"] - ev_a["tuned_flexible_accuracy"])
        out.append(Observation("good" if d > 0 else ("watch" if d < 0 else "info"),
                               f"Tuned accuracy (flexible-extract): {100 * ev_b['tuned_flexible_accuracy']:.1f} % vs "
                               f"{100 * ev_a['tuned_flexible_accuracy']:.1f} % ({d:+.1f} pts; unpaired runs: read with "
                               f"each run's own interval).", "difference of tuned accuracies"))
    if "wall_seconds" in this and "wall_seconds" in base:
        out.append(Observation("info", f"Wall time {this['wall_seconds'] / 60:.1f} min vs {base['wall_seconds'] / 60:.1f} "
                               f"min ({this['epochs']} vs {base['epochs']} epochs).", "measured wall time of training"))
    return out
