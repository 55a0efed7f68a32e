"""The report's other test sets (`eval.also`): each one's accuracy, base → every epoch → tuned, paired.

A fine-tune is measured on its own test rows; `eval.also` scores more sets the same way (a general benchmark
beside the task's own), so a gain on the task can be set against what it cost elsewhere. Each set's files are in
eval/also/<name>/, as eval/'s.

Run as: tunelab report runs/smoke      (after tunelab eval runs/smoke --set 'eval.also=[{source: ...}]')
"""

from __future__ import annotations

import json
import math

from tunelab.evaluate.losses import LOSS, MIN_CATEGORY_ROWS
from tunelab.evaluate.scoring import naming
from tunelab.evaluate.summary import baselines
from tunelab.report import categories
from tunelab.report import observations as rules
from tunelab.report import replies
from tunelab.report.observations import Observation
from tunelab.report.render import clip
from tunelab.rundir import START, ExtraSetDir, HeldOutLossDir, RepliesDir, RunDir


def line(name: str, summary: dict) -> str | None:
    """One console line: the set's base → tuned accuracy (or target loss, for a set measured by loss) and its paired
    interval; None before both are measured."""
    if loss := summary.get("loss_difference"):
        return f"on {name} ({summary.get('source')}, eval.also, measured by loss): {_loss_change_text(loss)}"
    d = summary.get("flexible_difference")
    if not d:
        return None
    names, base, tuned = naming(summary), summary["base"], summary["tuned"]
    m = summary.get("mc2_difference")
    return (f"on {name} ({summary.get('source')}, eval.also): {names.accuracy} ({names.flexible}) "
            f"{100 * base['flexible_accuracy']:.1f} % → {100 * tuned['flexible_accuracy']:.1f} % "
            f"({d['delta_pts']:+.1f} pts, 95 % CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}, n = {d['n']})"
            + (f"; mc2 {100 * base['mc2']:.1f} % → {100 * tuned['mc2']:.1f} % ({m['delta_pts']:+.1f} pts, 95 % CI "
               f"{m['ci95_pts'][0]:+.1f}..{m['ci95_pts'][1]:+.1f})" if m else ""))


def _loss_change_text(d: dict) -> str:
    lo, hi = d["ci95"]
    return (f"target loss {d['means'][0]:.3f} → {d['means'][1]:.3f} ({d['delta']:+.3f}, 95 % CI {lo:+.3f}..{hi:+.3f}, "
            f"{d['n']} rows)")


def rows_are(s: dict | None) -> str:
    """What a set measured by loss holds, in words: "texts" for plain-text rows (empty prompts: nothing is asked,
    so nothing is replied; `losses.measure` marks them), else "replies"."""
    return "texts" if (s or {}).get("texts") else "replies"


def held_out_heading(s: dict | None) -> str:
    """The report's (and compare's) section on the run's own held-out rows measured by loss."""
    return f"Held-out {rows_are(s)}, by loss"


def perplexity(loss: float) -> str:
    """exp(token-weighted target loss), as Hugging Face's run_clm example reports it."""
    return f"{math.exp(loss):.3g}" if loss < 50 else "> 1e21"


def perplexity_ratio(d: dict) -> str:
    """A paired target-loss change as the ratio of perplexities tuned / base, exp(Δ), with its interval (the loss
    interval's ends, exponentiated)."""
    lo, hi = d["ci95"]
    return f"× {math.exp(d['delta']):.3f}, 95 % CI × {math.exp(lo):.3f}..{math.exp(hi):.3f}"


def perplexity_change(d: dict) -> str:
    """"37.5 → 9.79 (× 0.261, 95 % CI × 0.246..0.279)": a paired target-loss change as perplexities."""
    return f"{perplexity(d['means'][0])} → {perplexity(d['means'][1])} ({perplexity_ratio(d)})"


def held_out_line(summary: dict | None) -> str | None:
    """One console line for a run whose held-out answers no scoring mode suits: their reference replies' (plain
    texts') target loss and perplexity, base → tuned, paired (eval/loss/); None before both are measured."""
    d = (summary or {}).get("loss_difference")
    if not d:
        return None
    steps = epoch_steps(summary)
    return (f"held-out {rows_are(summary)} ({summary['split']} rows, measured by loss): {_loss_change_text(d)}; "
            f"perplexity {perplexity_change(d)}"
            + "".join(f"; vs {what.split(' (')[0]} {b['means'][0]:.3f}: {b['delta']:+.3f} (95 % CI "
                      f"{b['ci95'][0]:+.3f}..{b['ci95'][1]:+.3f})" for what, b in loss_baselines(summary))
            + (f"\ntarget loss per epoch: {steps}" if steps else "")
            + (f"\n{said}" if (said := categories.line(summary.get("by_category"), categories.LOSS)) else ""))


def held_out_section(run: RunDir) -> tuple[list, list[Observation]]:
    """The report's "Held-out replies, by loss" blocks (base, per epoch, tuned target loss of the run's own held-out
    rows, the paired change) and the verdict, for a run whose answers no scoring mode suits; nothing otherwise."""
    view = HeldOutLossDir(run.path)
    s = view.read_eval_summary()
    if not (s or {}).get("loss_difference"):
        return [], []
    row, texts = _loss_row(s["split"], s), rows_are(s) == "texts"
    return [("p", (f"There is no answer to score ({s['reason']}), so how likely each model finds the texts"
                   if texts else f"No scoring mode suits these answers ({s['reason']}), so how likely each model "
                                 "finds the reference replies")
                  + " is measured instead: the target loss ("
                  + ("every token of the text" if texts else "completion-only")
                  + ", token-weighted, as validation loss) of the base model, each epoch's adapter and the final "
                    f"adapter on the first {s['n']} {s['split']} rows, tuned − base paired over rows"
                  + (" (the source has no test split: these are validation rows, so the losses are the validation "
                     "curve's on them, with a paired interval)" if s["split"] == "validation" else "")
                  + f"; as perplexity (exp of the loss): {perplexity_change(s['loss_difference'])}. A fall beyond "
                    f"noise means the fine-tune made such {rows_are(s)} more likely"
                  + ("." if texts else "; it does not say the answers are right.")),
             ("table", ["split", "rows", "base loss", "per epoch", "tuned loss", "Δ loss (95 % CI)"],
              [(row[0], *row[3:])]), *_baseline_blocks(s), *categories.blocks(s.get("by_category"), categories.LOSS),
             *movers(view)], \
        [loss_change(view.name, s), *loss_per_epoch(view.name, s), *baseline_changes(view.name, s),
         *filter(None, [categories.verdict(s.get("by_category"), categories.LOSS)])]


def _baseline_blocks(s: dict) -> list:
    """A sentence on each baseline's target loss (the adapter the run continued, eval.fewshot, eval.chat_baseline),
    when measured."""
    said = [f"{what}: target loss {d['means'][0]:.3f}, tuned − that {d['delta']:+.3f} (95 % CI {d['ci95'][0]:+.3f}.."
            f"{d['ci95'][1]:+.3f})" for what, d in loss_baselines(s)]
    return [("p", "The baselines, on the same replies (a prompting baseline after its own prompt): "
                  + "; ".join(said) + ".")] if said else []


MOVERS = 3  # rows listed each way in a loss-measured set's largest changes


def movers(view: ExtraSetDir) -> list:
    """A set measured by loss: the rows whose reference reply the fine-tune made least and most likely (the largest
    rises and falls of per-row target loss, tuned − base), as a table; nothing before both are measured."""
    by = view.read_losses()
    change = sorted(((m["tuned"][0] - m["base"][0], i) for i, m in by.items() if "base" in m and "tuned" in m),
                    key=lambda t: -t[0])
    picked = [("less likely", t) for t in change[:MOVERS] if t[0] > 0] + \
             [("more likely", t) for t in change[::-1][:MOVERS] if t[0] < 0]
    if not picked:
        return []
    asked = {r["id"]: r.get("question") or "" for r in view.read_jsonl(view.losses)}
    rows = [(how, i, clip(" ".join(asked[i].split()), 90), f"{by[i]['base'][0]:.3f}", f"{by[i]['tuned'][0]:.3f}",
             f"{d:+.3f}") for how, (d, i) in picked]
    one = "text" if rows_are(view.read_eval_summary()) == "texts" else "reply"
    return [("p", f"The rows whose {'' if one == 'text' else 'reference '}{one} moved most in {view.name}: per-row "
                  f"target loss (mean over the {one}'s tokens), tuned − base, the {MOVERS} largest rises and falls. A "
                  "single row's change is noisy; the paired interval over all rows is the measured claim."),
            ("table", [f"{one} made", "row", "text" if one == "text" else "prompt", "base loss", "tuned loss", "Δ"],
             rows)]


def section(run: RunDir) -> tuple[list, list[Observation]]:
    """The report's "Other test sets" blocks (a table: each set's base, each scored epoch and tuned accuracy, the
    paired change) and each set's verdict by the rule the main accuracy is judged by."""
    rows, by_loss, generated, found, moved, by_category = [], [], [], [], [], []
    checked = (run.read_optional(run.data_checks) or {}).get("extra_sets", {})
    trained = (run.read_summary() or {}).get("epochs")
    for view in run.extra_sets():
        s = view.read_eval_summary()
        d = s.get("flexible_difference")
        if not d and not s.get("loss_difference"):
            continue
        counts = checked.get(view.name, {}).get("overlap_counts", {})
        if sum(counts.values()):
            kinds = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            found.append(Observation("watch", f"{sum(counts.values())} of {checked[view.name]['rows']} rows of "
                                     f"{view.name} overlap the training rows ({kinds}): its figures may "
                                     "measure recall, not skill.", "the data checks' exact / 13-gram / near overlap "
                                     "of the set's rows with the training rows (analysis/data_checks.json)"))
        if not d:
            by_loss.append(_loss_row(view.name, s))
            moved += movers(view)
            found += [loss_change(view.name, s), *loss_per_epoch(view.name, s), *baseline_changes(view.name, s)]
            if said := replies.summary(run, view.name):  # and its replies themselves, generated and scored
                generated.append(replies.set_row(view.name, said))
                moved += replies.movers(RepliesDir(run.path, view.name))
                found += replies.set_verdicts(view.name, said, trained)
            continue
        names = naming(s)
        steps = " → ".join(([f"start {100 * s[START]['flexible_accuracy']:.0f} %"] if START in s else [])
                           + [f"{100 * r['flexible_accuracy']:.0f} %" for r in s.get("epochs") or []])
        prompted = "; ".join(f"{b['short']} {100 * s[b['model']]['flexible_accuracy']:.1f} %" for b in baselines(s)
                             if b["prompting"])
        rows.append((view.name, s.get("source"), _written(s), d["n"],
                     f"{names.short} ({names.flexible})", f"{100 * s['base']['flexible_accuracy']:.1f} %",
                     prompted or "–",
                     steps or "–", f"{100 * s['tuned']['flexible_accuracy']:.1f} %",
                     f"{d['delta_pts']:+.1f} ({d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f})",
                     f"{d['mcnemar_p']:.2g}"))
        verdict = rules.accuracy_change(d, names.flexible, s["base"]["flexible_accuracy"],
                                        s["tuned"]["flexible_accuracy"], f"{names.accuracy} on {view.name}")
        found.append(verdict)
        if "mc2_difference" in s:  # labelled options: the probability on the true ones too
            rows.append(_mc2_row(view.name, s))
            found.append(rules.mc2_change(s, f"the mc2 score on {view.name}"))
        if c := s.get("continued"):  # what this run's training did on the set, from the adapter it continued
            found.append(rules.accuracy_change(c["tuned_vs_start"]["flexible"], names.flexible,
                                               s[START]["flexible_accuracy"], s["tuned"]["flexible_accuracy"],
                                               f"{names.accuracy} on {view.name} from the adapter this run continued "
                                               "to its own", "tuned − the adapter continued (adapters/start/)"))
        if s.get("by_category"):  # the set's own category column (eval.also's label_field), or its classes
            by_category += [("p", f"{view.name}, by category:"), *categories.accuracy_blocks(s)]
            found.append(rules.categories(s["by_category"], f"{names.title} on {view.name} ({names.flexible})"))
    blocks = _accuracy_blocks(rows) + by_category + _loss_blocks(by_loss) + replies.set_blocks(generated) + moved
    return (blocks, found) if blocks else ([], [])


def _accuracy_blocks(rows: list[tuple]) -> list:
    if not rows:
        return []
    return [("p", "Test sets scored besides the run's own (eval.also), each the way eval.source is scored: the "
                  "base model and each epoch's adapter on the same questions, each written with the run's "
                  "template or the prompt it sets (the one it was trained with, for a data.mix source), and the "
                  "base model prompted few-shot (eval.fewshot, or the set's fewshot) or through its chat template "
                  "(eval.chat_baseline) when asked; the per-epoch column starts with the adapter the run "
                  "continued (start), when there is one; each set's accuracy is its scoring mode's lenient "
                  "variant, named in the table (multiple-choice sets, eval.also's choices, are scored by the "
                  "options' log-likelihood: nothing is generated; a set whose options are labelled true or false, "
                  "eval.also's choice_labels, has a second row, mc2: the probability the model gives the true "
                  "options, normalised over all, its paired interval over questions). A fall here beyond noise is "
                  "what the fine-tune cost on that set."),
            ("table", ["set", "source", "prompt", "n", "accuracy", "base", "base prompted", "per epoch", "tuned",
                       "Δ pts (95 % CI)", "McNemar p"], rows)]


def _mc2_row(name: str, s: dict) -> tuple:
    """A labelled set's mc2 (eval.choice_labels) as a row of the accuracy table: the probability on the true options."""
    m = s["mc2_difference"]
    steps = " → ".join(([f"start {100 * s[START]['mc2']:.0f} %"] if "mc2" in s.get(START, {}) else [])
                       + [f"{100 * r['mc2']:.0f} %" for r in s.get("epochs") or [] if "mc2" in r])
    prompted = "; ".join(f"{b['short']} {100 * s[b['model']]['mc2']:.1f} %" for b in baselines(s)
                         if b["prompting"] and "mc2" in s[b["model"]])
    return (name, s.get("source"), _written(s), m["n"], "mc2 (probability on the true options)",
            f"{100 * s['base']['mc2']:.1f} %", prompted or "–", steps or "–", f"{100 * s['tuned']['mc2']:.1f} %",
            f"{m['delta_pts']:+.1f} ({m['ci95_pts'][0]:+.1f}..{m['ci95_pts'][1]:+.1f})", "–")


def _written(s: dict) -> str:
    """How a set's prompts are written, for its table row: its template (an lm-eval task's named), or the run's."""
    fmt = s.get("format", {})
    if not fmt.get("template"):
        return "the run's"
    return f"lm-eval's {fmt['task']} ({fmt['template']!r})" if fmt.get("task") else repr(fmt["template"])


def _loss_row(name: str, s: dict) -> tuple:
    d, losses = s["loss_difference"], s["losses"]
    steps = " → ".join(f"{e['loss']:.3f}" for e in s.get("epochs") or [])
    return (name, s.get("source"), _written(s), d["n"], f"{losses['base']['loss']:.3f}",
            steps or "–", f"{losses['tuned']['loss']:.3f}",
            f"{d['delta']:+.3f} ({d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})")


def _loss_blocks(rows: list[tuple]) -> list:
    if not rows:
        return []
    return [("p", "Test sets whose answers no scoring mode suits (prose or chat replies), measured by loss instead: "
                  "the target loss of the base model, each epoch's adapter and the final adapter on the same rows "
                  "(completion-only, token-weighted, as validation loss), tuned − base paired over rows. A rise "
                  "beyond noise means the fine-tune made such replies less likely: what it cost there."),
            ("table", ["set", "source", "prompt", "rows", "base loss", "per epoch", "tuned loss",
                       "Δ loss (95 % CI)"], rows)]


def _tuned_losses(view: ExtraSetDir) -> dict[str, tuple[float, int]]:
    """A set measured by loss: the final adapter's (loss, tokens) per row id."""
    return {i: m["tuned"] for i, m in view.read_losses().items() if "tuned" in m}


def _loss_cells(view: ExtraSetDir, runs: list[RunDir], names: list[str]) -> tuple[list, list[Observation]]:
    """`compare`'s cells for a set the first run measured by loss: each run's tuned target loss, each later run's
    change from the first paired over the rows both measured with the same source and prompt format."""
    from tunelab.stats import paired_loss_difference
    first, asked = _tuned_losses(view), _asked(view)
    if not first:
        return [], []
    cells, found = [f"loss {_mean(first):.3f} (n = {len(first)})"], []
    for run, name in zip(runs[1:], names[1:]):
        other = view.at(run.path)
        d = paired_loss_difference(first, _tuned_losses(other)) if _asked(other) == asked else None
        if d is None:
            cells.append(None)
            continue
        lo, hi = d["ci95"]
        cells.append(f"loss {d['means'][1]:.3f} ({d['delta']:+.3f}, 95 % CI {lo:+.3f}..{hi:+.3f}"
                     + (f", on {d['n']}" if d["n"] < len(first) else "") + ")")
        kind, said = {1: ("watch", "higher (its replies less likely)"), -1: ("good", "lower (its replies more likely)"),
                      0: ("info", "no different beyond noise")}[rules.sign_of(d["ci95"])]
        found.append(Observation(kind, f"Target loss on {view.name}, {name} vs {names[0]}: {d['means'][0]:.3f} → "
                                       f"{d['means'][1]:.3f} ({d['delta']:+.3f}, 95 % CI {lo:+.3f}..{hi:+.3f}, "
                                       f"{d['n']} rows): {said}.",
                                 f"paired bootstrap 95 % CI over rows of {name}'s tuned adapter − {names[0]}'s"))
    return cells, found


def _asked(view: ExtraSetDir) -> tuple:
    """What must match for two runs' losses on a set to be paired by row id: its source and how its rows were
    written (for a run's own held-out rows, the data its recipe read and wrote them with)."""
    summary = view.read_eval_summary() or {}
    if isinstance(view, HeldOutLossDir) and view.config.exists():
        data = view.read_recipe().data
        return (summary.get("source") or data.source, data.config, data.template, data.target, data.messages,
                data.chat_template, data.system_prompt)
    return summary.get("source"), json.dumps(summary.get("format"))


def _mean(rows: dict[str, tuple[float, int]]) -> float:
    return sum(loss * n for loss, n in rows.values()) / max(sum(n for _, n in rows.values()), 1)


def loss_change(name: str, s: dict) -> Observation:
    """The verdict on a set measured by loss: did the fine-tune raise (forgetting) or lower its target loss beyond
    noise?"""
    d = s["loss_difference"]
    lo, hi = d["ci95"]
    base, tuned = d["means"]
    numbers = (f"target loss {base:.3f} → {tuned:.3f} ({d['delta']:+.3f}, {100 * d['delta'] / base:+.1f} %, 95 % CI "
               f"{lo:+.3f}..{hi:+.3f}, {d['n']} rows)")
    what = f"the {rows_are(s)} in {name}"
    kind, verdict = {1: ("watch", f"The fine-tune made {what} less likely beyond noise"),
                     -1: ("good", f"The fine-tune made {what} more likely beyond noise"),
                     0: ("info", f"The fine-tune did not change how likely {what} are beyond noise")}[
        rules.sign_of(d["ci95"])]
    return Observation(kind, f"{verdict}: {numbers}.", "paired bootstrap 95 % CI over the set's rows of the "
                       "token-weighted target loss, tuned adapter − base model; beyond noise = CI excludes 0")


def loss_per_epoch(name: str, s: dict) -> list[Observation]:
    """Each measured epoch against the one before it on a set measured by loss: did the later epoch still make the
    replies more likely? (The first epoch against the base model is `loss_change`'s verdict.)"""
    out = []
    for row in s.get("epochs") or []:
        d = row.get("vs_previous")
        if not d or not d["model"].startswith("epoch-"):
            continue
        kind, verdict = {1: ("watch", "less likely beyond noise"), -1: ("good", "more likely beyond noise"),
                         0: ("info", "no change beyond noise")}[rules.sign_of(d["ci95"])]
        out.append(Observation(kind, f"Epoch {row['epoch']} vs epoch {d['model'].split('-')[1]} on {name}: target "
                               f"loss {d['means'][0]:.3f} → {d['means'][1]:.3f}, {d['delta']:+.3f}, 95 % CI "
                               f"{d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}, {d['n']} rows — {rows_are(s)} {verdict}.",
                               "paired bootstrap 95 % CI over the set's rows of the token-weighted target loss "
                               "between consecutive measured epochs; beyond noise = CI excludes 0"))
    return out


def epoch_steps(s: dict) -> str | None:
    """"base 1.540 → epoch 1 0.882 (-0.658, CI …) → epoch 2 0.860 (…)": a set's target loss per measured epoch with
    each step's paired interval; None when only the final adapter was measured."""
    rows = s.get("epochs") or []
    if len(rows) < 2 or "base" not in s.get("losses", {}):
        return None
    steps = [f"base {s['losses']['base']['loss']:.3f}"]
    for r in rows:
        d = r.get("vs_previous")
        steps.append(f"epoch {r['epoch']} {r['loss']:.3f}"
                     + (f" ({d['delta']:+.3f}, CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})" if d else ""))
    return " → ".join(steps)


def held_out_compare(runs: list[RunDir], names: list[str]) -> list:
    """`compare`'s "Held-out replies, by loss", when the first run's answers were measured by loss (no scoring mode
    suits them): each run's tuned target loss on its held-out rows, each later run's change from the first, paired
    over the rows both measured from the same data written the same way."""
    cells, found = _loss_cells(HeldOutLossDir(runs[0].path), runs, names)
    if not cells:
        return []
    return [("p", f"Target loss of each run's tuned adapter on the held-out rows {names[0]} measured by loss (no "
                  f"scoring mode suits their answers); each later run's change from {names[0]} on the rows both "
                  "measured, paired (\"on N\" when fewer). Rule: paired bootstrap 95 % CI; beyond noise = CI "
                  "excludes 0."),
            ("table", ["rows", *names], [(HeldOutLossDir(runs[0].path).read_eval_summary()["split"], *cells)]),
            ("obs", found)]


def held_out_category_compare(runs: list[RunDir], names: list[str]) -> list:
    """`compare`'s held-out target loss per category, when the first run measured its held-out rows by loss with
    data.label_field (`categories.compare`), over the runs that measured the same rows written the same way."""
    view = HeldOutLossDir(runs[0].path)
    labels = {r["id"]: str(r["label"]) for r in view.read_jsonl(view.losses) if r["model"] == "tuned" and "label" in r}
    asked = _asked(view)
    later = [(name, tuned) for run, name in zip(runs[1:], names[1:])
             if _asked(view.at(run.path)) == asked and (tuned := _tuned_losses(view.at(run.path)))]
    return categories.compare((view.read_eval_summary() or {}).get("by_category"), labels, _tuned_losses(view), later,
                              names[0], categories.LOSS)


def loss_baselines(s: dict) -> list[tuple[str, dict]]:
    """The baselines a set measured by loss has (the adapter the run continued, few-shot, chat, chat few-shot, the
    prompt baseline): (what it was, tuned − it, paired)."""
    out = []
    if d := s.get("start_baseline"):
        out.append(("the adapter this run continued training (lora.continue_from, adapters/start/)", d))
    if d := s.get("fewshot_baseline"):
        out.append((f"the base model prompted {d['shots']}-shot ("
                    + ("the shots as earlier chat turns, lm-eval's --fewshot_as_multiturn" if d.get("turns") else
                       "lm-eval's Question / Answer format") + ", eval.fewshot)", d))
    if d := s.get("chat_baseline"):
        out.append(("the base model asked through its chat template (eval.chat_baseline)", d))
    if d := s.get("chat_fewshot_baseline"):
        out.append((f"the base model asked {d['shots']}-shot through its chat template (the shots as earlier turns, "
                    "eval.chat_baseline with eval.fewshot)", d))
    if d := s.get("prompt_baseline"):
        out.append(("the base model asked with eval.prompt_baseline", d))
    return out


def baseline_changes(name: str, s: dict) -> list[Observation]:
    """A set measured by loss: did the fine-tune make its replies more likely than each baseline (the adapter it
    continued, a few-shot prompt, the chat template) beyond noise?"""
    found = []
    for what, d in loss_baselines(s):
        lo, hi = d["ci95"]
        numbers = (f"target loss {d['means'][0]:.3f} → {d['means'][1]:.3f} tuned ({d['delta']:+.3f}, 95 % CI "
                   f"{lo:+.3f}..{hi:+.3f}, {d['n']} rows)")
        kind, verdict = {-1: ("good", f"The fine-tune made the replies in {name} more likely than {what}, beyond "
                                      "noise"),
                         1: ("watch", f"{what[0].upper()}{what[1:]} made the replies in {name} more likely than the "
                                      "fine-tune did, beyond noise"),
                         0: ("info", f"The fine-tune and {what} made the replies in {name} about as likely (no "
                                     "difference beyond noise)")}[rules.sign_of(d["ci95"])]
        found.append(Observation(kind, f"{verdict}: {numbers}.", "paired bootstrap 95 % CI over the set's rows of "
                                 "the token-weighted target loss, tuned adapter − the baseline; beyond "
                                 "noise = CI excludes 0"))
    return found


def compare_blocks(runs: list[RunDir], names: list[str]) -> list:
    """`compare`'s "Other test sets": each eval.also set the first run scored, the tuned accuracy of every run that
    scored it too, each later run against the first on the questions both answered, paired; nothing when the first
    run has none."""
    from tunelab.report.compare import tuned_flags
    from tunelab.stats import paired_difference
    rows, found = [], []
    for view in runs[0].extra_sets():
        if view.read_eval_summary().get("scoring") == LOSS:
            cells, seen = _loss_cells(view, runs, names)
            said, heard = replies.compare_cells(RepliesDir(runs[0].path, view.name), runs, names)
            rows += ([(view.name, *cells)] if cells else []) + ([(f"{view.name} (reply chrF)", *said)] if said else [])
            found += seen + heard
            continue
        first = tuned_flags(view.read_predictions())
        if not first:  # the base model alone answered it (a bare recipe's eval, --only base)
            continue
        cells = [f"{100 * sum(first.values()) / len(first):.1f} % (n = {len(first)})"]
        for run, name in zip(runs[1:], names[1:]):
            other = tuned_flags(view.at(run.path).read_predictions())
            shared = [k for k in first if k in other]
            if not shared:
                cells.append(None)
                continue
            a, b = [first[k] for k in shared], [other[k] for k in shared]
            d = paired_difference(a, b)
            cells.append(f"{100 * sum(b) / len(b):.1f} % ({d['delta_pts']:+.1f} pts, 95 % CI "
                         f"{d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}"
                         + (f", on {len(shared)}" if len(shared) < len(first) else "") + ")")
            figure = f"{naming(view.read_eval_summary()).accuracy} on {view.name}, {name} vs {names[0]}"
            found.append(rules.accuracy_change(d, "flexible", sum(a) / len(a), sum(b) / len(b), figure,
                                               f"{name}'s tuned adapter − {names[0]}'s"))
        rows.append((view.name, *cells))
    if not rows:
        return []
    return [("p", f"Tuned accuracy on each eval.also test set {names[0]} scored (target loss, for a set measured "
                  "by loss, and its generated replies' mean chrF against the references when scored); each later "
                  f"run's change from {names[0]} on the questions (rows) both answered, paired (\"on N\" when "
                  "fewer). Rule: paired bootstrap 95 % CI; beyond noise = CI excludes 0."),
            ("table", ["set", *names], rows), ("obs", found)]
