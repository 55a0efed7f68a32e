"""The report's per-category view of a measure paired over rows (data.label_field, or eval.label_field for a
benchmark's own column): the held-out target loss of each category's rows, or the chrF of each category's generated
replies, base model → tuned adapter, with an interval widened for the number of categories judged
(`evaluate.losses.by_category`); a table, a console line, a verdict. And answer accuracy per category, each with its
paired test (`accuracy_blocks`: the run's own test set and each eval.also set).

Run as: tunelab report runs/chat      (after a run on prose or chat data with data.label_field)
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.evaluate.losses import MIN_CATEGORY_ROWS
from tunelab.evaluate.scoring import naming
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


def compare(by: dict | None, labels: dict[str, str], first: dict[str, tuple[float, int]],
            later: list[tuple[str, dict[str, tuple[float, int]]]], name: str, m: Measure) -> list:
    """`compare`'s measure per category: each run's tuned figure on each category's rows (`first`, the first run's,
    named `name`, and each of `later`'s: row id -> (value, weight)), each later run's change from the first paired
    over the category's rows both measured, at the first run's Bonferroni-widened level (`by`: its `by_category`;
    `labels`: row id -> category); categories of fewer than `MIN_CATEGORY_ROWS` rows both measured listed, not
    judged. Nothing without categories or later runs."""
    from tunelab.stats import paired_loss_difference
    if not by or not labels or not later:
        return []
    table, found = [], []
    for category in (r["category"] for r in by["rows"]):
        mine = {i: first[i] for i, c in labels.items() if c == category and i in first}
        cells = []
        for other, tuned in later:
            shared = {i: v for i, v in mine.items() if i in tuned}
            d = paired_loss_difference(shared, tuned, level=by["level"]) if shared else None
            judged = d is not None and len(shared) >= MIN_CATEGORY_ROWS
            cells.append(None if d is None else f"{d['means'][1]:.3f} ({d['delta']:+.3f}"
                         + (f", CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}" if judged else ", not judged")
                         + (f", on {d['n']}" if d["n"] < len(mine) else "") + ")")
            if judged and (sign := rules.sign_of(d["ci95"])):
                found.append(Observation("good" if sign == m.better else "watch",
                                         f"{_sentence(m.subject.removeprefix('The '))} of {category} rows, "
                                         f"{other} vs {name}: "
                                         f"{d['means'][0]:.3f} → {d['means'][1]:.3f} ({d['delta']:+.3f}, {d['n']} "
                                         f"rows): {'higher' if sign > 0 else 'lower'} beyond noise.",
                                         f"paired bootstrap {100 * by['level']:.2f} % interval over the category's "
                                         f"rows of {other}'s tuned {m.name} − {name}'s (95 % Bonferroni-corrected "
                                         f"over {name}'s {by['judged']} categories judged); beyond noise = it "
                                         "excludes 0"))
        weight = sum(n for _, n in mine.values())
        table.append((category, len(mine), f"{sum(v * n for v, n in mine.values()) / max(weight, 1):.3f}", *cells))
    return [("p", f"Per category ({by['source']}, as {name}'s eval found them): each run's tuned {m.name} on the "
                  f"category's rows, each later run's change from {name} paired over the rows both measured, at "
                  f"{100 * by['level']:.2f} % (Bonferroni over {name}'s categories judged); a category of fewer "
                  f"than {MIN_CATEGORY_ROWS} rows both measured is listed, not judged."),
            ("table", ["category", "rows", name, *(n for n, _ in later)], table),
            ("obs", found)]


def _sentence(text: str) -> str:
    """`text` with its first letter upper-case, the rest as it is ("chrF" stays "chrF")."""
    return text[:1].upper() + text[1:]


def accuracy_blocks(evaluation: dict) -> list:
    """Base → tuned accuracy per category (data.label_field or eval.label_field, or the reference class) of an eval
    summary, each with its paired test; for classes, where each model's answers went (a confusion table)."""
    cat, names = evaluation["by_category"], naming(evaluation)
    rows = [(r["category"], r["n"], _pct(r["base_accuracy"]), _pct(r["tuned_accuracy"]),
             f"{r['difference']['delta_pts']:+.1f} ({r['difference']['ci95_pts'][0]:+.1f}.."
             f"{r['difference']['ci95_pts'][1]:+.1f})",
             f"{r['difference']['mcnemar_p']:.2g}", "yes" if r["difference"]["mcnemar_p"] < cat["alpha"] else "no")
            for r in cat["rows"]]
    blocks: list = [("p", f"Categories: {cat['source']}; accuracy is {names.flexible}. Rule: {cat['rule']}."),
                    ("table", ["category", "n", "base", "tuned", "Δ pts (95 % CI)", "McNemar p", "beyond noise"],
                     rows)]
    classes = [r["category"] for r in cat["rows"]]
    for model, table in (cat.get("confusion") or {}).items():
        columns = classes + [c for c in ("other", "several") if any(c in v for v in table.values())]
        blocks.append(("p", f"Where the {model} model's answers went (rows: the reference class; columns: the one "
                            "class its answer line names as whole words, other = none, several = more than one):"))
        blocks.append(("table", ["reference", *columns], [(c, *(table[c].get(k, 0) for k in columns))
                                                          for c in classes]))
    return blocks


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"
