"""The report's data mix (`data.mix`): each source's rows and its own loss curves, from metrics/examples.jsonl.

A run trained on several sources has one validation curve in metrics/epochs.jsonl, over all of them; a small
source can overfit, or not be learnt at all, while that curve falls. Here each source's validation rows are
taken apart (a mixed row's id starts with its source's name) and judged by the same rule as the whole run's.

Run as: tunelab report runs/mixed
"""

from __future__ import annotations

from tunelab.config import Recipe
from tunelab.data import source_names, source_of, source_weights
from tunelab.report import observations as rules
from tunelab.report.observations import Observation
from tunelab.rundir import RunDir
from tunelab.stats import paired_loss_difference


def source_epochs(examples: list[dict], cfg: Recipe) -> dict[str, tuple[list[dict], dict[int, dict]]]:
    """Per source (data.source's first, then data.mix's in order): its epochs as metrics/epochs.jsonl gives the
    run's (epoch, val_loss, train_loss: token-weighted over its rows alone), and its validation rows' (loss,
    tokens) per epoch, for the paired tests."""
    grouped: dict[str, dict[tuple[str, int], list]] = {}
    for e in examples:
        grouped.setdefault(source_of(e["id"], cfg.data), {}).setdefault((e["split"], e["epoch"]), []).append(e)
    order = source_names(cfg.data)
    out = {}
    for name, cells in sorted(grouped.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        val_epochs = sorted(epoch for split, epoch in cells if split == "val")
        epochs = [{"epoch": k, "val_loss": _weighted(cells[("val", k)]),
                   "train_loss": _weighted(cells[("train", k)]) if ("train", k) in cells else None,
                   "train_rows": len(cells.get(("train", k), [])), "val_rows": len(cells[("val", k)]),
                   "train_tokens": sum(e["tokens"] for e in cells.get(("train", k), []))}
                  for k in val_epochs]
        out[name] = epochs, {k: {e["id"]: (e["loss"], e["tokens"]) for e in cells[("val", k)]} for k in val_epochs}
    return out


def section(examples: list[dict], cfg: Recipe, imported: bool = False) -> tuple[list, list[Observation]]:
    """The report's "Data mix" blocks (a table: each source's rows, its share of the tokens training takes the loss
    on — how much of each step's gradient it makes — and its validation loss per epoch) and each source's verdict
    on its own validation curve (the overfitting rule, its rows alone). `imported`: a run trained elsewhere, whose
    train rows were measured once each after each epoch: its shares weigh them by their source's weight."""
    per_source = source_epochs(examples, cfg)
    if len(per_source) < 2:
        return [], []
    rows, found = [], []
    weight = source_weights(cfg.data)
    weighted = any(w != 1 for w in weight.values())
    tokens = {name: epochs[-1]["train_tokens"] * (weight.get(name, 1) if imported else 1)
              for name, (epochs, _) in per_source.items()}
    for name, (epochs, val_rows) in per_source.items():
        trained = [e for e in epochs if e["train_loss"] is not None]
        first, last = epochs[0]["val_loss"], epochs[-1]["val_loss"]
        share = f"{100 * tokens[name] / sum(tokens.values()):.0f} %" if sum(tokens.values()) else "–"
        rows.append((name, *([f"{weight.get(name, 1):g}"] if weighted else []),
                     trained[-1]["train_rows"] if trained else "–", share, epochs[-1]["val_rows"],
                     " → ".join(f"{e['val_loss']:.3f}" for e in epochs),
                     f"{100 * (first - last) / first:+.1f} %" if first else "–",
                     f"{trained[-1]['train_loss']:.3f}" if trained else "–"))
        if len(trained) == len(epochs) - 1 and trained:
            verdict = rules.overfitting(epochs, val_rows)
            found.append(Observation(verdict.kind, f"{name} rows: {verdict.text}", verdict.rule + "; over this "
                                     "source's validation rows alone"))
    blocks = [("p", f"{len(per_source)} sources of training rows (data.source and data.mix), each split into "
                    "train and validation rows by the same rule; the run's validation loss is over all of them, "
                    "so here each source's own rows are measured apart."
                    + (" Weight: how often each of a source's train rows is trained per epoch (data.weight, a "
                       "data.mix entry's weight); " + ("the run was trained elsewhere: its train rows were measured "
                       "once each, and each one's loss tokens count its weight times in the shares." if imported
                       else "the train rows are those trained in the last epoch, repeats counted.")
                       if weighted else "")),
              ("table", ["source", *(["weight"] if weighted else []), "train rows", "share of the loss tokens",
                         "validation rows",
                         "validation loss per epoch (0 = base)",
                         "validation loss improvement", "train loss, last epoch"], rows)]
    return blocks, found


def weighted_val_loss(examples: list[dict], cfg: Recipe) -> float | None:
    """The last validation pass's loss with each row's tokens counted its source's weight times (the mix the train
    loss is over); None when every weight is 1 (the run's own validation loss already is)."""
    weight = source_weights(cfg.data)
    if all(w == 1 for w in weight.values()):
        return None
    cells = [(loss, weight.get(source, 1) * n) for source, rows in _last_val_by_source(examples, cfg).items()
             for loss, n in rows.values()]
    return _weighted_mean(cells) if cells else None


def compare_blocks(runs: list[RunDir], names: list[str]) -> list:
    """`tunelab compare`'s Data mix, when a run trained on several sources: each source's validation loss after
    each run's last epoch (its rows alone), with its weight, and each later run's change from the first, paired
    over the rows both validated — what more or less of one source (a weight or limit sweep) did to each."""
    recipes = [r.read_recipe() for r in runs]
    if not any(c.data.mix for c in recipes):
        return []
    last = [_last_val_by_source(r.read_examples(), c) for r, c in zip(runs, recipes)]
    weights = [source_weights(c.data) for c in recipes]
    rows, found = [], []
    for source in dict.fromkeys([*(s for c in recipes for s in source_names(c.data)),
                                 *(s for by_source in last for s in by_source)]):
        if not any(source in by_source for by_source in last):
            continue
        first, cells = last[0].get(source), []
        for k, (by_source, weight, name) in enumerate(zip(last, weights, names)):
            mine = by_source.get(source)
            d = paired_loss_difference(first, mine) if k and first and mine else None
            cell = "–" if not mine else f"{_weighted_mean(mine.values()):.3f} (weight {weight.get(source, 1):g})"
            if d:
                lo, hi = d["ci95"]
                on = f" on {d['n']}" if d["n"] < max(len(first), len(mine)) else ""
                cell += f": {d['delta']:+.3f} ({lo:+.3f}..{hi:+.3f}){on}"
                if change := rules.sign_of(d["ci95"]):
                    found.append(Observation("good" if change < 0 else "watch", f"{source} rows: validation loss "
                                             f"of {name} is {'lower' if change < 0 else 'higher'} than {names[0]}'s "
                                             f"beyond noise ({d['means'][1]:.3f} vs {d['means'][0]:.3f}, "
                                             f"{d['delta']:+.3f}, 95 % CI {lo:+.3f}..{hi:+.3f}, {d['n']} rows).",
                                             COMPARE_RULE))
            cells.append(cell)
        rows.append((source, *cells))
    return [("p", f"Each source's validation loss after each run's last epoch, over its own rows, with its weight "
                  f"(data.weight, a data.mix entry's weight); each later run's change from {names[0]} on the rows "
                  "both validated (\"on N\" when fewer). Rule: " + COMPARE_RULE + "."),
            ("table", ["source", *names], rows), ("obs", found)]


COMPARE_RULE = ("paired bootstrap 95 % CI of the token-weighted validation-loss difference over the source's rows "
                "both runs validated; beyond noise = CI excludes 0")


def _last_val_by_source(examples: list[dict], cfg: Recipe) -> dict[str, dict[str, tuple[float, int]]]:
    """Per source, each validation row's (loss, tokens) in the run's last validation pass."""
    val = [e for e in examples if e["split"] == "val"]
    last = max((e["epoch"] for e in val), default=None)
    out: dict[str, dict] = {}
    for e in val:
        if e["epoch"] == last:
            out.setdefault(source_of(e["id"], cfg.data), {})[e["id"]] = (e["loss"], e["tokens"])
    return out


def _weighted_mean(cells) -> float:
    cells = list(cells)
    return sum(loss * n for loss, n in cells) / sum(n for _, n in cells)


def _weighted(rows: list[dict]) -> float:
    """Token-weighted mean loss of example rows (what metrics/epochs.jsonl reports for the run)."""
    tokens = sum(e["tokens"] for e in rows)
    return sum(e["loss"] * e["tokens"] for e in rows) / tokens if tokens else float("nan")
