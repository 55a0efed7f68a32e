"""Observations are rules over measured numbers, never free text: each states its numbers and its rule.

    verdict = overfitting(epochs)        # Observation(kind="good"|"watch"|"info", text=..., rule=...)

A change smaller than TOLERANCE (relative) counts as no change: one epoch's noise is not a trend.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data import conversation_id
from tunelab.data.checks import left_untrained, markers_line, untrained_line
from tunelab.evaluate.scoring import NAMING, naming
from tunelab.evaluate.summary import baselines, pass_names
from tunelab.rundir import counts_passes, last_improvement, steps_per_epoch, stopped_early, trained_and_planned

TOLERANCE = 0.01  # 1 % relative change
EXPORT_BEST_LOSS = "`tunelab export RUN OUT --epoch best-loss`"


@dataclass
class Observation:
    kind: str  # good | watch | info
    text: str  # the finding with its numbers
    rule: str  # how it was decided


def _arrow(values: list[float], spec: str = ".3f") -> str:
    return " → ".join(format(v, spec) for v in values)


def sign_of(ci: list[float]) -> int:
    """+1 when a 95 % interval lies above 0, -1 below, 0 when it includes 0 (no change beyond noise)."""
    lo, hi = ci
    return 1 if lo > 0 else (-1 if hi < 0 else 0)


def _paired_change(before: dict, after: dict) -> int:
    """-1 fell, +1 rose, 0 when the paired 95 % interval of the token-weighted loss difference includes 0."""
    from tunelab.stats import paired_loss_difference
    d = paired_loss_difference(before, after)
    return 0 if d is None else sign_of(d["ci95"])


def _changed(a: float, b: float) -> int:
    """-1 fell, +1 rose, 0 within tolerance."""
    if abs(b - a) <= TOLERANCE * abs(a):
        return 0
    return 1 if b > a else -1


def overfitting(epochs: list[dict], val_rows: dict[int, dict] | None = None) -> Observation:
    """Verdict on the validation curve (epoch 0 = before training) against the train curve.

    With `val_rows` (epoch -> {row id: (loss, tokens)}: the per-example validation losses), each change of
    validation loss is judged by its paired 95 % interval over the same rows instead of the 1 % tolerance.
    """
    val = [e["val_loss"] for e in epochs]
    train = [e["train_loss"] for e in epochs]
    if val_rows and all(e["epoch"] in val_rows for e in epochs):
        rule = ("compare validation loss epoch by epoch over the same validation rows; a change counts only when "
                "its paired 95 % bootstrap interval excludes 0; overfitting = validation rose after its minimum "
                "while train loss fell")

        def change(i: int, j: int) -> int:
            return _paired_change(val_rows[epochs[i]["epoch"]], val_rows[epochs[j]["epoch"]])
    else:
        rule = (f"compare validation loss epoch by epoch; a change within {TOLERANCE * 100:.0f} % counts as none; "
                "overfitting = validation rose after its minimum while train loss fell")

        def change(i: int, j: int) -> int:
            return _changed(val[i], val[j])
    steps = [change(i, i + 1) for i in range(len(val) - 1)]
    best = min(range(len(val)), key=val.__getitem__)
    last = len(val) - 1
    if steps and all(s < 0 for s in steps):
        return Observation("good", f"Validation loss fell in every epoch ({_arrow(val)}): no sign of overfitting.",
                           rule)
    if best < last and change(best, last) > 0 and best >= 1 and _changed(train[best], train[last]) < 0:
        return Observation("watch", f"Validation loss rose after epoch {best} ({val[best]:.3f} → {val[last]:.3f}) "
                           f"while train loss fell ({train[best]:.3f} → {train[last]:.3f}): likely overfitting; the "
                           f"epoch-{best} checkpoint had the lowest validation loss.", rule)
    overall = change(0, last)
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


def validation_between_epochs(validation: list[dict], summary: dict) -> Observation | None:
    """With `train.val_every`: where the finer validation curve was lowest, and whether that was between epochs
    (whose weights only adapters/best-loss/ keeps) rather than at an epoch's end."""
    if all(v["epoch_end"] for v in validation):
        return None
    best = min(validation, key=lambda v: v["val_loss"])
    last = validation[-1]
    where = "at the end of epoch" if best["epoch_end"] else "inside epoch"
    rule = ("validation loss every train.val_every optimizer steps and at each epoch's end; lowest = smallest "
            "value, the first one on a tie")
    text = (f"Over {len(validation)} validation passes the loss was lowest at step {best['step']} ({where} "
            f"{best['epoch']}): {best['val_loss']:.3f}, against {last['val_loss']:.3f} at the last (step "
            f"{last['step']}).")
    if not best["epoch_end"] and summary.get("best_loss_adapter"):
        return Observation("info", text + f" That pass's adapter is kept in adapters/best-loss ({EXPORT_BEST_LOSS}).",
                           rule)
    if not best["epoch_end"] and best is not last:
        return Observation("watch", text + " Adapters are kept at epoch ends only, so none is from that point.",
                           rule)
    return Observation("info", text, rule)


def train_trend(epochs: list[dict], summary: dict) -> Observation:
    train = [e["train_loss"] for e in epochs[1:]]
    rule = "train loss improvement % = (first-epoch train loss − last-epoch train loss) / first-epoch train loss"
    pct = summary["train_loss_improvement_pct"]
    if len(train) < 2:
        which = "One epoch" if summary["epochs"] == 1 else f"Epoch {summary['epochs']} only measured (imported)"
        return Observation("info", f"{which}: train loss {train[0]:.3f} (no epoch-to-epoch trend to judge).", rule)
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


def generalisation_gap(epochs: list[dict], weighted_val: float | None = None) -> Observation | None:
    """`weighted_val`: with source weights, the last validation loss with each source's rows weighted as training
    weights them — the mix the train loss is over (the plain one holds every source at its split's share)."""
    last = epochs[-1]
    val = last["val_loss"] if weighted_val is None else weighted_val
    gap = (val - last["train_loss"]) / val if val else 0
    if gap <= 0.10 or val - last["train_loss"] < 0.05:  # tiny losses: a ratio of noise
        return None
    return Observation("watch", f"Final validation loss is {100 * gap:.0f} % above final train loss "
                       f"({val:.3f} vs {last['train_loss']:.3f}"
                       + (", validation rows weighted as their sources are trained" if weighted_val is not None
                          else "") + "): the model fits training rows better than held-out ones.",
                       "flag when (val − train) / val > 10 % and val − train > 0.05 in the last epoch"
                       + ("; with source weights (data.weight, data.mix), each validation row's tokens count its "
                          "source's weight times, as training counts its train rows" if weighted_val is not None
                          else ""))


def accuracy_change(difference: dict, metric: str, base: float, tuned: float,
                    figure: str = "GSM8K-style accuracy", compared: str = "tuned − base") -> Observation:
    """Base → tuned answer accuracy (`figure`, by its `metric` variant), judged by the 95 % CI of the paired
    difference (`compared`: what minus what, for the rule)."""
    lo, hi = difference["ci95_pts"]
    d = difference["delta_pts"]
    numbers = (f"{100 * base:.1f} % → {100 * tuned:.1f} %, {d:+.1f} pts, 95 % CI {lo:+.1f}..{hi:+.1f}, "
               f"n = {difference['n']}")
    rule = f"paired bootstrap 95 % CI of {compared} over the same questions; beyond noise = CI excludes 0"
    kind, verb = {1: ("good", "rose beyond noise"), -1: ("watch", "fell beyond noise"),
                  0: ("info", "did not change beyond noise")}[sign_of(difference["ci95_pts"])]
    return Observation(kind, f"{figure[:1].upper() + figure[1:]} ({metric}) {verb} ({numbers}).", rule)


def mc2_change(evaluation: dict, figure: str = "the mc2 score") -> Observation | None:
    """With labelled options (eval.choice_labels): base → tuned mc2, the probability the model gives the true
    options, judged as accuracy is; None without it."""
    d = evaluation.get("mc2_difference")
    if not d:
        return None
    return accuracy_change(d, "the probability on the true options, normalised over all: lm-eval's truthfulqa_mc2",
                           evaluation["base"]["mc2"], evaluation["tuned"]["mc2"], figure)


def categories(by_category: dict, figure: str = "Accuracy") -> Observation:
    """Which categories' accuracy (`figure`) moved beyond noise, under the Bonferroni bound `by_category` states."""
    rows, alpha = by_category["rows"], by_category["alpha"]
    beyond = [r for r in rows if r["difference"]["mcnemar_p"] < alpha]
    up = [r for r in beyond if r["difference"]["delta_pts"] > 0]
    down = [r for r in beyond if r["difference"]["delta_pts"] < 0]

    def listed(found: list[dict]) -> str:
        return "; ".join(f"{r['category']} {100 * r['base_accuracy']:.0f} % → {100 * r['tuned_accuracy']:.0f} % "
                         f"(n = {r['n']}, p = {r['difference']['mcnemar_p']:.2g})" for r in found)
    rule = f"{by_category['rule']}; categories: {by_category['source']}"
    if not beyond:
        spread = sorted(rows, key=lambda r: r["difference"]["delta_pts"])
        return Observation("info", f"{figure} changed beyond noise in no category ({len(rows)} categories; "
                           f"changes from {spread[0]['difference']['delta_pts']:+.0f} pts ({spread[0]['category']}) "
                           f"to {spread[-1]['difference']['delta_pts']:+.0f} pts ({spread[-1]['category']})).", rule)
    parts = []
    if up:
        parts.append(f"rose beyond noise in {len(up)} of {len(rows)} categories: {listed(up)}")
    if down:
        parts.append(f"fell beyond noise in {len(down)} of {len(rows)}: {listed(down)}")
    return Observation("watch" if down else "good", f"{figure} " + "; and ".join(parts) + ".", rule)


def truncation(summary: dict) -> Observation | None:
    n = summary.get("truncated_examples", 0)
    if not n:
        return None
    return Observation("watch", f"{n} examples were longer than train.max_length and were truncated.",
                       "count of examples cut by max_length (examples left with no target token are dropped)")


BUDGET_SHARE = 0.1  # a pass with this share of its answers at the token budget is flagged


def _often(evaluation: dict, count: str) -> list[tuple[str, dict]]:
    """The passes (name, stats) whose `count` of answers is at least BUDGET_SHARE of them."""
    return [(name, evaluation[name]) for name in pass_names(evaluation)
            if evaluation[name].get(count, 0) >= BUDGET_SHARE * evaluation[name]["n"]]


def answer_budget(evaluation: dict) -> Observation | None:
    """Passes whose answers often reached the token budget: an answer cut there is scored on what it had written
    (its last number so far), so the pass's accuracy may understate the model."""
    cut = _often(evaluation, "at_budget")
    if not cut:
        return None
    said = "; ".join(f"{name} {s['at_budget']} of {s['n']} (budget {s['max_new_tokens']} tokens)" for name, s in cut)
    return Observation("watch", "Answers that reached the token budget, cut there and scored on what they had "
                       f"written: {said}. Those passes' accuracy may understate the model; a higher "
                       "eval.max_new_tokens measures them whole.",
                       f"answers whose generated tokens reached the pass's max_new_tokens; listed when at least "
                       f"{100 * BUDGET_SHARE:.0f} % of a pass's answers did")


def unfinished_thinking(evaluation: dict) -> Observation | None:
    """Passes read after a reasoning template's thinking (`think_end`) whose replies often hold no end-of-thinking
    marker: the thinking did not end within the budget, or the model wrote none, and the answer check read the whole
    reply, thinking included."""
    found = _often(evaluation, "without_think_end")
    if not found:
        return None
    said = "; ".join(f"{name} {s['without_think_end']} of {s['n']} (budget {s['max_new_tokens']} tokens)"
                     for name, s in found)
    return Observation("watch", f"Replies read after the thinking that hold no {found[0][1]['think_end']}: {said}. "
                       "Their thinking did not end within the token budget, or was never written, so the answer "
                       "check read the whole reply, thinking included; a higher eval.max_new_tokens lets the "
                       "thinking finish.",
                       f"replies of a pass read after the thinking (eval.think_end) without its marker; listed when "
                       f"at least {100 * BUDGET_SHARE:.0f} % of a pass's did")


UNREAD = {"numeric": "no number at all", "exact": "a blank reply", "regex": "no match of the answer pattern",
          "tool": "no tool call"}  # what a completion without an answer is, per scoring mode


def unread_answers(evaluation: dict) -> Observation | None:
    """Passes where the scoring found no answer at all in many completions (`no_answer`): their accuracy measures
    whether the model writes its answer in the form scored as much as whether it finds it. One to watch when the
    fine-tune is among them (it was trained on that form), a note when only the base passes are."""
    mode = evaluation.get("scoring", "numeric")
    found = _often(evaluation, "no_answer")
    if not found or mode not in UNREAD:
        return None
    said = "; ".join(f"{name} {s['no_answer']} of {s['n']}" for name, s in found)
    tuned = any(name == "tuned" for name, _ in found)
    return Observation("watch" if tuned else "info",
                       f"Answers in which the scoring found no answer ({UNREAD[mode]}): {said}. Those passes' "
                       "accuracy measures whether the model writes its answer in the form scored as much as whether "
                       "it finds it" + ("." if tuned else "; a prompting baseline (eval.fewshot, eval.chat_baseline, "
                                        "eval.prompt_baseline: the answer's form asked for in words) asks the base "
                                        "model in other ways."),
                       f"completions from which the {mode} scoring read no answer; listed when at least "
                       f"{100 * BUDGET_SHARE:.0f} % of a pass's did")


def cost_accuracy(estimate: dict, actual: dict, summary: dict | None = None) -> Observation | None:
    """Measured against estimated time; when early stopping cut the run short, against the estimate's share for
    the epochs trained."""
    if not estimate or not estimate.get("hours") or not actual:
        return None
    unit = "steps" if counts_passes(summary) else "epochs"
    trained, planned = (summary["steps"], summary["steps_planned"]) if unit == "steps" else \
        trained_and_planned(summary)
    share = trained / planned
    hours, usd = estimate["hours"] * share, estimate["cost_usd"] * share
    ratio = actual["device_hours"] / hours
    kind = "info" if 0.5 <= ratio <= 2 else "watch"
    scaled = f" for the {trained} of {planned} planned {unit} trained" if share < 1 else ""
    return Observation(kind, f"The run took {ratio:.2f}× its estimated time ({actual['device_hours'] * 60:.1f} min "
                       f"measured vs {hours * 60:.1f} min estimated{scaled}; ${actual['cost_usd']:.4f} vs "
                       f"${usd:.4f}).",
                       "measured device-hours (whole train stage, model loading included) / estimated hours"
                       + (f" × {unit} trained / {unit} planned" if scaled else "") + "; outside 0.5–2× is flagged")


def memory_accuracy(estimate: dict, summary: dict) -> Observation | None:
    """The measured peak GPU memory against the estimate made before training (`tunelab.memory`), both counting the
    tensors alone (torch.cuda.max_memory_allocated; the estimate without the CUDA context)."""
    predicted = ((estimate or {}).get("gpu_memory") or {}).get("allocated_gib")
    if not predicted or not summary.get("peak_gpu_memory_mib"):
        return None
    measured = summary["peak_gpu_memory_mib"] / 1024
    ratio = measured / predicted
    return Observation("info" if 2 / 3 <= ratio <= 1.5 else "watch",
                       f"Peak GPU memory was {measured:.1f} GiB, {ratio:.2f}× the {predicted:.1f} GiB estimated before "
                       f"training on the {estimate['device']}'s {estimate['memory_gib']:g} GiB.",
                       "torch.cuda.max_memory_allocated over the train stage / the estimate's tensors (weights as "
                       "loaded, the adapter with its gradient and AdamW state at 16 bytes a weight, activations of the "
                       "largest forward at the bytes per padded token, hidden unit and layer measured on an H200); "
                       "outside 2/3–1.5× is flagged")


def early_stopping(epochs: list[dict], summary: dict, cost: dict | None,
                   passes: list[dict] | None = None) -> Observation | None:
    """What `train.early_stopping_patience` did: the epoch it stopped after, the validation losses that stopped
    it, and what the epochs not run would have cost at the measured pace. `passes`: the validation log
    (metrics/validation.jsonl), which train.early_stopping_on=validation counts instead of epochs."""
    trained, planned = trained_and_planned(summary)
    patience = summary.get("early_stopping_patience")
    if not patience:
        return None
    if counts_passes(summary) and passes:
        return _early_stopping_passes(passes, summary, cost)
    val, threshold = [e["val_loss"] for e in epochs], summary.get("early_stopping_threshold") or 0.0
    best, reference = min(range(len(val)), key=val.__getitem__), last_improvement(val, threshold)
    by = f" by more than {threshold:g}" if threshold else ""
    rule = (f"train.early_stopping_patience = {patience}: stop once {patience} epoch(s) in a row end with a "
            + (f"validation loss not more than {threshold:g} below that of the last epoch that improved by more "
               "(epoch 0 first)" if threshold else "validation loss not below the lowest before them (epoch 0 counts)"))
    if trained == planned:
        return Observation("info", f"Early stopping (patience {patience}) did not stop the run: all {planned} "
                           f"epochs ran; lowest validation loss at epoch {best} ({val[best]:.3f}).", rule)
    ran = [e for e in epochs if e["train_loss"] is not None]
    per_epoch = sum(e["seconds"] + e["val_seconds"] for e in ran) / len(ran)
    saved = (planned - trained) * per_epoch
    price = f", ${saved / 3600 * cost['usd_per_hour']:.4f} at ${cost['usd_per_hour']:.3f}/h" if cost else ""
    return Observation("info", f"Early stopping ended training after epoch {trained} of {planned}: validation loss "
                       f"{_arrow(val[reference:])} did not go below epoch {reference}'s {val[reference]:.3f}{by} for "
                       f"{trained - reference} epoch(s). The {planned - trained} epoch(s) not run would have taken "
                       f"about {saved / 60:.1f} min{price}. The final adapter is epoch {trained}'s"
                       + (f"; the lowest validation loss of any pass, step {summary['best_val_step']}'s, is "
                          f"adapters/best-loss ({EXPORT_BEST_LOSS})." if summary.get("best_loss_adapter") else
                          f"; epoch {best}'s, with the lowest validation loss, is adapters/epoch-{best} "
                          f"({EXPORT_BEST_LOSS})." if best
                          else "; no epoch beat the base model's validation loss."),
                       rule + "; time saved = epochs not run × the mean seconds (train + validation) of the "
                       "epochs that ran")


def _early_stopping_passes(passes: list[dict], summary: dict, cost: dict | None) -> Observation:
    """`early_stopping` counted in validation passes (train.early_stopping_on=validation): the step it stopped at,
    the passes that stopped it, and what the steps not run would have cost at the measured pace."""
    patience, threshold = summary["early_stopping_patience"], summary.get("early_stopping_threshold") or 0.0
    val, per_epoch = [p["val_loss"] for p in passes], steps_per_epoch(summary)
    best, reference = min(range(len(val)), key=val.__getitem__), last_improvement(val, threshold)

    def where(i: int) -> str:
        step = passes[i]["step"]
        return "the pass before training" if not step else f"step {step}" + (
            f" (epoch {passes[i]['epoch']}'s end)" if passes[i]["epoch_end"] and step % per_epoch == 0 else "")

    rule = (f"train.early_stopping_patience = {patience}, train.early_stopping_on = validation: stop once {patience} "
            "validation pass(es) in a row (train.val_every's and each epoch end's) end with a "
            + (f"validation loss not more than {threshold:g} below that of the last pass that improved by more "
               if threshold else "validation loss not below the lowest before them (the pass before training counts)"))
    if not stopped_early(summary):
        return Observation("info", f"Early stopping (patience {patience} validation passes) did not stop the run: "
                           f"all {summary['steps_planned']} steps ran; lowest validation loss {where(best)} "
                           f"({val[best]:.3f}).", rule)
    steps, planned = summary["steps"], summary["steps_planned"]
    saved = (planned - steps) * (summary["train_seconds"] + sum(p["val_seconds"] for p in passes[1:])) / steps
    price = f", ${saved / 3600 * cost['usd_per_hour']:.4f} at ${cost['usd_per_hour']:.3f}/h" if cost else ""
    kept = passes[best]["epoch"] if passes[best]["epoch_end"] else None  # the stop's pass ends its epoch too
    return Observation("info", f"Early stopping ended training at step {steps} of {planned}, in epoch "
                       f"{summary['epochs']} of {summary['epochs_planned']}: validation loss {_arrow(val[reference:])} "
                       f"did not go below {val[reference]:.3f} ({where(reference)})"
                       + (f" by more than {threshold:g}" if threshold else "") +
                       f" for {len(val) - 1 - reference} validation pass(es). The {planned - steps} steps not run "
                       f"would have taken about {saved / 60:.1f} min{price}. The final adapter is step {steps}'s"
                       + ("; no pass beat the base model's validation loss." if not best else
                          ", the lowest validation loss of any pass." if best == len(val) - 1 else
                          f"; the lowest validation loss, {where(best)}, is adapters/best-loss ({EXPORT_BEST_LOSS})."
                          if summary.get("best_loss_adapter") else
                          f"; the lowest validation loss, {where(best)}, is adapters/epoch-{kept} ({EXPORT_BEST_LOSS})."
                          if kept else
                          f"; the lowest validation loss, {where(best)}, was inside an epoch, whose weights are not "
                          "kept (an adapter is saved at each epoch's end)."),
                       rule + "; time saved = steps not run × the mean seconds (train + validation) of the steps "
                       "that ran")


def versus_baseline(this: dict, base: dict, this_name: str, base_name: str, loss_diff: dict | None = None,
                    accuracy_diff: dict | None = None, formats: list[str] = ()) -> list[Observation]:
    """Compare headline figures with a baseline run.

    `loss_diff`: the paired difference of final validation losses over the rows both runs validated
    (stats.paired_loss_difference); `accuracy_diff`: the paired difference of tuned flexible accuracy on
    the questions both runs scored (compare.paired: with both accuracies there, and how many each scored in all,
    which differ after different eval.limit). Without them, a fixed tolerance / no verdict.
    `formats`: the recipe keys that change the trained text and differ between the runs; with any, the loss
    comparison is stated without a verdict (the losses score different tokens).
    """
    out = [_loss_versus(this, base, this_name, base_name, loss_diff, formats)]
    ev_a, ev_b = base.get("eval") or {}, this.get("eval") or {}
    names = NAMING[ev_b.get("scoring", "numeric")]
    if ev_a and ev_b and _scored_as(ev_a) != _scored_as(ev_b):
        out.append(Observation("info", f"The runs scored answers differently ({_scored_as(ev_b)} vs "
                               f"{_scored_as(ev_a)}): their accuracies are not compared.",
                               "accuracies are compared only between runs scored the same way (eval.scoring, "
                               "eval.answer_pattern)"))
    elif accuracy_diff:
        acc_a, acc_b = accuracy_diff.get("accuracies") or (ev_a.get("tuned_flexible_accuracy", 0.0),
                                                           ev_b.get("tuned_flexible_accuracy", 0.0))
        scored = accuracy_diff.get("scored", [accuracy_diff["n"]] * 2)
        where = "" if scored == [accuracy_diff["n"]] * 2 else \
            f", on the {accuracy_diff['n']} questions both scored ({base_name} {scored[0]}, {this_name} {scored[1]})"
        out.append(accuracy_change(accuracy_diff, f"{names.flexible}, {this_name} vs {base_name}{where}", acc_a, acc_b,
                                   names.accuracy, f"{this_name}'s tuned adapter − {base_name}'s"))
    elif "tuned_flexible_accuracy" in ev_a and "tuned_flexible_accuracy" in ev_b:
        d = 100 * (ev_b["tuned_flexible_accuracy"] - ev_a["tuned_flexible_accuracy"])
        out.append(Observation("good" if d > 0 else ("watch" if d < 0 else "info"),
                               f"Tuned accuracy ({names.flexible}): {100 * ev_b['tuned_flexible_accuracy']:.1f} % vs "
                               f"{100 * ev_a['tuned_flexible_accuracy']:.1f} % ({d:+.1f} pts; the runs scored "
                               "different questions, so no paired interval: read with each run's own).",
                               "difference of tuned accuracies"))
    if "wall_seconds" in this and "wall_seconds" in base:
        out.append(Observation("info", f"Wall time {this['wall_seconds'] / 60:.1f} min vs "
                               f"{base['wall_seconds'] / 60:.1f} min ({this['epochs']} vs {base['epochs']} epochs"
                               + (f", {this['steps']} vs {base['steps']} steps"
                                  if (this.get("max_steps") or base.get("max_steps")) and "steps" in base else "")
                               + ").",
                               "measured wall time of training"))
    return out


def _scored_as(ev: dict) -> str:
    """How a run's answers were scored, in words: the mode, and regex's pattern."""
    mode = ev.get("scoring", "numeric")
    return f"{mode} {ev['answer_pattern']!r}" if ev.get("answer_pattern") else mode


def _loss_versus(this: dict, base: dict, this_name: str, base_name: str, loss_diff: dict | None,
                 formats: list[str]) -> Observation:
    """`versus_baseline`'s final validation loss: by the paired interval over the rows both runs validated (their
    losses on those rows when the runs have others too), else by the 1 % tolerance; no verdict across `formats`."""
    a, b = base["final_val_loss"], this["final_val_loss"]
    if loss_diff:
        lo, hi = loss_diff["ci95"]
        change = sign_of(loss_diff["ci95"])
        rows = loss_diff.get("rows", [loss_diff["n"]] * 2)
        where = f"{loss_diff['n']} validation rows"
        if rows != [loss_diff["n"]] * 2:  # other validation rows too (data.mix, data.limit): the shared rows' losses
            a, b = loss_diff["means"]
            where = (f"the {loss_diff['n']} validation rows both runs have ({base_name} {rows[0]}, {this_name} "
                     f"{rows[1]})")
        numbers = (f"{b:.3f} vs {a:.3f} ({100 * (b - a) / a:+.1f} %; paired difference {loss_diff['delta']:+.3f}, "
                   f"95 % CI {lo:+.3f}..{hi:+.3f} over {where})")
        rule = ("paired bootstrap 95 % CI of the token-weighted validation-loss difference over the rows both runs "
                "validated; a difference whose interval includes 0 counts as none")
        same = "not different beyond noise from"
    else:
        change = _changed(a, b)
        numbers = f"{b:.3f} vs {a:.3f} ({100 * (b - a) / a:+.1f} %)"
        rule = f"difference of final figures; a change within {TOLERANCE * 100:.0f} % counts as none"
        same = "the same within 1 % as"
    verb = {-1: "lower (better) than", 0: same, 1: "higher (worse) than"}[change]
    if formats:
        verb = {-1: "lower than", 0: same, 1: "higher than"}[change]
        numbers += f"; the runs differ in {', '.join(formats)}, so the losses score different text: no verdict"
        rule += "; no verdict when a key that changes the trained text differs"
    return Observation("info" if formats else {-1: "good", 0: "info", 1: "watch"}[change],
                       f"Final validation loss of {this_name} is {verb} {base_name}: {numbers}.", rule)


def accuracy_per_epoch(evaluation: dict) -> list[Observation]:
    """Each epoch against the one before it, and the best epoch, by paired intervals on the same questions."""
    out, names = [], naming(evaluation)
    rows = evaluation.get("epochs") or []
    for prev, row in zip(rows, rows[1:]):
        d = (row.get("vs_previous") or {}).get("flexible")
        if not d:
            continue
        lo, hi = d["ci95_pts"]
        kind, verdict = {1: ("good", "a gain beyond noise"), -1: ("watch", "a loss beyond noise"),
                         0: ("info", "no gain beyond noise")}[sign_of(d["ci95_pts"])]
        out.append(Observation(kind, f"Epoch {row['epoch']} vs epoch {prev['epoch']} ({names.flexible}): "
                               f"{100 * prev['flexible_accuracy']:.1f} % → {100 * row['flexible_accuracy']:.1f} %, "
                               f"{d['delta_pts']:+.1f} pts, 95 % CI {lo:+.1f}..{hi:+.1f}, n = {d['n']} — {verdict}.",
                               "paired bootstrap 95 % CI of the accuracy change between consecutive epochs on the same "
                               "questions; beyond noise = CI excludes 0"))
    best = evaluation.get("best_epoch")
    if best and len(rows) > 1:
        row = next(r for r in rows if r["epoch"] == best["epoch"])
        vs = (row.get("vs_base") or {}).get("flexible")
        detail = (f"; vs the base model {vs['delta_pts']:+.1f} pts, 95 % CI {vs['ci95_pts'][0]:+.1f}.."
                  f"{vs['ci95_pts'][1]:+.1f}" if vs else "")
        out.append(Observation("info", f"Best epoch by {names.accuracy}: epoch {best['epoch']} "
                               f"({100 * best['flexible_accuracy']:.1f} % {names.flexible}{detail}); "
                               f"{picked_on_test(len(rows), 'epochs')}.", best["rule"]))
    if said := best_step(evaluation):
        out.append(said)
    return out


def picked_on_test(points: int, what: str) -> str:
    """Why a best point's accuracy is optimistic: it was picked on the questions that measure it."""
    return (f"picked on these same questions as the highest of {points} measured {what}, so its accuracy overstates "
            "what it would score on new questions (the final adapter's, or one picked by validation loss, does not)")


def best_step(evaluation: dict) -> Observation | None:
    """train.keep_step_adapters: the best point of training by accuracy when it is inside an epoch (a step adapter),
    against the final adapter, paired; None when an epoch's end (or no step was kept)."""
    best = evaluation.get("best_step")
    if not best or not best["model"].startswith("step-"):
        return None
    names, d = naming(evaluation), (best.get("vs_tuned") or {}).get("flexible")
    versus = (f"; vs the final adapter {d['delta_pts']:+.1f} pts, 95 % CI {d['ci95_pts'][0]:+.1f}.."
              f"{d['ci95_pts'][1]:+.1f}, n = {d['n']}" if d else "")
    return Observation("info", f"Best point of training by {names.accuracy}: step {best['step']} (epoch "
                       f"{best['epoch']:g}, adapters/{best['model']}), {100 * best['flexible_accuracy']:.1f} % "
                       f"{names.flexible}{versus}; {picked_on_test(best['points'], 'points')}.", best["rule"])


def best_loss_accuracy(evaluation: dict, summary: dict) -> Observation | None:
    """adapters/best-loss (the lowest validation pass, between epoch ends) against the final adapter on the same
    questions: did picking by validation loss (TRL's load_best_model_at_end) pick the better answers?"""
    best = evaluation.get("best_loss")
    if not best:
        return None
    d, names = best["vs_tuned"]["flexible"], naming(evaluation)
    lo, hi = d["ci95_pts"]
    sign = sign_of(d["ci95_pts"])
    verdict = {1: "better beyond noise", -1: "worse beyond noise", 0: "no different beyond noise"}[sign]
    kept, final = (100 * evaluation[m]["flexible_accuracy"] for m in ("best-loss", "tuned"))
    return Observation("watch" if sign == 1 else "info",
                       f"The adapter of the lowest validation loss (step {summary['best_val_step']}, "
                       f"adapters/best-loss) scored {kept:.1f} % {names.flexible} against the final adapter's "
                       f"{final:.1f} %: "
                       f"{d['delta_pts']:+.1f} pts, 95 % CI {lo:+.1f}..{hi:+.1f}, n = {d['n']} — {verdict}"
                       + (f"; {EXPORT_BEST_LOSS} exports it." if sign == 1 else "."),
                       "paired bootstrap 95 % CI of the accuracy difference (best-loss − final adapter) on the same "
                       "questions; beyond noise = CI excludes 0; flagged when the final adapter is the worse")


def prompting_baselines(evaluation: dict) -> Observation | None:
    """Did the fine-tune beat simply prompting the base model? Judged by the paired interval against the strongest
    prompting baseline scored (the highest flexible accuracy, the first listed on a tie); the others are given with
    their intervals."""
    scored = [b for b in baselines(evaluation) if b["prompting"]]
    if not scored:
        return None
    best = max(scored, key=lambda b: evaluation[b["model"]]["flexible_accuracy"])

    def versus(b: dict) -> str:
        d = b["vs"]["flexible"]
        return f"{d['delta_pts']:+.1f} pts, 95 % CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}"
    d = best["vs"]["flexible"]
    prompted, tuned = evaluation[best["model"]]["flexible_accuracy"], evaluation["tuned"]["flexible_accuracy"]
    numbers = (f"{100 * tuned:.1f} % vs {100 * prompted:.1f} % for {best['what']} ({best['how']}), {versus(best)}, "
               f"n = {d['n']}")
    others = "; ".join(f"{b['short']} {100 * evaluation[b['model']]['flexible_accuracy']:.1f} % ({versus(b)})"
                       for b in scored if b is not best)
    kind, verdict = {1: ("good", "The fine-tune beat prompting beyond noise"),
                     -1: ("watch", "Prompting the base model beat the fine-tune beyond noise"),
                     0: ("watch", "The fine-tune did not beat prompting beyond noise")}[sign_of(d["ci95_pts"])]
    return Observation(kind,
                       f"{verdict}: {numbers}." + (f" The other prompting baselines: {others}." if others else ""),
                       f"paired bootstrap 95 % CI of tuned − the strongest prompting baseline scored (highest "
                       f"{naming(evaluation).flexible} accuracy) over the same questions")


def other_models(evaluation: dict) -> list[Observation]:
    """The fine-tune against each other model asked the same questions (eval.models): beyond noise either way by the
    paired interval of tuned − that model, else within noise of each other."""
    out = []
    for b in (b for b in baselines(evaluation) if b.get("other")):
        d = b["vs"]["flexible"]
        theirs, tuned = evaluation[b["model"]]["flexible_accuracy"], evaluation["tuned"]["flexible_accuracy"]
        kind, verdict = {1: ("good", f"The fine-tune beat {b['short']} beyond noise"),
                         -1: ("watch", f"{b['short']} beat the fine-tune beyond noise"),
                         0: ("info", f"The fine-tune and {b['short']} scored within noise of each other")}[
            sign_of(d["ci95_pts"])]
        out.append(Observation(kind, f"{verdict}: {100 * tuned:.1f} % vs {100 * theirs:.1f} % ({b['how']}), "
                               f"{d['delta_pts']:+.1f} pts, 95 % CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}, "
                               f"n = {d['n']}.",
                               f"paired bootstrap 95 % CI of tuned − {b['short']} ({naming(evaluation).flexible}) "
                               "over the same questions; beyond noise = CI excludes 0"))
    return out


def imitation_without_solving(epochs: list[dict], evaluation: dict) -> Observation | None:
    """Loss and token accuracy improved, answer accuracy did not: better imitation of the answer text only."""
    d = evaluation.get("flexible_difference")
    first, last = epochs[0], epochs[-1]
    if not d or _changed(first["val_loss"], last["val_loss"]) >= 0:
        return None
    token_pts = 100 * (last["val_token_accuracy"] - first["val_token_accuracy"])
    lo, hi = d["ci95_pts"]
    if token_pts <= 0.5 or lo > 0 or hi < 0:
        return None
    fall = 100 * (first["val_loss"] - last["val_loss"]) / first["val_loss"]
    return Observation("watch", f"Validation loss fell {fall:.0f} % and validation token accuracy rose "
                       f"{token_pts:.1f} pts, but {naming(evaluation).accuracy} did not change beyond noise "
                       f"({100 * evaluation['base']['flexible_accuracy']:.1f} % → "
                       f"{100 * evaluation['tuned']['flexible_accuracy']:.1f} %, 95 % CI {lo:+.1f}..{hi:+.1f}, "
                       f"n = {d['n']}): the model imitates the answer text better; it does not answer more "
                       "questions right.",
                       "validation loss fell beyond 1 % and token accuracy rose > 0.5 pts while the paired 95 % CI "
                       f"of the accuracy change ({naming(evaluation).flexible}) includes 0")


SILHOUETTE_BANDS = [(0.71, "strong structure: distinct problem types"), (0.51, "reasonable structure"),
                    (0.26, "weak structure: overlapping groups")]


def cluster_separation(silhouette: float | None, k: int) -> str:
    """How separated the clusters are, by Kaufman & Rousseeuw's silhouette bands (stated with the number)."""
    if silhouette is None:
        return f"k = {k}; no silhouette measured."
    verdict = next((text for bound, text in SILHOUETTE_BANDS if silhouette >= bound),
                   "no substantial structure: the clusters are named themes, not distinct problem types")
    return (f"Cluster separation: silhouette {silhouette:.3f} at k = {k} — {verdict} (rule: silhouette ≥ 0.71 "
            "strong, ≥ 0.51 reasonable, ≥ 0.26 weak, below that no substantial structure; Kaufman & Rousseeuw).")


def contamination(checks: dict, predictions: list[dict], checked: str = "", scored: str = "",
                  losses: dict[str, dict] | None = None) -> Observation:
    """Test rows that overlap training rows, and how the tuned model scores on them against the rest — or, for
    answers measured by loss (`losses`: row id -> {model: (mean loss, tokens)}), how far the fine-tune lowered their
    target loss against the rest's. `checked`, `scored`: the sources of the test rows the checks compared and of the
    questions the eval answered; when they differ (eval.source set after the checks ran), the checks say nothing
    about the scored questions."""
    s = checks["settings"]
    kinds = f"exact, {s['ngram']}-gram" + (f" and near-duplicate (MiniLM cosine ≥ {s['near_threshold']})"
                                          if s["near"] else "")
    rule = (f"test rows compared with every training row: {kinds}; accuracy on overlapping vs other questions "
            "by a 95 % bootstrap interval of the difference (unpaired groups)")
    if checked != scored:
        return Observation("watch", f"The data checks compared {checked}'s test rows with the training rows, but "
                           f"the answers were scored on {scored}'s questions: their overlap with the training rows "
                           f"is unchecked (`tunelab analyze RUN --set eval.source={scored}` checks it).",
                           "the checks' test source (data_checks.json test_source) against the eval's "
                           "(eval/summary.json source, else data.source)")
    if not checks["rows"]["test"]:
        return Observation("info", "The source has no test split: there is no test set to check for contamination "
                           "(held-out figures come from the validation rows, a random share of the training data).",
                           "a test split is the source's own test file or hub split; data checks compare it with "
                           "every training row")
    found = [o for o in checks["overlap"] if o["split"] == "test"]
    if not found:
        return Observation("good", f"No test row overlaps the training rows by any of the checks ({kinds}).", rule)
    counts = ", ".join(f"{v} {k}" for k, v in checks["overlap_counts"]["test"].items() if v)
    text = f"{len(found)} test questions overlap training rows ({counts})"
    tuned: dict[str, list[bool]] = {}  # per held-out row, its questions' flags (every reply, with eval.turns all)
    for p in predictions:
        if p["model"] == "tuned":
            tuned.setdefault(conversation_id(p["id"]), []).append(p["flexible_correct"])
    overlapping = {o["row_id"] for o in found}
    hit = [ok for o in found for ok in tuned.get(o["row_id"], [])]
    rest = [ok for row, flags in tuned.items() if row not in overlapping for ok in flags]
    if hit and rest:
        from tunelab.stats import unpaired_difference
        d = unpaired_difference(hit, rest)
        text += (f"; tuned accuracy on them {100 * sum(hit) / len(hit):.1f} % vs {100 * sum(rest) / len(rest):.1f} % "
                 f"on the rest (n = {len(hit)} vs {len(rest)}, {d['delta_pts']:+.1f} pts, 95 % CI "
                 f"{d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f})")
    elif losses:
        text += _loss_fall_on_overlap(losses, overlapping)
        rule += "; for answers measured by loss, the per-row change of target loss (tuned − base) likewise"
    return Observation("watch", text + ": a gain measured on them is not a gain.", rule)


def _loss_fall_on_overlap(losses: dict[str, dict], overlapping: set[str]) -> str:
    """How far the fine-tune moved the target loss of the overlapping held-out rows against the rest's: a larger
    fall on rows seen in training is recall."""
    change = {i: (m["tuned"][0] - m["base"][0], m["base"][1]) for i, m in losses.items()
              if {"base", "tuned"} <= m.keys()}
    hit = [c for i, c in change.items() if conversation_id(i) in overlapping]
    rest = [c for i, c in change.items() if conversation_id(i) not in overlapping]
    if not hit or not rest:
        return ""
    from tunelab.stats import unpaired_loss_difference
    d = unpaired_loss_difference(hit, rest)
    return (f"; the fine-tune moved their target loss by {d['loss_a']:+.3f} vs {d['loss_b']:+.3f} on the rest "
            f"(n = {d['n_a']} vs {d['n_b']} rows, difference {d['delta']:+.3f}, 95 % CI {d['ci95'][0]:+.3f}.."
            f"{d['ci95'][1]:+.3f})")


def familiarity(test: list[tuple[float, int]], val: list[tuple[float, int]]) -> Observation | None:
    """Is the test set more familiar to the base model than the training data? Before training, its loss on the
    test rows (`test`: each row's (mean loss, supervised tokens)) against the validation rows' (`val`, held out of
    the same source's train split). None when the run measured no test rows."""
    if not test or not val:
        return None
    from tunelab.stats import unpaired_loss_difference
    d = unpaired_loss_difference(test, val)
    lo, hi = d["ci95"]
    numbers = (f"{d['loss_a']:.3f} on {d['n_a']} test rows vs {d['loss_b']:.3f} on {d['n_b']} validation rows, "
               f"{d['delta']:+.3f}, 95 % CI {lo:+.3f}..{hi:+.3f}")
    rule = ("before training, the base model's token-weighted loss (on the tokens training takes it on) over the "
            "eval.limit test rows the eval scores (as set for training) minus over the validation rows, which are "
            "held out of the source's train split; 95 % bootstrap CI resampling each group's rows; lower beyond "
            "noise (CI below 0) = the test rows are more familiar than train-split rows (Skywork's test-vs-train "
            "loss check, Wei et al. 2023). It is blunt: it cannot see a test set seen as often as the train split, "
            "nor light exposure (a 135M model trained 2 epochs with LoRA on 180 of a benchmark's first 200 test rows "
            "still had the same loss there as on its train-split rows, 0.827 vs 0.814; README), so a pass rules out "
            "only heavy exposure")
    verdict = sign_of(d["ci95"])
    if verdict < 0:
        return Observation("watch", f"Before training, the base model's loss was lower on the test rows than on "
                           f"the validation rows beyond noise ({numbers}): it finds the test set more familiar than "
                           f"the source's train split, so the test set may have been in its pretraining data and "
                           f"accuracies measured on it may be inflated.", rule)
    if verdict > 0:
        return Observation("info", f"Before training, the base model's loss was higher on the test rows than on the "
                           f"validation rows beyond noise ({numbers}): the test rows are less familiar than the "
                           f"train split's (harder, or drawn differently); no sign it saw the test set.", rule)
    return Observation("info", f"Before training, the base model's loss on the test rows was not lower than on the "
                       f"validation rows beyond noise ({numbers}): no sign of heavy exposure to the test set (a "
                       f"light one would not show; see the rule).", rule)


def imported_tokens(summary: dict) -> Observation | None:
    """A run trained elsewhere (`tunelab import`): does tunelab's train loss of the final adapter agree with the other
    trainer's own logged loss? Far above it, the two did not train and measure the same tokens — most often a
    prompt whose last token merges with the answer's first when a trainer tokenizes them together."""
    imported = summary.get("imported") or {}
    logged, measured = imported.get("logged_last_epoch_loss"), summary.get("final_train_loss")
    if logged is None or measured is None:
        return None
    rule = ("the other trainer's mean logged loss over its last epoch's steps against tunelab's train loss of the "
            "final adapter over the train rows (prompt and target tokenized apart, as a prompt is given at inference); "
            "flagged above 2× + 0.05. Merging rows: the tokens of prompt + target together do not begin with the "
            "prompt's own")
    if measured <= 2 * logged + 0.05:
        return Observation("info", f"tunelab's train loss of the final adapter ({measured:.3f}) is in line with the "
                           f"other trainer's logged loss over its last epoch ({logged:.3f}).", rule)
    merges = imported.get("boundary_merges") or {}
    text = (f"tunelab measures the final adapter's train loss at {measured:.3f}, {measured / max(logged, 1e-9):.0f}× "
            f"the other trainer's own logged loss over its last epoch ({logged:.3f}): they did not train and measure "
            "the same tokens.")
    if merges.get("rows"):
        ex = merges["example"]
        text += (f" On {merges['rows']} of {merges['of']} training rows the prompt's last token merges with the "
                 f"answer's first when the two are tokenized together ({ex['id']}: {ex['prompt_end']!r} + the answer "
                 f"becomes {ex['together']!r}), as trainers of prompt-completion rows tokenize them. The adapter "
                 "learnt the merged token; a prompt given alone — in this eval, in a server — ends with the unmerged "
                 "one, a sequence it never trained on. A template that does not end in a space avoids it.")
    else:
        text += " Check that the recipe's template and target are the ones the adapter was trained with."
    return Observation("watch", text, rule)


def untrained_tokens(checks: dict) -> Observation | None:
    """The training rows use tokens whose embedding rows the base model never trained and nothing trained them
    (data checks' `untrained_tokens`, without lora.modules_to_save covering them)."""
    found = checks.get("untrained_tokens") or {}
    if not left_untrained(found):
        return None
    return Observation("watch", f"{untrained_line(found)}.", found["rule"])


def markers(checks: dict) -> Observation | None:
    """The training rows write chat markers the tokenizer splits, or model.added_tokens no row uses (data checks'
    `markers`)."""
    found = checks.get("markers") or {}
    line = markers_line(found)
    return Observation("watch", f"{line[0].upper()}{line[1:]}.", found["rule"]) if line else None


def duplicates(checks: dict) -> Observation | None:
    d = checks["train_duplicates"]
    if not d["exact_rows"] and not d["near_pairs"]:
        return None
    return Observation("watch", f"The training rows hold {d['exact_rows']} exact duplicates (in {d['exact_groups']} "
                       f"groups) and {d['near_pairs']} near-duplicate pairs; data.dedup: exact or near drops them.",
                       "same normalised text (exact); MiniLM cosine ≥ data.near_threshold (near)")
