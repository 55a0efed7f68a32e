"""Learning-curve pictures: one run's loss and token accuracy per epoch, and several runs overlaid."""

from __future__ import annotations

from pathlib import Path

from tunelab.evaluate.summary import baselines
from tunelab.rundir import START, lowest_pass


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def learning_curves(epochs: list[dict], steps: list[dict], out: Path, validation: list[dict] = (),
                    train_label: str = "train (epoch mean)") -> Path:
    """Train/val loss and token accuracy per epoch (epoch 0 = before training), plus step loss with every
    validation pass (metrics/validation.jsonl) at the step it was taken, the lowest one starred."""
    plt = _pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    ep = [e["epoch"] for e in epochs]
    trained = [e for e in epochs if e["train_loss"] is not None]
    a.plot(ep, [e["val_loss"] for e in epochs], "o-", label="validation")
    a.plot([e["epoch"] for e in trained], [e["train_loss"] for e in trained], "s--", label=train_label)
    a.set(title="Loss per epoch", xlabel="epoch", ylabel="loss")
    b.plot(ep, [100 * e["val_token_accuracy"] for e in epochs], "o-", label="validation")
    b.plot([e["epoch"] for e in trained], [100 * e["train_token_accuracy"] for e in trained], "s--", label="train")
    b.set(title="Token accuracy per epoch", xlabel="epoch", ylabel="%")
    if steps:
        c.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1, label="train (step)")
    if validation and all(v["step"] is not None for v in validation):
        c.plot([v["step"] for v in validation], [v["val_loss"] for v in validation], "o-", ms=4,
               label="validation")
        low = lowest_pass(validation)  # what --epoch best-loss takes
        c.plot([low["step"]], [low["val_loss"]], "*", ms=14, color="C3",
               label=f"lowest validation loss (step {low['step']})")
        c.legend()
    c.set(title="Loss per step", xlabel="optimizer step", ylabel="loss")
    for ax in (a, b):
        ax.set_xticks(ep)
        ax.legend()
    return _save(fig, out)


def accuracy_per_epoch(evaluation: dict, out: Path, best_loss_at: float | None = None) -> Path:
    """Answer accuracy after each scored epoch (epoch 0 = the base model, or the adapter the run continued), strict
    and flexible, with each baseline as a grey line; `best_loss_at`: where adapters/best-loss was saved, in epochs
    (step / steps per epoch), its flexible accuracy starred there."""
    from tunelab.evaluate.scoring import naming
    plt, names = _pyplot(), naming(evaluation)
    rows = evaluation["epochs"]
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=100)
    ep = [0] + [r["epoch"] for r in rows]
    for metric, style in (("flexible", "o-"), ("strict", "s--")):
        ax.plot(ep, [100 * evaluation.get(START, evaluation["base"])[f"{metric}_accuracy"]]
                + [100 * r[f"{metric}_accuracy"] for r in rows],
                style, label=getattr(names, metric))
    for b, style in zip(baselines(evaluation), (":", "-.", (0, (3, 1, 1, 1, 1, 1)))):
        ax.axhline(100 * evaluation[b["model"]]["flexible_accuracy"], ls=style, color="grey",
                   label=f"{b['short']} ({names.flexible})")
    if best_loss_at is not None and "best-loss" in evaluation:
        ax.plot([best_loss_at], [100 * evaluation["best-loss"]["flexible_accuracy"]], "*", ms=14, color="C3",
                label=f"lowest validation loss ({names.flexible})")
    ax.set(title=f"{names.title} per epoch (epoch 0 = {epoch_zero(START in evaluation)})", xlabel="epoch",
           ylabel="%")
    ax.set_xticks(ep)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: off the curves
    return _save(fig, out)


def held_out_loss_per_epoch(held_out: dict, epochs: list[dict], out: Path) -> Path:
    """A run measured by loss: the held-out rows' target loss of the base model (epoch 0) and after each measured
    epoch, beside the validation loss per epoch, with each baseline's target loss as a grey line."""
    from tunelab.report.extra import loss_baselines
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=100)
    rows = held_out["epochs"]
    ep = [0] + [r["epoch"] for r in rows]
    losses = held_out["losses"]
    ax.plot(ep, [losses.get(START, losses["base"])["loss"]] + [r["loss"] for r in rows], "o-",
            label=f"held-out target loss ({held_out['n']} {held_out['split']} rows)")
    ax.plot([e["epoch"] for e in epochs], [e["val_loss"] for e in epochs], "s--", label="validation loss")
    for (what, d), style in zip(loss_baselines(held_out), (":", "-.", (0, (3, 1, 1, 1, 1, 1)))):
        ax.axhline(d["means"][0], ls=style, color="grey", label=what.split(" (")[0])
    ax.set(title=f"Held-out target loss per epoch (epoch 0 = {epoch_zero(START in losses)})", xlabel="epoch",
           ylabel="loss")
    ax.set_xticks(sorted({*ep, *(e["epoch"] for e in epochs)}))
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out)


def reply_overlap_per_epoch(generated: dict, trained: int, out: Path) -> Path:
    """A run whose held-out replies were generated and scored: their mean chrF and ROUGE-L against the references for
    the base model (epoch 0) and after each generated epoch (the tuned adapter at `trained`), with each prompting
    baseline's chrF as a grey line."""
    from tunelab.evaluate.overlap import METRICS
    from tunelab.report.replies import baselines
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=100)
    steps = generated["epochs"]
    ep = [0] + [int(s["model"].split("-")[1]) if s["model"].startswith("epoch-") else trained for s in steps]
    n = generated["overlap"]["chrf"]["n"]
    for (metric, label), style in zip(METRICS.items(), ("o-", "s--")):
        ax.plot(ep, [steps[0][metric]["means"][0]] + [s[metric]["means"][1] for s in steps], style,
                label=f"reply {label} ({n} {generated['split']} rows)")
    for (what, d), style in zip(baselines(generated), (":", "-.", (0, (3, 1, 1, 1, 1, 1)))):
        ax.axhline(d["means"][0], ls=style, color="grey", label=f"{what} (chrF)")
    ax.set(title=f"Generated replies against the references per epoch (epoch 0 = "
                 f"{epoch_zero(steps[0].get('previous') == START)})", xlabel="epoch", ylabel="score (0..1)")
    ax.set_xticks(ep)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out)


def epoch_zero(continued: bool) -> str:
    """What epoch 0 of the per-epoch figures is: the base model, or the adapter a run continued (lora.continue_from)."""
    return "the adapter the run continued" if continued else "base model"


def overlaid(runs: dict[str, list[dict]], out: Path) -> Path:
    """Validation and train loss per epoch of several runs on shared axes."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    for name, epochs in runs.items():
        line, = a.plot([e["epoch"] for e in epochs], [e["val_loss"] for e in epochs], "o-", label=name)
        trained = [e for e in epochs if e["train_loss"] is not None]
        b.plot([e["epoch"] for e in trained], [e["train_loss"] for e in trained], "s--", color=line.get_color(),
               label=name)
    a.set(title="Validation loss per epoch", xlabel="epoch", ylabel="loss")
    b.set(title="Train loss per epoch", xlabel="epoch", ylabel="loss")
    a.legend()
    b.legend()
    return _save(fig, out)
