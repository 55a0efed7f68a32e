"""The eval summary's comparisons: paired differences between models on the same questions, accuracy per
epoch, the best epoch, the prompting baselines, and the questions each compared pair gained and lost.

Torch-free (plain prediction rows in, JSON-ready dicts out), so it is tested on constructed rows.

Run as: tunelab eval runs/smoke --set eval.epochs=all --set eval.fewshot=5
"""

from __future__ import annotations

import json
from collections import Counter

from tunelab.evaluate.scoring import NO_CALL, OUTCOMES, flips, mentions, normalize_answer, normalize_text, \
    tool_outcome
from tunelab.rundir import START
from tunelab.stats import paired_difference, paired_loss_difference

METRICS = ("strict", "flexible")
CHAT_BASELINE = "base-chat"  # the base model asked through its chat template (eval.chat_baseline)
PROMPT_BASELINE = "base-prompt"  # the base model asked with eval.prompt_baseline
OTHER_MODEL = "model:"  # + its name: another model asked the same questions (eval.models)


def pass_names(summary: dict) -> list[str]:
    """The models an eval summary holds stats for (base, base-<N>shot, base-chat, base-prompt, start, epoch-<K>,
    best-loss, tuned), in its order."""
    return [k for k, v in summary.items()
            if isinstance(v, dict) and {"n", "strict_accuracy", "tokens_per_second"} <= set(v)]


def comparisons(predictions: list[dict], stats: dict, ids: list[str], final_epoch: int, fewshot: int,
                flexible: str = "flexible-extract", points: dict[str, tuple[int, float]] | None = None) -> dict:
    """What eval/summary.json holds beside each model's stats, from the prediction rows of every model.

    Args:
        stats: per model name (base, base-<N>shot, base-chat, base-prompt, start, epoch-<K>, best-loss, tuned), its
            n and accuracies (and the prompt baseline's `asked_with`).
        ids: the scored question ids, in order.
        final_epoch: the epoch the final adapter (`tuned`) is from.
        fewshot: N of the few-shot baseline (0 = none).
        flexible: what the scoring mode calls its flexible variant (the best-epoch rule names it).
        points: where in training each adapter pass is, (step, epoch), when the run kept step adapters
            (train.keep_step_adapters): `steps` then lists them in that order.
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
        if "mc2" in by["base"][ids[0]]:  # labelled options (eval.choice_labels): the probability on the true ones
            out["mc2_difference"] = mass_difference(by["base"], by["tuned"], ids)
    if diff(START, "tuned"):  # the adapter this run continued: what this run's training added
        out["continued"] = {"model": START, "tuned_vs_start": diff(START, "tuned")}
    epochs = _epoch_rows(stats, diff, final_epoch)
    if epochs:
        out["epochs"] = epochs
        best = max(epochs, key=lambda e: (e["flexible_accuracy"], -e["epoch"]))
        out["best_epoch"] = {"epoch": best["epoch"], "model": best["model"],
                             "flexible_accuracy": best["flexible_accuracy"],
                             "rule": f"highest {flexible} accuracy; a tie goes to the earlier epoch"}
    if points:
        out["steps"] = _step_rows(stats, diff, points)
        best = max(out["steps"], key=lambda p: (p["flexible_accuracy"], -p["step"]))
        out["best_step"] = {"step": best["step"], "epoch": best["epoch"], "model": best["model"],
                            "flexible_accuracy": best["flexible_accuracy"], "points": len(out["steps"]),
                            "vs_tuned": diff("tuned", best["model"]) if best["model"] != "tuned" else None,
                            "rule": f"highest {flexible} accuracy among the kept step adapters and the epochs' "
                                    "ends; a tie goes to the earlier step"}
    if diff("tuned", "best-loss"):  # adapters/best-loss against the final adapter: what picking by loss gave
        out["best_loss"] = {"model": "best-loss", "vs_tuned": diff("tuned", "best-loss")}
    out |= _baseline_comparisons(stats, diff, fewshot)
    pairs = [("base", "tuned")] + [(START, e["model"]) for e in epochs[:1]] \
        + [(a["model"], b["model"]) for a, b in zip(epochs, epochs[1:])] \
        + [("best-loss", "tuned")]  # what training on past the lowest validation pass changed (when it was scored)
    out["flips"] = [{"from": a, "to": b, "metric": "flexible", **flips(by[a], by[b], ids)} for a, b in pairs
                    if a in by and b in by]
    return out


def _baseline_comparisons(stats: dict, diff, fewshot: int) -> dict:
    """The tuned adapter against each prompting baseline (few-shot, chat, chat few-shot, prompt) and each other
    model (eval.models) scored, for `comparisons`."""
    out: dict = {}
    name = f"base-{fewshot}shot"
    if fewshot and diff(name, "tuned"):
        out["fewshot"] = {"model": name, "shots": fewshot, "tuned_vs_fewshot": diff(name, "tuned"),
                          "shots_from": stats[name].get("shots_from", f"the first {fewshot} training rows")}
    if diff(CHAT_BASELINE, "tuned"):
        out["chat_baseline"] = {"model": CHAT_BASELINE, "tuned_vs_chat": diff(CHAT_BASELINE, "tuned")}
    chatty = f"{CHAT_BASELINE}-{fewshot}shot"
    if fewshot and diff(chatty, "tuned"):
        out["chat_fewshot"] = {"model": chatty, "shots": fewshot, "tuned_vs_fewshot": diff(chatty, "tuned"),
                               "shots_from": stats[chatty].get("shots_from", f"the first {fewshot} training rows")}
    others = [{"model": name, "name": name.removeprefix(OTHER_MODEL), "tuned_vs_model": diff(name, "tuned"),
               "asked_with": stats[name].get("asked_with", {})}
              for name in stats if name.startswith(OTHER_MODEL) and diff(name, "tuned")]
    if others:  # eval.models: the tuned adapter against each other model, on the same questions
        out["models"] = others
    if diff(PROMPT_BASELINE, "tuned"):
        out["prompt_baseline"] = {"model": PROMPT_BASELINE, "tuned_vs_prompt": diff(PROMPT_BASELINE, "tuned"),
                                  **stats[PROMPT_BASELINE].get("asked_with", {})}
    return out


def mass_difference(before: dict[str, dict], after: dict[str, dict], ids: list[str]) -> dict:
    """mc2 of model `after` − model `before` (id -> prediction row) over the questions `ids`, in points, with a paired
    bootstrap 95 % interval over questions (each weighing the same) and the two means (0..1)."""
    d = paired_loss_difference({i: (before[i]["mc2"], 1) for i in ids}, {i: (after[i]["mc2"], 1) for i in ids})
    return {"n": d["n"], "delta_pts": round(100 * d["delta"], 3), "ci95_pts": [round(100 * x, 3) for x in d["ci95"]],
            "means": d["means"]}


def baselines(evaluation: dict) -> list[dict]:
    """The baselines an eval summary compared the final adapter with, each as {model, what (in words), short (a
    label), how (the prompt, in words), vs (tuned − baseline, per metric), prompting (False for an adapter)}: the
    adapter the run continued (lora.continue_from), then the prompting baselines: the base model N-shot
    (`eval.fewshot`), asked through its chat template (`eval.chat_baseline`), zero-shot and N-shot, asked with
    `eval.prompt_baseline`; then each other model asked the same questions (`eval.models`: `other` True)."""
    out = []
    if c := evaluation.get("continued"):
        out.append({"model": c["model"], "what": "the adapter this run continued training", "short": "start adapter",
                    "vs": c["tuned_vs_start"], "how": "lora.continue_from, adapters/start/", "prompting": False})
    if fs := evaluation.get("fewshot"):
        out.append({"model": fs["model"], "what": f"the base model prompted {fs['shots']}-shot",
                    "short": f"base {fs['shots']}-shot", "vs": fs["tuned_vs_fewshot"],
                    "how": "lm-eval's GSM8K format" + (f", shots: {fs['shots_from']}" if "shots_from" in fs else ""),
                    "prompting": True})
    if ch := evaluation.get("chat_baseline"):
        out.append({"model": ch["model"], "what": "the base model asked through its chat template",
                    "short": "base via chat template", "vs": ch["tuned_vs_chat"],
                    "how": "zero-shot, the prompt as the user turn, lm-eval's --apply_chat_template",
                    "prompting": True})
    if cf := evaluation.get("chat_fewshot"):
        out.append({"model": cf["model"], "what": f"the base model prompted {cf['shots']}-shot through its chat "
                    "template", "short": f"base {cf['shots']}-shot via chat template", "vs": cf["tuned_vs_fewshot"],
                    "how": "lm-eval's GSM8K format, the shots as earlier turns, --apply_chat_template "
                           f"--fewshot_as_multiturn; shots: {cf['shots_from']}", "prompting": True})
    if pb := evaluation.get("prompt_baseline"):
        out.append({"model": pb["model"], "what": "the base model asked with eval.prompt_baseline",
                    "short": "base, eval.prompt_baseline", "vs": pb["tuned_vs_prompt"], "how": asked_with(pb),
                    "prompting": True})
    for m in evaluation.get("models") or []:  # eval.models: another model, not a way of prompting this one
        how = m["asked_with"]
        out.append({"model": m["model"], "what": f"{m['name']} (eval.models)", "short": m["name"],
                    "vs": m["tuned_vs_model"], "prompting": False, "other": True,
                    "how": "zero-shot, " + ("the run's turns through its own chat template" if how.get("turns") else
                                            "the run's prompt as the user turn of its own chat template"
                                            if how.get("chat_template") else "the run's prompt as plain text")})
    return out


def asked_with(baseline: dict) -> str:
    """How the prompt baseline asked, in words: 'zero-shot, "{prompt}\\n\\nShow your work." as the user turn of the
    chat template' (the template as written, its line breaks as \\n)."""
    return (f"zero-shot, {json.dumps(baseline.get('template', '?'), ensure_ascii=False)}"
            + (" as the user turn of the chat template" if baseline.get("chat_template") else " as plain text"))


def sampled_comparison(rows: dict[str, list[dict]], ids: list[str], k: int) -> dict:
    """eval.pass_at_k's figures from each model's k sampled answers per question (`rows`: model -> rows with `id`,
    `flexible_correct`, `flexible_answer`): per model `pass@1` (the mean share of right answers), `pass@k` (the share
    of questions with a right answer among the k) and `maj@k` (the share whose most frequent answer is right; a tie
    goes to the answer drawn first; answers the scoring could not read do not vote), each with the rule; and with
    both models, tuned − base paired over questions: pass@1 by bootstrap of the per-question shares, pass@k and maj@k
    as accuracies (interval and McNemar)."""
    per: dict[str, dict[str, dict]] = {}
    for model, answered in rows.items():
        by: dict[str, list[dict]] = {}
        for r in answered:
            by.setdefault(r["id"], []).append(r)
        per[model] = {"pass@1": {i: sum(r["flexible_correct"] for r in by[i]) / k for i in ids},
                      "pass@k": {i: any(r["flexible_correct"] for r in by[i]) for i in ids},
                      "maj@k": {i: _majority_right(by[i]) for i in ids}}
    out: dict = {"models": {m: {name: round(sum(v.values()) / len(ids), 6) for name, v in figures.items()}
                            for m, figures in per.items()},
                 "rule": f"{k} answers sampled per question; pass@1 = mean share right, pass@{k} = one right among "
                         f"the {k}, maj@{k} = the most frequent readable answer right (ties: the first drawn)"}
    if {"base", "tuned"} <= per.keys():
        b, t = per["base"], per["tuned"]
        share = paired_loss_difference({i: (b["pass@1"][i], 1) for i in ids}, {i: (t["pass@1"][i], 1) for i in ids})
        out["differences"] = {"pass@1": share,
                              **{name: paired_difference([b[name][i] for i in ids], [t[name][i] for i in ids])
                                 for name in ("pass@k", "maj@k")}}
    return out


def sampled_name(name: str, k: int) -> str:
    """A sampled figure named with its k, as the report, compare and trackers write it: "pass@8" for pass@k."""
    return name.replace("@k", f"@{k}")


def _majority_right(answers: list[dict]) -> bool:
    """Whether the most frequent readable answer among one question's samples is right (answers counted alike once
    normalised: 1,000 = 1000, case and end punctuation aside; ties: the first drawn)."""
    said = [(normalize_answer(r["flexible_answer"]), r) for r in answers if r["flexible_answer"] is not None]
    votes = Counter(key for key, _ in said)
    if not votes:
        return False
    top = max(votes.values())
    return bool(next(r for key, r in said if votes[key] == top)["flexible_correct"])


MAX_CLASSES = 12  # reference answers taken as classes (exact scoring) when there are at most this many


def by_category(predictions: list[dict], ids: list[str], labelled: str | None, mode: str) -> dict | None:
    """Base → tuned accuracy (flexible) per category of question, each with its paired difference.

    The categories are `categories_of`'s; None when it finds none, or before base and tuned were both scored.
    """
    base = {r["id"]: r for r in predictions if r["model"] == "base"}
    tuned = {r["id"]: r for r in predictions if r["model"] == "tuned"}
    if not ids or not all(i in base and i in tuned for i in ids):
        return None
    found = categories_of(predictions, ids, labelled, mode)
    if found is None:
        return None
    groups, source = found
    out = paired_by_category(groups, source, {i: base[i]["flexible_correct"] for i in ids},
                             {i: tuned[i]["flexible_correct"] for i in ids})
    if source.startswith("reference"):
        out["confusion"] = {m: confusion(list(groups), [(c, by[i]["flexible_answer"])
                                                        for c, members in groups.items() for i in members])
                            for m, by in (("base", base), ("tuned", tuned))}
    return out


def categories_of(predictions: list[dict], ids: list[str], labelled: str | None,
                  mode: str) -> tuple[dict[str, list[str]], str] | None:
    """(category -> its question ids, the most questions first; where the categories come from), or None.

    The category is the row's label when the rows have one (`labelled`: where from, `config.categories_from`:
    data.label_field, or eval.label_field for a benchmark's own column); else, under exact or regex scoring, the
    reference answer itself when the questions have at most MAX_CLASSES distinct ones, each asked at least twice
    (a classification set: accuracy per class); under tool scoring, the tools its reference calls (at most
    MAX_CLASSES kinds). A question's label and reference are the same in every model's
    row, so any row of it will do.
    """
    row = {r["id"]: r for r in predictions}
    if not ids or not all(i in row for i in ids):
        return None
    if labelled and all("label" in row[i] for i in ids):
        key, source = (lambda i: str(row[i]["label"])), labelled
    elif mode in ("exact", "regex"):
        counts = Counter(normalize_text(row[i]["reference"]) for i in ids)
        if len(counts) > MAX_CLASSES or min(counts.values()) < 2:
            return None
        key, source = (lambda i: normalize_text(row[i]["reference"])), "reference answer (class)"
    elif mode == "tool":  # per tool: the functions the reference calls (or none)
        key, source = (lambda i: called(row[i]["reference"])), "the tools the reference calls"
        if len({key(i) for i in ids}) > MAX_CLASSES:
            return None
    else:
        return None
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(key(i), []).append(i)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))), source


def tool_outcomes(predictions: list[dict], names: list[str]) -> dict[str, dict[str, int]]:
    """Under tool scoring, per pass (`names`, in eval's order) how many of its replies had each outcome
    (`scoring.OUTCOMES`: right, no call, call not due, wrong tool, wrong arguments), every outcome counted."""
    counts = {name: Counter() for name in names}
    for r in predictions:
        if r["model"] in counts:
            counts[r["model"]][tool_outcome(r["flexible_answer"], r["reference"])] += 1
    return {name: {outcome: found[outcome] for outcome in OUTCOMES} for name, found in counts.items()}


def called(reference: str) -> str:
    """The functions a tool-scoring reference calls (`scoring.tool_reference`), in order, or NO_CALL."""
    return ", ".join(call.split("(", 1)[0] for call in reference.split("\n")) if reference != NO_CALL else NO_CALL


def paired_by_category(groups: dict[str, list[str]], source: str, before: dict[str, bool],
                       after: dict[str, bool]) -> dict:
    """Per category, the accuracy of `before` (`base_accuracy`) and of `after` (`tuned_accuracy`) on its questions
    and their paired difference, judged against a Bonferroni bound over the categories."""
    rows = []
    for category, members in groups.items():
        b, t = [before[i] for i in members], [after[i] for i in members]
        rows.append({"category": category, "n": len(members), "base_accuracy": round(sum(b) / len(b), 6),
                     "tuned_accuracy": round(sum(t) / len(t), 6), "difference": paired_difference(b, t)})
    return {"source": source, "metric": "flexible", "rows": rows,
            "rule": f"paired difference per category; beyond noise = McNemar p < 0.05 / {len(rows)} "
                    f"(Bonferroni over the {len(rows)} categories)", "alpha": round(0.05 / len(rows), 6)}


def confusion(classes: list[str], pairs: list[tuple[str, str | None]]) -> dict[str, dict[str, int]]:
    """reference class -> predicted class -> count. The predicted class is the one class whose name occurs in the
    answer line as whole words (as flexible exact-match scores); `other` when none does, `several` when more than
    one does."""
    out = {c: {} for c in classes}
    for reference, line in pairs:
        got = normalize_text(line or "")
        named = [c for c in classes if mentions(got, c)]
        predicted = named[0] if len(named) == 1 else ("other" if not named else "several")
        out[reference][predicted] = out[reference].get(predicted, 0) + 1
    return out


def _epoch_rows(stats: dict, diff, final_epoch: int) -> list[dict]:
    """Accuracy after each scored epoch (epoch-K passes and the final adapter), with paired differences; the first
    against the adapter the run continued (`vs_previous`), when it had one."""
    names = sorted((n for n in stats if n.startswith("epoch-")), key=lambda n: int(n.split("-")[1]))
    if "tuned" in stats:
        names.append("tuned")
    rows, previous = [], START if START in stats else None
    for name in names:
        s = stats[name]
        epoch = int(name.split("-")[1]) if name != "tuned" else final_epoch
        rows.append({"epoch": epoch, "model": name, "n": s["n"], "strict_accuracy": s["strict_accuracy"],
                     "flexible_accuracy": s["flexible_accuracy"], **({"mc2": s["mc2"]} if "mc2" in s else {}),
                     "vs_base": diff("base", name), "vs_previous": diff(previous, name) if previous else None})
        previous = name
    return rows


def _step_rows(stats: dict, diff, points: dict[str, tuple[int, float]]) -> list[dict]:
    """Accuracy at every scored point of training, in order: train.keep_step_adapters' adapters inside epochs among
    the epochs' own, each against the point before (the first against the base model, or the adapter the run
    continued)."""
    rows, previous = [], START if START in stats else "base"
    for name, (step, epoch) in sorted(points.items(), key=lambda kv: kv[1][0]):
        s = stats[name]
        rows.append({"step": step, "epoch": epoch, "model": name, "n": s["n"], "strict_accuracy": s["strict_accuracy"],
                     "flexible_accuracy": s["flexible_accuracy"], "vs_previous": diff(previous, name)})
        previous = name
    return rows


def set_done(summary: dict | None) -> bool:
    """An eval summary whose base model and final adapter were both measured: their answers scored, or (a test set
    no scoring mode suits) their target loss (`losses.done`). Torch-free, for `tunelab ls` too."""
    from tunelab.evaluate import losses
    return {"base", "tuned"} <= set(summary or {}) or losses.done(summary)


def extra_done(cfg, run) -> bool:
    """Every `eval.also` test set of the recipe `cfg` has been scored (or measured by loss, and its replies generated)
    in `run`."""
    from tunelab.config import also_names
    return all(extra_set_done(cfg, run, name) for name in also_names(cfg.eval))


def extra_set_done(cfg, run, name: str) -> bool:
    """The `eval.also` set `name` has been scored in `run`; a set measured by loss, its replies generated and scored
    too when eval.overlap asks for them (an eval of the run before they were asked for has none)."""
    from tunelab.evaluate.losses import LOSS
    from tunelab.rundir import ExtraSetDir, RepliesDir
    summary = ExtraSetDir(run.path, name).read_eval_summary()
    return set_done(summary) and (summary.get("scoring") != LOSS or not cfg.eval.overlap
                                  or set_done(RepliesDir(run.path, name).read_eval_summary()))
