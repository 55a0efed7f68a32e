"""The report's per-category view of a measure paired over rows (data.label_field): the held-out target loss of each
category's rows, or the chrF of each category's generated replies, base model → tuned adapter, with an interval
widened for the number of categories judged (`evaluate.losses.by_category`); a table, a console line, a verdict.

Run as: tunelab report runs/chat      (after a run on prose or chat data with data.label_field)
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.evaluate.losses import MIN_CATEGORY_ROWS
from tunelab.report import observations as rules
from tunelab.report.observations import Observation


@dataclass(frozen=True)
class Measure:
    """What a `by_category` summary pairs: its rows' keys (base_<key>, tuned_<key>), its words, and which way is a
    gain (-1: lower is better, as a loss; 1: higher, as chrF)."""
    key: str
    name: str  # the console's and the table's word: "target loss", "reply chrF"
    subject: str  # the verdict's: "The held-out target loss"
    rows: str  # what the table gives per category
    short: str  # the table's column word
    better: int


LOSS = Measure("loss", "target loss", "The held-out target loss", "the target loss of each category's rows", "loss",
               -1)
CHRF = Measure("chrf", "reply chrF", "The generated replies' chrF", "the mean chrF of each category's replies",
               "chrF", 1)


def moved(by: dict) -> tuple[list[dict], dict[int, list[dict]]]:
    """A `by_category`'s judged categories, and those whose measure fell (-1) and rose (1) beyond their interval."""
    judged = [r for r in by["rows"] if r["difference"]["ci"]]
    return judged, {sign: [r for r in judged if rules.sign_of(r["difference"]["ci"]) == sign] for sign in (-1, 1)}


def line(by: dict | None, m: Measure) -> str | None:
    """"target loss per category (data.label_field (topic)): lower beyond noise in 2 (a, b) of 5 judged, higher
    beyond noise in 0" (the gain's way first): which judged categories moved, for the console."""
    if not by or not by["judged"]:
        return None
    judged, went = moved(by)
    said = [f"{'lower' if sign < 0 else 'higher'} beyond noise in {len(went[sign])}"
            + (f" ({', '.join(r['category'] for r in went[sign])})" if went[sign] else "")
            for sign in (m.better, -m.better)]
    return f"{m.name} per category ({by['source']}): {said[0]} of {len(judged)} judged, {said[1]}"


def blocks(by: dict | None, m: Measure) -> list:
    """A table of the measure per category, base → tuned, paired, when measured."""
    if not by:
        return []
    small = len(by["rows"]) - by["judged"]
    judged = (f"paired over its rows; each interval is {100 * by['level']:.2f} %, so that the {by['judged']} "
              f"categories judged together keep a 95 % bound (Bonferroni)" if by["judged"] else
              f"no category has {MIN_CATEGORY_ROWS} rows or more, so none is judged")
    return [("p", f"Per category ({by['source']}): {m.rows}, base model → tuned adapter, {judged}"
                  + (f"; {small} with fewer than {MIN_CATEGORY_ROWS} rows are listed without one, not judged"
                     if small and by["judged"] else "") + "."),
            ("table", ["category", "rows", f"base {m.short}", f"tuned {m.short}",
                       f"Δ {m.short} ({100 * by['level']:.2f} % CI)" if by["judged"] else f"Δ {m.short}"],
             [(r["category"], r["n"], f"{r[f'base_{m.key}']:.3f}", f"{r[f'tuned_{m.key}']:.3f}",
               f"{d['delta']:+.3f}" + (f" ({d['ci'][0]:+.3f}..{d['ci'][1]:+.3f})" if d["ci"] else " (not judged)"))
              for r in by["rows"] for d in [r["difference"]]])]


def verdict(by: dict | None, m: Measure) -> Observation | None:
    """Which categories' measure moved beyond noise, under `by_category`'s Bonferroni bound (a move against the gain's
    way is one to watch)."""
    if not by or not by["judged"]:
        return None
    judged, went = moved(by)
    rule = f"{by['rule']}; categories: {by['source']}"

    def listed(found: list[dict]) -> str:
        return "; ".join(f"{r['category']} {r[f'base_{m.key}']:.3f} → {r[f'tuned_{m.key}']:.3f} (n = {r['n']})"
                         for r in found)
    if not went[-1] and not went[1]:
        return Observation("info", f"{m.subject} changed beyond noise in no category ({len(judged)} judged).", rule)
    parts = [f"{'fell' if sign < 0 else 'rose'} beyond noise in {len(went[sign])} of {len(judged)} categories "
             f"judged: {listed(went[sign])}" for sign in (m.better, -m.better) if went[sign]]
    return Observation("watch" if went[-m.better] else "good", f"{m.subject} " + "; and ".join(parts) + ".", rule)
