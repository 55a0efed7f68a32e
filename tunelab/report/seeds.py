"""Repeats of one recipe under other seeds: how far training noise alone moves the figures, and whether recipes
differ by more than it.

The paired interval between two runs (compare's) counts the noise of which questions were asked, not of
training: the same recipe trained again with another `train.seed` (LoRA init, dropout, data order) or `data.seed`
(which rows validate) ends elsewhere. Runs whose recipes differ only in those keys are repeats of one recipe;
each recipe's figures are given as mean ± sd over its repeats, and every later recipe is tested against the first
by Welch's t-test over the per-seed values.

    blocks = seed_blocks(runs, names)   # [] when no recipe was run more than once

Run as: tunelab sweep quickstart --vary train.lr=3e-4,1e-3 --seeds 3   (compare.md's "Seeds" section)
"""

from __future__ import annotations

import json
from itertools import combinations
from statistics import mean, stdev

from tunelab.report.compare import flat_recipe, tuned_flags
from tunelab.report.observations import Observation, sign_of
from tunelab.rundir import HeldOutLossDir, RunDir
from tunelab.stats import paired_difference, welch_difference

SEED_KEYS = ("train.seed", "data.seed")
LOSSES = ("final validation loss", "held-out target loss")  # figures where lower is better, to 4 decimals


def _figures(run: RunDir) -> dict[str, float]:
    """The figures compared across seeds: final validation loss and (once scored) tuned accuracy in percent, or the
    tuned adapter's held-out target loss when the answers are measured by loss instead."""
    summary, evaluation = run.read_summary() or {}, run.read_eval_summary() or {}
    held_out = (HeldOutLossDir(run.path).read_eval_summary() or {}).get("losses", {})
    out = {}
    if summary.get("final_val_loss") is not None:
        out["final validation loss"] = summary["final_val_loss"]
    if "tuned" in evaluation:
        out["tuned accuracy"] = 100 * evaluation["tuned"]["flexible_accuracy"]
    elif "tuned" in held_out:
        out["held-out target loss"] = held_out["tuned"]["loss"]
    return out


def repeats(runs: list[RunDir]) -> list[tuple[str, list[int]]]:
    """The runs grouped by recipe with the seed keys (and the name) left out, in order of first appearance:
    (label, indices). A label names the keys in which its recipe differs from the others ("the recipe" when all
    runs share one)."""
    flat = [flat_recipe(r.read_recipe().model_dump(mode="json")) for r in runs]
    recipes = [{k: v for k, v in f.items() if k != "name" and k not in SEED_KEYS} for f in flat]
    groups: dict[str, list[int]] = {}
    for i, recipe in enumerate(recipes):
        groups.setdefault(json.dumps(recipe, sort_keys=True, default=str), []).append(i)
    firsts = [recipes[members[0]] for members in groups.values()]
    keys = [k for k in dict.fromkeys(k for r in firsts for k in r) if len({repr(r.get(k)) for r in firsts}) > 1]
    return [(", ".join(f"{k}={recipes[m[0]].get(k)}" for k in keys) or "the recipe", m) for m in groups.values()]


def seed_blocks(runs: list[RunDir], names: list[str]) -> list:
    """The report blocks of the runs' seed repeats: each recipe's spread, each later recipe against the first
    (Welch), and the pairs of repeats whose paired test found a difference; [] when no recipe ran twice."""
    groups = repeats(runs)
    if not any(len(members) > 1 for _, members in groups):
        return []
    values = [_figures(r) for r in runs]
    asked = [tuned_flags(r.read_predictions()).keys() for r in runs]
    same_questions = all(a == asked[0] for a in asked)  # else accuracies over different questions: not averaged
    figures = [f for f in values[0] if all(f in v for v in values) and (same_questions or f != "tuned accuracy")]
    rows = []
    for label, members in groups:
        cells = [_spread([values[i][f] for i in members], f) for f in figures]
        rows.append((label, ", ".join(names[i] for i in members), *cells))
    blocks: list = [
        ("p", "Runs whose recipes differ only in " + " or ".join(SEED_KEYS) + " are repeats of one recipe: its "
              "figures are given as mean ± sample sd over its repeats (min..max). The paired intervals elsewhere "
              "count the noise of which questions were asked; the spread here is the noise of training itself."),
        ("table", ["recipe", "runs", *figures], rows)]
    if not same_questions and all("tuned accuracy" in v for v in values):
        blocks.append(("p", "Tuned accuracy is left out: the runs scored different questions (eval.limit or "
                            "eval.source differ), so their accuracies are not one figure's repeats."))
    found = [o for label, members in groups for o in [_repeat_pairs(runs, names, label, members)] if o]
    tested = [(label, members) for label, members in groups if len(members) > 1]
    if len(tested) > 1:
        (first, a), later = tested[0], tested[1:]
        rows, verdicts = [], []
        for label, b in later:
            tests = {f: welch_difference([values[i][f] for i in a], [values[i][f] for i in b]) for f in figures}
            rows += [(f"{label} − {first}", f, _difference(d, f) if d else "no spread in either recipe: no test",
                      f"{len(b)} vs {len(a)}") for f, d in tests.items()]
            verdicts.append(_versus(first, label, tests))
        blocks += [("p", f"Each recipe against {first}: difference of the means over seeds, with Welch's t-test "
                         "(95 % CI of the difference, Welch–Satterthwaite degrees of freedom)."),
                   ("table", ["recipes", "figure", "difference of the means", "seeds"], rows)]
        found = [v for v in verdicts if v] + found
    return blocks + ([("obs", found)] if found else [])


def _fmt(value: float, figure: str, sign: str = "") -> str:
    """A loss to 4 decimals; an accuracy (or a difference of accuracies: `sign` "+") to 0.1 point."""
    return format(value, f"{sign}.4f") if figure in LOSSES else format(value, f"{sign}.1f")


def _unit(figure: str, difference: bool = False) -> str:
    return "" if figure in LOSSES else (" pts" if difference else " %")


def _spread(xs: list[float], figure: str) -> str:
    if len(xs) == 1:
        return f"{_fmt(xs[0], figure)}{_unit(figure)} (1 seed)"
    return (f"{_fmt(mean(xs), figure)} ± {_fmt(stdev(xs), figure)}{_unit(figure)} ({_fmt(min(xs), figure)}.."
            f"{_fmt(max(xs), figure)}, {len(xs)} seeds)")


def _difference(d: dict, figure: str) -> str:
    """A Welch difference as "+25.8 pts (95 % CI +18.0..+33.6, p = 0.0012)"."""
    lo, hi = (_fmt(x, figure, "+") for x in d["ci95"])
    return f"{_fmt(d['delta'], figure, '+')}{_unit(figure, True)} (95 % CI {lo}..{hi}, p = {d['p']:.2g})"


def _versus(first: str, label: str, tests: dict[str, dict | None]) -> Observation | None:
    """Did recipe `label` move the headline figure (tuned accuracy, else the held-out target loss, else validation
    loss) beyond seed noise? `tests`: the Welch difference of each figure (None where neither recipe varied)."""
    figure = next((f for f in ("tuned accuracy", "held-out target loss") if f in tests), "final validation loss")
    if figure not in tests:
        return None
    d = tests[figure]
    rule = (f"Welch's t-test of {label}'s per-seed {figure} against {first}'s; beyond seed noise when the 95 % CI "
            "of the difference of means excludes 0")
    if d is None:
        return Observation("info", f"{label} vs {first}: the {figure} did not vary across seeds in either recipe, "
                                   "so there is no seed noise to judge against.", rule)
    better = sign_of(d["ci95"]) * (-1 if figure in LOSSES else 1)
    numbers = f"{figure} {_difference(d, figure)} on the means of {d['n_b']} and {d['n_a']} seeds"
    kind, verdict = {1: ("good", f"{label} beat {first} beyond seed noise"),
                     -1: ("watch", f"{label} did worse than {first} beyond seed noise"),
                     0: ("watch", f"{label} and {first} did not differ beyond seed noise")}[better]
    return Observation(kind, f"{verdict}: {numbers}.", rule)


def _repeat_pairs(runs: list[RunDir], names: list[str], label: str, members: list[int]) -> Observation | None:
    """How many pairs of repeats of one recipe the paired test on their tuned answers calls different: each one
    is training noise that a single-run comparison would have reported as an effect."""
    tuned = [tuned_flags(runs[i].read_predictions()) for i in members]
    pairs = [(x, y) for x, y in combinations(range(len(members)), 2) if tuned[x] and tuned[x].keys() == tuned[y].keys()]
    if not pairs:
        return None
    differ = []
    for x, y in pairs:
        ids = list(tuned[x])
        d = paired_difference([tuned[x][i] for i in ids], [tuned[y][i] for i in ids])
        if sign_of(d["ci95_pts"]):
            differ.append(f"{names[members[y]]} vs {names[members[x]]} {d['delta_pts']:+.1f} pts "
                          f"(CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f})")
    rule = ("paired bootstrap 95 % CI of tuned accuracy between two repeats over the same questions; a pair whose CI "
            "excludes 0 is training noise that the paired interval does not count")
    if differ:
        return Observation("watch", f"{label}: {len(differ)} of {len(pairs)} pairs of repeats differ beyond the "
                                    f"paired interval ({'; '.join(differ)}): a single run against another can show "
                                    "this much from the seed alone; compare recipes by their means over seeds.", rule)
    return Observation("info", f"{label}: none of the {len(pairs)} pairs of repeats differs beyond the paired "
                               "interval: the seed's effect on accuracy stayed within the noise of question "
                               "sampling.", rule)


def findings(runs: list[RunDir], names: list[str]) -> list[str]:
    """The Seeds section's observations as console lines (the sweep and compare commands print them)."""
    return [f"seeds: {o.text}" for kind, *rest in seed_blocks(runs, names) if kind == "obs" for o in rest[0]]
