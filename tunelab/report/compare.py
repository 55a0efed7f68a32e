"""Comparing runs: `tunelab compare` (a table of every headline figure, overlaid curves) and the report's
baseline section. Each run's figures come from its stages' own files (train summary, eval summary).

Run as: tunelab compare runs/gsm8k-2ep runs/gsm8k-3ep runs/gsm8k-4ep
"""

from __future__ import annotations

from pathlib import Path

from tunelab.report import observations as rules
from tunelab.report.curves import overlaid
from tunelab.report.render import html_page, markdown
from tunelab.rundir import RunDir


def headline(run: RunDir) -> dict:
    """The train stage's summary plus, under `eval`, the eval stage's headline accuracies and intervals."""
    summary = dict(run.read_summary() or {})
    evaluation = run.read_eval_summary() or {}
    ev = {}
    for name in ("base", "tuned"):
        if name in evaluation:
            ev[f"{name}_strict_accuracy"] = evaluation[name]["strict_accuracy"]
            ev[f"{name}_flexible_accuracy"] = evaluation[name]["flexible_accuracy"]
            ev["n"] = evaluation[name]["n"]
    for metric in ("strict", "flexible"):
        if f"{metric}_difference" in evaluation:
            d = evaluation[f"{metric}_difference"]
            ev[f"{metric}_delta_pts"], ev[f"{metric}_ci95_pts"] = d["delta_pts"], d["ci95_pts"]
    if ev:
        summary["eval"] = ev
    return summary


def baseline_section(run: RunDir, baseline: RunDir, figures: Path) -> list:
    this, base = headline(run), headline(baseline)
    this_name, base_name = run.path.name, baseline.path.name
    picture = overlaid({base_name: baseline.read_epochs(), this_name: run.read_epochs()},
                       figures / "comparison.png")
    return [("table", ["figure", base_name, this_name, "Δ"], comparison_rows([base, this])),
            ("img", picture, f"Learning curves of {base_name} and {this_name}"),
            ("obs", rules.versus_baseline(this, base, this_name, base_name))]


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
    """Comparison table (every summary figure, delta last − first) and overlaid curves written to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = [headline(r) for r in runs]
    rows = comparison_rows(summaries)
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [str(r.path) for r in runs]
    picture = overlaid({n: r.read_epochs() for n, r in zip(names, runs)}, out / "compare.png")
    sections = [("Runs", [("table", ["figure", *names, f"Δ ({names[-1]} − {names[0]})"], rows),
                          ("img", picture, "Learning curves overlaid")])]
    (out / "compare.md").write_text(markdown("Run comparison", sections, out))
    (out / "compare.html").write_text(html_page("Run comparison", sections))
    return rows, picture
