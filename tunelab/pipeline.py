"""`tunelab run`: train → eval (base + tuned) → analyze → report, resumable stage by stage.

A finished stage (its output files are complete in the run directory) is not redone, so re-running
the same command after a crash or Ctrl-C continues where it stopped.

Run as: tunelab run                      # the offline quickstart
        tunelab run gsm8k-smollm2-135m --set data.source=../shared/data/gsm8k --set data.limit=300
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tunelab.config import load_recipe, to_yaml
from tunelab.errors import UserError
from tunelab.rundir import RunDir, default_run_dir, locked

log = logging.getLogger(__name__)


def stages_done(run: RunDir) -> dict[str, bool]:
    """Each stage's own answer to "have you finished in this run directory?"."""
    from tunelab import analysis, train
    from tunelab.evaluate import stage as evaluate
    return {"train": train.done(run), "eval": evaluate.done(run), "analyze": analysis.done(run)}


def run_all(recipe: str, overrides: list[str], run_dir: str | None, baseline: str | None,
            source: str | None = None) -> RunDir:
    """Run every stage not yet done; return the run directory. With `source` (an adapter folder or Trainer
    output_dir: `tunelab import`), the train stage is replaced by importing and measuring that run's adapters.

    Raises:
        UserError: the run dir holds a different recipe, or any stage's user error.
    """
    cfg = load_recipe(recipe, overrides)
    found = None
    if source:
        from tunelab import imported
        found = imported.find(source, cfg.train.epochs)
        cfg = imported.prepare(cfg, found)
    run = RunDir(run_dir or default_run_dir(cfg.name))
    # read through today's schema: keys added since the run was made take their defaults, not a difference
    if run.config.exists() and to_yaml(run.read_recipe()) != to_yaml(cfg):
        raise UserError(f"{run.path}: holds a run of a different recipe (see its config.yaml); "
                        "use a new --run-dir, or the same recipe and overrides to resume it")
    base = None
    if baseline:
        from tunelab.report import load_run
        base = load_run(baseline)
    if found:
        imported.check_run_dir(run, found)
    with locked(run, "import" if found else "run"):
        return _stages(cfg, run, base, found)


def _stages(cfg, run: RunDir, base: RunDir | None, source=None) -> RunDir:
    started = time.time()
    from tunelab import analysis, train
    from tunelab.data import load_splits
    from tunelab.evaluate import stage as evaluate
    from tunelab.evaluate.summary import extra_done
    from tunelab.train import checkpoint
    splits = load_splits(cfg.data, cfg.eval)
    unscoreable = evaluate.unscoreable(cfg, splits)
    if not unscoreable:
        evaluate.shot_pool(cfg, splits)  # too few few-shot shots is said now, not after training
    if cfg.eval.chat_baseline and evaluate.by_loss(cfg, splits):  # and a tokenizer without a chat template
        from tunelab.data import chat
        from tunelab.models import load_tokenizer
        chat.require(load_tokenizer(cfg.model), "eval.chat_baseline")
    evaluate.check_prompt_baseline(cfg, splits)  # a field a held-out row lacks is said now, not after training
    evaluate.check_extra(cfg)
    evaluate.check_models(cfg, splits)  # other models: loadable, and the set scored by answers
    if unscoreable:  # said before training, not found after it
        instead = ("by loss" + (" and by overlap with the references (chrF, ROUGE-L)"
                                if cfg.eval.overlap and evaluate.generates_replies(cfg, splits) else "")
                   if evaluate.by_loss(cfg, splits) else "")
        log.warning("eval: answers will not be scored: %s; %sthe report gives losses, token accuracy, analysis and "
                    "cost%s", unscoreable, f"the held-out rows are measured {instead} instead; " if instead else "",
                    " (eval.pass_at_k samples answers only where they are scored)" if cfg.eval.pass_at_k else "")
    if source is None:
        first = ("train", train.done, lambda: train.train(cfg, run, resume=checkpoint.latest(run) is not None))
    else:
        from tunelab import imported
        first = ("import", imported.done, lambda: imported.import_run(cfg, run, source))
    stages = [first,
              ("eval", evaluate.done, lambda: evaluate.evaluate(cfg, run)),
              *([("eval.also", lambda r: extra_done(cfg, r),
                  lambda: evaluate.evaluate_extra(cfg, run, skip_done=True))] if cfg.eval.also else []),
              ("analyze", analysis.done, lambda: analysis.analyze(cfg, run))]
    for name, done, work in stages:
        if name == "eval" and unscoreable:
            run.write_json(run.eval_skipped, {"reason": unscoreable, "by_loss": evaluate.by_loss(cfg, splits)})
            if evaluate.generates_replies(cfg, splits) and not evaluate.replies_done(run):
                evaluate.replies(cfg, run, splits)  # the replies themselves, scored by overlap with the references
            if not evaluate.held_out_loss_done(run):  # and how likely each model finds the reference replies
                evaluate.held_out_loss(cfg, run, splits, unscoreable)
        elif done(run):
            log.info("%s: done already (%s)", name, run.path)
        else:
            work()
    from tunelab.report import write_report
    html = write_report(run, base)
    _print_key_numbers(run, html, time.time() - started)
    return run


def _print_key_numbers(run: RunDir, html: Path, seconds: float) -> None:
    from tunelab.evaluate.scoring import NAMING
    from tunelab.report import best_loss_line, early_stopping_line, eval_lines, headline, train_loss_change
    s = headline(run)
    cost = run.read_optional(run.cost)
    lines = [f"report: {html}  (and {run.report_md})",
             f"{train_loss_change(s)}, val loss {s['initial_val_loss']:.4f} → "
             f"{s['final_val_loss']:.4f} ({s['val_loss_improvement_pct']:+.1f} %), val token accuracy "
             f"{100 * s['initial_val_token_accuracy']:.1f} % → {100 * s['final_val_token_accuracy']:.1f} %",
             *filter(None, [early_stopping_line(s), best_loss_line(s, run.read_validation())])]
    ev = s.get("eval", {})
    if "flexible_delta_pts" in ev:
        lo, hi = ev["flexible_ci95_pts"]
        names = NAMING[ev["scoring"]]
        lines.append(f"{names.accuracy} ({names.flexible}) {100 * ev['base_flexible_accuracy']:.1f} % → "
                     f"{100 * ev['tuned_flexible_accuracy']:.1f} % ({ev['flexible_delta_pts']:+.1f} pts, 95 % CI "
                     f"{lo:+.1f}..{hi:+.1f}, n = {ev['n']}); {names.strict} {100 * ev['base_strict_accuracy']:.1f} % "
                     f"→ {100 * ev['tuned_strict_accuracy']:.1f} %")
    lines += eval_lines(run.read_eval_summary() or {})
    from tunelab.report import extra, replies
    lines += [found for view in run.extra_sets() for found in (extra.line(view.name, view.read_eval_summary()),
                                                               replies.run_line(run, view.name))
              if found]
    skipped = run.read_optional(run.eval_skipped)
    if skipped and not run.eval_summary.exists():
        lines.append(f"accuracy: not measured ({skipped['reason']})")
        from tunelab.rundir import HeldOutLossDir
        lines += filter(None, [extra.held_out_line(HeldOutLossDir(run.path).read_eval_summary()),
                               replies.run_line(run)])
    scored = run.eval_cost()
    lines.append((f"cost ${cost['cost_usd']:.4f} ({cost['device_hours'] * 60:.1f} device-min); " if cost else
                  "cost: not priced (trained outside tunelab; cost.usd_per_hour prices the other trainer's "
                  "train_runtime, when it recorded one); ")
                 + (f"eval ${scored['cost_usd']:.4f} ({scored['device_hours'] * 60:.1f} device-min); "
                    if scored else "")
                 + f"this command {seconds / 60:.1f} min")
    lines += [f"watch: {text}" for text in run.read_watch()]
    print("\n".join(lines))
