"""The report's generated replies, for a run whose answers no scoring mode suits (prose, chat replies): how close the
greedy replies of the base model, its prompting baselines, each epoch's adapter and the tuned adapter come to the
references by chrF and ROUGE-L, the tuned adapter − each paired over rows (eval/replies/, `evaluate.overlap`), with
the verdicts on chrF; and `tunelab compare`'s view of them across runs.

Run as: tunelab report runs/chat      (after tunelab run on data whose answers no scoring mode suits)
"""

from __future__ import annotations

from tunelab.evaluate.overlap import METRICS
from tunelab.evaluate.summary import OTHER_MODEL, PROMPT_BASELINE
from tunelab.report import categories
from tunelab.report import observations as rules
from tunelab.report.observations import EXPORT_BEST_LOSS, Observation
from tunelab.report.render import clip
from tunelab.rundir import BEST_LOSS, START, RepliesDir, RunDir
from tunelab.stats import paired_loss_difference

JUDGED = "chrf"  # the metric the verdict reads; ROUGE-L is given beside it


def summary(run: RunDir, also: str | None = None) -> dict | None:
    """eval/replies/summary.json (eval/also/<also>/replies/'s, for an eval.also set) when its replies were scored by
    overlap (eval.overlap); else None."""
    s = RepliesDir(run.path, also).read_eval_summary()
    return s if (s or {}).get("overlap") else None


def run_line(run: RunDir, also: str | None = None) -> str | None:
    """`line` for the run's replies (an eval.also set's: `also`), each epoch named by its number."""
    return line(summary(run, also), also, (run.read_summary() or {}).get("epochs"))


def line(s: dict | None, also: str | None = None, trained: int | None = None) -> str | None:
    """The console's lines: each metric base → tuned with its paired interval, tuned against each baseline
    and each epoch against the one before (chrF; the tuned adapter as epoch `trained`, when known); None when not
    scored. `also`: the eval.also set they answered."""
    if not s:
        return None
    which = f"replies to {also} (eval.also, " if also else "held-out replies ("
    return (f"{which}{s['overlap'][JUDGED]['n']} {s['split']} rows, generated, against the references): "
            + "; ".join(f"{METRICS[m]} {_change(d)}" for m, d in s["overlap"].items())
            + "".join(f"; vs {what} {d['means'][0]:.3f}: {_interval(d)}" for what, d in baselines(s))
            + (f"\nreply {METRICS[JUDGED]} per epoch: {chain}" if (chain := _chain(s, trained)) else "")
            + (f"\n{said}" if (said := categories.line(s.get("by_category"), categories.CHRF)) else ""))


def baselines(s: dict) -> list[tuple[str, dict]]:
    """Each baseline whose replies were generated — the adapter the run continued, the prompting baselines, the
    other models (eval.models) — in words, with tuned − it by chrF (paired)."""
    return [(_called(name), v[JUDGED]) for name, v in (s.get("versus") or {}).items()
            if name.startswith(("base-", OTHER_MODEL)) or name == START]


def _chain(s: dict, trained: int | None = None) -> str | None:
    """"base 0.051 → epoch 1 0.281 (+0.230, CI +0.210..+0.251) → …": chrF per epoch, each against the model
    before."""
    steps = s.get("epochs") or []
    if not steps:
        return None
    first = "start adapter" if steps[0].get("previous") == START else "base"
    return " → ".join([f"{first} {steps[0][JUDGED]['means'][0]:.3f}"] + [
        f"{_called(step['model'], trained)} {d['means'][1]:.3f} ({d['delta']:+.3f}, CI {d['ci95'][0]:+.3f}.."
        f"{d['ci95'][1]:+.3f})" for step in steps for d in [step[JUDGED]]])


def _change(d: dict) -> str:
    lo, hi = d["ci95"]
    return f"{d['means'][0]:.3f} → {d['means'][1]:.3f} ({d['delta']:+.3f}, 95 % CI {lo:+.3f}..{hi:+.3f})"


def key_rows(s: dict | None, replies: str = "Reply") -> list[tuple[str, str, str]]:
    """The Key metrics table's rows: each metric, base → tuned, the paired change. `replies`: what the replies
    scored are, in words."""
    if not s:
        return []
    return [(f"{replies} {METRICS[m]} vs reference", f"{d['means'][0]:.3f} → {d['means'][1]:.3f}",
             f"{d['delta']:+.3f}, 95 % CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}, {d['n']} {s['split']} rows, "
             "base model → tuned adapter, paired") for m, d in s["overlap"].items()] + \
        [(f"vs {what} ({replies.lower()} {METRICS[JUDGED]})", f"{d['means'][0]:.3f} → {d['means'][1]:.3f}",
          f"{d['delta']:+.3f}, 95 % CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}, {d['n']} rows, paired")
         for what, d in baselines(s)]


UNCALLED = "replies that should call no tool"  # tool scoring's answers after a tool's result, questions no tool serves


def answers_line(evaluation: dict) -> str | None:
    """The console's line on tool scoring's replies that should call no tool, by their words (the eval summary's
    `answers`): each metric base → tuned, paired; None when there are none."""
    s = evaluation.get("answers")
    return s and (f"{UNCALLED} ({s['overlap'][JUDGED]['n']} {s['split']} rows), their words against the references: "
                  + "; ".join(f"{METRICS[m]} {_change(d)}" for m, d in s["overlap"].items()))


def answers_rows(evaluation: dict | None) -> list[tuple[str, str, str]]:
    """Tool scoring's replies that should call no tool, by their words: the Key metrics rows (`key_rows`)."""
    return key_rows((evaluation or {}).get("answers"), "Reply that should call no tool:")


def answers_verdicts(evaluation: dict | None, trained: int | None) -> list[Observation]:
    """Tool scoring's replies that should call no tool, by their words: the verdicts on chrF, tuned against base,
    each baseline and each epoch against the one before (the tuned adapter as epoch `trained`)."""
    s = (evaluation or {}).get("answers")
    where = f" {UNCALLED.removeprefix('replies ')}"
    return [change(s, where), *baseline_changes(s, where), *epoch_changes(s, trained, where)] if s else []


def section(run: RunDir) -> tuple[list, list[Observation]]:
    """The report's "Held-out replies, generated" blocks (each model's mean chrF and ROUGE-L, tuned − each paired,
    each epoch against the one before, the rows that moved most) and the verdicts; nothing when not scored."""
    s = summary(run)
    if not s:
        return [], []
    n, budget, passes = s["overlap"][JUDGED]["n"], s["tuned"]["max_new_tokens"], _passes(s)
    trained, step = ((run.read_summary() or {}).get(key) for key in ("epochs", "best_val_step"))
    cut = [f"{s[name]['at_budget']} of {name}'s" for name in passes if s[name].get("at_budget")]
    versus = s.get("versus") or {"base": s["overlap"]}
    rows = [(name, *(f"{s[name][m]:.3f}" for m in METRICS),
             *(_interval(versus[name][m]) if name in versus else "—" for m in METRICS)) for name in passes]
    chain = _chain(s, trained)
    return [("p", f"Each model answered the first {n} {s['split']} rows greedily, until the end-of-sequence token or "
                  f"{budget} new tokens, and each reply is scored against its reference (0..1): chrF (character "
                  "1..6-grams, recall weighted twice precision, as sacrebleu) and ROUGE-L (F1 of the longest common "
                  "subsequence of their words); the tuned adapter − each model, paired over rows. Neither says a "
                  "reply is right — a right answer worded otherwise scores low — they say whether the fine-tune "
                  "moved the replies towards what the references say and how they say it."
                  + (f" {', '.join(cut)} replies reached the {budget}-token budget and are scored as cut."
                     if cut else "")),
             ("table", ["model", *METRICS.values(), *(f"tuned − it, {label} (95 % CI)" for label in METRICS.values())],
              rows),
             *([("p", f"Per epoch, each against the model before it, {METRICS[JUDGED]}: {chain}.")] if chain else []),
             *categories.blocks(s.get("by_category"), categories.CHRF), *movers(RepliesDir(run.path))], \
        [change(s), *baseline_changes(s), *epoch_changes(s, trained),
         *filter(None, [best_loss_change(s, step), categories.verdict(s.get("by_category"), categories.CHRF)])]


def set_blocks(rows: list[tuple]) -> list:
    """The "Other test sets" table of the eval.also sets whose replies were generated (`set_row`'s rows)."""
    if not rows:
        return []
    return [("p", "The replies themselves, for the sets measured by loss (eval.overlap): each model answered the same "
                  "rows greedily and each reply is scored against its reference (0..1) by chrF and ROUGE-L, as the "
                  "run's own held-out replies would be; tuned − base paired over rows. A fall beyond noise is what "
                  "the fine-tune cost in the replies themselves."),
            ("table", ["set", "rows", "base chrF", "base prompted", "per epoch", "tuned chrF", "Δ chrF (95 % CI)",
                       "ROUGE-L base → tuned", "Δ ROUGE-L (95 % CI)"], rows)]


def set_row(name: str, s: dict) -> tuple:
    """An eval.also set's row in `set_blocks`: its rows, base chrF, each prompting baseline's, each epoch's (after
    the adapter the run continued, when there is one), tuned, tuned − base (paired) and ROUGE-L likewise."""
    d, rouge = s["overlap"][JUDGED], s["overlap"]["rouge_l"]
    prompted = "; ".join(f"{model} {v[JUDGED]['means'][0]:.3f}" for model, v in (s.get("versus") or {}).items()
                         if model.startswith("base-"))
    chain = s.get("epochs") or []
    started = [f"start {chain[0][JUDGED]['means'][0]:.3f}"] if chain and chain[0]["previous"] == START else []
    steps = " → ".join(started + [f"{step[JUDGED]['means'][1]:.3f}" for step in chain])
    return (name, d["n"], f"{d['means'][0]:.3f}", prompted or "–", steps or "–", f"{d['means'][1]:.3f}",
            _interval(d), f"{rouge['means'][0]:.3f} → {rouge['means'][1]:.3f}", _interval(rouge))


def set_verdicts(name: str, s: dict, trained: int | None) -> list[Observation]:
    """An eval.also set's verdicts on its generated replies: tuned against base, each baseline, each epoch
    against the one before (chrF)."""
    where = f" to {name}"
    return [change(s, where), *baseline_changes(s, where), *epoch_changes(s, trained, where)]


def change(s: dict, where: str = "") -> Observation:
    """The verdict: did the fine-tune move the generated replies towards the references beyond noise, by chrF?
    `where`: " to <set>" for an eval.also set's."""
    d = s["overlap"][JUDGED]
    kind, verdict = {1: ("good", "closer to the references than the base model's beyond noise"),
                     -1: ("watch", "further from the references than the base model's beyond noise"),
                     0: ("info", "no closer to the references than the base model's beyond noise")}[
        rules.sign_of(d["ci95"])]
    others = "; ".join(f"{METRICS[m]} {_change(x)}" for m, x in s["overlap"].items() if m != JUDGED)
    return Observation(kind, f"The tuned adapter's generated replies{where} are {verdict}: {METRICS[JUDGED]} "
                             f"{_change(d)}"
                             + (f"; {others}" if others else "") + f"; {d['n']} {s['split']} rows.",
                       f"paired bootstrap 95 % CI over rows of the mean sentence {METRICS[JUDGED]} of the greedy "
                       "replies against the references, tuned adapter − base model; beyond noise = CI excludes 0; "
                       "the other metric is given beside it, not judged")


def best_loss_change(s: dict, step: int | None) -> Observation | None:
    """adapters/best-loss (the lowest validation pass, between epoch ends) against the final adapter, by the chrF of
    their replies to the same rows: did picking by validation loss pick the replies closer to the references? One to
    watch when it did (the final adapter is then the worse one to ship)."""
    d = ((s.get("versus") or {}).get(BEST_LOSS) or {}).get(JUDGED)
    if not d:
        return None
    sign = -rules.sign_of(d["ci95"])  # versus is tuned − it: its sign turned, best-loss against the final adapter
    verdict = {1: "closer to the references beyond noise", -1: "further from the references beyond noise",
               0: "no different beyond noise"}[sign]
    return Observation("watch" if sign == 1 else "info",
                       f"The replies of the adapter of the lowest validation loss ("
                       + (f"step {step}, " if step else "") + f"adapters/best-loss) are {verdict} than the final "
                       f"adapter's: {METRICS[JUDGED]} {d['means'][0]:.3f} against {d['means'][1]:.3f} (final − it "
                       f"{d['delta']:+.3f}, 95 % CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}), {d['n']} rows"
                       + (f"; {EXPORT_BEST_LOSS} exports it." if sign == 1 else "."),
                       f"paired bootstrap 95 % CI over rows of the mean sentence {METRICS[JUDGED]}, final adapter − "
                       "best-loss adapter; beyond noise = CI excludes 0; flagged when the final adapter is the worse")


def _passes(s: dict) -> list[str]:
    """The models whose replies a summary scored, in eval's order (base, baselines, epochs, tuned)."""
    return [name for name, v in s.items() if isinstance(v, dict) and "generated_tokens" in v]


def _interval(d: dict) -> str:
    return f"{d['delta']:+.3f} ({d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})"


def _called(name: str, trained: int | None = None) -> str:
    """A pass in words: "the base model prompted 5-shot", "epoch 2" (the tuned adapter: its epoch, when known)."""
    if name == "tuned":
        return f"epoch {trained}" if trained else "the tuned adapter"
    if name.startswith(("epoch-", "step-")):  # step-N: train.keep_step_adapters' adapter inside an epoch
        return f"{name.split('-')[0]} {name.split('-')[1]}"
    if name in ("base", "base-chat"):
        return "the base model" + (" asked through its chat template" if name == "base-chat" else "")
    if name == BEST_LOSS:
        return "the adapter of the lowest validation loss (adapters/best-loss)"
    if name == START:
        return "the adapter this run continued training (adapters/start)"
    if name == PROMPT_BASELINE:
        return "the base model asked with eval.prompt_baseline"
    if name.startswith(OTHER_MODEL):
        return f"{name.removeprefix(OTHER_MODEL)} (eval.models)"
    shots = name.rsplit("-", 1)[1].removesuffix("shot")
    return f"the base model asked {shots}-shot through its chat template" if name.startswith("base-chat-") else \
        f"the base model prompted {shots}-shot"


def baseline_changes(s: dict, where: str = "") -> list[Observation]:
    """Did the fine-tune's replies come closer to the references than each baseline's (the adapter the run continued,
    the prompting baselines), by chrF? Not beating the strongest baseline (highest chrF) is one to watch: prompting
    (or the adapter it started from) would do as well. `where` as for `change`."""
    found, compared = [], baselines(s)
    strongest = max((d["means"][0] for _, d in compared), default=None)
    for what, d in compared:
        kind, verdict = {
            1: ("good", f"The tuned adapter's generated replies{where} are closer to the references than those of "
                        f"{what}, beyond noise"),
            -1: ("watch", f"The replies{where} of {what} are closer to the references than the tuned adapter's, "
                          "beyond noise"),
            0: ("watch" if d["means"][0] == strongest else "info",
                f"The tuned adapter's generated replies{where} and those of {what} are about as close to the "
                "references (no difference beyond noise)")}[rules.sign_of(d["ci95"])]
        found.append(Observation(kind, f"{verdict}: {METRICS[JUDGED]} {d['means'][0]:.3f} → {d['means'][1]:.3f} "
                                       f"tuned ({d['delta']:+.3f}, 95 % CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}); "
                                       f"{d['n']} rows.",
                                 f"paired bootstrap 95 % CI over rows of the mean sentence {METRICS[JUDGED]}, tuned "
                                 "adapter − the baseline; beyond noise = CI excludes 0; no difference from "
                                 "the strongest baseline (highest mean) is one to watch"))
    return found


def epoch_changes(s: dict, trained: int | None, where: str = "") -> list[Observation]:
    """Each epoch's replies against the epoch before's, by chrF: did the later epoch still move them towards the
    references? (The first epoch against the base model is the tuned-vs-base verdict's business.) `where` as for
    `change`."""
    found = []
    for step in s.get("epochs") or []:
        if step["previous"] == "base":
            continue
        d = step[JUDGED]
        kind, verdict = {1: ("good", "closer to the references beyond noise"),
                         -1: ("watch", "further from the references beyond noise"),
                         0: ("info", "no change beyond noise")}[rules.sign_of(d["ci95"])]
        found.append(Observation(kind, f"{_called(step['model'], trained).capitalize()} vs "
                                       f"{_called(step['previous'])}, generated replies{where}: {METRICS[JUDGED]} "
                                       f"{_change(d)}, {d['n']} rows — {verdict}.",
                                 f"paired bootstrap 95 % CI over rows of the mean sentence {METRICS[JUDGED]} between "
                                 "consecutive epochs' adapters; beyond noise = CI excludes 0"))
    return found


def compare_blocks(runs: list[RunDir], names: list[str]) -> list:
    """`compare`'s "Held-out replies, generated", when the first run's replies were scored by overlap: each run's
    tuned adapter's mean chrF and ROUGE-L, each later run's change from the first paired over the rows both answered
    (same id and reference), with a verdict on chrF; and per category with data.label_field."""
    first = _tuned_replies(RepliesDir(runs[0].path))
    if not first:
        return []
    table, found = [], []
    for metric, label in METRICS.items():
        cells, seen = compare_cells(RepliesDir(runs[0].path), runs, names, metric)
        table.append((label, *cells))
        found += seen
    return [("p", f"Each run's tuned adapter's replies to the held-out rows {names[0]} generated them for, scored "
                  f"against the references (0..1); each later run's change from {names[0]} on the rows both "
                  f"answered, paired (\"on N\" when fewer). Rule: {COMPARE_RULE}."),
            ("table", ["metric", *names], table), ("obs", found), *_category_compare(runs, names)]


def _category_compare(runs: list[RunDir], names: list[str]) -> list:
    """`compare`'s reply chrF per category, when the first run's replies were scored with data.label_field
    (`categories.compare`): each later run's replies paired with the first's on the rows both answered (same id and
    reference)."""
    first = _tuned_replies(RepliesDir(runs[0].path))
    labels = {i: str(r["label"]) for (i, _), r in first.items() if "label" in r}
    later = [(name, {i: (r[JUDGED], 1) for (i, ref), r in _tuned_replies(RepliesDir(run.path)).items()
                     if (i, ref) in first}) for run, name in zip(runs[1:], names[1:])]
    return categories.compare((summary(runs[0]) or {}).get("by_category"), labels,
                              {i: (r[JUDGED], 1) for (i, _), r in first.items()},
                              [(name, tuned) for name, tuned in later if tuned], names[0], categories.CHRF)


def compare_cells(view: RepliesDir, runs: list[RunDir], names: list[str], metric: str = JUDGED
                  ) -> tuple[list, list[Observation]]:
    """`compare`'s cells for one metric of the replies in `view` (a run's own, or an eval.also set's): the first
    run's tuned mean, each later run's and its change from the first paired over the rows both answered (same id and
    reference), with a verdict on chrF; ([], []) when the first run's were not scored."""
    return _cells(lambda run: _tuned_replies(view.at(run.path)), runs, names, metric,
                  "generated replies" + (f" to {view.also}" if view.also else ""))


def _cells(replies_of, runs: list[RunDir], names: list[str], metric: str, what: str) -> tuple[list, list[Observation]]:
    """`compare_cells` for the tuned replies `replies_of(run)` gives by (row id, what else makes it the same row):
    `what` they are, in words."""
    first = replies_of(runs[0])
    if not first:
        return [], []
    cells, found, label = [f"{sum(r[metric] for r in first.values()) / len(first):.3f}"], [], METRICS[metric]
    for run, name in zip(runs[1:], names[1:]):
        tuned = replies_of(run)
        shared = {key: (r[metric], 1) for key, r in tuned.items() if key in first}
        d = paired_loss_difference({key: (first[key][metric], 1) for key in shared}, shared) if shared else None
        cells.append(None if d is None else f"{d['means'][1]:.3f} ({d['delta']:+.3f}, CI {d['ci95'][0]:+.3f}.."
                     f"{d['ci95'][1]:+.3f}" + (f", on {d['n']}" if d["n"] < len(first) else "") + ")")
        if d and metric == JUDGED and (sign := rules.sign_of(d["ci95"])):
            moved = "closer to" if sign > 0 else "further from"
            found.append(Observation("good" if sign > 0 else "watch",
                                     f"{name}'s {what} are {moved} the references than "
                                     f"{names[0]}'s beyond noise: {label} {_change(d)}, {d['n']} rows.", COMPARE_RULE))
    return cells, found


def answers_compare(runs: list[RunDir], names: list[str]) -> list:
    """`compare`'s view of tool scoring's replies that should call no tool, by their words, when the first run's
    were scored: each metric's tuned mean per run, each later run's change from the first paired over the rows both
    answered (same id), with a verdict on chrF."""
    table, found = [], []
    for metric, label in METRICS.items():
        cells, seen = _cells(_tuned_answers, runs, names, metric, UNCALLED)
        table += [(label, *cells)] if cells else []
        found += seen
    return [("p", f"Each run's tuned adapter's {UNCALLED} (the answers written from a tool's result, the questions "
                  "no tool serves), their words scored against the references (0..1); each later run's change from "
                  f"{names[0]} on the rows both answered, paired (\"on N\" when fewer). Rule: {COMPARE_RULE}."),
            ("table", ["metric", *names], table), ("obs", found)] if table else []


def _tuned_answers(run: RunDir) -> dict[tuple[str, str], dict]:
    """A run's tuned adapter's replies that should call no tool, scored by their words, by (row id, question: their
    references all read "no tool call"); {} when its eval scored none."""
    if not (run.read_eval_summary() or {}).get("answers"):
        return {}
    return {(r["id"], r["question"]): r for r in run.read_predictions() if r["model"] == "tuned" and "chrf" in r}


COMPARE_RULE = (f"paired bootstrap 95 % CI over the rows both runs answered of the mean {METRICS[JUDGED]}, later run − "
                "first; beyond noise = CI excludes 0")


def _tuned_replies(view: RepliesDir) -> dict[tuple[str, str], dict]:
    """A run's tuned adapter's scored replies (to its own rows, or an eval.also set's) by (row id, reference); {}
    when they were not scored."""
    if not (view.read_eval_summary() or {}).get("overlap"):
        return {}
    return {(r["id"], r["reference"]): r for r in view.read_predictions() if r["model"] == "tuned"}


MOVERS = 3  # rows shown at each end of the change


def movers(view: RepliesDir) -> list:
    """The rows whose tuned reply moved most from the base model's, by chrF against the reference (the largest falls,
    then the largest rises), each with its question, reference and both replies; nothing when none moved."""
    said = {(r["id"], r["model"]): r for r in view.read_predictions()}
    change = sorted((said[i, "tuned"][JUDGED] - r[JUDGED], i) for (i, model), r in said.items()
                    if model == "base" and (i, "tuned") in said)
    picked = [t for t in change[:MOVERS] if t[0] < 0] + [t for t in change[::-1][:MOVERS] if t[0] > 0]
    if not picked:
        return []
    where = f" in {view.also}" if view.also else ""
    blocks: list = [("p", f"The rows whose reply moved most{where}: {METRICS[JUDGED]} of the tuned adapter's reply − "
                          f"the base model's, the {MOVERS} largest falls, then rises. A single row's change is noisy; "
                          "the paired interval over all rows is the measured claim.")]
    for d, i in picked:
        base, tuned = said[i, "base"], said[i, "tuned"]
        blocks.append(("details", f"{i}: {METRICS[JUDGED]} {base[JUDGED]:.3f} → {tuned[JUDGED]:.3f} ({d:+.3f}), "
                                  f"{clip(' '.join(base['question'].split()), 80)}",
                       [("question", base["question"]), ("reference", base["reference"] or ""),
                        ("base", base["completion"]), ("tuned", tuned["completion"])]))
    return blocks
