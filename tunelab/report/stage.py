"""The report stage: the detailed analysis report (report.md + self-contained report.html) of one run.

Reads only the run directory (JSON, JSONL, PNG) through RunDir's readers: works on a copied folder
without torch. Each stage's figures come from that stage's own files.

Run as: tunelab report runs/gsm8k-3ep --baseline runs/gsm8k-2ep
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tunelab import card, handoff, trackers
from tunelab.config import Recipe
from tunelab.data import MIX_SEP, source_names
from tunelab.data.checks import source_note, targets_line, untrained_cell
from tunelab.evaluate.scoring import OUTCOMES, naming
from tunelab.evaluate.summary import baselines
from tunelab.memory import describe
from tunelab.report import categories, extra, mix, replies, sampled
from tunelab.report import observations as rules
from tunelab.report.compare import baseline_section, pct, val_rows
from tunelab.report.curves import (accuracy_per_epoch, held_out_loss_per_epoch, learning_curves,
                                   reply_overlap_per_epoch)
from tunelab.report.render import clip, html_page, markdown
from tunelab.rundir import (BEST_LOSS, START, HeldOutLossDir, RepliesDir, RunDir, counts_passes, cut_short, open_run,
                            steps_per_epoch, stopped_early, trained_and_planned)

DEFINITIONS = [
    "Train loss improvement % = (first-epoch train loss − last-epoch train loss) / first-epoch train loss × 100; "
    "an epoch's train loss is the token-weighted mean over that epoch's optimizer steps.",
    "Validation loss improvement % = (epoch-0 validation loss − last-epoch validation loss) / epoch-0 validation "
    "loss × 100; epoch 0 is measured before the first optimizer step; its perplexity = exp(validation loss), the "
    "loss being the token-weighted mean over the validation rows' supervised tokens.",
    "Token accuracy = correct argmax next-token predictions / supervised (target) tokens, summed over the pass.",
    "Accuracy interval = 95 % paired bootstrap interval of (tuned − base) over the same questions; McNemar's "
    "exact test on the questions one model got right and the other wrong. These intervals (and the loss ones) count "
    "the noise of which questions or rows were measured, not of training: the same recipe under another train.seed "
    "ends elsewhere; `tunelab sweep RECIPE --seeds 3` measures that spread (the Seeds section, when repeats of this "
    "recipe sit beside the run).",
    "Cost = measured wall hours of the train stage × price per hour (recipe cost.usd_per_hour, or the dated "
    "built-in table); eval cost = measured wall hours of the answer passes run for this run (its test set and each "
    "eval.also set; a base pass reused from the cache, answered for another run, not counted) × the same kind of "
    "price, for the device the eval ran on. Estimate = FLOPs (4·N per trained token, 6·N with gradient "
    "checkpointing, 2·N per validated token, plus causal attention) / (device peak × utilisation: measured on "
    "H100/H200, assumed elsewhere; the basis is stated with each estimate).",
    "Outliers = rows whose mean rank of embedding-space isolation (local outlier factor) and final per-example "
    "loss is highest; clusters = KMeans on sentence embeddings, named by class-based TF-IDF.",
    "Data map (dataset cartography): confidence = mean over epochs of exp(−loss) of a training example; "
    "variability = its standard deviation; variability ≥ 0.1 → ambiguous, else confidence ≥ 0.5 → easy-to-learn, "
    "else hard-to-learn.",
]


def load_run(path: str | Path) -> RunDir:
    """A run directory whose train stage has finished (what report and compare need)."""
    return open_run(path, need="summary")[0]


def write_report(run: RunDir, baseline: RunDir | None = None) -> Path:
    """Write report.md, report.html and their pictures into `run`; return the HTML path."""
    cfg, summary, epochs = run.read_recipe(), run.read_summary(), run.read_epochs()
    title = cfg.report.title or f"Detailed Analysis Report — {cfg.name}"
    figures = run.report_files
    figures.mkdir(exist_ok=True)
    imported = summary.get("imported")
    evaluation = run.read_eval_summary()
    names = naming(evaluation)
    analysis = run.read_analysis_summary()
    found = _observations(run, summary, epochs, evaluation)
    pictures = _learning_pictures(run, summary, epochs, evaluation)
    data_sections, data_found = _data_sections(run, cfg, evaluation, summary)
    found += data_found
    sections = [
        ("Overview", _overview(run, cfg, summary, evaluation)),
        ("Key metrics", _key_metrics(summary, epochs, evaluation, run.read_optional(run.eval_skipped),
                                     HeldOutLossDir(run.path).read_eval_summary(), replies.summary(run))
         + _step_table(evaluation, run.read_validation())),
        *data_sections,
        ("Learning curves", pictures),
        ("Observations from training logs", [("obs", found)]),
    ]
    none = ([], [])  # answers scored: no held-out replies by loss or generated
    by_loss = extra.held_out_heading(HeldOutLossDir(run.path).read_eval_summary())
    for heading, (blocks, said) in ((by_loss, none if evaluation else extra.held_out_section(run)),
                                    ("Held-out replies, generated", none if evaluation else replies.section(run)),
                                    ("Other test sets", extra.section(run))):
        if blocks:
            sections.append((heading, blocks))
            found += said
    if evaluation and evaluation.get("flips"):
        sections.append(("Questions gained and lost", _flips(run, evaluation)))
    if evaluation and evaluation.get("by_category"):
        sections.append(("Accuracy by category", categories.accuracy_blocks(evaluation)))
    if evaluation and evaluation.get("tool_outcomes"):
        sections.append(("How the tool calls went", _tool_outcomes(evaluation["tool_outcomes"])))
    samples, skipped = run.read_jsonl(run.eval_samples), run.read_optional(run.eval_skipped)
    if samples and skipped and not evaluation:
        chrf = {(p["id"], p["model"]): p["chrf"] for p in RepliesDir(run.path).read_predictions() if "chrf" in p}
        sections.append(("Sample answers", _samples(samples, skipped, cfg.eval.max_new_tokens, chrf)))
    if analysis:
        sections.append(("Insights from model analysis", _insights(run, analysis, cfg.data.plain_text)))
    if baseline is not None:
        sections.append(("Comparison with the baseline run", baseline_section(run, baseline, figures)))
    if repeated := _seed_repeats(run):
        sections.append(("Seeds", repeated))
    sections.append(("What worked / what to watch", _worked_and_watch(found)))
    if run.has_adapter():
        sections.append(("Take it further", _take_it_further(run, evaluation, summary)))
    unscored = not evaluation and bool(run.read_optional(run.eval_skipped))
    sections.append(("Definitions", [("list", _definitions(names.definition, imported, unscored,
                                                           replies.summary(run) is not None))]))

    run.write_text(run.report_md, markdown(title, sections, run.path))
    run.write_text(run.report_html, html_page(title, sections))
    run.write_json(run.report_json, {"observations": [asdict(o) for o in found]})
    trackers.publish(run, cfg.train.report_to, "report", {}, [run.report_html, run.report_md])
    return run.report_html


def _data_sections(run: RunDir, cfg: Recipe, evaluation: dict | None, summary: dict) -> tuple[list, list]:
    """The Data section (the data checks) and the Data mix section (data.mix runs, once training measured each
    source's rows), with their observations: each source's curve, contamination, duplicates."""
    sections, found = [], []
    checks = run.read_optional(run.data_checks)
    if checks:
        sections.append(("Data", _data(run, checks)))
    mix_blocks, per_source = mix.section(run.read_examples(), cfg, bool(summary.get("imported"))) \
        if cfg.data.mix else ([], [])
    if mix_blocks:
        sections.append(("Data mix", mix_blocks))
        found += per_source
    if checks:
        checked = checks.get("test_source", cfg.data.source)
        scored = evaluation.get("source", cfg.data.source) if evaluation else cfg.eval.source or cfg.data.source
        found += [o for o in (rules.contamination(checks, run.read_predictions(), checked, scored,
                                                  HeldOutLossDir(run.path).read_losses()),
                              rules.duplicates(checks), rules.untrained_tokens(checks), rules.markers(checks)) if o]
    return sections, found


# what a run whose answers no scoring mode suits measures instead of answer accuracy and its interval
UNSCORED = [
    "Held-out target loss = the completion-only, token-weighted loss of the held-out rows' reference replies (as "
    "validation loss; of every token, for plain-text rows); tuned − base with a 95 % paired bootstrap interval over "
    "rows. Perplexity = exp(that loss); tuned / base = exp(tuned − base), its interval the loss interval's ends "
    "exponentiated.",
    "Reply chrF = sacrebleu's sentence chrF of a greedy reply against its reference (character 1..6-grams, recall "
    "weighted twice precision) / 100; ROUGE-L = F1 of the longest common subsequence of their words (lower-cased runs "
    "of letters and digits); each 0..1, averaged over rows, tuned − base with a 95 % paired bootstrap interval over "
    "rows.",
]


def _take_it_further(run: RunDir, evaluation: dict | None, summary: dict) -> list:
    """The commands filled in for a run with an adapter: lm-eval (when it has a task for the data), vLLM, the Hub;
    and the best epoch's export when it is not the last."""
    commands = handoff.for_run(run)
    rescore = "re-score the adapter with lm-evaluation-harness, " if any(
        line.startswith("lm_eval ") for _, line in commands) else ""  # lm-eval has a task for GSM8K alone
    return [("p", f"Commands filled in for this run: {rescore}serve it with vLLM, publish it (adapter/README.md is "
                  "its model card; `tunelab export` writes a merged model or a GGUF for llama.cpp and Ollama)."),
            *_best_epoch_export(run, evaluation, summary),
            ("details", "the commands", commands)]


def _seed_repeats(run: RunDir) -> list:
    """Repeats of this run's recipe under other seeds in the folders beside it (a sweep's `--seeds` runs): the
    spread of their figures and the pairs of repeats that differ beyond the paired interval (`seeds.seed_blocks`
    over this run and them); [] when none has finished training there."""
    from tunelab.errors import UserError
    from tunelab.report.seeds import repeats, seed_blocks
    runs = [run]
    for folder in sorted(p for p in run.path.parent.iterdir() if p != run.path and (p / "summary.json").is_file()):
        try:
            other = RunDir(folder)
            other.read_recipe()
        except (UserError, OSError, ValueError):  # not a run, or one whose recipe no longer validates
            continue
        runs.append(other)
    if len(runs) < 2:
        return []
    mine = next(members for _, members in repeats(runs) if 0 in members)
    if len(mine) < 2:
        return []
    return seed_blocks([runs[i] for i in mine], [runs[i].path.name for i in mine])


def _definitions(accuracy: str, imported: dict | None, unscored: bool = False, replied: bool = True) -> list[str]:
    """The report's definitions, with the accuracy's (or, `unscored`: no answer check suits the data, the held-out
    target loss's, and the reply overlap's when replies were generated and scored: `replied`); an imported run's
    train loss (measured after each epoch) and cost (the other trainer's runtime) by their own rules."""
    definitions = DEFINITIONS[:3] + (UNSCORED[:1 + replied] + DEFINITIONS[4:] if unscored
                                     else [accuracy] + DEFINITIONS[3:])
    if imported:
        definitions[0] = ("Train loss improvement % = (epoch-1 train loss − last-epoch train loss) / epoch-1 train "
                          f"loss × 100; an epoch's train loss is {imported['train_loss_rule']}.")
        definitions = [("Cost = the other trainer's train_runtime (trainer_state.json) × recipe cost.usd_per_hour; "
                        "not priced without both.") if d.startswith("Cost = ") else d for d in definitions]
    return definitions


def _overview(run: RunDir, cfg: Recipe, summary: dict, evaluation: dict | None) -> list:
    env = run.read_optional(run.environment, {})
    cost = run.read_optional(run.cost, {})
    estimate = run.read_optional(run.estimate, {})
    data, lora, train = cfg.data, cfg.lora, cfg.train
    trained = _trainable(estimate.get("memory"))
    rows = [
        ("Model", cfg.model.name),
        ("Dataset", data.source + (f" ({data.config})" if data.config else "") + _mixed_in(data)),
        ("Method", f"{lora.method} r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, targets "
                   f"{card.targets_text(lora.target_modules)}{card.whole_text(cfg)}{trained}; "
                   + ("loss on every token (plain text)" if data.plain_text else
                      f"{'completion-only' if train.completion_only else 'full-sequence'} loss")
                   + (f"; LoRA+ (B learns at {train.loraplus_lr_ratio:g}x the lr)" if train.loraplus_lr_ratio else "")
                   + (f"; NEFTune noise alpha {train.neftune_alpha:g}" if train.neftune_alpha else "")),
        ("Prompt template", _prompt_format(data)),
        ("Split", f"{summary['train_examples']} train / {summary['val_examples']} validation "
                  f"({data.val_fraction:.0%} held out, seed {data.seed}); " + _test_rows(cfg, summary, evaluation)
                  + (f"; the train texts trained as {summary['train_windows']} windows of at most "
                     f"{train.max_length} tokens (data.chunk)" if summary.get("train_windows") else "")),
        ("Epochs", f"{_epochs_run(summary)} ("
                   + (f"{summary['train_rows_per_epoch']} train rows each, by the source weights; "
                      if "train_rows_per_epoch" in summary else "")
                   + f"batch {train.batch_size} × accumulation {train.grad_accum}, lr "
                   f"{train.lr}, {train.scheduler} schedule"
                   + (f" after {summary['warmup_steps']} warmup steps" if summary.get("warmup_steps") else "")
                   + f", max length {train.max_length})"),
        ("Device", f"{env.get('device_name', '?')} ({env.get('torch_threads', '?')} threads)"),
        ("Frameworks", ", ".join(f"{k} {env.get(k)}" for k in ("torch", "transformers", "peft", "tunelab")
                                 if env.get(k))),
        ("Wall time", f"{summary['wall_seconds'] / 60:.1f} min training "
                      f"({summary['train_tokens_per_second']:.0f} tokens/s, peak RSS {summary['peak_rss_mib']:.0f} MiB"
                      + (f", peak GPU memory {summary['peak_gpu_memory_mib'] / 1024:.1f} GiB"
                         if summary.get("peak_gpu_memory_mib") else "") + ")"
         if "wall_seconds" in summary else None),
        ("Cost", f"${cost['cost_usd']:.4f} measured ({cost['device_hours']:.4f} device-hours × "
                 f"${cost['usd_per_hour']:.3f}/h; {cost['price_source']})" if cost else "not priced"),
        ("Eval cost", f"${scored['cost_usd']:.4f} measured ({scored['device_hours'] * 60:.1f} device-min of answer "
                      f"passes × ${scored['usd_per_hour']:.3f}/h; base passes reused from the cache not counted)"
         if (scored := run.eval_cost()) else None),
    ]
    if lora.continue_from:
        rows.insert(3, ("Continued from", f"the adapter in {lora.continue_from} (lora.continue_from; copied to "
                                          "adapters/start/): epoch 0 is that adapter; the base model's figures count "
                                          "the training that made it too"))
    if summary.get("imported"):
        rows = _imported_rows(summary, rows, cost)
    if estimate.get("cost_usd") is not None:
        memory = estimate.get("gpu_memory")
        rows.append(("Estimate before training", f"${estimate['cost_usd']:.4f}, {estimate['hours'] * 60:.1f} min "
                                                 f"({estimate['flops'] / 1e12:.1f} TFLOP; {estimate['basis']})"
                     + (f"; peak GPU memory {describe(memory, estimate['memory_gib'])}" if memory else "")))
    return [("table", ["", "value"], rows)]


def _trainable(counts: dict | None) -> str:
    """The Method row's weights trained and their share of the model's, from the estimate made before training (its
    model built from the config on the meta device, PEFT's adapters added there too); "" without one."""
    if not counts:
        return ""
    trained, every = counts["trainable"], counts["params"]
    return f" ({_weights(trained)} weights trained, {100 * trained / every:.2g} % of the model's {_weights(every)})"


def _weights(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def _mixed_in(data) -> str:
    """The Overview's data.mix sources: " + path (config) as name (first N rows)" each."""
    names = source_names(data)[1:]
    return "".join(f" + {m.source}" + (f" ({m.config})" if m.config else "") + f" as {name}"
                   + (f" (first {m.limit} rows)" if m.limit else "") for m, name in zip(data.mix, names))


def _imported_rows(summary: dict, rows: list[tuple], cost: dict) -> list[tuple]:
    """The Overview of a run trained elsewhere (`tunelab import`): where it came from, what was read from its
    files (LoRA settings, epochs, runtime) and what tunelab cannot know (the other trainer's batch, lr, device)."""
    imported = summary["imported"]
    runtime = imported.get("train_runtime_seconds")
    replaced = {
        "Method": f"{dict(rows)['Method']}; trained outside tunelab, imported from `{imported['source']}` (LoRA "
                  "settings read from its adapter_config.json)",
        "Epochs": f"{_epochs_run(summary)}: adapters of epochs {', '.join(imported['adapters'])} imported (the "
                  "other trainer's batch size, learning rate and schedule are its own, not the recipe's)",
        "Device": "the other trainer's (not recorded)",
        "Frameworks": None,
        "Wall time": f"{runtime / 60:.1f} min training (the other trainer's train_runtime)" if runtime else
                     "not recorded (no trainer_state.json)",
        "Cost": f"${cost['cost_usd']:.4f} ({cost['device_hours']:.4f} hours × ${cost['usd_per_hour']:.3f}/h; "
                f"{cost['price_source']})" if cost else
                "not priced: set cost.usd_per_hour to price the other trainer's train_runtime" if runtime else
                "not priced (no train_runtime recorded)",
    }
    return [(name, replaced.get(name, value)) for name, value in rows if replaced.get(name, value) is not None]


def _test_rows(cfg: Recipe, summary: dict, evaluation: dict | None) -> str:
    """The Overview's test-row count, naming its source; when the eval scored another source than the one
    counted at train time (eval.source set on a finished run), it says so and gives what was scored."""
    counted = summary.get("test_source", cfg.data.source)  # runs from before the key: the training source
    text = f"{summary['test_examples']} test rows " + ("kept for evaluation" if counted == cfg.data.source else
                                                       f"of {counted} (eval.source) for evaluation")
    scored = (evaluation or {}).get("source", cfg.data.source)
    n = next((v["n"] for v in (evaluation or {}).values() if isinstance(v, dict) and "n" in v), None)  # every pass
    if evaluation and scored != counted:
        text += f"; the eval scored {n} questions of {scored} instead (eval.source set after training)"
    if (evaluation or {}).get("turns") == "all":
        text += f"; every assistant reply of the conversations scored asked after the turns before it (eval.turns: " \
                f"all), {n} questions"
    return text


def _epochs_run(summary: dict) -> str:
    """The Overview's epoch count: "3", "2, max_steps 50: the last epoch's 14 of 36 steps", or "2 of 3,
    stopped early by patience 1"."""
    (trained, planned), patience = trained_and_planned(summary), summary.get("early_stopping_patience")
    if stopped_early(summary):
        threshold = summary.get("early_stopping_threshold")
        passes = counts_passes(summary)
        how = ", ".join(["validation passes"] * passes + [f"threshold {threshold:g}"] * bool(threshold))
        return f"{trained} of {planned}, stopped early" + \
            (f" at step {summary['steps']} of {summary['steps_planned']}" if passes else "") + \
            f" by patience {patience}" + (f" ({how})" if how else "")
    short = cut_short(summary)
    return f"{trained}" + (f", max_steps {summary['max_steps']}: the last epoch's {short[0]} of {short[1]} "
                           "steps" if short else "") \
        + (f", early stopping (patience {patience}) not triggered" if patience else "")


def _held_out_rows(held_out: dict) -> list:
    """Key metrics of held-out replies measured by loss: base → tuned target loss, and tuned against each prompting
    baseline's."""
    rows = []
    if d := held_out.get("loss_difference"):
        rows.append(("Held-out target loss", f"{d['means'][0]:.3f} → {d['means'][1]:.3f}",
                     f"{d['delta']:+.3f} ({100 * d['delta'] / d['means'][0]:+.1f} %), 95 % CI {d['ci95'][0]:+.3f}.."
                     f"{d['ci95'][1]:+.3f}, {d['n']} {held_out['split']} rows, base model → tuned adapter, paired"))
        rows.append(("Held-out perplexity", f"{extra.perplexity(d['means'][0])} → {extra.perplexity(d['means'][1])}",
                     f"{extra.perplexity_ratio(d)}, exp of the target loss"))
    for what, d in extra.loss_baselines(held_out):
        short, how = what.split(" (", 1)
        rows.append((f"vs {short} (target loss)", f"{d['means'][0]:.3f} → {d['means'][1]:.3f}",
                     f"{d['delta']:+.3f}, 95 % CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}, {d['n']} rows, paired; "
                     f"{how.rstrip(')')}"))
    return rows


def _key_metrics(summary: dict, epochs: list[dict], evaluation: dict | None, skipped: dict | None = None,
                 held_out: dict | None = None, generated: dict | None = None) -> list:
    one_epoch = summary["train_loss_improvement_pct"] is None  # one epoch measured: no first-to-last change
    rows = [("Train loss improvement",
             ("— (one epoch)" if summary["epochs"] == 1 else "— (one epoch measured)") if one_epoch else
             f"{summary['train_loss_improvement_pct']:.1f} %",
             f"{summary['final_train_loss']:.4f}" if one_epoch else
             f"{summary['first_epoch_train_loss']:.4f} → {summary['final_train_loss']:.4f}"),
            ("Validation loss improvement", f"{summary['val_loss_improvement_pct']:.1f} %",
             f"{summary['initial_val_loss']:.4f} → {summary['final_val_loss']:.4f} (perplexity "
             f"{extra.perplexity(summary['initial_val_loss'])} → {extra.perplexity(summary['final_val_loss'])})"),
            ("Validation token accuracy", f"{100 * summary['final_val_token_accuracy']:.1f} %",
             f"{100 * summary['initial_val_token_accuracy']:.1f} % before training")]
    names = naming(evaluation)
    if evaluation and "base" in evaluation and "tuned" in evaluation:
        for metric in ("flexible", "strict"):
            d = evaluation[f"{metric}_difference"]
            rows.append((f"{names.title} ({getattr(names, metric)})",
                         f"{100 * evaluation['base'][f'{metric}_accuracy']:.1f} % → "
                         f"{100 * evaluation['tuned'][f'{metric}_accuracy']:.1f} %",
                         f"{d['delta_pts']:+.1f} pts, 95 % CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}, "
                         f"n = {d['n']}" + (f" questions of {evaluation['source']}" if "source" in evaluation else "")
                         + f", McNemar p = {d['mcnemar_p']:.2g}"))
        if m := evaluation.get("mc2_difference"):  # labelled options (eval.choice_labels)
            rows.append((f"{names.title} (mc2: the probability on the true options)",
                         f"{100 * evaluation['base']['mc2']:.1f} % → {100 * evaluation['tuned']['mc2']:.1f} %",
                         f"{m['delta_pts']:+.1f} pts, 95 % CI {m['ci95_pts'][0]:+.1f}..{m['ci95_pts'][1]:+.1f} "
                         f"(paired bootstrap over questions), n = {m['n']}"))
        rows += replies.answers_rows(evaluation)  # tool scoring: the replies due no call, by their words
    if not evaluation:
        rows.append(("Answer accuracy", "not measured", f"no answer check: {skipped['reason']}" if skipped else
                     "the eval stage has not run (tunelab eval RUN_DIR)"))
        rows += _held_out_rows(held_out or {}) + replies.key_rows(generated)
    for b in baselines(evaluation) if evaluation and "tuned" in evaluation else []:
        d = b["vs"]["flexible"]
        rows.append((f"vs {b['what']} ({names.flexible})",
                     f"{100 * evaluation[b['model']]['flexible_accuracy']:.1f} % → "
                     f"{100 * evaluation['tuned']['flexible_accuracy']:.1f} %",
                     f"{d['delta_pts']:+.1f} pts, 95 % CI {d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f}, "
                     f"n = {d['n']}; {b['how']}"))
    rows += sampled.key_rows(evaluation or {})
    if evaluation and evaluation.get("best_epoch"):
        best = evaluation["best_epoch"]
        rows.append(("Best epoch by accuracy", f"epoch {best['epoch']}",
                     f"{100 * best['flexible_accuracy']:.1f} % {names.flexible} ({best['rule']}"
                     + ("; picked on these questions: optimistic" if len(evaluation["epochs"]) > 1 else "") + ")"))
    if (step := (evaluation or {}).get("best_step")) and step["model"].startswith("step-"):
        rows.append(("Best point of training by accuracy", f"step {step['step']} (epoch {step['epoch']:g})",
                     f"{100 * step['flexible_accuracy']:.1f} % {names.flexible} ({step['rule']}; picked on these "
                     "questions: optimistic)"))
    return [("table", ["figure", "value", "detail"], rows),
            *_epoch_table(epochs, evaluation, held_out, None if evaluation else generated, summary["epochs"],
                          cut_short(summary))]


def _epoch_table(epochs: list[dict], evaluation: dict | None, held_out: dict | None, generated: dict | None,
                 trained: int, short: tuple[int, int] | None = None) -> list:
    """The per-epoch table: losses, token accuracy, and the answer accuracy of each scored epoch (or the held-out
    target loss, for answers measured by loss, with the generated replies' chrF when generated per epoch), each
    against the epoch before; `short`: the last epoch's steps of a whole one's (`rundir.cut_short`)."""
    names = naming(evaluation)
    by_loss = not evaluation and bool((held_out or {}).get("loss_difference"))
    scored = _epoch_loss if by_loss else _epoch_accuracy
    accuracy = {r["epoch"]: r for r in (held_out if by_loss else evaluation or {}).get("epochs") or []}
    chain = _chrf_chain(generated, trained) if by_loss else {}
    mc2 = _mc2_chain(evaluation) if not by_loss else {}
    first = "the adapter the run continued" if START in ((held_out or {}).get("losses") or evaluation or {}) else \
        "the base model"
    per_epoch = [(f"{e['epoch']} ({short[0]} of {short[1]} steps)" if short and e["epoch"] == trained else e["epoch"],
                  e["train_loss"], e["val_loss"],
                  None if e["train_token_accuracy"] is None else f"{100 * e['train_token_accuracy']:.1f} %",
                  f"{100 * e['val_token_accuracy']:.1f} %",
                  *scored(e["epoch"], accuracy, held_out if by_loss else evaluation),
                  *(chain.get(e["epoch"], (None, None)) if chain else ()), *((mc2.get(e["epoch"]),) if mc2 else ()),
                  e["seconds"], e["tokens"])
                 for e in epochs]
    return [("p", "Per epoch (epoch 0 = before the first optimizer step; its "
                  + (f"held-out target loss ({held_out['split']} rows) is that of {first}"
                     + (", as is its reply chrF" if chain else "") + "):" if by_loss else
                     f"accuracy is that of {first}):")),
            ("table", ["epoch", "train loss", "val loss", "train token acc", "val token acc",
                       "held-out target loss" if by_loss else f"{names.short} ({names.flexible})",
                       "vs previous epoch", *(["reply chrF", "vs previous epoch (chrF)"] if chain else []),
                       *(["mc2 (true options)"] if mc2 else []), "seconds", "tokens"], per_epoch)]


def _step_table(evaluation: dict | None, validation: list[dict]) -> list:
    """Accuracy during training (train.keep_step_adapters): the adapter at each validation pass inside an epoch
    among the epochs' own, in training order, with the validation loss of that pass and the change from the point
    before; [] without step adapters."""
    steps = (evaluation or {}).get("steps")
    if not steps:
        return []
    names, val = naming(evaluation), {r["step"]: r["val_loss"] for r in validation}
    first = "the adapter the run continued" if START in evaluation else "the base model"
    rows = [(0, 0.0, val.get(0), f"{100 * evaluation.get(START, evaluation['base'])['flexible_accuracy']:.1f} %",
             "—")]
    for r in steps:
        d = (r.get("vs_previous") or {}).get("flexible")
        rows.append((r["step"], r["epoch"], val.get(r["step"]), f"{100 * r['flexible_accuracy']:.1f} %",
                     f"{d['delta_pts']:+.1f} pts ({d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f})" if d else "—"))
    return [("p", f"During training (train.keep_step_adapters: the adapter at each train.val_every validation pass "
                  f"inside an epoch, and at each epoch's end; step 0 is {first}):"),
            ("table", ["step", "epoch", "val loss", f"{names.short} ({names.flexible})", "vs previous point"], rows)]


def _mc2_chain(evaluation: dict | None) -> dict[int, str]:
    """Epoch -> the mean mc2 (eval.choice_labels: the probability on the true options) of the pass scoring it, epoch 0
    the base model's (or the adapter the run continued); {} without labelled options."""
    if not (evaluation or {}).get("mc2_difference"):
        return {}
    out = {0: f"{100 * evaluation.get(START, evaluation['base'])['mc2']:.1f} %"}
    return out | {r["epoch"]: f"{100 * r['mc2']:.1f} %" for r in evaluation.get("epochs") or [] if "mc2" in r}


def _chrf_chain(generated: dict | None, trained: int) -> dict[int, tuple]:
    """Epoch -> (the generated replies' mean chrF, its change from the epoch generated before with the interval),
    epoch 0 the base model's (or the adapter the run continued); {} unless the replies were generated per epoch."""
    steps = (generated or {}).get("epochs") or []
    if not steps:
        return {}
    out = {0: (f"{steps[0]['chrf']['means'][0]:.3f}", None)}
    for step in steps:
        epoch = int(step["model"].split("-")[1]) if step["model"].startswith("epoch-") else trained
        d = step["chrf"]
        out[epoch] = (f"{d['means'][1]:.3f}", f"{d['delta']:+.3f} ({d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})")
    return out


def _epoch_loss(epoch: int, measured: dict, held_out: dict) -> tuple:
    """(held-out target loss, change vs the epoch measured before with its interval) of one epoch row."""
    if epoch == 0:
        return f"{held_out['losses'].get(START, held_out['losses']['base'])['loss']:.3f}", None
    row = measured.get(epoch)
    if row is None:
        return None, None
    d = row.get("vs_previous")
    return f"{row['loss']:.3f}", None if d is None else f"{d['delta']:+.3f} ({d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})"


def _epoch_accuracy(epoch: int, accuracy: dict, evaluation: dict | None) -> tuple:
    """(accuracy, change vs the epoch before with its interval) of one epoch row, or dashes when not scored."""
    if epoch == 0 and evaluation and "base" in evaluation:
        return f"{100 * evaluation.get(START, evaluation['base'])['flexible_accuracy']:.1f} %", None
    row = accuracy.get(epoch)
    if row is None:
        return None, None
    d = (row.get("vs_previous") or row.get("vs_base") or {}).get("flexible")
    change = None if d is None else f"{d['delta_pts']:+.1f} pts ({d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f})"
    return f"{100 * row['flexible_accuracy']:.1f} %", change


def _learning_pictures(run: RunDir, summary: dict, epochs: list[dict], evaluation: dict | None) -> list:
    """The learning-curve pictures: loss and token accuracy (per epoch and per step), and answer accuracy per
    scored epoch with the lowest validation pass's adapter starred where it was saved."""
    imported, names = summary.get("imported"), naming(evaluation)
    curves = learning_curves(epochs, run.read_steps(), run.report_files / "learning_curves.png",
                             run.read_jsonl(run.validation),
                             train_label="train (after the epoch)" if imported else "train (epoch mean)")
    pictures = [("img", curves, "Loss and token accuracy per epoch (epoch 0 = before training), and train loss "
                                + ("per logged step as the other trainer logged it (its own loss rule)" if imported
                                   else "per optimizer step with each validation pass at its step"))]
    zero = "the adapter the run continued" if run.start_adapter.is_dir() else "the base model"
    if evaluation and evaluation.get("epochs"):
        at = summary["best_val_step"] / steps_per_epoch(summary) \
            if "best-loss" in evaluation else None  # adapters/best-loss, in epochs
        pictures.append(("img", accuracy_per_epoch(evaluation, run.report_files / "accuracy_per_epoch.png", at),
                         f"{names.title} of {zero} (epoch 0) and after each scored epoch"
                         + (" (the star: the lowest validation pass's adapter)" if at is not None else "")
                         + ", same questions"))
    held_out = None if evaluation else HeldOutLossDir(run.path).read_eval_summary()
    if (held_out or {}).get("loss_difference") and held_out.get("epochs"):
        pictures.append(("img", held_out_loss_per_epoch(held_out, epochs, run.report_files /
                                                        "held_out_loss_per_epoch.png"),
                         f"Target loss of the held-out {'texts' if held_out.get('texts') else 'reference replies'}: "
                         f"{zero} (epoch 0) and after each "
                         "measured epoch, same rows, beside the validation loss"
                         + (" and the baselines' (grey)" if extra.loss_baselines(held_out) else "")))
    generated = None if evaluation else replies.summary(run)
    if (generated or {}).get("epochs"):
        pictures.append(("img", reply_overlap_per_epoch(generated, trained_and_planned(summary)[0],
                                                        run.report_files / "reply_overlap_per_epoch.png"),
                         f"Mean chrF and ROUGE-L of the generated replies against the references: {zero} "
                         "(epoch 0) and after each generated epoch, same rows"
                         + (" and the baselines' chrF (grey)" if replies.baselines(generated) else "")))
    return pictures


def _observations(run: RunDir, summary: dict, epochs: list[dict], evaluation: dict | None) -> list:
    names = naming(evaluation)
    found = [rules.overfitting(epochs, val_rows(run)), rules.train_trend(epochs, summary), rules.token_accuracy(epochs)]
    found += [o for o in (rules.validation_between_epochs(run.read_jsonl(run.validation), summary),) if o]
    weighted_val = None if summary.get("imported") else mix.weighted_val_loss(run.read_examples(), run.read_recipe())
    found += [o for o in (rules.generalisation_gap(epochs, weighted_val), rules.truncation(summary),
                          rules.imported_tokens(summary)) if o]
    if evaluation and "flexible_difference" in evaluation:
        for metric in ("flexible", "strict"):
            found.append(rules.accuracy_change(evaluation[f"{metric}_difference"], getattr(names, metric),
                                               evaluation["base"][f"{metric}_accuracy"],
                                               evaluation["tuned"][f"{metric}_accuracy"], names.accuracy))
        found += [o for o in (rules.mc2_change(evaluation),) if o]
        found += replies.answers_verdicts(evaluation, summary.get("epochs"))
        if c := evaluation.get("continued"):  # what this run's own training added to the adapter it continued
            found.append(rules.accuracy_change(c["tuned_vs_start"]["flexible"], names.flexible,
                                               evaluation[START]["flexible_accuracy"],
                                               evaluation["tuned"]["flexible_accuracy"],
                                               f"{names.accuracy} from the adapter this run continued to its own",
                                               "tuned − the adapter continued (adapters/start/)"))
        found += [o for o in (rules.imitation_without_solving(epochs, evaluation),
                              rules.prompting_baselines(evaluation), rules.answer_budget(evaluation),
                              rules.unfinished_thinking(evaluation),
                              rules.unread_answers(evaluation), sampled.verdict(evaluation)) if o]
        found += rules.accuracy_per_epoch(evaluation)
        found += rules.other_models(evaluation)
        found += [o for o in (rules.best_loss_accuracy(evaluation, summary),) if o]
    if evaluation and evaluation.get("by_category"):
        found.append(rules.categories(evaluation["by_category"], f"{names.title} ({names.flexible})"))
    before = [e for e in run.read_examples() if e["epoch"] == 0  # the base model's losses, per row;
              and MIX_SEP not in e["id"]]  # validation rows of data.source, as the test rows are (not data.mix's)
    losses = {split: [(e["loss"], e["tokens"]) for e in before if e["split"] == split] for split in ("test", "val")}
    if run.start_adapter.is_dir():  # lora.continue_from: epoch 0 was that adapter, so no base-model losses to compare
        found.append(rules.Observation("info", "The familiarity check (is the test set more familiar to the base "
                                       "model than the training data?) was not made: this run continued an adapter, "
                                       "so its losses before training are that adapter's, not the base model's.",
                                       "made only when epoch 0 is the base model (no lora.continue_from)"))
    elif not (evaluation or {}).get("source"):  # eval.source set after training: the rows measured were not scored
        found += [o for o in (rules.familiarity(losses["test"], losses["val"]),) if o]
    cost = run.read_optional(run.cost)
    found += [o for o in (rules.early_stopping(epochs, summary, cost, run.read_jsonl(run.validation)),
                          rules.cost_accuracy(run.read_optional(run.estimate), cost, summary),
                          rules.memory_accuracy(run.read_optional(run.estimate), summary)) if o]
    return found


def _insights(run: RunDir, analysis: dict, texts: bool = False) -> list:
    """Word cloud, top terms, clusters, outliers and the data map; `texts`: rows of plain text, which ask nothing."""
    blocks: list = []
    if run.wordcloud.exists():
        blocks.append(("img", run.wordcloud, f"Word cloud of the training {'texts' if texts else 'questions'} (stop "
                                             "words and template words removed)"))
    terms = run.read_optional(run.terms, {})
    if terms.get("train"):
        blocks.append(("table", ["term", "count", "share"],
                       [(t["term"], t["count"], f"{100 * t['share']:.1f} %") for t in terms["train"][:12]]))
    if run.umap.exists():
        blocks.append(("img", run.umap, f"UMAP of {analysis['embedder']} embeddings, coloured by KMeans "
                                                f"cluster (k = {analysis['k']}); outliers circled. Interactive: "
                                                "analysis/map.html"))
    clusters = run.read_optional(run.clusters, [])
    line = (f"k = {analysis['k']} chosen by silhouette ({analysis['silhouette']}) over "
            f"{len(analysis['silhouette_by_k'])} candidates." if len(analysis["silhouette_by_k"]) > 1
            else f"k = {analysis['k']} (given).")
    line += " " + rules.cluster_separation(analysis.get("silhouette"), analysis["k"])
    if "adjusted_rand_index" in analysis:
        line += (f" Against the data's labels: adjusted Rand index {analysis['adjusted_rand_index']:.3f}, purity "
                 f"{analysis['purity']:.3f}; {analysis['rarest_label_in_outliers']} of {analysis['rarest_label_rows']} "
                 f"rows of the rarest label ({analysis['rarest_label']!r}) are among the outliers.")
    blocks.append(("p", line))
    mixed = any("sources" in c for c in clusters)  # data.mix: each cluster's rows by source
    by_loss = any("tuned_held_out_loss" in c for c in clusters)  # answers measured by loss: per cluster, not acc
    replied = any("tuned_reply_chrf" in c for c in clusters)  # and their generated replies' chrF
    blocks.append(("table", ["cluster", "name (c-TF-IDF)", "size", *(["sources"] if mixed else []), "mean loss",
                             *(["held-out rows", "held-out loss base → tuned"] if by_loss else
                               ["base acc", "tuned acc"]), *(["reply chrF base → tuned"] if replied else []),
                             "example"],
                   [(c["cluster"], c["name"], c["size"], *([_shares(c.get("sources", {}))] if mixed else []),
                     c["mean_loss"], *(_held_out_cells(c) if by_loss else
                                       (pct(c.get("base_accuracy")), pct(c.get("tuned_accuracy")))),
                     *([_reply_cell(c)] if replied else []), c["examples"][0][:140]) for c in clusters]))
    blocks.append(("p", "Each cluster's example is its most typical row: the one nearest its centroid in the "
                        "embedding space KMeans clustered."))
    if by_loss:
        blocks.append(("p", "Held-out rows join the cluster of their nearest centroid; their target loss is "
                            "token-weighted, base model → tuned adapter "
                            f"({extra.held_out_heading(HeldOutLossDir(run.path).read_eval_summary())})"
                            + ("; reply chrF is the mean over the rows of the greedy replies' chrF against the "
                               "references (Held-out replies, generated)" if replied else "") + "."))
    blocks += _outlier_blocks(run.read_optional(run.outliers, []), texts)
    if "cartography" in analysis and run.cartography_png.exists():
        blocks.append(("img", run.cartography_png, "Data map of the training examples: " + ", ".join(
            f"{k} {v}" for k, v in analysis["cartography"].items())))
        carto = run.read_optional(run.cartography, {})
        if carto.get("hardest"):
            blocks.append(("table", ["id", "confidence", "variability", "hardest examples"],
                           [(p["id"], p["confidence"], p["variability"], p["text"][:140])
                            for p in carto["hardest"][:5]]))
    return blocks


def _outlier_blocks(outliers: list[dict], texts: bool) -> list:
    """The outliers' sentence and table (the first OUTLIERS_SHOWN); `texts`: rows of plain text."""
    if not outliers:
        return []
    shown = outliers[:OUTLIERS_SHOWN]
    return [("p", f"{len(outliers)} outliers (rare {'texts' if texts else 'problems'}: the rows most isolated in "
                  "embedding space, by local outlier factor, and, once trained, highest in the model's loss — the "
                  "mean of the two percentile ranks; analysis.outlier_share of the rows)"
                  + (f"; the top {len(shown)}:" if len(shown) < len(outliers) else ":")),
            ("table", ["id", "score", "why", "text" if texts else "question"],
             [(o["id"], o["score"], o["why"], o["text"][:160]) for o in shown])]


FLIP_EXAMPLES = 3  # gained and lost questions shown per compared pair
OUTLIERS_SHOWN = 10  # rows of analysis/outliers.json in the report
OVERLAP_EXAMPLES = 5  # overlapping test / training pairs shown


def _data(run: RunDir, checks: dict) -> list:
    """The data checks: overlap with the training rows, duplicates, lengths, scoreable targets."""
    s, rows = checks["settings"], checks["rows"]
    blocks: list = [("p", f"Verdict: {checks['verdict']}."),
                    ("table", ["overlap with train", "rows", "exact", f"{s['ngram']}-gram",
                               f"near (cosine ≥ {s['near_threshold']})" if s["near"] else "near (not run)"],
                     [(split, rows[split], c["exact"], c["ngram"], c["near"])
                      for split, c in checks["overlap_counts"].items()]
                     + [(f"eval.also {name}", x["rows"], *(x["overlap_counts"][k] for k in ("exact", "ngram", "near")))
                        for name, x in checks.get("extra_sets", {}).items()])]
    for o in [o for o in checks["overlap"] if o["split"] == "test"][:OVERLAP_EXAMPLES]:
        blocks.append(("details", f"{o['kind']} {o['row_id']} ~ {o['train_id']} (score {o['score']})",
                       [(o["row_id"], o["row_text"]), (o["train_id"], o["train_text"])]))
    d, ln = checks["train_duplicates"], checks["lengths"]
    blocks.append(("table", ["figure", "value"], [
        *[(f"{name}: train / validation rows, test rows overlapping it", f"{c['train']}{source_note(c)} / "
           f"{c['validation']}, {c['test_overlap']}") for name, c in rows.get("sources", {}).items()],
        ("train rows dropped by data.dedup", rows["deduplicated"]),
        ("exact duplicates inside train", f"{d['exact_rows']} rows in {d['exact_groups']} groups"),
        ("near-duplicate pairs inside train", d["near_pairs"]),
        ("tokens per row (p50 / p99 / max)", f"{ln['total']['p50']} / {ln['total']['p99']} / {ln['total']['max']}"),
        ("rows over train.max_length", f"{ln['truncated']} (max_length {ln['max_length']})"),
        ("padding share of the batch plan", f"{100 * ln['padding_share']:.1f} %"),
        ("max_length advice", ln["recommendation"]),
        *([("tokens used with untrained embedding rows (input / output)", untrained_cell(checks["untrained_tokens"]))]
          if "untrained_tokens" in checks else []),
        *[targets_line(k, v) for k, v in checks["targets"].items() if v["rows"]]]))
    if run.lengths_png.exists():
        blocks.append(("img", run.lengths_png, "Tokens per row (prompt + target + EOS), train.max_length marked"))
    return blocks


def _shares(counts: dict[str, int]) -> str:
    """"gsm8k 95 %, alpaca 5 %": a cluster's rows by source."""
    total = sum(counts.values())
    return ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in counts.items()) if total else "–"


def _held_out_cells(cluster: dict) -> tuple:
    """A cluster's held-out rows and their target loss, base → tuned (dashes when none joined it)."""
    if not {"base_held_out_loss", "tuned_held_out_loss"} <= cluster.keys():
        return cluster.get("held_out_rows", 0), None
    return cluster["held_out_rows"], f"{cluster['base_held_out_loss']:.3f} → {cluster['tuned_held_out_loss']:.3f}"


def _reply_cell(cluster: dict) -> str | None:
    """A cluster's held-out replies' mean chrF, base → tuned (a dash when none joined it)."""
    if not {"base_reply_chrf", "tuned_reply_chrf"} <= cluster.keys():
        return None
    return f"{cluster['base_reply_chrf']:.3f} → {cluster['tuned_reply_chrf']:.3f}"


def _flips(run: RunDir, evaluation: dict) -> list:
    """Per compared pair: how many questions were gained and lost, a few of each with both completions, and
    per analysis cluster (when the analysis placed the questions) which problem types moved."""
    by = {(p["model"], p["id"]): p for p in run.read_predictions()}
    clusters = run.read_optional(run.eval_clusters, {})
    names = {c["cluster"]: c["name"] for c in run.read_optional(run.clusters, [])}
    blocks: list = [("p", f"A question is gained when the later model answers it right ({naming(evaluation).flexible}) "
                          "and the earlier one wrong, lost the other way round; same questions, "
                          + ("each option's log-likelihood (nothing generated)."
                             if evaluation.get("scoring") == "choice" else "greedy decoding."))]
    for f in evaluation["flips"]:
        gained, lost = f["gained"], f["lost"]
        blocks.append(("p", f"{f['from']} → {f['to']}: {len(gained)} gained, {len(lost)} lost "
                            f"(net {len(gained) - len(lost):+d})."))
        for verb, ids in (("gained", gained), ("lost", lost)):
            for i in ids[:FLIP_EXAMPLES]:
                a, b = by[(f["from"], i)], by[(f["to"], i)]
                blocks.append(("details", f"{verb} {i}: {a['question'][:100]}",
                               [("question", a["question"]), ("reference", str(a["reference"])),
                                (f"{f['from']} (answer {clip(a['flexible_answer'])})", a["completion"]),
                                (f"{f['to']} (answer {clip(b['flexible_answer'])})", b["completion"])]))
        if clusters:
            per = {}
            for verb, ids in (("gained", gained), ("lost", lost)):
                for i in ids:
                    c = clusters.get(i)
                    if c is not None:
                        per.setdefault(c, {"gained": 0, "lost": 0})[verb] += 1
            if per:
                blocks.append(("table", ["cluster", "name", "gained", "lost", "net"],
                               [(c, names.get(c, "?"), v["gained"], v["lost"], v["gained"] - v["lost"])
                                for c, v in sorted(per.items(), key=lambda kv: kv[1]["lost"] - kv[1]["gained"])]))
    return blocks


def _tool_outcomes(outcomes: dict[str, dict[str, int]]) -> list:
    """Tool scoring: each model's replies by outcome (right, no call, a call not due, the wrong tool, the wrong
    arguments), so that a miss says what to fix."""
    return [("p", "Each reply's calls (as tool-call accuracy reads them) against its reference's: "
                  + "; ".join(f"{name} = {meaning}" for name, meaning in OUTCOMES.items()) + "."),
            ("table", ["model", *OUTCOMES], [(name, *counts.values()) for name, counts in outcomes.items()])]


def _samples(rows: list[dict], skipped: dict, max_new_tokens: int, chrf: dict | None = None) -> list:
    """The base and tuned answers to a few held-out prompts, side by side, when no scoring mode suits the data; each
    reply with its chrF against the reference when scored (`chrf`: (row id, model) -> chrF)."""
    chrf = chrf or {}
    blocks: list = [("p", f"No answer check ({skipped['reason']}). The first {len(rows)} {rows[0]['split']} "
                          "prompts, answered greedily by the base model and by the tuned adapter, until the "
                          f"end-of-sequence token or {max_new_tokens} new tokens.")]
    for r in rows:
        said = [(model + (f" (chrF {chrf[r['id'], model]:.3f})" if (r["id"], model) in chrf else ""), r[model])
                for model in ("base", "tuned")]
        blocks.append(("details", f"{r['id']}: {' '.join(r['question'].split())[:100]}",
                       [("question", r["question"]), ("reference", r["reference"]), *said]))
    return blocks


def _worked_and_watch(found: list) -> list:
    worked = [o.text for o in found if o.kind == "good"] or ["Nothing passed its rule as an improvement."]
    watch = [o.text for o in found if o.kind == "watch"] or ["No rule flagged a problem."]
    return [("p", "What worked:"), ("list", worked), ("p", "What to watch:"), ("list", watch)]


def _best_epoch_export(run: RunDir, evaluation: dict | None, summary: dict) -> list:
    """When an earlier epoch's adapter scored best (the eval's best-epoch rule) — or, without answer accuracy, had
    the lowest validation loss — how to take that one instead."""
    best = (evaluation or {}).get("best_epoch") or {}
    if not best:  # no answer accuracy (data no scoring mode suits, or not evaluated yet): the validation loss
        lowest, kept = run.lowest_adapter()
        if kept is None or kept == summary["epochs"]:  # the base model's, or the final adapter's
            return []
        which, folder = (f"step {lowest['step']}'s", "adapters/best-loss") if kept == BEST_LOSS else \
            (f"epoch {kept}'s", f"adapters/epoch-{kept}")
        return [("p", f"The lowest validation loss is {which} ({lowest['val_loss']:.4f}, against "
                      f"{summary['final_val_loss']:.4f} after the last step): `tunelab export {run.path} OUT --epoch "
                      f"best-loss` exports its adapter ({folder}) with its own model card; the commands below use "
                      "the final adapter.")]
    step = evaluation.get("best_step") or {}
    if step.get("model", "").startswith("step-") and run.step_adapter(step["step"]).is_dir():
        return [("p", f"The best point of training by answer accuracy is step {step['step']} (epoch "
                      f"{step['epoch']:g}; {step['rule']}): `tunelab export {run.path} OUT --epoch {step['model']}` "
                      f"exports its adapter (adapters/{step['model']}) with its own model card, merged, as GGUF or "
                      "--adapter-only; the commands below use the final adapter.")]
    if best["epoch"] >= summary["epochs"] or not run.epoch_adapter(best["epoch"]).is_dir():
        return []
    return [("p", f"The best epoch by answer accuracy is epoch {best['epoch']}, not the last ({best['rule']}): "
                  f"`tunelab export {run.path} OUT --epoch best` exports its adapter (adapters/epoch-{best['epoch']}) "
                  f"with its own model card, merged, as GGUF or --adapter-only; the commands below use the final "
                  f"adapter.")]


def _prompt_format(data) -> str:
    """How rows became text: the template, or turns written by the tokenizer's chat template."""
    if data.messages:
        return (f"conversations in field {data.messages!r}: the turns before the last assistant turn, then that "
                f"turn (the target), through the tokenizer's chat template")
    optional = (f"; optional fields {', '.join(data.optional_fields)} (their paragraph is left out when empty)"
                if data.optional_fields else "")
    optional += "".join(f"; rows with no {{{name}}}: {template!r}" for name, template in data.template_if_empty.items())
    if data.chat_template:
        return (f"user turn {data.template!r}, assistant turn {data.target!r}, through the tokenizer's chat "
                f"template{optional}")
    return repr(data.template + data.target) + optional
