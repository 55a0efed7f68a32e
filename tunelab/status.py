"""Where each run directory stands: running, stopped mid-training, waiting for a stage, or done — with its
headline figures and the command that finishes it (`tunelab ls`).

Reads only the run directories' files (no model, no torch), so it answers at once, also while a run trains:
metrics/steps.jsonl and epochs.jsonl are rewritten at every checkpoint, and `.lock` names the live holder.

Run as: tunelab ls                         # every run directory under runs/
        tunelab ls runs/quickstart-sweep --json
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
from pathlib import Path

from tunelab.errors import UserError
from tunelab.rundir import (HeldOutLossDir, RepliesDir, RunDir, counts_passes, cut_short, stopped_early,
                            trained_and_planned)

RECENT_STEPS = 20  # the steps whose mean tokens/s predicts a running train stage's time left


def find(paths: list[str]) -> list[RunDir]:
    """The run directories (folders with a config.yaml) at or under each of `paths`, sorted by path; hidden
    folders and the inside of a run directory are not searched.

    Raises:
        UserError: a path that does not exist.
    """
    found: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise UserError(f"{given}: no such folder (give the folders that hold your run directories)")
        for folder, dirs, files in os.walk(root):
            if "config.yaml" in files:
                found.add(Path(folder))
                dirs.clear()  # a run's own folders (adapters, eval/also) hold no other run
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return [RunDir(p) for p in sorted(found)]


def describe(run: RunDir) -> dict:
    """One run directory's state: `state` (running, stopped, trained, done, …) in words, `running` (the live lock
    holder, or None), `train` progress, `val_loss` (before → last), `accuracy` (the eval stage's headline, or why
    it was not scored), `cost_usd` (train and eval), `report` (current, stale or missing), `watch` (the report's
    observations to watch), `next` (the command that finishes what is left, or None) and `updated` (the newest
    file's time)."""
    out = {"run": str(run.path), "recipe": None, "model": None, "running": _holder(run), "train": _training(run),
           "val_loss": _val_loss(run), "accuracy": _accuracy(run), "cost_usd": {"train": None, "eval": None},
           "report": _report(run), "watch": run.read_watch(),
           "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(_newest(run)))}
    try:
        cfg = run.read_recipe()
    except UserError as err:  # a config.yaml today's schema refuses: still listed, with why
        return {**out, "state": f"config.yaml unreadable: {err}", "next": None}
    out.update(recipe=cfg.name, model=cfg.model.name, cost_usd=_costs(run))  # eval's: the recipe's eval.also sets
    pending = _pending(run, cfg)
    out["state"], out["next"] = _state(run, out, pending)
    return out


def _holder(run: RunDir) -> dict | None:
    """The tunelab process holding the run's lock: {pid, command, host}; None when no live one does. A lock file
    left by a killed process names a dead pid; one from another host cannot be checked and is taken as live."""
    try:
        holder = json.loads(run.lock_file.read_text())
    except (OSError, ValueError):
        return None
    if holder.get("host") not in (None, socket.gethostname()):
        return holder
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, KeyError, ValueError, TypeError):
        pass  # another user's live process, or a lock file being written
    return holder


def _training(run: RunDir) -> dict | None:
    """The train stage's progress: epochs trained of those planned, optimizer steps, the share of the planned
    training tokens done (from estimate.json), the tokens/s of the last steps, when the last checkpoint wrote them
    (`checkpointed`), and `done`; None before the first checkpoint of a run that trains (or for a
    base-model-only eval folder)."""
    summary = run.read_summary()
    if summary:
        trained, planned = trained_and_planned(summary)
        return {"done": run.has_adapter(), "epochs": trained, "epochs_planned": planned,
                "step": summary.get("steps"), "stopped_early": stopped_early(summary), "cut_short": cut_short(summary),
                "counts_passes": counts_passes(summary),
                "imported": "imported" in summary, "share": 1.0}
    steps = run.read_steps()
    if not steps:
        return None
    estimate = run.read_optional(run.estimate, {})
    planned_tokens = estimate.get("train_tokens",  # estimates before train.max_steps: whole epochs
                                  estimate.get("train_tokens_per_epoch", 0) * estimate.get("epochs", 0))
    done_tokens = sum(s["tokens"] for s in steps)
    recent = steps[-RECENT_STEPS:]  # each step's own rate: its `seconds` count from its epoch's start
    rate = sum(s["tokens"] for s in recent) / max(sum(s["tokens"] / max(s["tokens_per_second"], 1e-9)
                                                       for s in recent), 1e-9)
    finished = len(run.read_epochs()) - 1  # epoch 0 is the pass before training
    return {"done": False, "epochs": finished, "epochs_planned": estimate.get("epochs"), "step": steps[-1]["step"],
            "epoch_in_progress": steps[-1]["epoch"], "stopped_early": False, "counts_passes": False,
            "imported": False, "share": min(done_tokens / planned_tokens, 1.0) if planned_tokens else None,
            "tokens_left": max(planned_tokens - done_tokens, 0) if planned_tokens else None,
            "tokens_per_second": round(rate, 1), "checkpointed": run.steps.stat().st_mtime}


def _val_loss(run: RunDir) -> list[float] | None:
    """Validation loss before training and at the last epoch end so far."""
    epochs = run.read_epochs()
    return [epochs[0]["val_loss"], epochs[-1]["val_loss"]] if epochs else None


def _accuracy(run: RunDir) -> dict | None:
    """The eval stage's headline: scoring, base and tuned accuracy (flexible), the paired difference and its 95 %
    CI, n (and mc2, base and tuned, with its paired change, for labelled options); {"skipped": why} when `tunelab
    run` skipped it (with the held-out replies' target loss and their generated replies' chrF, base and tuned, each
    one's paired change and CI, once measured); {"base": …} alone for a base-model-only eval; None before it ran."""
    evaluation = run.read_eval_summary() or {}
    skipped = run.read_optional(run.eval_skipped)
    if not evaluation and skipped:
        d = (HeldOutLossDir(run.path).read_eval_summary() or {}).get("loss_difference")
        c = ((RepliesDir(run.path).read_eval_summary() or {}).get("overlap") or {}).get("chrf")
        return {"skipped": skipped["reason"],  # and the held-out replies' target loss and chrF, when measured
                **({"loss": d["means"], "loss_delta": d["delta"], "loss_ci95": d["ci95"]} if d else {}),
                **({"chrf": c["means"], "chrf_delta": c["delta"], "chrf_ci95": c["ci95"]} if c else {})}
    if "base" not in evaluation and "tuned" not in evaluation:
        return None
    out = {"scoring": evaluation.get("scoring", "numeric"),
           **{name: evaluation[name]["flexible_accuracy"] for name in ("base", "tuned") if name in evaluation},
           "n": (evaluation.get("tuned") or evaluation["base"])["n"]}
    if "flexible_difference" in evaluation:
        d = evaluation["flexible_difference"]
        out.update(delta_pts=d["delta_pts"], ci95_pts=d["ci95_pts"])
    if m := evaluation.get("mc2_difference"):  # labelled options: the probability on the true ones, base and tuned
        out.update(mc2=[evaluation["base"]["mc2"], evaluation["tuned"]["mc2"]], mc2_delta_pts=m["delta_pts"],
                   mc2_ci95_pts=m["ci95_pts"])
    return out


def _costs(run: RunDir) -> dict:
    """Dollars spent: the train stage's (cost.json) and the eval passes answered for the run; None where not
    priced or not run."""
    train = run.read_optional(run.cost)
    scored = run.eval_cost()
    return {"train": train["cost_usd"] if train else None, "eval": scored["cost_usd"] if scored else None}


def _report(run: RunDir) -> str:
    """current (report.html is newer than every stage summary it reads), stale, or missing."""
    if not run.report_html.exists():
        return "missing"
    sources = [run.summary, run.eval_summary, run.eval_skipped, run.analysis_summary,
               HeldOutLossDir(run.path).eval_summary, RepliesDir(run.path).eval_summary,
               *((run.eval_dir / "also").glob("*/summary.json")),
               *((run.eval_dir / "also").glob("*/replies/summary.json"))]
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0)
    return "current" if run.report_html.stat().st_mtime >= newest else "stale"


def _newest(run: RunDir) -> float:
    """The last time any stage wrote to the run: the newest file at its top level, in metrics/, eval/ or
    analysis/."""
    folders = [run.path, run.metrics, run.eval_dir, run.analysis_dir]
    times = [p.stat().st_mtime for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_file()]
    return max(times, default=run.path.stat().st_mtime)


def _pending(run: RunDir, cfg) -> list[str]:
    """The stages after training that `tunelab run` would still run: eval (unless it was skipped for the data, and
    then until the held-out replies are measured by loss where they can be),
    eval.also, analyze."""
    from tunelab.evaluate.summary import extra_done, set_done
    pending = []
    skipped = run.read_optional(run.eval_skipped)
    if not set_done(run.read_eval_summary()) and not skipped or (
            skipped and skipped.get("by_loss") and not set_done(HeldOutLossDir(run.path).read_eval_summary())):
        pending.append("eval")  # answers to score, or replies no scoring mode suits to measure by loss
    if not extra_done(cfg, run):
        pending.append("eval.also")
    if not run.analysis_summary.exists():
        pending.append("analyze")
    return pending


def _state(run: RunDir, out: dict, pending: list[str]) -> tuple[str, str | None]:
    """The run's state in words and the command that finishes it (None: nothing left, or nothing to resume)."""
    train, path = out["train"], shlex.quote(str(run.path))
    resume = f"tunelab run {shlex.quote(str(run.config))} --run-dir {path}"
    if out["running"]:
        who = out["running"]
        return f"running: tunelab {who.get('command', '?')}, pid {who.get('pid', '?')}{_progress(train, True)}", None
    kept = sorted(run.checkpoints.glob("step-*/state.json"))  # complete checkpoints (state.json is written last)
    restart = f"; resumes from step {int(kept[-1].parent.name[5:])}" if kept else "; no checkpoint kept: restarts"
    if train is None and not kept:
        if run.estimate.exists():
            return "stopped before its first checkpoint", resume
        if out["accuracy"] and "base" in out["accuracy"]:
            return "base model scored (no training)", None
        return "not started", resume
    if train is None or not train["done"]:  # killed between a checkpoint and the curves it writes next: none yet
        return "stopped" + _progress(train, False) + restart, resume
    trained = f"trained {train['epochs']} of {train['epochs_planned']} epochs (early stop)" \
        if train["stopped_early"] else f"trained {train['epochs']} epoch{'s' * (train['epochs'] != 1)}" \
        + (f", the last {train['cut_short'][0]} of its {train['cut_short'][1]} steps (max_steps "
           f"{train['step']})" if train.get("cut_short") else "")
    if pending and train["imported"]:  # `tunelab import` needs the other trainer's folder: each stage's command
        stage = "analyze" if pending == ["analyze"] else "eval"
        return f"{trained}; {', '.join(pending)} left", f"tunelab {stage} {path}"
    if pending:
        return f"{trained}; {', '.join(pending)} left", resume
    if out["report"] != "current":
        return f"{trained}; report {out['report']}", f"tunelab report {path}"
    return "done: " + trained + (f"; {len(out['watch'])} to watch (report)" if out["watch"] else ""), None


def _progress(train: dict | None, running: bool) -> str:
    """`; epoch 2 of 3, step 50 (46 % of the training tokens), ~3 min of training left` for a train stage in
    progress, as of its last checkpoint (the time left only while `running`); "" otherwise."""
    if not train or train["done"]:
        return ""
    text = f"; epoch {train['epoch_in_progress']} of {train['epochs_planned']}, step {train['step']}"
    if train["share"] is not None:
        text += f" ({100 * train['share']:.0f} % of the training tokens)"
    if running and train["tokens_left"]:  # the time since that checkpoint already spent on what was left
        left = train["tokens_left"] / train["tokens_per_second"] - (time.time() - train["checkpointed"])
        text += f", ~{left / 60:.0f} min of training left" if left >= 60 else ", under a minute of training left"
    return text
