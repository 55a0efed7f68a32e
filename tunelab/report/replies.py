"""The report's generated replies, for a run whose answers no scoring mode suits (prose, chat replies): how close the
base model's and the tuned adapter's greedy replies come to the references by chrF and ROUGE-L, tuned − base paired
over rows (eval/replies/, `evaluate.overlap`), with the verdict on chrF.

Run as: tunelab report runs/chat      (after tunelab run on data whose answers no scoring mode suits)
"""

from __future__ import annotations

from tunelab.evaluate.overlap import METRICS
from tunelab.report import observations as rules
from tunelab.report.observations import Observation
from tunelab.report.render import clip
from tunelab.rundir import RepliesDir, RunDir
from tunelab.stats import paired_loss_difference

JUDGED = "chrf"  # the metric the verdict reads; ROUGE-L is given beside it


def summary(run: RunDir) -> dict | None:
    """eval/replies/summary.json when its replies were scored by overlap (eval.overlap); else None."""
    s = RepliesDir(run.path).read_eval_summary()
    return s if (s or {}).get("overlap") else None


def line(s: dict | None) -> str | None:
    """One console line: each metric base → tuned with its paired interval; None when not scored."""
    if not s:
        return None
    return (f"held-out replies ({s['overlap'][JUDGED]['n']} {s['split']} rows, generated, against the references): "
            + "; ".join(f"{METRICS[m]} {_change(d)}" for m, d in s["overlap"].items()))


def _change(d: dict) -> str:
    lo, hi = d["ci95"]
    return f"{d['means'][0]:.3f} → {d['means'][1]:.3f} ({d['delta']:+.3f}, 95 % CI {lo:+.3f}..{hi:+.3f})"


def key_rows(s: dict | None) -> list[tuple[str, str, str]]:
    """The Key metrics table's rows: each metric, base → tuned, the paired change."""
    if not s:
        return []
    return [(f"Reply {METRICS[m]} vs reference", f"{d['means'][0]:.3f} → {d['means'][1]:.3f}",
             f"{d['delta']:+.3f}, 95 % CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}, {d['n']} {s['split']} rows, "
             "base model → tuned adapter, paired") for m, d in s["overlap"].items()]


def section(run: RunDir) -> tuple[list, list[Observation]]:
    """The report's "Held-out replies, generated" blocks and the verdict; nothing when the replies were not scored."""
    s = summary(run)
    if not s:
        return [], []
    n, budget = s["overlap"][JUDGED]["n"], s["tuned"]["max_new_tokens"]
    cut = [f"{s[m]['at_budget']} of the {who}'s" for m, who in (("base", "base model"), ("tuned", "tuned adapter"))
           if s[m].get("at_budget")]
    return [("p", f"The base model and the tuned adapter answered the first {n} {s['split']} rows greedily, until the "
                  f"end-of-sequence token or {budget} new tokens, and each reply is scored against its reference "
                  "(0..1): chrF (character 1..6-grams, recall weighted twice precision, as sacrebleu) and ROUGE-L "
                  "(F1 of the longest common subsequence of their words), tuned − base paired over rows. Neither "
                  "says a reply is right — a right answer worded otherwise scores low — they say whether the "
                  "fine-tune moved the replies towards what the references say and how they say it."
                  + (f" {' and '.join(cut)} replies reached the {budget}-token budget and are scored as cut."
                     if cut else "")),
             ("table", ["metric", "base", "tuned", "tuned − base (95 % CI)", "rows"],
              [(METRICS[m], f"{d['means'][0]:.3f}", f"{d['means'][1]:.3f}",
                f"{d['delta']:+.3f} ({d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})", d["n"])
               for m, d in s["overlap"].items()]), *movers(run)], [change(s)]


def change(s: dict) -> Observation:
    """The verdict: did the fine-tune move the generated replies towards the references beyond noise, by chrF?"""
    d = s["overlap"][JUDGED]
    kind, verdict = {1: ("good", "closer to the references than the base model's beyond noise"),
                     -1: ("watch", "further from the references than the base model's beyond noise"),
                     0: ("info", "no closer to the references than the base model's beyond noise")}[
        rules.sign_of(d["ci95"])]
    others = "; ".join(f"{METRICS[m]} {_change(x)}" for m, x in s["overlap"].items() if m != JUDGED)
    return Observation(kind, f"The tuned adapter's generated replies are {verdict}: {METRICS[JUDGED]} {_change(d)}"
                             + (f"; {others}" if others else "") + f"; {d['n']} {s['split']} rows.",
                       f"paired bootstrap 95 % CI over rows of the mean sentence {METRICS[JUDGED]} of the greedy "
                       "replies against the references, tuned adapter − base model; beyond noise = CI excludes 0; "
                       "the other metric is given beside it, not judged")


def compare_blocks(runs: list[RunDir], names: list[str]) -> list:
    """`compare`'s "Held-out replies, generated", when the first run's replies were scored by overlap: each run's
    tuned adapter's mean chrF and ROUGE-L, each later run's change from the first paired over the rows both answered
    (same id and reference), with a verdict on chrF."""
    first = _tuned_replies(runs[0])
    if not first:
        return []
    later = [(name, _tuned_replies(run)) for run, name in zip(runs[1:], names[1:])]
    table, found = [], []
    for metric, label in METRICS.items():
        cells = [f"{sum(r[metric] for r in first.values()) / len(first):.3f}"]
        for name, tuned in later:
            shared = {key: (r[metric], 1) for key, r in tuned.items() if key in first}
            d = paired_loss_difference({key: (first[key][metric], 1) for key in shared}, shared) if shared else None
            cells.append(None if d is None else f"{d['means'][1]:.3f} ({d['delta']:+.3f}, CI {d['ci95'][0]:+.3f}.."
                         f"{d['ci95'][1]:+.3f}" + (f", on {d['n']}" if d["n"] < len(first) else "") + ")")
            if d and metric == JUDGED and (sign := rules.sign_of(d["ci95"])):
                found.append(Observation("good" if sign > 0 else "watch",
                                         f"{name}'s generated replies are {'closer to' if sign > 0 else 'further from'} "
                                         f"the references than {names[0]}'s beyond noise: {label} {_change(d)}, "
                                         f"{d['n']} rows.", COMPARE_RULE))
        table.append((label, *cells))
    return [("p", f"Each run's tuned adapter's replies to the held-out rows {names[0]} generated them for, scored "
                  f"against the references (0..1); each later run's change from {names[0]} on the rows both "
                  f"answered, paired (\"on N\" when fewer). Rule: {COMPARE_RULE}."),
            ("table", ["metric", *names], table), ("obs", found)]


COMPARE_RULE = (f"paired bootstrap 95 % CI over the rows both runs answered of the mean {METRICS[JUDGED]}, later run − "
                "first; beyond noise = CI excludes 0")


def _tuned_replies(run: RunDir) -> dict[tuple[str, str], dict]:
    """A run's tuned adapter's scored replies by (row id, reference); {} when its replies were not scored."""
    if not summary(run):
        return {}
    return {(r["id"], r["reference"]): r for r in RepliesDir(run.path).read_predictions() if r["model"] == "tuned"}


MOVERS = 3  # rows shown at each end of the change


def movers(run: RunDir) -> list:
    """The rows whose tuned reply moved most from the base model's, by chrF against the reference (the largest falls,
    then the largest rises), each with its question, reference and both replies; nothing when none moved."""
    said = {(r["id"], r["model"]): r for r in RepliesDir(run.path).read_predictions()}
    change = sorted((said[i, "tuned"][JUDGED] - r[JUDGED], i) for (i, model), r in said.items()
                    if model == "base" and (i, "tuned") in said)
    picked = [t for t in change[:MOVERS] if t[0] < 0] + [t for t in change[::-1][:MOVERS] if t[0] > 0]
    if not picked:
        return []
    blocks: list = [("p", f"The rows whose reply moved most: {METRICS[JUDGED]} of the tuned adapter's reply − the "
                          f"base model's, the {MOVERS} largest falls, then rises. A single row's change is noisy; the "
                          "paired interval over all rows is the measured claim.")]
    for d, i in picked:
        base, tuned = said[i, "base"], said[i, "tuned"]
        blocks.append(("details", f"{i}: {METRICS[JUDGED]} {base[JUDGED]:.3f} → {tuned[JUDGED]:.3f} ({d:+.3f}), "
                                  f"{clip(' '.join(base['question'].split()), 80)}",
                       [("question", base["question"]), ("reference", base["reference"] or ""),
                        ("base", base["completion"]), ("tuned", tuned["completion"])]))
    return blocks
