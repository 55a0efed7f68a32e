"""The report's other test sets (`eval.also`): each one's accuracy, base → every epoch → tuned, paired.

A fine-tune is measured on its own test rows; `eval.also` scores more sets the same way (a general benchmark
beside the task's own), so a gain on the task can be set against what it cost elsewhere. Each set's files are in
eval/also/<name>/, as eval/'s.

Run as: tunelab report runs/smoke      (after tunelab eval runs/smoke --set 'eval.also=[{source: ...}]')
"""

from __future__ import annotations

from tunelab.evaluate.scoring import naming
from tunelab.report import observations as rules
from tunelab.report.observations import Observation
from tunelab.rundir import RunDir


def line(name: str, summary: dict) -> str | None:
    """One console line: the set's base → tuned accuracy and its paired interval; None before both are scored."""
    d = summary.get("flexible_difference")
    if not d:
        return None
    names = naming(summary)
    return (f"on {name} ({summary.get('source')}, eval.also): {names.accuracy} ({names.flexible}) "
            f"{100 * summary['base']['flexible_accuracy']:.1f} % → {100 * summary['tuned']['flexible_accuracy']:.1f} % "
            f"({d['delta_pts']:+.1f} pts, 95 % CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}, n = {d['n']})")


def section(run: RunDir) -> tuple[list, list[Observation]]:
    """The report's "Other test sets" blocks (a table: each set's base, each scored epoch and tuned accuracy, the
    paired change) and each set's verdict by the rule the main accuracy is judged by."""
    rows, found = [], []
    for view in run.extra_sets():
        s = view.read_eval_summary()
        d = s.get("flexible_difference")
        if not d:
            continue
        names = naming(s)
        steps = " → ".join(f"{100 * r['flexible_accuracy']:.0f} %" for r in s.get("epochs") or [])
        rows.append((view.name, s.get("source"), d["n"], f"{100 * s['base']['flexible_accuracy']:.1f} %",
                     steps or "–", f"{100 * s['tuned']['flexible_accuracy']:.1f} %",
                     f"{d['delta_pts']:+.1f} ({d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f})",
                     f"{d['mcnemar_p']:.2g}"))
        verdict = rules.accuracy_change(d, names.flexible, s["base"]["flexible_accuracy"],
                                        s["tuned"]["flexible_accuracy"], f"{names.accuracy} on {view.name}")
        found.append(verdict)
    if not rows:
        return [], []
    blocks = [("p", "Test sets scored besides the run's own (eval.also), each the way eval.source is scored: the "
                    "base model and each epoch's adapter on the same questions, rendered with the run's template; "
                    "accuracy is flexible-extract (or the exact-match line, for short answers). A fall here beyond "
                    "noise is what the fine-tune cost on that set."),
              ("table", ["set", "source", "n", "base", "per epoch", "tuned", "Δ pts (95 % CI)", "McNemar p"], rows)]
    return blocks, found
