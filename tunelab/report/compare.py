"""Comparing runs: `tunelab compare` (a table of every headline figure, overlaid curves) and the report's
baseline section. Each run's figures come from its stages' own files (train summary, eval summary).

Run as: tunelab compare runs/gsm8k-2ep runs/gsm8k-3ep runs/gsm8k-4ep
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import categories_from
from tunelab.evaluate.scoring import naming
from tunelab.evaluate.summary import baselines, categories_of, paired_by_category, sampled_name
from tunelab.report import observations as rules
from tunelab.report import sampled
from tunelab.report.curves import overlaid
from tunelab.report.render import html_page, markdown
from tunelab.rundir import START, HeldOutLossDir, RepliesDir, RunDir, counts_passes, lowest_pass, stopped_early
from tunelab.stats import paired_difference, paired_loss_difference


def val_rows(run: RunDir) -> dict[int, dict[str, tuple[float, int]]]:
    """Per epoch, each validation row's (mean loss, supervised tokens), from metrics/examples.jsonl."""
    out: dict[int, dict] = {}
    for e in run.read_examples():
        if e["split"] == "val":
            out.setdefault(e["epoch"], {})[e["id"]] = (e["loss"], e["tokens"])
    return out


def paired(run: RunDir, baseline: RunDir) -> tuple[dict | None, dict | None]:
    """(final validation loss, tuned flexible accuracy) of `run` minus `baseline`, each a paired difference
    over the rows / questions both measured — None where they share none (different data or questions). The loss
    difference also carries `rows` (how many validation rows each run has: more than those shared after another
    data.mix or data.limit).

    The accuracy difference also carries `accuracies` (baseline's, run's) over those shared questions and `scored`
    (how many each run scored in all): runs scored with different eval.limit are paired on the questions both
    answered, and their accuracies there are what the difference is of."""
    rows_a, rows_b = val_rows(baseline), val_rows(run)
    last_a, last_b = (rows_a[max(rows_a)], rows_b[max(rows_b)]) if rows_a and rows_b else ({}, {})
    loss = paired_loss_difference(last_a, last_b)
    if loss:
        loss["rows"] = [len(last_a), len(last_b)]  # each run's validation rows: more than n when they differ
    tuned_a, tuned_b = tuned_flags(baseline.read_predictions()), tuned_flags(run.read_predictions())
    shared = [k for k in tuned_a if k in tuned_b]
    if not shared:
        return loss, None
    a, b = [tuned_a[k] for k in shared], [tuned_b[k] for k in shared]
    return loss, {**paired_difference(a, b), "accuracies": [sum(a) / len(a), sum(b) / len(b)],
                  "scored": [len(tuned_a), len(tuned_b)]}


def tuned_flags(predictions: list[dict]) -> dict[tuple[str, str, str | None], bool]:
    """The tuned adapter's flexible-correct flag per question, keyed by (id, question, reference answer): two runs
    answered the same question only when all three match (another eval.source numbers its rows the same way)."""
    return {(p["id"], p["question"], p["reference"]): p["flexible_correct"] for p in predictions
            if p["model"] == "tuned"}


def eval_lines(evaluation: dict) -> list[str]:
    """The eval stage's findings as short console lines: accuracy per epoch, best epoch, the lowest validation
    pass's adapter, few-shot, mc2 (labelled options), flips."""
    lines = []
    rows = evaluation.get("epochs") or []
    if rows and "base" in evaluation:
        steps = [f"base {100 * evaluation['base']['flexible_accuracy']:.1f} %"]
        if START in evaluation:  # the adapter the run continued: the first epoch's change is from it
            steps.append(f"start adapter {100 * evaluation[START]['flexible_accuracy']:.1f} %")
        for r in rows:
            d = (r.get("vs_previous") or {}).get("flexible")
            change = f" ({d['delta_pts']:+.1f}, CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f})" if d else ""
            steps.append(f"epoch {r['epoch']} {100 * r['flexible_accuracy']:.1f} %{change}")
        lines.append(f"accuracy per epoch ({naming(evaluation).flexible}): " + " → ".join(steps))
    if points := evaluation.get("steps"):  # train.keep_step_adapters: accuracy inside epochs too
        first = "start adapter" if START in evaluation else "base"
        lines.append(f"accuracy during training ({naming(evaluation).flexible}): " + " → ".join(
            [f"{first} {100 * evaluation.get(START, evaluation['base'])['flexible_accuracy']:.1f} %"]
            + [f"step {r['step']} (epoch {r['epoch']:g}) {100 * r['flexible_accuracy']:.1f} %" for r in points]))
    if evaluation.get("best_epoch") and len(rows) > 1:
        lines.append(f"best epoch: {evaluation['best_epoch']['epoch']} "
                     f"({100 * evaluation['best_epoch']['flexible_accuracy']:.1f} %)")
    if best := evaluation.get("best_loss"):
        d = best["vs_tuned"]["flexible"]
        lines.append(f"best-loss adapter {100 * evaluation['best-loss']['flexible_accuracy']:.1f} % vs final "
                     f"{100 * evaluation['tuned']['flexible_accuracy']:.1f} %: {d['delta_pts']:+.1f} pts, 95 % CI "
                     f"{d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}")
    for b in baselines(evaluation):
        d = b["vs"]["flexible"]
        lines.append(f"vs {b['short']} ({100 * evaluation[b['model']]['flexible_accuracy']:.1f} %): "
                     f"{d['delta_pts']:+.1f} pts, 95 % CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}")
    if said := sampled.line(evaluation):
        lines.append(said)
    if m := evaluation.get("mc2_difference"):  # labelled options: the probability on the true ones, base → epochs
        steps = [f"base {100 * evaluation['base']['mc2']:.1f} %"] + [f"epoch {r['epoch']} {100 * r['mc2']:.1f} %"
                                                                     for r in rows if "mc2" in r]
        lines.append(f"mc2 (the probability on the true options): {' → '.join(steps)}; tuned − base "
                     f"{m['delta_pts']:+.1f} pts, 95 % CI {m['ci95_pts'][0]:+.1f}..{m['ci95_pts'][1]:+.1f}")
    if outcomes := (evaluation.get("tool_outcomes") or {}).get("tuned"):  # tool scoring: how the tuned calls went
        lines.append("tuned replies' calls: " + ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items() if n))
    from tunelab.report.replies import answers_line
    if said := answers_line(evaluation):  # and the replies due no call, by their words
        lines.append(said)
    for f in evaluation.get("flips") or []:
        lines.append(f"flips {f['from']} → {f['to']}: {len(f['gained'])} gained, {len(f['lost'])} lost")
    return lines


def headline(run: RunDir) -> dict:
    """The train stage's summary plus, under `eval`, the eval stage's headline accuracies and intervals (and the
    sampled pass@1, pass@k, maj@k of eval.pass_at_k; the mc2 of a set with labelled options) (or, under
    `held_out_loss`, the base and tuned target loss of held-out rows measured by loss instead, and under
    `reply_chrf` their generated replies' mean chrF)."""
    summary = dict(run.read_summary() or {})
    evaluation = run.read_eval_summary() or {}
    ev = {}
    for name in ("base", "tuned"):
        if name in evaluation:
            ev[f"{name}_strict_accuracy"] = evaluation[name]["strict_accuracy"]
            ev[f"{name}_flexible_accuracy"] = evaluation[name]["flexible_accuracy"]
            ev.update({f"{name}_mc2": evaluation[name]["mc2"]} if "mc2" in evaluation[name] else {})  # labelled options
            ev["n"] = evaluation[name]["n"]
    if sampled_figures := (evaluation.get("sampled") or {}).get("models"):  # eval.pass_at_k: "tuned_pass@8"
        k = evaluation["sampled"]["settings"]["k"]
        ev.update({f"{model}_{sampled_name(name, k)}": value for model, figures in sampled_figures.items()
                   for name, value in figures.items()})
    for metric in ("strict", "flexible"):
        if f"{metric}_difference" in evaluation:
            d = evaluation[f"{metric}_difference"]
            ev[f"{metric}_delta_pts"], ev[f"{metric}_ci95_pts"] = d["delta_pts"], d["ci95_pts"]
    if ev:
        summary["eval"] = {**ev, "scoring": evaluation.get("scoring", "numeric")}
        if "answer_pattern" in evaluation:  # regex scoring: runs under other patterns are not compared
            summary["eval"]["answer_pattern"] = evaluation["answer_pattern"]
    held_out = HeldOutLossDir(run.path).read_eval_summary() or {}
    if not ev and (losses := held_out.get("losses")):  # answers no scoring mode suits: the replies by loss
        summary["held_out_loss"] = {name: losses[name]["loss"] for name in ("base", "tuned") if name in losses}
    if not ev and (generated := RepliesDir(run.path).read_eval_summary() or {}).get("overlap"):
        summary["reply_chrf"] = {name: generated[name]["chrf"] for name in ("base", "tuned")}
    return summary


def train_loss_change(s: dict) -> str:
    """A summary's train loss, first epoch → last with its % fall; one epoch measured (a one-epoch run, an import of
    a bare adapter) has no change to state."""
    if s["train_loss_improvement_pct"] is None:
        return f"train loss {s['final_train_loss']:.4f} ({_one_epoch(s)})"
    return (f"train loss {s['first_epoch_train_loss']:.4f} → {s['final_train_loss']:.4f} "
            f"({s['train_loss_improvement_pct']:+.1f} %)")


def early_stopping_line(s: dict) -> str | None:
    """The console's line on a train summary whose early stopping ended the run: epochs (and steps, counting
    validation passes) of those planned, the epoch of the lowest validation loss, the patience; None otherwise."""
    if not stopped_early(s):
        return None
    passes = counts_passes(s)
    return (f"early stopping: {s['epochs']} of {s['epochs_planned']} epochs"
            + (f", step {s['steps']} of {s['steps_planned']}" if passes else "")
            + (f", validation loss lowest at step {s['best_val_step']}" if passes else
               f", validation loss lowest at epoch {s['best_val_epoch']}") + " (patience "
            f"{s['early_stopping_patience']}" + (" validation passes" if passes else "")
            + (f", threshold {t:g}" if (t := s.get("early_stopping_threshold")) else "") + ")")


def best_loss_line(s: dict, passes: list[dict]) -> str | None:
    """The console's line on a train summary whose lowest validation pass is kept in adapters/best-loss (it fell
    between epoch ends); None otherwise. `passes`: the run's metrics/validation.jsonl."""
    if not s.get("best_loss_adapter"):
        return None
    lowest = lowest_pass(passes)
    return (f"lowest validation loss {lowest['val_loss']:.4f} at step {lowest['step']} (epoch {lowest['epoch']}; "
            f"{s['final_val_loss']:.4f} at the end): kept in adapters/best-loss, --epoch best-loss takes it")


# recipe keys that change the text a run is trained and validated on, so that its losses score other tokens
FORMAT_KEYS = ("model.name", "data.template", "data.target", "data.chat_template", "data.messages",
               "data.system_prompt", "data.history_loss", "data.optional_fields", "data.template_if_empty",
               "train.completion_only", "train.max_length")


def _one_epoch(s: dict) -> str:
    return "one epoch" if s["epochs"] == 1 else f"epoch {s['epochs']} only measured"


class _Absent:
    """A recipe key one run does not have (another's data.mix.0.source): shown as —."""

    def __repr__(self) -> str:
        return "—"


def recipe_differences(runs: list[RunDir]) -> list[tuple]:
    """(key, each run's value) for every recipe key whose value is not the same in all runs (the name aside)."""
    recipes = [flat_recipe(r.read_recipe().model_dump(mode="json")) for r in runs]
    every = list(dict.fromkeys(k for rec in recipes for k in rec))  # a key one run has alone: data.mix.0.source
    every = [k for k in every if not any(e.startswith(k + ".") for e in every)]  # not an empty data.mix: its entries
    keys = [k for k in every if k != "name" and len({repr(rec.get(k, _Absent())) for rec in recipes}) > 1]
    return [(k, *(rec.get(k, _Absent()) for rec in recipes)) for k in keys]


def format_keys(differences: list[tuple]) -> list[str]:
    """Of `recipe_differences`, the keys that change the trained text (`FORMAT_KEYS`, or one of their entries)."""
    return [k for k, *_ in differences if any(k == f or k.startswith(f + ".") for f in FORMAT_KEYS)]


def recipe_blocks(differences: list[tuple], names: list[str]) -> list:
    """The report blocks that say how the runs' recipes differ, and what that means for comparing their losses."""
    if not differences:
        return [("p", "The runs' recipes are the same but for their names.")]
    blocks = [("table", ["recipe key", *names], [(k, *(repr(v) for v in vals)) for k, *vals in differences])]
    formats = format_keys(differences)
    if formats:
        blocks.append(("p", f"The runs differ in {', '.join(formats)}: they train and validate on differently "
                            f"formatted or tokenized text, so their losses score different tokens and a loss "
                            f"difference mixes the format's effect with the training's; accuracy on the same "
                            f"questions compares like with like. (Rule: any of {', '.join(FORMAT_KEYS)} differs.)"))
    return blocks


def train_loss_blocks(runs: list[RunDir], names: list[str]) -> list:
    """When some runs were trained elsewhere (`tunelab import`: train loss measured after each epoch) and some by
    tunelab (the mean over the epoch's steps), a paragraph saying their train-loss figures follow different rules."""
    imported = [n for r, n in zip(runs, names) if "imported" in (r.read_summary() or {})]
    if not imported or len(imported) == len(runs):
        return []
    return [("p", f"Train loss follows two rules here: {', '.join(imported)} (imported) measured it after each "
                  "epoch with that epoch's adapter, the others took the mean over the epoch's steps while training, "
                  "so their train-loss figures differ by rule as well as by result; validation loss and accuracy "
                  "are measured the same way for all.")]


def flat_recipe(tree: dict, prefix: str = "") -> dict:
    """A recipe's keys as dotted paths; a list of sections (data.mix) by position, their unset keys left out."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            v = {str(i): {kk: vv for kk, vv in x.items() if vv is not None} for i, x in enumerate(v)}
        out.update(flat_recipe(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def category_blocks(runs: list[RunDir], names: list[str]) -> list:
    """Tuned accuracy per category (the first run's, as its eval stage found them) in every run that scored the
    same questions, each against the first run with a paired test per category; nothing when the first run has
    no categories."""
    evaluation = runs[0].read_eval_summary() or {}
    if not evaluation.get("by_category"):
        return []
    predictions = runs[0].read_predictions()
    tuned = [tuned_flags(predictions if k == 0 else r.read_predictions()) for k, r in enumerate(runs)]
    by_id = [{i: ok for (i, *_), ok in flags.items()} for flags in tuned]
    found = categories_of(predictions, list(by_id[0]), categories_from(runs[0].read_recipe()),
                          evaluation.get("scoring", "numeric"))
    if found is None:
        return []
    groups, source = found
    shared = {k: {key[0] for key in tuned[0] if key in tuned[k]} for k in range(1, len(runs))}  # questions both scored
    same = [k for k in shared if shared[k]]
    tests = {k: paired_by_category({c: kept for c, m in groups.items() if (kept := [i for i in m if i in shared[k]])},
                                   source, by_id[0], by_id[k]) for k in same}
    rows = []
    for category, members in groups.items():
        cells = [pct(sum(by_id[0][i] for i in members) / len(members))]
        for k in same:
            row = next((r for r in tests[k]["rows"] if r["category"] == category), None)
            cells.append(None if row is None else
                         f"{pct(row['tuned_accuracy'])} ({row['difference']['delta_pts']:+.1f} pts, "
                         f"p {row['difference']['mcnemar_p']:.2g}" + (f", on {row['n']}" if row["n"] < len(members)
                                                                      else "") + ")")
        rows.append((category, len(members), *cells))
    flexible = naming(evaluation).flexible
    blocks: list = [("p", f"Tuned accuracy ({flexible}) per category ({source}, as {names[0]}'s eval found them); "
                          f"each later run's change from {names[0]} on the questions both scored, paired (\"on N\": "
                          f"the category's questions both scored, when fewer). Rule: "
                          f"{tests[same[0]]['rule'] if same else 'no other run scored the same questions'}."),
                    ("table", ["category", "n", *(names[k] for k in [0, *same])], rows)]
    skipped = [names[k] for k in range(1, len(runs)) if k not in same]
    if skipped:
        blocks.append(("p", f"Not compared by category: {', '.join(skipped)} (no tuned answer to a question "
                            f"{names[0]} scored)."))
    found = [rules.categories(tests[k], f"Tuned accuracy of {names[k]} against {names[0]}") for k in same]
    return blocks + ([("obs", found)] if found else [])


def pct(x: float | None) -> str | None:
    """A share as a whole percent ("83 %"); None stays None (a table cell shows it as —)."""
    return None if x is None else f"{100 * x:.0f} %"


def baseline_section(run: RunDir, baseline: RunDir, figures: Path) -> list:
    this, base = headline(run), headline(baseline)
    this_name, base_name = run.path.name, baseline.path.name
    picture = overlaid({base_name: baseline.read_epochs(), this_name: run.read_epochs()},
                       figures / "comparison.png")
    differences = recipe_differences([baseline, run])
    return [("table", ["figure", base_name, this_name, "Δ"], comparison_rows([base, this])),
            *recipe_blocks(differences, [base_name, this_name]),
            *train_loss_blocks([baseline, run], [base_name, this_name]),
            ("img", picture, f"Learning curves of {base_name} and {this_name}"),
            ("obs", rules.versus_baseline(this, base, this_name, base_name, *paired(run, baseline),
                                          format_keys(differences))),
            *category_blocks([baseline, run], [base_name, this_name])]


def comparison_rows(summaries: list[dict]) -> list[tuple]:
    """One row per numeric summary figure: each run's value and the last run's delta from the first."""
    keys = []
    for s in summaries:
        for k, v in _flat(s).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    rows = []
    for k in keys:
        values = [_flat(s).get(k) for s in summaries]
        delta = None
        if values[0] is not None and values[-1] is not None:
            delta = values[-1] - values[0]
        rows.append((k, *values, delta))
    return rows


def _flat(summary: dict) -> dict:
    out = {}
    for k, v in summary.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def compare(runs: list[RunDir], out: Path) -> tuple[list[tuple], Path]:
    """Comparison table (every summary figure, delta last − first), paired differences of each run against
    the first where they share validation rows / questions, and overlaid curves, written to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = [headline(r) for r in runs]
    rows = comparison_rows(summaries)
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [str(r.path) for r in runs]
    picture = overlaid({n: r.read_epochs() for n, r in zip(names, runs)}, out / "compare.png")
    blocks = [("table", ["figure", *names, f"Δ ({names[-1]} − {names[0]})"], rows)]
    found = [o for r, n, s in zip(runs[1:], names[1:], summaries[1:])
             for o in rules.versus_baseline(s, summaries[0], n, names[0], *paired(r, runs[0]),
                                            format_keys(recipe_differences([runs[0], r])))]
    blocks += [*recipe_blocks(recipe_differences(runs), names), *train_loss_blocks(runs, names), ("obs", found),
               ("img", picture, "Learning curves overlaid")]
    sections = [("Runs", blocks)]
    if by_category := category_blocks(runs, names):
        sections.append(("Accuracy by category", by_category))
    from tunelab.report.extra import compare_blocks, held_out_category_compare, held_out_compare, held_out_heading
    if held_out := held_out_compare(runs, names):
        sections.append((held_out_heading(HeldOutLossDir(runs[0].path).read_eval_summary()),
                         held_out + held_out_category_compare(runs, names)))
    from tunelab.report import replies
    if generated := replies.compare_blocks(runs, names):
        sections.append(("Held-out replies, generated", generated))
    if answered := replies.answers_compare(runs, names):  # tool scoring's replies due no call, by their words
        sections.append(("Replies that should call no tool", answered))
    if other_sets := compare_blocks(runs, names):
        sections.append(("Other test sets", other_sets))
    from tunelab.report import mix
    if by_source := mix.compare_blocks(runs, names):
        sections.append(("Data mix", by_source))
    from tunelab.report.seeds import seed_blocks
    if by_seed := seed_blocks(runs, names):
        sections.append(("Seeds", by_seed))
    (out / "compare.md").write_text(markdown("Run comparison", sections, out))
    (out / "compare.html").write_text(html_page("Run comparison", sections))
    return rows, picture
