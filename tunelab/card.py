"""The model card: adapter/README.md in the Hugging Face Hub's format, every number read from the run directory.

YAML metadata (base_model, library_name: peft, pipeline_tag, tags, datasets and license where known, and a
model-index with the measured answer accuracies and validation loss), then what was trained, the
per-epoch table, the evaluation, the cost, how to load it and where to take it next. Written when training
ends, refreshed when evaluation ends; `tunelab export` copies it. The adapter's adapter_config.json gets
the same `base_model` (the Hub id, not a local cache path) so a shared adapter loads anywhere.

Run as: tunelab train quickstart    (then: cat runs/quickstart/adapter/README.md)
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab import handoff
from tunelab.evaluate.scoring import naming
from tunelab.evaluate.summary import baselines
from tunelab.handoff import hub_id, is_local, known_license
from tunelab.report.sampled import line as sampled_line
from tunelab.rundir import (BEST_LOSS, HeldOutLossDir, RepliesDir, RunDir, counts_passes, cut_short, lowest_pass,
                            stopped_early, trained_and_planned)


def write(run: RunDir) -> Path | None:
    """(Re)write the run's model card (adapter/README.md) and its adapter_config.json's Hub id; None without an
    adapter."""
    if not run.has_adapter():
        return None
    base = hub_id(run.read_recipe().model)
    if base:  # runs from before adapters were saved this way still get the Hub id
        set_base_model(run.adapter, base)
    path = run.adapter / "README.md"
    path.write_text(render(run))
    return path


def set_base_model(adapter: Path, base: str) -> None:
    """adapter_config.json's base_model_name_or_path := `base` (PEFT writes the local path it loaded from)."""
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if config.get("base_model_name_or_path") != base:
        config["base_model_name_or_path"] = base
        tmp = config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(config_path)


def render(run: RunDir, epoch: int | str | None = None) -> str:
    """The card's text: `---` YAML metadata `---`, then Markdown. `epoch`: the card of that epoch's adapter
    (adapters/epoch-N, exported with --epoch), "best-loss", of the lowest validation pass's (adapters/best-loss), or
    "step-N", of train.keep_step_adapters' (adapters/step-N), instead of the final one's."""
    cfg = run.read_recipe()
    base = hub_id(cfg.model)
    summary, epochs, evaluation, cost = run.read_summary(), run.read_epochs(), run.read_eval_summary(), \
        run.read_optional(run.cost)
    epoch = None if epoch == summary["epochs"] else epoch  # the last epoch's adapter is the final one
    point = lowest_pass(run.read_validation()) if epoch == BEST_LOSS else None  # a pass's own adapter
    if isinstance(epoch, str) and epoch.startswith("step-"):  # train.keep_step_adapters': that pass's adapter
        point = next(r for r in run.read_validation() if r["step"] == int(epoch.removeprefix("step-")))
    held_out = HeldOutLossDir(run.path).read_eval_summary()  # answers no scoring mode suits: replies by loss
    meta = _metadata(run, cfg, base, _results(cfg, summary, _evaluations(run, evaluation), epoch,
                                              point["val_loss"] if point else _val_loss(summary, epochs, epoch),
                                              held_out))
    which = f", step {point['step']} of {summary['steps']}" if point else \
        f", epoch {epoch} of {summary['epochs']}" if epoch else ""
    body = [f"# {cfg.name}: a {'DoRA' if cfg.lora.use_dora else 'LoRA'} adapter for {base or cfg.model.name}{which}",
            "",
            ("Trained with tunelab from the recipe below" if "imported" not in summary else
             f"Trained outside tunelab (imported by `tunelab import` from `{summary['imported']['source']}`), measured "
             "with tunelab on the recipe below")
            + f": {cfg.lora.method} r={cfg.lora.r}, "
            f"alpha {cfg.lora.alpha:g}, dropout {cfg.lora.dropout:g} on {targets_text(cfg.lora.target_modules)}"
            f"{whole_text(cfg)}, "
            f"{_epochs_trained(summary)} over {summary['train_examples']} training rows of `{cfg.data.source}` "
            + "".join(f"and `{m.source}` " for m in cfg.data.mix) +
            f"({summary['val_examples']} held out for validation"
            + (f"; {summary['train_rows_per_epoch']} trained per epoch by the source weights"
               if "train_rows_per_epoch" in summary else "") + "). Every figure here was measured by tunelab in "
            "this run; none is copied from elsewhere" + (" but the cost, priced from the other trainer's train_runtime"
                                                         if "imported" in summary and cost else "") + ".", ""]
    body += _not_final(summary, evaluation, epoch, point) + _continued(cfg)
    if not base:
        body += ["`base_model` is unknown: `model.name` is a local path. Set `model.hub_id` in the recipe to name "
                 "the Hub model it came from.", ""]
    body += ["## Training", "", "| epoch | train loss | validation loss | validation token accuracy |",
             "|---|---|---|---|"]
    body += [f"| {e['epoch']} | {_num(e['train_loss'])} | {e['val_loss']:.4f} | {e['val_token_accuracy']:.3f} |"
             for e in epochs]
    body += ["", f"Epoch 0 is the {'adapter continued' if cfg.lora.continue_from else 'base model'} before the "
                 "first step. Validation loss "
                 f"{summary['initial_val_loss']:.4f} → {summary['final_val_loss']:.4f} "
                 f"({abs(summary['val_loss_improvement_pct']):.1f} % "
                 f"{'lower' if summary['val_loss_improvement_pct'] >= 0 else 'higher'}); best validation epoch: "
                 f"{summary['best_val_epoch']}.", ""]
    body += _evaluation(cfg, evaluation, held_out, RepliesDir(run.path).read_eval_summary()) + _other_sets(run)
    if cost:
        body += ["## Cost", "", f"{cost['device_hours']:.3f} device-hours on {cost['device']} at "
                 f"${cost['usd_per_hour']:.3f}/h = ${cost['cost_usd']:.3f} ({cost['price_source']}).", ""]
    body += ["## Use", "", "```python", "from peft import PeftModel",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f"base = AutoModelForCausalLM.from_pretrained({base or cfg.model.name!r})",
             *_load_lines(cfg, base),
             *_prompt_lines(cfg), "```", "",
             "## Next", "",
             handoff.markdown(handoff.for_run(run, epoch=epoch)),
             "## Recipe", "", "```yaml", run.config.read_text().rstrip(), "```", ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def _not_final(summary: dict, evaluation: dict | None, epoch: int | str | None, point: dict | None) -> list[str]:
    """Which adapter a card of an earlier one (epoch N's, the lowest validation pass's, or a kept step's) describes,
    and why."""
    if point and epoch != BEST_LOSS:  # train.keep_step_adapters' adapter at a validation pass inside an epoch
        return [f"This is the adapter saved at step {point['step']} (`adapters/step-{point['step']}`), inside epoch "
                f"{point['epoch']} (validation loss {point['val_loss']:.4f}), not the final adapter; its figures are "
                f"the `step-{point['step']}` rows below.", ""]
    if point:
        where = "at the end of" if point["epoch_end"] else "inside"
        return [f"This is the adapter saved at step {point['step']} (`adapters/best-loss`), {where} epoch "
                f"{point['epoch']}: the validation pass with the lowest loss ({point['val_loss']:.4f}, against "
                f"{summary['final_val_loss']:.4f} after the last step), not the final adapter; the per-epoch rows "
                "below are the run's, at epoch ends.", ""]
    if not epoch:
        return []
    best = (evaluation or {}).get("best_epoch") or {}
    why = f": the best epoch by answer accuracy ({best['rule']})" if best.get("epoch") == epoch else \
        ": the epoch with the lowest validation loss" if summary["best_val_epoch"] == epoch else ""
    return [f"This is the adapter saved after epoch {epoch} (`adapters/epoch-{epoch}`), not the final one{why}; "
            f"its figures are the `epoch-{epoch}` rows below.", ""]


def _continued(cfg) -> list[str]:
    """What the card of a run that continued an adapter (lora.continue_from) says of it; nothing otherwise."""
    if not cfg.lora.continue_from:
        return []
    return [f"It continued training the adapter in `{cfg.lora.continue_from}` (`lora.continue_from`, kept in "
            "`adapters/start`): epoch 0 below is that adapter, and the base model's figures count the training that "
            "made it too.", ""]


def _epochs_trained(summary: dict) -> str:
    """"3 epoch(s)", "2 epoch(s), the last 5 of its 9 steps (max_steps 14)", or "2 of 3 planned epochs
    (early stopping)" when validation loss stopped the run."""
    trained, planned = trained_and_planned(summary)
    if short := cut_short(summary):
        return (f"{trained} epoch(s), the last {short[0]} of its {short[1]} steps "
                f"(max_steps {summary['max_steps']})")
    if not stopped_early(summary):
        return f"{trained} epoch(s)"
    inside = f", to step {summary['steps']} of {summary['steps_planned']}" \
        if counts_passes(summary) else ""
    return f"{trained} of {planned} planned epochs{inside} (early stopping)"


def _load_lines(cfg, base: str | None) -> list[str]:
    """The card's lines that load the adapter and its tokenizer: the recipe's own (its chat template, its added
    tokens, for which the base model's embeddings grow first) from the adapter's folder."""
    peft = "model = PeftModel.from_pretrained(base, \"<this folder or Hub repo>\")"
    if not cfg.model.own_tokenizer:
        return [peft, f"tokenizer = AutoTokenizer.from_pretrained({base or cfg.model.name!r})"]
    what = "its added tokens" if cfg.model.added_tokens else "its chat template" if cfg.model.chat_template else \
        "its special tokens"
    tok = f"tokenizer = AutoTokenizer.from_pretrained(\"<this folder or Hub repo>\")  # {what}"
    return [tok, "base.resize_token_embeddings(max(len(tokenizer), base.get_input_embeddings().num_embeddings))  # "
                 "rows for the added tokens", peft] \
        if cfg.model.added_tokens else [peft, tok]


def _prompt_lines(cfg) -> list[str]:
    """How the card's usage example builds a prompt: the training template, through the chat template if trained so."""
    line = f"prompt = {cfg.data.template!r}  # the training prompt; fill in its fields"
    if cfg.data.messages:
        return ["messages = [{\"role\": \"user\", \"content\": \"...\"}]  # a conversation, as trained on",
                "prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)"]
    if not cfg.data.chat_template:
        return [line]
    return [line, "prompt = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": prompt}], "
                  "tokenize=False, add_generation_prompt=True)  # trained as a chat turn"]


def _metadata(run: RunDir, cfg, base: str | None, results: list[dict]) -> dict:
    """The card's YAML metadata: base model, library, tags, the hub datasets trained on, license, model-index."""
    meta = {"base_model": base, "library_name": "peft", "pipeline_tag": "text-generation",
            "tags": ["lora"] + (["dora"] if cfg.lora.use_dora else []) + ["peft", "tunelab", "transformers"]
            + ([f"base_model:adapter:{base}"] if base else []),
            "datasets": [s for s in [cfg.data.source, *(m.source for m in cfg.data.mix)] if _is_hub_dataset(s)],
            "license": known_license(cfg.model),
            "model-index": [{"name": cfg.name, "results": results}]}
    return {k: v for k, v in meta.items() if v}


def _evaluations(run: RunDir, evaluation: dict | None) -> list[dict]:
    """The eval summaries the card reports: the run's own test set's, then each eval.also set's."""
    return [e for e in [evaluation, *(view.read_eval_summary() for view in run.extra_sets())] if e]


def _val_loss(summary: dict, epochs: list[dict], epoch: int | None) -> float:
    return summary["final_val_loss"] if epoch is None else epochs[epoch]["val_loss"]


def _results(cfg, summary: dict, evaluations: list[dict], epoch: int | str | None, val_loss: float,
             held_out: dict | None = None) -> list[dict]:
    """model-index results: answer accuracy of the final adapter (or of epoch `epoch`'s, or "best-loss"'s) on each
    evaluated set (the run's own, then each eval.also set), its target loss on the held-out rows when those were
    measured by loss instead (`held_out`), and its validation loss `val_loss`."""
    out = []
    scored = "tuned" if epoch is None else epoch if isinstance(epoch, str) else f"epoch-{epoch}"
    for evaluation in [e for e in evaluations if scored in e]:
        tuned, names = evaluation[scored], naming(evaluation)
        split, source = evaluation.get("split", cfg.eval.split), evaluation.get("source", cfg.data.source)
        chosen = evaluation.get("scoring") == "choice"  # multiple choice: lm-eval's acc and acc_norm
        out.append({"task": {"type": "text-generation", "name": "Text Generation"},
                    "dataset": {"name": f"{source} ({split}, {tuned['n']} questions)", "type": source, "split": split},
                    "metrics": [{"type": name if chosen else "exact_match",
                                 "name": name if chosen else f"{name} accuracy", "value": round(tuned[key], 4)}
                                for name, key in ((names.strict, "strict_accuracy"),
                                                  (names.flexible, "flexible_accuracy"))]
                               + ([{"type": "mc2", "name": "mc2", "value": round(tuned["mc2"], 4)}]
                                  if "mc2" in tuned else [])})
    if scored in (held_out or {}).get("losses", {}):
        split, source = held_out["split"], held_out.get("source") or cfg.data.source
        out.append({"task": {"type": "text-generation", "name": "Text Generation"},
                    "dataset": {"name": f"{source} ({split}, {held_out['n']} rows)", "type": source, "split": split},
                    "metrics": [{"type": "loss", "name": f"{split} target loss",
                                 "value": round(held_out["losses"][scored]["loss"], 4)}]})
    out.append({"task": {"type": "text-generation", "name": "Text Generation"},
                "dataset": {"name": f"{cfg.data.source} (validation, {summary['val_examples']} rows)",
                            "type": cfg.data.source, "split": "validation"},
                "metrics": [{"type": "loss", "name": "validation loss", "value": round(val_loss, 4)}]})
    return out


def _overlap(generated: dict | None,
             which: str = "The replies themselves (greedy, base → tuned, the first {n} {split} rows)") -> list[str]:
    """The card's lines on the generated replies' chrF and ROUGE-L against the references, when scored (`which`:
    the replies, in words, with their number and split)."""
    from tunelab.evaluate.overlap import METRICS
    from tunelab.report.replies import baselines
    if not (generated or {}).get("overlap"):
        return []
    said = [f"{METRICS[m]} {d['means'][0]:.3f} → {d['means'][1]:.3f} (tuned − base {d['delta']:+.3f}, 95 % paired "
            f"bootstrap interval over rows {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})"
            for m, d in generated["overlap"].items()]
    said += [f"tuned − {what}, {METRICS['chrf']} {d['delta']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})"
             for what, d in baselines(generated)]
    n = generated["overlap"]["chrf"]["n"]
    return [f"{which.format(n=n, split=generated['split'])}, scored against the references from 0 to 1: "
            f"{'; '.join(said)}.", ""]


def _evaluation(cfg, evaluation: dict | None, held_out: dict | None = None,
                generated: dict | None = None) -> list[str]:
    from tunelab.report.extra import loss_baselines, perplexity, perplexity_ratio, rows_are
    if (not evaluation or "tuned" not in evaluation) and (d := (held_out or {}).get("loss_difference")):
        texts = rows_are(held_out) == "texts"
        return ["## Evaluation", "", f"Answers not scored ({held_out['reason']}). How likely each model finds the "
                f"{'texts' if texts else 'reference replies'} of the first {held_out['n']} {held_out['split']} rows "
                f"of `{held_out.get('source') or cfg.data.source}` instead: target loss "
                f"({'every token' if texts else 'completion-only'}, token-weighted, as validation loss; lower = more "
                "likely) and perplexity (exp of the loss):",
                "", "| model | target loss | perplexity |", "|---|---|---|",
                *(f"| {name} | {row['loss']:.4f} | {perplexity(row['loss'])} |"
                  for name, row in held_out["losses"].items()), "",
                f"Tuned − base: {d['delta']:+.3f} (95 % paired bootstrap interval over rows {d['ci95'][0]:+.3f} to "
                f"{d['ci95'][1]:+.3f}); perplexity {perplexity_ratio(d)}."
                + "".join(f" Tuned − {what}: {b['delta']:+.3f} ({b['ci95'][0]:+.3f} to {b['ci95'][1]:+.3f})."
                          for what, b in loss_baselines(held_out)), "", *_overlap(generated)]
    if not evaluation or "tuned" not in evaluation:
        return ["## Evaluation", "", "Not evaluated yet: `tunelab eval <run>` scores it and rewrites this card.", ""]
    names = naming(evaluation)
    how = {"numeric": "lm-evaluation-harness's gsm8k extraction: strict-match = the first `#### N`, flexible-extract "
                      "= the last number",
           "exact": "the completion's first line against the target: exact line = equal once normalised, answer in "
                    "line = the target in it as whole words",
           "regex": f"the answer the pattern `{evaluation.get('answer_pattern')}` reads (its first non-empty group) "
                    "against the target's: first match = equal once normalised, answer in last match = the target's "
                    "answer in it as whole words",
           "tool": "the tool calls the completion makes against the target's, arguments compared as JSON: same "
                   "calls in order, or same calls in any order",
           "choice": "each option written after the prompt, the most likely one the answer: acc = by summed "
                     "log-likelihood, acc_norm = per character (lm-evaluation-harness's multiple_choice)"}[
        evaluation.get("scoring", "numeric")]
    split, source = evaluation.get("split", cfg.eval.split), evaluation.get("source", cfg.data.source)
    other = " (eval.source: not the training data)" if source != cfg.data.source else ""
    rows = ["## Evaluation", "", f"{names.title} on `{source}` {split} questions{other} "
            f"({how}), {'nothing generated' if evaluation.get('scoring') == 'choice' else 'greedy'}, the training "
            "prompt:", "",
            f"| model | n | {names.strict} | {names.flexible} |", "|---|---|---|---|"]
    for name, row in evaluation.items():
        if isinstance(row, dict) and "flexible_accuracy" in row and "n" in row:
            rows.append(f"| {name} | {row['n']} | {100 * row['strict_accuracy']:.1f} % | "
                        f"{100 * row['flexible_accuracy']:.1f} % |")
    said = [f"`{b['model']}` is {b['what']} ({b['how']})" for b in baselines(evaluation)]
    rows += ["", "; ".join(said) + "."] if said else []
    diff = evaluation.get("flexible_difference")
    if diff:
        low, high = diff["ci95_pts"]
        rows += ["", f"Tuned − base, {names.flexible}: {diff['delta_pts']:+.1f} points (95 % paired bootstrap "
                 f"interval {low:+.1f} to {high:+.1f}; {diff['gained']} questions gained, {diff['lost']} lost)."]
    if said := sampled_line(evaluation):  # eval.pass_at_k
        rows += ["", f"Sampled: {said.removeprefix('sampled ')}."]
    from tunelab.report.replies import UNCALLED
    words = _overlap(evaluation.get("answers"),  # tool scoring's replies due no call
                     "The words of the {n} {split} " + UNCALLED + " (greedy, base → tuned)")
    return rows + [""] + words + _categories(evaluation)


def _other_sets(run: RunDir) -> list[str]:
    """The eval.also test sets' base → tuned accuracy with their paired intervals, when any was scored."""
    rows, by_loss = [], []
    for view in run.extra_sets():
        s = view.read_eval_summary()
        if (d := s.get("flexible_difference")) and "tuned" in s:
            base, tuned, names = s["base"]["flexible_accuracy"], s["tuned"]["flexible_accuracy"], naming(s)
            rows.append(f"| {view.name} | `{s.get('source')}` | {d['n']} | {names.short} ({names.flexible}) | "
                        f"{100 * base:.1f} % | {100 * tuned:.1f} % | "
                        f"{d['delta_pts']:+.1f} ({d['ci95_pts'][0]:+.1f} to {d['ci95_pts'][1]:+.1f}) |")
            if m := s.get("mc2_difference"):  # labelled options: the probability on the true ones as well
                rows.append(f"| {view.name} | `{s.get('source')}` | {m['n']} | mc2 | {100 * s['base']['mc2']:.1f} % | "
                            f"{100 * s['tuned']['mc2']:.1f} % | "
                            f"{m['delta_pts']:+.1f} ({m['ci95_pts'][0]:+.1f} to {m['ci95_pts'][1]:+.1f}) |")
        elif d := s.get("loss_difference"):
            c = ((RepliesDir(run.path, view.name).read_eval_summary() or {}).get("overlap") or {}).get("chrf")
            by_loss.append(f"| {view.name} | `{s.get('source')}` | {d['n']} | {d['means'][0]:.3f} | "
                           f"{d['means'][1]:.3f} | {d['delta']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) | "
                           + (f"{c['means'][0]:.3f} → {c['means'][1]:.3f} ({c['delta']:+.3f}, {c['ci95'][0]:+.3f} to "
                              f"{c['ci95'][1]:+.3f}) |" if c else "— |"))
    out = ["Other test sets (eval.also), each by its scoring mode's lenient accuracy (paired 95 % interval):", "",
           "| set | source | n | accuracy | base | tuned | Δ points (95 % CI) |", "|---|---|---|---|---|---|---|",
           *rows, ""] if rows else []
    return out + (["Other test sets whose answers no scoring mode suits, measured by target loss (lower = the "
                   "replies more likely; paired 95 % interval over rows), and their greedy replies' chrF against the "
                   "references (0 to 1, base → tuned), when generated:", "",
                   "| set | source | rows | base | tuned | Δ loss (95 % CI) | reply chrF (Δ, 95 % CI) |",
                   "|---|---|---|---|---|---|---|",
                   *by_loss, ""]
                  if by_loss else [])


def _categories(evaluation: dict) -> list[str]:
    """The eval's accuracy per category (base → tuned, paired), when it found categories."""
    cat = evaluation.get("by_category")
    if not cat:
        return []
    rows = [f"Base → tuned by category ({cat['source']}; {naming(evaluation).flexible}; beyond noise = McNemar p < "
            f"{cat['alpha']:.2g}, Bonferroni over {len(cat['rows'])} categories):", "",
            "| category | n | base | tuned | Δ points (95 % CI) | beyond noise |", "|---|---|---|---|---|---|"]
    for r in cat["rows"]:
        d = r["difference"]
        rows.append(f"| {r['category']} | {r['n']} | {100 * r['base_accuracy']:.0f} % | "
                    f"{100 * r['tuned_accuracy']:.0f} % | {d['delta_pts']:+.1f} ({d['ci95_pts'][0]:+.1f} to "
                    f"{d['ci95_pts'][1]:+.1f}) | {'yes' if d['mcnemar_p'] < cat['alpha'] else 'no'} |")
    return rows + [""]


def whole_text(cfg) -> str:
    """A recipe's lora.modules_to_save (and train.embedding_lr), lora.trainable_tokens and model.added_tokens in
    words, to follow the targets: "" without any."""
    whole = f" and {', '.join(cfg.lora.modules_to_save)} trained whole" if cfg.lora.modules_to_save else ""
    rows = (f" and the embedding rows of {', '.join(map(str, cfg.lora.trainable_tokens))}"
            if cfg.lora.trainable_tokens else "")
    added = f"; {', '.join(cfg.model.added_tokens)} added to the vocabulary" if cfg.model.added_tokens else ""
    return (whole + rows + (f" (at lr {cfg.train.embedding_lr:g})" if cfg.train.embedding_lr is not None else "")
            + added)


def targets_text(modules) -> str:
    """lora.target_modules in words; full module paths (as PEFT saves "all-linear") by their layer names."""
    if modules == "all-linear":
        return "all linear layers"
    names = sorted({m.rsplit(".", 1)[-1] for m in modules})
    return ", ".join(names) + (f" ({len(modules)} modules)" if len(names) < len(modules) else "")


def _num(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _is_hub_dataset(source: str) -> bool:
    from tunelab.data.sources import FILE_KINDS
    return source.count("/") == 1 and not is_local(source) and not source.endswith(FILE_KINDS)
