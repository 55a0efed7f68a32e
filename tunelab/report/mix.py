"""The report's data mix (`data.mix`): each source's rows and its own loss curves, from metrics/examples.jsonl.

A run trained on several sources has one validation curve in metrics/epochs.jsonl, over all of them; a small
source can overfit, or not be learnt at all, while that curve falls. Here each source's validation rows are
taken apart (a mixed row's id starts with its source's name) and judged by the same rule as the whole run's.

Run as: tunelab report runs/mixed
"""

from __future__ import annotations

from tunelab.config import Recipe
from tunelab.data import source_names, source_of
from tunelab.report import observations as rules
from tunelab.report.observations import Observation


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
    weight = source_weights(cfg)
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


def source_weights(cfg: Recipe) -> dict[str, float]:
    """Each source's name: its weight (data.weight, then each data.mix entry's)."""
    return dict(zip(source_names(cfg.data), [cfg.data.weight] + [m.weight for m in cfg.data.mix]))


def weighted_val_loss(examples: list[dict], cfg: Recipe) -> float | None:
    """The last validation pass's loss with each row's tokens counted its source's weight times (the mix the train
    loss is over); None when every weight is 1 (the run's own validation loss already is)."""
    weight = source_weights(cfg)
    if all(w == 1 for w in weight.values()):
        return None
    val = [e for e in examples if e["split"] == "val"]
    last = [e for e in val if e["epoch"] == max(e["epoch"] for e in val)] if val else []
    tokens = sum(weight.get(source_of(e["id"], cfg.data), 1) * e["tokens"] for e in last)
    return sum(weight.get(source_of(e["id"], cfg.data), 1) * e["tokens"] * e["loss"] for e in last) / tokens \
        if tokens else None


def _weighted(rows: list[dict]) -> float:
    """Token-weighted mean loss of example rows (what metrics/epochs.jsonl reports for the run)."""
    tokens = sum(e["tokens"] for e in rows)
    return sum(e["loss"] * e["tokens"] for e in rows) / tokens if tokens else float("nan")
