"""The eval stage: answer accuracy — GSM8K-style (the final number) or exact match of short answers — of the base
model, its few-shot prompting baseline, every kept epoch's adapter and the final adapter, all on the same held-out
questions, with paired intervals and flips; for data no answer check suits, the base and tuned replies scored
against the references by overlap (`replies`).

Writes eval/predictions.jsonl and eval/summary.json; rewrites no other stage's file. Answers are
journaled as they finish, so a killed eval resumes with the questions not yet answered. Base-model
passes are cached per model + prompts + settings across runs.

Run as: tunelab eval runs/smoke --limit 200
        tunelab eval runs/smoke --set eval.epochs=all --set eval.fewshot=5
        tunelab eval runs/smoke --only tuned
        tunelab eval quickstart                  # a bare recipe: base model only
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tunelab import card, cost, distributed, trackers
from tunelab.config import ModelConfig, Recipe, also_names, also_recipe, categories_from, formatted, own_format, to_yaml
from tunelab.data import Example, chat, every_reply, load_splits, optional, placeholders, question_text, render, \
    scored_rows
from tunelab.errors import UserError
from tunelab.evaluate import choices, losses, overlap
from tunelab.evaluate.fewshot import STOP, ask, ask_turn, exchanges, fewshot_context
from tunelab.evaluate.journal import Journal
from tunelab.evaluate.scoring import ANSWER_TAG, NAMING, NO_CALL, SHORT_WORDS, after_thinking, answer_of, is_short, \
    scorer, short_answer, states_answer, tool_calls_in
from tunelab.evaluate.summary import CHAT_BASELINE, OTHER_MODEL, PROMPT_BASELINE, by_category, comparisons, \
    extra_set_done, pass_names, sampled_comparison, sampled_name, tool_outcomes
from tunelab.models import cache_dir, load_adapter, load_model, load_tokenizer, pick_device, resolve
from tunelab.rundir import BEST_LOSS, START, ExtraSetDir, HeldOutLossDir, RepliesDir, RunDir
from tunelab.train.runtime import tune_for

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    summary: dict
    predictions: list[dict]


@dataclass
class Pass:
    """One model answering every question: the base model (zero- or few-shot) or one adapter."""
    name: str  # base | base-<N>shot | base-chat[-<N>shot] | base-prompt | model:<name> | start | epoch-<K> |
    # best-loss | tuned
    prompts: list[str]
    stops: list[str] | str | re.Pattern | None  # None: after a finished `#### N` line; "line": after the first
    # line; a pattern: after the line holding its first match (eval.answer_pattern); strings: before the first one
    adapter: Path | None = None
    epoch: int | None = None  # the training epoch an adapter is from
    prefix: str | list[str] | None = None  # text every prompt starts with (the few-shot context): prefilled once,
    # shared; or each prompt's own (shots of its category): shared by the prompts with the same one (multiple choice)
    max_new_tokens: int = 256  # the generation budget of each answer
    shots_from: str | None = None  # a few-shot pass: where its shots came from, in words
    asked_with: dict | None = None  # the prompt baseline's pass: its template and whether it went through the chat one
    sampling: "Sampling | None" = None  # eval.pass_at_k's sampled passes (each prompt k times); None: greedy
    think_end: str | None = None  # asked through a reasoning chat template: its stop rule and answer check read the
    # reply after the last end-of-thinking marker (eval.think_end)
    model: ModelConfig | None = None  # another model (eval.models) answering in place of the base model

    @property
    def stop_rule(self):
        """The stop rule generation applies: `stops`, read after the thinking when the pass has `think_end`."""
        from tunelab.evaluate.generate import AfterThinking
        return AfterThinking(self.think_end, self.stops) if self.think_end else self.stops

    @property
    def is_base(self) -> bool:
        return self.adapter is None


def done(run: RunDir) -> bool:
    """The eval stage has scored both the base model and the tuned adapter."""
    return {"base", "tuned"} <= set(run.read_eval_summary() or {})


def evaluate(cfg: Recipe, run: RunDir, only: str | None = None, adapter: bool = True, splits=None) -> EvalResult:
    """Score the base model and (when `adapter`) the run's adapters on the same held-out questions.

    Args:
        only: "base" (base passes) or "tuned" (adapter passes); the others are kept from an earlier eval.
        adapter: False for a bare recipe (base model only; its run dir gets the recipe's config.yaml).
        splits: the recipe's rows, when the caller has read them already.

    Raises:
        UserError: no adapter in the run dir, no held-out rows, no reference answers.
    """
    _require_adapter(run, only, adapter)
    splits = splits or load_splits(cfg.data, cfg.eval)
    mode, questions = _questions(cfg, splits)
    tok = load_tokenizer(cfg.model)
    passes = _plan(cfg, run, shot_pool(cfg, splits), questions, only, adapter, tok, mode, _held_out(cfg, splits)[1])
    if not adapter:
        _keep_recipe(cfg, run)

    asked = prompts_digest(cfg, questions)
    predictions, stats = _kept_passes(cfg, run, questions, {p.name for p in passes}, mode, asked)
    device = pick_device(cfg.train.device)
    tune_for(device)
    d = distributed.setup(device.type)
    journal = Journal(run, d.rank)
    for p in passes:
        rows, stats[p.name] = _answered(cfg, run, p, questions, tok, device, journal, mode)
        predictions = [r for r in predictions if r["model"] != p.name] + rows
    ends = run.epoch_end_steps()  # the run's (an eval.also set's view too): where each epoch ended
    stats = dict(sorted(stats.items(), key=lambda kv: _rank(kv[0], ends)))  # kept passes and new ones in eval's order
    sampled_rows, sampled = _sampled(cfg, run, passes, questions, tok, device, journal, mode, asked)
    answered = [s for s in [*stats.values(), *(sampled or {}).get("passes", {}).values()] if not s.get("cached")]
    summary = {"scoring": mode, **_pattern(cfg, mode), "split": _limited(cfg, splits)[0], "prompts": asked,
               **({"turns": "all"} if cfg.eval.turns == "all" else {}),  # every reply of each conversation asked
               **({"source": cfg.eval.source} if cfg.eval.source else {}), **written_format(cfg), **stats,
               **comparisons(predictions, stats, [q.id for q in questions], run.trained_epochs(cfg), cfg.eval.fewshot,
                             NAMING[mode].flexible, _training_points(stats, ends, run.trained_epochs(cfg))),
               **({"sampled": sampled} if sampled else {}),
               "cost": cost.actual(sum(s["seconds"] for s in answered), device, cfg.cost.usd_per_hour,
                                   d.world)}  # the passes answered for this run
    if categories := by_category(predictions, [q.id for q in questions], categories_from(cfg), mode):
        summary["by_category"] = categories
    if mode == "tool":
        summary |= _tool_figures(predictions, list(stats), summary["split"])
    if distributed.is_main_process():
        run.write_jsonl(run.predictions, predictions)
        if sampled:
            run.write_jsonl(run.eval_sampled, sampled_rows)
        else:  # an earlier eval's sampled answers: not this summary's
            run.eval_sampled.unlink(missing_ok=True)
        run.write_json(run.eval_summary, summary)
        journal.clear()
        if isinstance(run, ExtraSetDir):  # an eval.also test set: the card and trackers carry the main one's
            return EvalResult(summary, predictions)
        if run.summary.exists():  # a trained run: its model card now carries the accuracies
            card.write(run)
        figures = {f"eval/{name}_{metric}": row[metric] for name, row in stats.items()
                   for metric in ("strict_accuracy", "flexible_accuracy", "n")}
        figures |= {f"eval/{model}_{sampled_name(name, cfg.eval.pass_at_k)}": value  # eval/tuned_pass@8
                    for model, row in (sampled or {}).get("models", {}).items() for name, value in row.items()}
        trackers.publish(run, cfg.train.report_to, "eval", figures, [run.eval_summary])
    return EvalResult(summary, predictions)


def _tool_figures(predictions: list[dict], names: list[str], split: str) -> dict:
    """Tool scoring's figures beside the accuracies: how each pass's calls went, right or wrong (`tool_outcomes`),
    and the words of the replies due no call against the references' (`answers`, when there are such replies)."""
    worded = overlap.answers(predictions, names, split)
    return {"tool_outcomes": tool_outcomes(predictions, names), **({"answers": worded} if worded else {})}


def _rank(name: str, ends: dict[int, int] | None = None) -> tuple:
    """A pass's place in eval's order: base, its prompting baselines (base-…), other models, the adapter the run
    continued, each epoch's and each step's (train.keep_step_adapters) in training order (`ends`: the step each
    epoch ended at), best-loss, tuned."""
    if name.startswith("epoch-"):
        epoch = int(name.split("-")[1])
        return 2, (ends or {}).get(epoch, epoch)
    if name.startswith("step-"):
        return 2, int(name.split("-")[1])
    return {"base": (0, 0), START: (1, 0), BEST_LOSS: (3, 0), "tuned": (4, 0)}.get(
        name, (0, 2) if name.startswith(OTHER_MODEL) else (0, 1))


def _training_points(stats: dict, ends: dict[int, int], trained: int) -> dict[str, tuple[int, float]]:
    """Where in training each scored adapter is, (step, epoch — fractional inside an epoch), when the run kept step
    adapters (train.keep_step_adapters); {} otherwise. `ends`: the step each epoch ended at."""
    steps = {n: int(n.split("-")[1]) for n in stats if n.startswith("step-")}
    if not steps:
        return {}
    points = {name: (step, _epoch_at(step, ends)) for name, step in steps.items()}
    for name in stats:
        epoch = trained if name == "tuned" else int(name.split("-")[1]) if name.startswith("epoch-") else None
        if epoch is not None and epoch in ends:
            points[name] = (ends[epoch], float(epoch))
    return points


def _epoch_at(step: int, ends: dict[int, int]) -> float:
    """The epochs trained at `step`: whole ones ended before it, and the share of the one it is inside."""
    for epoch in sorted(e for e in ends if e > 0):
        start, end = ends.get(epoch - 1, 0), ends[epoch]
        if step <= end:
            return round(epoch - 1 + (step - start) / max(end - start, 1), 3)
    return float(max(ends, default=0))


def _require_adapter(run: RunDir, only: str | None, adapter: bool) -> None:
    """The adapter an eval of the tuned model needs is there (`only` / `adapter` as for `evaluate`).

    Raises:
        UserError: --only tuned on a bare recipe, or a run directory without an adapter.
    """
    if not adapter and only == "tuned":
        raise UserError("--only tuned: a bare recipe has no adapter; evaluate a run directory")
    if adapter and only != "base":
        run.require(run.adapter_config, "adapter: train first (tunelab train) or use --only base")


def _keep_recipe(cfg: Recipe, run: RunDir) -> None:
    """A bare recipe's eval: its run dir gets the recipe's config.yaml (main process)."""
    if distributed.is_main_process() and not run.config.exists():
        run.create()
        run.write_text(run.config, to_yaml(cfg))


def held_out_loss(cfg: Recipe, run: RunDir, splits, reason: str, only: str | None = None,
                  adapter: bool = True) -> dict | None:
    """When no scoring mode suits the held-out answers (`reason`, from `unscoreable`): how likely the base model and
    the run's adapters find the reference replies of the rows eval would score (the first `eval.limit` test rows, or
    validation rows without a test split), by target loss paired over rows (`losses.measure`), into eval/loss/;
    returns its summary, or None when there is nothing to measure (eval.scoring none, no held-out rows).
    `only` / `adapter` as for `evaluate`.

    Raises:
        UserError: no adapter to measure (`_require_adapter`).
    """
    if not by_loss(cfg, splits):
        return None
    _require_adapter(run, only, adapter)
    if not adapter:
        _keep_recipe(cfg, run)
    summary = losses.measure(cfg, HeldOutLossDir(run.path), *_limited(cfg, splits), reason, only, adapter,
                             _loss_shots(cfg, splits))
    if run.summary.exists() and distributed.is_main_process():
        card.write(run)  # its Evaluation now gives these losses
    return summary


def _loss_shots(cfg: Recipe, splits) -> list[Example]:
    """The few-shot baseline's shots for rows measured by loss (eval.fewshot), or none when there is no pool to take
    them from (a set scored on all its rows, in its own format: said in the log)."""
    if not cfg.eval.fewshot:
        return []
    try:
        return shot_pool(cfg, splits)[:cfg.eval.fewshot]
    except UserError as err:
        log.info("few-shot baseline by loss not measured: %s", err)
        return []


def by_loss(cfg: Recipe, splits) -> bool:
    """Whether `held_out_loss` has rows to measure when the answers are not scored: the eval stage is not off
    (eval.scoring none) and there are held-out rows."""
    return cfg.eval.scoring != "none" and bool(_limited(cfg, splits)[1])


def held_out_loss_done(run: RunDir) -> bool:
    """The held-out rows' target loss (`held_out_loss`) has been measured for the base model and the final adapter."""
    return losses.done(HeldOutLossDir(run.path).read_eval_summary())


def evaluate_extra(cfg: Recipe, run: RunDir, only: str | None = None, adapter: bool = True,
                   skip_done: bool = False) -> list[tuple[str, EvalResult]]:
    """Score each `eval.also` test set as `evaluate` scores eval.source (base, epochs, tuned, few-shot, on the same
    questions), into eval/also/<name>/; a set whose answers no scoring mode suits is measured by loss instead
    (`losses.measure`), and its replies generated and scored by overlap (`replies`, eval.overlap, with an adapter,
    not for --only base) into eval/also/<name>/replies/. `only` and `adapter` as for `evaluate`; `skip_done`: leave
    the sets (and parts) already done (a resumed `tunelab run`).

    Raises:
        UserError: a set that cannot be read, naming its eval.also entry.
    """
    results = []
    for i, (entry, name) in enumerate(zip(cfg.eval.also, also_names(cfg.eval))):
        view = ExtraSetDir(run.path, name)
        if skip_done and extra_set_done(cfg, run, name):
            continue
        log.info("eval.also: scoring %s (%s)", name, entry.source)
        extra = also_recipe(cfg, entry)
        try:
            splits = load_splits(extra.data, extra.eval)
            reason = unscoreable(extra, splits)
            if reason and splits.test + splits.val:  # replies no answer check suits: how likely each model finds them
                measured = view.read_eval_summary()
                if not (skip_done and losses.done(measured)):
                    measured = losses.measure(extra, view, *_limited(extra, splits), reason, only, adapter,
                                              _loss_shots(extra, splits))
                if adapter and only != "base" and generates_replies(extra, splits) and extra.eval.overlap:  # replies
                    replies(extra, run, splits, also=name)
                results.append((name, EvalResult(measured, [])))
            else:
                results.append((name, evaluate(extra, view, only=only, adapter=adapter, splits=splits)))
        except UserError as err:
            raise UserError(f"eval.also.{i} ({entry.source}): {err}") from None
    if results and run.summary.exists() and distributed.is_main_process():
        card.write(run)  # its model-index now lists these sets' accuracies too
    return results


def check_extra(cfg: Recipe) -> None:
    """Before training: every `eval.also` test set can be read, and scored or measured by loss (a typo is found now,
    not after the training it waits for).

    Raises:
        UserError: naming the eval.also entry and why.
    """
    for i, entry in enumerate(cfg.eval.also):
        extra = also_recipe(cfg, entry)
        try:
            splits = load_splits(extra.data, extra.eval)
            reason = unscoreable(extra, splits)
            check_prompt_baseline(extra, splits)  # its own prompt baseline asks each of its rows
            if not reason:
                shot_pool(extra, splits)  # too few few-shot shots raises
            elif splits.test + splits.val:  # rows whose answers no scoring mode suits: measured by loss
                log.info("eval.also.%d (%s): %s; measured by loss%s instead", i, entry.source, reason,
                         " and its generated replies by chrF and ROUGE-L" if extra.eval.overlap else "")
                reason = None
        except UserError as err:
            reason = str(err)
        if reason:
            raise UserError(f"eval.also.{i} ({entry.source}): {reason}")


def preview(cfg: Recipe, tok, n: int, splits=None) -> dict[str, dict]:
    """The first `n` scored questions of the run's test set (`eval`) and of each `eval.also` set (by name), as the
    zero-shot passes ask them — the template or eval.template, through the chat template when trained so — with the
    reference each answer is scored against: `tunelab check --show`'s view of the eval. Per set: `source`, `split`,
    and `scoring` with `rows` (id, prompt, reference) and, for the first question, the few-shot baseline's
    `fewshot_prompt` (eval.fewshot), the chat baselines' `chat_baseline_prompt` and `chat_fewshot_prompt`
    (eval.chat_baseline, with eval.fewshot), `prompt_baseline_prompt` (eval.prompt_baseline) and `model_prompts`
    (each of eval.models by name); or
    `skipped` (why the set is not scored), with `by_loss` and `overlap` when its rows are measured by loss and its
    replies generated and scored instead. `splits`: the recipe's, when already loaded."""
    out = {}
    sets = [("eval", cfg), *zip(also_names(cfg.eval), (also_recipe(cfg, e) for e in cfg.eval.also))]
    for name, recipe in sets:
        rows = splits if name == "eval" and splits is not None else load_splits(recipe.data, recipe.eval)
        mode, reason = scoring_mode(recipe, rows)
        out[name] = {"source": recipe.eval.source or recipe.data.source, "split": _limited(recipe, rows)[0]}
        if reason:
            out[name]["skipped"] = reason
            if by_loss(recipe, rows) if name == "eval" else rows.test + rows.val:  # measured by loss instead
                out[name].update(by_loss=True, overlap=recipe.eval.overlap)  # and its replies generated, scored
            continue
        questions = _questions(recipe, rows)[1][:n]
        reference = _reference(recipe, mode)
        out[name].update(scoring=mode, rows=[{"id": q.id, "prompt": prompt, "reference": reference(q.target)}
                                             for q, prompt in zip(questions, prompt_texts(recipe, tok, questions))])
        shots = (_shots_of(recipe, shot_pool(recipe, rows), questions[:1], mode, _held_out(recipe, rows)[1])
                 if recipe.eval.fewshot else [])
        if mode == "choice":
            for row, question in zip(out[name]["rows"], questions):  # `right`: the option the target names
                row["options"] = choices.written(recipe, question, recipe.data.chat_template)
                row["right"] = choices.options(recipe, question.fields).index(question.target)
                if recipe.eval.choice_labels:  # several may be true: each one the labels mark
                    row["true"] = [k for k, t in enumerate(choices.true_options(recipe, question.fields)) if t]
                if recipe.eval.choice_blank:  # each option fills the blank; the rest is scored after it
                    row["contexts"], row["scored"] = choices.blanked(recipe, row["prompt"], question)
        if shots and shots[0]:
            out[name]["fewshot_prompt"] = _fewshot_prompts(recipe, tok, shots, questions[:1], mode=mode)[0][0]
        chats = recipe.eval.chat_baseline and not recipe.eval.choice_blank  # a blank is cut in plain text only
        if chats and questions:
            out[name]["chat_baseline_prompt"] = chat_baseline_prompts(recipe, tok, questions[:1])[0]
        if chats and shots and shots[0]:
            chatted = _fewshot_prompts(recipe, tok, shots, questions[:1], chat_format=True, mode=mode)
            out[name]["chat_fewshot_prompt"] = chatted[0][0]
        if recipe.eval.prompt_baseline and questions:
            out[name]["prompt_baseline_prompt"] = prompt_baseline_prompts(recipe, tok, questions[:1])[0]
        if questions and (others := other_models(recipe, mode)):  # eval.models: each as it is asked
            out[name]["model_prompts"] = {m.name: _other_model_pass(recipe, m, chats, questions[:1], None, 1).prompts[0]
                                          for m, chats in others}
    return out


def _questions(cfg: Recipe, splits) -> tuple[str, list[Example]]:
    """The scoring mode and the held-out rows every pass scores: those with a reference answer in that mode."""
    mode, reason = scoring_mode(cfg, splits)
    if reason:
        raise UserError(reason)
    if cfg.eval.split == "test" and not splits.test and not cfg.eval.source:
        log.warning("%s has no test split: scoring the validation split instead", cfg.data.source)
    _, rows = _limited(cfg, splits)
    if mode == "choice":  # each target as the text of the option it names
        rows = choices.resolved(cfg, rows)
    reference = _reference(cfg, mode)
    scored = [e for e in rows if reference(e.target)]
    if len(scored) < len(rows):
        log.warning("eval: %d of %d held-out rows have no reference answer (%s scoring) and are not scored "
                    "(first: %s)", len(rows) - len(scored), len(rows), mode,
                    next(e.id for e in rows if not reference(e.target)))
    return mode, scored


AUTO_SHARE = 0.9  # eval.scoring=auto picks a mode when this share of the targets suits it
TOOL_SHARE = 0.25  # or tool scoring when this share of them call a tool: the others (answers after a tool's
# result, questions no tool serves) are scored on calling none and, by their words, chrF (`_worded`)


def scoring_mode(cfg: Recipe, splits) -> tuple[str | None, str | None]:
    """(mode, None) — how the eval stage scores this recipe's data: choice, tool, numeric, exact or regex — or
    (None, why it does not): eval.scoring=none, no held-out rows, prompts that are all empty (plain text:
    `asks_nothing`), no reference answer in the mode asked for, or (auto) fewer than a quarter of the targets making
    tool calls and fewer than 90 % matching eval.answer_pattern (or `<answer>` tags), stating a final number
    (`scoring.states_answer`) or being short answers (`scoring.is_short`)."""
    if cfg.eval.scoring == "none":
        return None, "eval.scoring: none"
    split, rows = _limited(cfg, splits)
    if not rows:
        return None, f"eval.split: {cfg.data.source} has no {split} rows to score"
    if cfg.eval.choices:  # eval.scoring auto or choice
        return _choice_mode(cfg, split, rows)
    if asks_nothing(rows):
        return None, (f"the {split} rows' prompts are empty (data.template writes nothing before the target: plain "
                      "text), so there is no question to answer")
    pattern = re.compile(cfg.eval.answer_pattern or ANSWER_TAG)
    tagged = sum(bool(pattern.search(e.target)) for e in rows)
    stated, short = sum(states_answer(e.target) for e in rows), sum(is_short(e.target) for e in rows)
    if cfg.eval.scoring != "auto":
        return _asked_mode(cfg, split, rows, tagged, short)
    called = sum(tool_calls_in(e.target) is not None for e in rows)
    if called >= TOOL_SHARE * len(rows):
        return "tool", None
    if tagged >= AUTO_SHARE * len(rows):
        return "regex", None
    if stated >= AUTO_SHARE * len(rows):
        return "numeric", None
    if short >= AUTO_SHARE * len(rows):
        return "exact", None
    return None, (f"data.target: of {len(rows)} {split} targets, {stated} state a final number ('#### N', 'The "
                  f"answer is N' or a bare number), {short} are short answers (one line, at most {SHORT_WORDS} words) "
                  f"and {tagged} match eval.answer_pattern ({pattern.pattern}); eval.scoring=auto needs "
                  f"{AUTO_SHARE:.0%} of one of them (eval.scoring=numeric, exact or regex scores them anyway)"
                  + (f"; {called} make tool calls, where tool scoring needs {TOOL_SHARE:.0%}" if called else ""))


def _choice_mode(cfg: Recipe, split: str, rows: list[Example]) -> tuple[str | None, str | None]:
    """`scoring_mode` with eval.choices: choice, or (None, why) when no row has options its target names one of
    (`_questions` warns about the rows that do not)."""
    named = sum(choices.answer_of(cfg, e) is not None for e in rows)
    if not named:
        with_options = sum(choices.options(cfg, e.fields) is not None for e in rows)
        return None, (f"eval.choices: {with_options} of {len(rows)} {split} rows have two or more options in "
                      f"{cfg.eval.choices!r}, and no row's target ({(cfg.eval.target or cfg.data.target)!r}) names "
                      f"one of its options (a label, a 0-based index, a letter or an option's text)"
                      + (f"; the first row's: {rows[0].target.strip()!r}" if rows else ""))
    return "choice", None


def _asked_mode(cfg: Recipe, split: str, rows: list[Example], tagged: int, short: int) -> tuple[str | None, str | None]:
    """`scoring_mode` for a mode named by eval.scoring: it, warning when few targets suit it, or (None, why) when no
    target has a reference answer in it."""
    mode = cfg.eval.scoring
    if not any(tool_calls_in(e.target) if mode == "tool" else _reference(cfg, mode)(e.target) for e in rows):
        return None, (f"data.target: no numeric reference answer in the {split} rows (expected '#### N' or a number "
                      f"in {cfg.data.target!r})" if mode == "numeric" else
                      f"data.target: no {split} target makes a tool call (a JSON object with a name and its "
                      f"arguments)" if mode == "tool" else f"data.target: every {split} target is blank")
    if mode == "exact" and short < AUTO_SHARE * len(rows):
        log.warning("eval.scoring=exact: %d of %d %s targets are short answers (one line, at most %d words); a "
                    "first line rarely equals a longer target", short, len(rows), split, SHORT_WORDS)
    if mode == "regex" and tagged < len(rows):
        log.warning("eval.scoring=regex: %d of %d %s targets match eval.answer_pattern (%s); the others are scored "
                    "against their whole text", tagged, len(rows), split, cfg.eval.answer_pattern or ANSWER_TAG)
    return mode, None


SCORED_WITH = ("answer_pattern", "choices", "choice_target", "choice_labels")  # the settings a scoring mode reads


def _pattern(cfg: Recipe, mode: str) -> dict:
    """The settings a scoring mode reads, as the eval summary records them: regex's pattern; choice's options field,
    how each is written and the field labelling them (when set); {} in the other modes."""
    if mode == "regex":
        return {"answer_pattern": cfg.eval.answer_pattern or ANSWER_TAG}
    if mode != "choice":
        return {}
    labels = {"choice_labels": cfg.eval.choice_labels} if cfg.eval.choice_labels else {}
    return {"choices": cfg.eval.choices, "choice_target": cfg.eval.choice_target, **labels}


def _reference(cfg: Recipe, mode: str):
    """A target's reference answer in a scoring mode (None: the target has none); regex's by eval.answer_pattern;
    choice's is the option's text a scored question's target holds (`choices.resolved`)."""
    return short_answer if mode == "choice" else scorer(mode, cfg.eval.answer_pattern)[0]


def unscoreable(cfg: Recipe, splits) -> str | None:
    """Why the eval stage does not score this recipe's data (None when it does); see `scoring_mode`."""
    return scoring_mode(cfg, splits)[1]


def _limited(cfg: Recipe, splits) -> tuple[str, list[Example]]:
    """The held-out split scored (`_held_out`) and its `eval.limit` rows (`data.scored_rows`: the first, or drawn at
    random); with eval.turns all, each conversation among them as one question per reply (`data.every_reply`)."""
    name, rows = _held_out(cfg, splits)
    rows = scored_rows(rows, cfg.eval, cfg.data.seed)
    if cfg.eval.turns == "all":
        rendered = formatted(cfg.data, cfg.eval)
        if not rendered.messages:
            raise UserError(f"eval.turns: all asks each reply of a conversation, and the {name} rows are not "
                            "conversations (data.messages, or eval.messages for eval.source, names none)")
        rows = [asked for e in rows for asked in every_reply(rendered, e)]
    return name, rows


def _held_out(cfg: Recipe, splits) -> tuple[str, list[Example]]:
    """The held-out split scored and all its rows, in the source's order: `eval.split`'s, or the validation rows when
    the source has no test split; eval.source's split (`load_splits` holds it as the test rows)."""
    if cfg.eval.source:
        return cfg.eval.split, splits.test
    name = cfg.eval.split if cfg.eval.split == "validation" or splits.test else "validation"
    return name, splits.test if name == "test" else splits.val


def epochs_to_score(cfg: Recipe, trained: int) -> str:
    """`eval.epochs`, or by default every epoch for runs that trained up to 5 epochs and the last otherwise."""
    return cfg.eval.epochs or ("all" if trained <= 5 else "last")


def shot_pool(cfg: Recipe, splits) -> list[Example]:
    """The rows the few-shot baseline takes its first `eval.fewshot` shots from (`eval.fewshot_from`).

    Raises:
        UserError: eval_source, and eval.source has too few train rows apart from the rows scored.
    """
    if cfg.eval.fewshot_from == "data":
        return splits.train
    if cfg.eval.fewshot and len(splits.eval_train) < cfg.eval.fewshot:
        raise UserError(f"eval.fewshot_from: eval_source: {cfg.eval.source} has {len(splits.eval_train)} rows to "
                        "take shots from apart from the rows scored (its train split, else dev, else validation), "
                        f"and eval.fewshot={cfg.eval.fewshot} takes that many"
                        + ("" if splits.eval_train else " (with no test split, all its rows are scored)"))
    return splits.eval_train


def _shots_from(cfg: Recipe, shots: list[list[Example]], pool: list[Example]) -> str:
    """Where the few-shot baseline's shots (each question's) came from (`pool`: shot_pool's, whose row ids start
    with their split's name), in words (the report and the eval summary say it)."""
    n = max(map(len, shots), default=0)
    rows = "training rows" if cfg.eval.fewshot_from == "data" else f"{pool[0].id.split('-')[0]} rows"
    within = " of each question's own category" if cfg.eval.fewshot_same_category else ""
    picked = (f"{n} of the {rows}{within} drawn for each question (lm-eval's sampler, seed {cfg.eval.fewshot_seed})"
              if cfg.eval.fewshot_sampler == "random" else f"the first {n} {rows}{within}")
    return picked + (f" of {cfg.eval.source} (eval.source)" if cfg.eval.fewshot_from == "eval_source" else "")


def _plan(cfg: Recipe, run: RunDir, pool: list[Example], questions: list[Example], only: str | None,
          adapter: bool, tok, mode: str = "numeric", order: list[Example] | None = None) -> list[Pass]:
    """The passes this evaluation runs, in order: base, base few-shot (shots: `eval.fewshot` of `pool` for each
    question, `_shots_of`; `order`: the scored split's rows), the base model through its chat template
    (`eval.chat_baseline`: zero-shot, and with eval.fewshot the same shots as earlier turns), the base model asked
    with `eval.prompt_baseline`, the adapter the run continued (adapters/start/), each kept epoch, the lowest
    validation pass's adapter (adapters/best-loss/), the final adapter.
    With `data.chat_template`, every prompt goes through the tokenizer's chat template as training did. Zero-shot
    passes stop after the training format's answer: a `#### N` line (numeric), the first line (exact), the line
    holding a match of eval.answer_pattern (regex), EOS (overlap)."""
    stop = {"numeric": None, "exact": "line", "regex": re.compile(cfg.eval.answer_pattern or ANSWER_TAG)}.get(mode, [])
    budget = _budget(cfg, mode, questions, tok)
    prompts = prompt_texts(cfg, tok, questions)
    passes = []
    think = think_end(cfg, tok)  # the chat template's reasoning passes: read after the thinking
    if only in (None, "base"):
        passes.append(Pass("base", prompts, stop, max_new_tokens=budget))
        shots = _shots_of(cfg, pool, questions, mode, order) if cfg.eval.fewshot else []
        if cfg.eval.fewshot:
            few, contexts = _fewshot_prompts(cfg, tok, shots, questions, mode=mode)
            passes.append(Pass(f"base-{cfg.eval.fewshot}shot", few, STOP, prefix=_prefix(contexts),
                               max_new_tokens=budget, shots_from=_shots_from(cfg, shots, pool)))
        chats = cfg.eval.chat_baseline and not cfg.eval.choice_blank  # a blank is cut in plain text only
        if chats:
            passes.append(Pass(CHAT_BASELINE, chat_baseline_prompts(cfg, tok, questions), stop,
                               max_new_tokens=budget, think_end=think))
        if chats and cfg.eval.fewshot:  # lm-eval's --apply_chat_template --fewshot_as_multiturn
            few, contexts = _fewshot_prompts(cfg, tok, shots, questions, chat_format=True, mode=mode)
            passes.append(Pass(f"{CHAT_BASELINE}-{cfg.eval.fewshot}shot", few, STOP, prefix=_prefix(contexts),
                               max_new_tokens=budget, shots_from=_shots_from(cfg, shots, pool), think_end=think))
        if cfg.eval.prompt_baseline:
            passes.append(Pass(PROMPT_BASELINE, prompt_baseline_prompts(cfg, tok, questions), stop,
                               max_new_tokens=budget, asked_with=baseline_asked(cfg),
                               think_end=think if asks_in_chat(cfg) else None))
        passes += [_other_model_pass(cfg, other, chats, questions, stop, budget)
                   for other, chats in other_models(cfg, mode)]
    if adapter and only in (None, "tuned"):
        last = run.trained_epochs(cfg)
        if (run.start_adapter / "adapter_config.json").exists():  # lora.continue_from: where this run started
            passes.append(Pass(START, prompts, stop, run.start_adapter, 0, max_new_tokens=budget))
        if epochs_to_score(cfg, last) == "all":
            passes += [Pass(f"epoch-{k}", prompts, stop, run.epoch_adapter(k), k, max_new_tokens=budget)
                       for k in range(1, last) if (run.epoch_adapter(k) / "adapter_config.json").exists()]
            passes += [Pass(f"step-{n}", prompts, stop, folder, max_new_tokens=budget)
                       for n, folder in run.step_adapters().items()]  # train.keep_step_adapters: inside epochs
            if (run.best_loss_adapter / "adapter_config.json").exists():
                passes.append(Pass(BEST_LOSS, prompts, stop, run.best_loss_adapter, max_new_tokens=budget))
        passes.append(Pass("tuned", prompts, stop, run.adapter, last, max_new_tokens=budget))
    if think and cfg.data.chat_template:  # every prompt goes through the chat template, the few-shot ones too
        passes = [replace(p, think_end=think) for p in passes]
    elif traced := traced_end(cfg, [q.target for q in questions]):  # adapters trained on reasoning traces
        passes = [replace(p, think_end=p.think_end or (traced if p.adapter else None)) for p in passes]
    return [replace(p, max_new_tokens=cfg.eval.max_new_tokens) if p.think_end else p for p in passes]


COMPARED = ("numeric", "exact", "regex", "tool", "overlap")  # how other models' answers can be compared (eval.models)


def other_models(cfg: Recipe, mode: str) -> list[tuple[ModelConfig, bool | None]]:
    """eval.models as the models they are, each with its chat_template choice: loaded as the run's base model is
    (its dtype, 4-bit, attention, trust of remote code) without the run's tokenizer changes (chat template, added
    tokens); none for a set measured otherwise than by its answers or its generated replies (`check_models` refuses
    those before anything runs)."""
    if mode not in COMPARED:
        return []
    return [(cfg.model.model_copy(update={"name": m.name, "revision": None, "hub_id": None, "init": "pretrained",
                                          "chat_template": None, "added_tokens": [], "vocab_multiple_of": None,
                                          "special_tokens": type(cfg.model.special_tokens)()}), m.chat_template)
            for m in cfg.eval.models]


def _other_model_pass(cfg: Recipe, other: ModelConfig, chats: bool | None, questions: list[Example], stop,
                      budget: int) -> Pass:
    """Another model's pass (eval.models), zero-shot: through its own chat template as the run asks through the
    base model's (data.chat_template: the conversation, system turn and tools too), else with the run's prompt as
    the user turn (`chat_baseline_prompts`); a model without a chat template, or asked without (`chats` false), gets
    the run's prompts as plain text."""
    tok = _other_tokenizer(other)
    in_chat = _other_in_chat(cfg, other, tok, chats)
    prompts = chat_baseline_prompts(cfg, tok, questions) if in_chat and not cfg.data.chat_template else \
        prompt_texts(cfg, tok, questions)
    return Pass(OTHER_MODEL + other.name, prompts, stop, max_new_tokens=budget, model=other,
                asked_with={"chat_template": in_chat, "turns": cfg.data.chat_template},
                think_end=think_end(cfg, tok) if in_chat else None)


def _other_tokenizer(other: ModelConfig):
    """An eval.models entry's tokenizer; a name that does not load is said with its key."""
    try:
        return load_tokenizer(other)
    except UserError as err:
        raise UserError(str(err).replace("model.name:", "eval.models:", 1)) from None


def _other_in_chat(cfg: Recipe, other: ModelConfig, tok, chats: bool | None) -> bool:
    """Whether another model is asked through its chat template: as its eval.models entry says (`chats`), else
    when it has one; always for a run whose prompts are chat turns.

    Raises:
        UserError: it has none where one is needed, or is asked without one in a run of chat turns.
    """
    has = bool(getattr(tok, "chat_template", None))
    if chats is False and cfg.data.chat_template:
        raise UserError(f"eval.models: {other.name}: chat_template false asks the run's prompt as plain text, and "
                        "this run's prompts are chat turns (data.chat_template)")
    if not has and (chats or cfg.data.chat_template):
        raise UserError(f"eval.models: {other.name}: its tokenizer has no chat template, and "
                        + ("its entry asks through one (chat_template: true)" if chats else
                           "this run's prompts are chat turns (data.chat_template)"))
    return has if chats is None else chats


def check_models(cfg: Recipe, splits) -> None:
    """eval.models, checked before training: each model's tokenizer loads, and the set is scored by its answers.

    Raises:
        UserError: naming the model that does not load, or how the set is measured instead.
    """
    if not cfg.eval.models:
        return
    mode, why = scoring_mode(cfg, splits)
    if mode is None and cfg.eval.overlap and generates_replies(cfg, splits):
        mode = "overlap"  # no answer check: the replies, generated and scored by chrF, are compared
    if mode not in COMPARED:
        raise UserError(f"eval.models: other models are compared by their answers (numeric, exact, regex or tool "
                        "scoring) or their generated replies' chrF (eval.overlap), and this set is "
                        f"{'scored by ' + mode if mode else 'not scored by its answers (' + why + ')'}; drop eval.models")
    for other, chats in other_models(cfg, mode):
        _other_in_chat(cfg, other, _other_tokenizer(other), chats)


def think_end(cfg: Recipe, tok) -> str | None:
    """eval.think_end as it applies to the passes asked through the chat template: the one set ('' = none), else
    the template's own (`chat.think_end`)."""
    if cfg.eval.think_end is not None:
        return cfg.eval.think_end or None
    return chat.think_end(tok)


def traced_end(cfg: Recipe, targets: list[str]) -> str | None:
    """The end-of-thinking marker an adapter's replies are read after when no chat template gives one: eval.think_end
    (unset: THINK_END, whose traces' reference answers are read after it, `scoring.answer_of`) where at least half
    the scored `targets` are reasoning traces that hold it (the adapter trained on them writes one too); None
    otherwise, or when eval.think_end is '' (none)."""
    marker = chat.THINK_END if cfg.eval.think_end is None else cfg.eval.think_end
    if not marker or not targets:
        return None
    return marker if 2 * sum(marker in t for t in targets) >= len(targets) else None


def _first_shots(cfg: Recipe, pool: list[Example], mode: str) -> list[Example]:
    """The few-shot baseline's shots: the first `eval.fewshot` rows of `pool` (with choice scoring, of those whose
    target names one of their options)."""
    return choices.shot_rows(cfg, pool, cfg.eval.fewshot) if mode == "choice" else pool[:cfg.eval.fewshot]


def _shots_of(cfg: Recipe, pool: list[Example], questions: list[Example], mode: str,
              order: list[Example] | None = None) -> list[list[Example]]:
    """Each question's few-shot shots: the same first ones (`_first_shots`) for every question, or with
    eval.fewshot_same_category the first ones of the question's own category (lm-eval's MMLU: its subject's); with
    eval.fewshot_sampler random, drawn for each question (`_drawn_shots`; `order`: the scored split's rows, else the
    questions)."""
    if cfg.eval.fewshot_sampler == "random":
        return _drawn_shots(cfg, pool, questions, mode, order or questions)
    if not cfg.eval.fewshot_same_category:
        return [_first_shots(cfg, pool, mode)] * len(questions)
    by_label = {label: _first_shots(cfg, [e for e in pool if e.label == label], mode)
                for label in dict.fromkeys(q.label for q in questions)}
    _say_short(cfg, by_label)
    return [by_label[q.label] for q in questions]


def _drawn_shots(cfg: Recipe, pool: list[Example], questions: list[Example], mode: str,
                 order: list[Example]) -> list[list[Example]]:
    """lm-eval's default sampler: one random.Random(eval.fewshot_seed) draws `eval.fewshot` shots (`random.sample`,
    in the order drawn) for each row of the scored split in turn (`order`: lm-eval draws for every question before a
    question, scored or not), from the rows shots may be taken from (with choice scoring, those whose target names
    one of their options; with eval.fewshot_same_category, those of the row's own category). Scoring a validation
    split (lm-eval's tasks with no test split: HellaSwag, PIQA, Winogrande), it draws one more and leaves out rows
    equal to the question (`_left_out`)."""
    usable = choices.shot_rows(cfg, pool, len(pool)) if mode == "choice" else pool
    by_label: dict = {}
    for e in usable:
        by_label.setdefault(e.label if cfg.eval.fewshot_same_category else None, []).append(e)
    _say_short(cfg, by_label)
    wanted, rnd, drawn = {q.id for q in questions}, random.Random(cfg.eval.fewshot_seed), {}
    for row in order:
        if wanted <= drawn.keys():
            break
        its = by_label.get(row.label if cfg.eval.fewshot_same_category else None, [])
        n = min(cfg.eval.fewshot, len(its))
        drawn[row.id] = _left_out(rnd, its, n, row) if cfg.eval.split == "validation" else rnd.sample(its, n)
    return [drawn[q.id] for q in questions]


def _left_out(rnd: random.Random, rows: list[Example], n: int, question: Example) -> list[Example]:
    """lm-eval's draw for a question its task scores when the shots' split may be the question's own: n + 1 rows,
    those equal to the question left out, the first n kept; should that leave fewer, n again from the rows without
    it."""
    out = [e for e in rnd.sample(rows, min(n + 1, len(rows))) if e.fields != question.fields][:n]
    return out if len(out) == n else rnd.sample([e for e in rows if e.fields != question.fields], n)


def _say_short(cfg: Recipe, by_label: dict) -> None:
    """Log the categories (eval.fewshot_same_category) with fewer than eval.fewshot rows to take shots from."""
    short = {label: len(its) for label, its in by_label.items() if len(its) < cfg.eval.fewshot}
    if short and cfg.eval.fewshot_same_category:
        log.warning("eval.fewshot_same_category: %d categories have fewer than %d shots among the rows shots are "
                    "taken from (first: %s, %d); their questions are asked with those", len(short),
                    cfg.eval.fewshot, *next(iter(short.items())))


def _prefix(contexts: list[str]) -> str | list[str]:
    """A pass's shared prefix: the few-shot context every prompt starts with, or each prompt's own when they differ
    (shots of each question's category)."""
    return contexts[0] if len(set(contexts)) == 1 else contexts


def _fewshot_prompts(cfg: Recipe, tok, shots: list[list[Example]], questions: list[Example],
                     chat_format: bool = False, mode: str = "numeric") -> tuple[list[str], list[str]]:
    """The few-shot baseline's prompt for each question (after its `shots`: lm-eval's format, or the shots as chat
    turns with `data.chat_template` or `chat_format`) and the context each starts with: eval.description, then the
    shots (as plain text; through a chat template, the description is the system turn). With choice scoring each
    shot is written as the questions are, its prompt and its right option (lm-eval's multiple-choice few-shot)."""
    prompts, contexts = [], []
    for q, its in zip(questions, shots):
        if (cfg.data.chat_template or chat_format) and mode == "choice":
            turns, asked = [(prompt.strip(), option.strip()) for prompt, option in choices.exchanges(cfg, its)], \
                q.prompt.strip()
        elif cfg.data.chat_template or chat_format:
            turns, asked = exchanges(its), ask_turn(q)
        else:
            context = _described(cfg, q) + (choices.fewshot_context(choices.exchanges(cfg, its)) if mode == "choice"
                                            else fewshot_context(its))
            prompts.append(context + (q.prompt if mode == "choice" else ask(q)))
            contexts.append(context)
            continue
        history = _chat_history(cfg, q)
        prompts.append(chat.prompt(tok, asked, turns, history))
        contexts.append(chat.context(tok, turns, history))
    return prompts, contexts


def _described(cfg: Recipe, q: Example) -> str:
    """eval.description filled in with the question's fields (lm-eval's task description), or ""."""
    text = cfg.eval.description
    return render(text, q.fields, placeholders(text)) if text else ""


def _chat_history(cfg: Recipe, q: Example) -> list[dict]:
    """A question's turns before its user turn (`_history`) with eval.description in its system turn, where lm-eval's
    --apply_chat_template writes the description (after the row's own system text)."""
    history, text = _history(q), _described(cfg, q)
    if not text:
        return history
    if history and history[0]["role"] == "system":
        return [{"role": "system", "content": history[0]["content"] + "\n\n" + text}, *history[1:]]
    return [{"role": "system", "content": text}, *history]


def chat_baseline_prompts(cfg: Recipe, tok, questions: list[Example]) -> list[str]:
    """`eval.chat_baseline`: each question's rendered prompt as the user turn of the tokenizer's chat template, as
    lm-eval's --apply_chat_template asks it (the prompt stripped: a turn ends where its text does; eval.description
    in the system turn)."""
    chat.require(tok, "eval.chat_baseline")
    return [chat.prompt(tok, q.prompt.strip(), history=_chat_history(cfg, q)) for q in questions]


def prompt_baseline_prompts(cfg: Recipe, tok, questions: list[Example]) -> list[str]:
    """`eval.prompt_baseline`: each question asked with it (`prompt_baseline_texts`), as the user turn of the chat
    template when the run asks that way (`asks_in_chat`), else as the plain text it is."""
    texts = prompt_baseline_texts(cfg, questions)
    if not asks_in_chat(cfg):
        return texts
    chat.require(tok, "eval.prompt_baseline")
    return [chat.prompt(tok, text.strip(), history=_history(q)) for text, q in zip(texts, questions)]


def prompt_baseline_texts(cfg: Recipe, questions: list[Example]) -> list[str]:
    """`eval.prompt_baseline` filled in for each question: its row's fields, and {prompt} the prompt as the run
    writes it (the rendered template; a conversation's last user turn).

    Raises:
        UserError: a row without a field the template names, naming the row and its fields.
    """
    template, written = cfg.eval.prompt_baseline, formatted(cfg.data, cfg.eval)
    out = []
    for q in questions:
        fields = {k: v for k, v in q.fields.items() if k != chat.HISTORY} | {"prompt": q.prompt}
        try:
            out.append(render(template, fields, optional(written)))
        except (KeyError, IndexError) as err:
            raise UserError(f"eval.prompt_baseline: row {q.id} has no field {err} (its fields: "
                            f"{', '.join(sorted(fields))})") from None
    return out


def check_prompt_baseline(cfg: Recipe, splits) -> None:
    """Before training: eval.prompt_baseline can ask every held-out row eval would ask (each field it names is in
    the row), and through a chat template when it asks that way.

    Raises:
        UserError: naming the row and the field, or the tokenizer without a chat template.
    """
    if not cfg.eval.prompt_baseline:
        return
    prompt_baseline_texts(cfg, _limited(cfg, splits)[1])
    if asks_in_chat(cfg):
        chat.require(load_tokenizer(cfg.model), "eval.prompt_baseline")


def baseline_asked(cfg: Recipe) -> dict | None:
    """How eval.prompt_baseline asks, as its pass's stats record it: {template, chat_template}; None when unset."""
    return {"template": cfg.eval.prompt_baseline, "chat_template": asks_in_chat(cfg)} if cfg.eval.prompt_baseline \
        else None


def asks_in_chat(cfg: Recipe) -> bool:
    """Whether eval.prompt_baseline is asked through the chat template: the run asks its questions that way
    (data.chat_template) or asks for the chat baseline (eval.chat_baseline)."""
    return bool(cfg.data.chat_template or cfg.eval.chat_baseline)


def prompt_texts(cfg: Recipe, tok, questions: list[Example]) -> list[str]:
    """Each question as training wrote its prompt: the template, or the user turn through the chat template; after
    eval.description (in the system turn through a chat template)."""
    if cfg.data.chat_template:
        chat.require(tok)
    return [chat.prompt(tok, q.prompt, history=_chat_history(cfg, q)) if cfg.data.chat_template
            else _described(cfg, q) + q.prompt for q in questions]


def replies(cfg: Recipe, run: RunDir, splits=None, also: str | None = None) -> dict:
    """When no scoring mode suits the data: the greedy replies (until EOS or `eval.max_new_tokens`) of the base model,
    its prompting baselines (eval.fewshot, eval.chat_baseline), each kept epoch's adapter (eval.epochs) and the tuned
    adapter to the held-out rows eval would score — the first `eval.limit` (eval.overlap; else only base and tuned
    on the first `eval.samples`) — each scored against its reference by chrF and ROUGE-L, paired over rows
    (`overlap.comparisons`). Journaled as they finish (a killed pass resumes), base passes cached across runs as
    eval's; into eval/replies/, and the first `eval.samples` into eval/samples.jsonl for the report (main process).
    `also`: the eval.also set whose rows `cfg` (its `also_recipe`) reads, into eval/also/<also>/replies/ alone.
    Returns the summary."""
    splits = splits or load_splits(cfg.data, cfg.eval)
    split, rows = _limited(cfg, splits)
    questions = rows if cfg.eval.overlap else rows[:cfg.eval.samples]
    view, tok, pool = RepliesDir(run.path, also), load_tokenizer(cfg.model), _loss_shots(cfg, splits)
    device = pick_device(cfg.train.device)
    tune_for(device)
    d = distributed.setup(device.type)
    journal = Journal(view, d.rank)
    predictions, stats = [], {}
    for p in _reply_passes(cfg, run, pool, questions, tok):
        answered, stats[p.name] = _answered(cfg, view, p, questions, tok, device, journal, "overlap")
        predictions += answered
    summary = {"scoring": "overlap", "split": split, "prompts": prompts_digest(cfg, questions), **stats,
               **(overlap.comparisons(predictions, list(stats)) if cfg.eval.overlap else {}),
               "cost": cost.actual(sum(s["seconds"] for s in stats.values() if not s.get("cached")), device,
                                   cfg.cost.usd_per_hour, d.world)}  # the passes answered for this run
    labels = {q.id: q.label for q in questions}
    if cfg.eval.overlap and (categories := overlap.by_category(predictions, labels, categories_from(cfg))):
        summary["by_category"] = categories  # data.label_field: each category's chrF, base → tuned, paired
    if distributed.is_main_process():
        view.write_jsonl(view.predictions, predictions)
        view.write_json(view.eval_summary, summary)
        journal.clear()
        if also is not None:  # an eval.also set's: the report's samples and the card are the run's own
            return summary
        said = {(r["id"], r["model"]): r["completion"] for r in predictions}
        run.write_jsonl(run.eval_samples, [{"id": q.id, "split": split, "question": question_text(q),
                                            "reference": q.target, "base": said[q.id, "base"],
                                            "tuned": said[q.id, "tuned"]} for q in questions[:cfg.eval.samples]])
        if run.summary.exists():
            card.write(run)  # its Evaluation now gives these scores
    return summary


def _reply_passes(cfg: Recipe, run: RunDir, pool: list[Example], questions: list[Example], tok) -> list[Pass]:
    """The passes `replies` generates: as eval's (`_plan`: base, its prompting baselines, each kept epoch, the
    best-loss adapter, tuned), until EOS, without the few-shot passes when there is no pool of shots (an eval.also
    set of one file, scored on all its rows), else with the first shots (`pool`, as the loss measure's); only base
    and tuned when only the `eval.samples` shown are generated (eval.overlap false); not train.keep_step_adapters'
    adapters (accuracy during training is an answer check's)."""
    if not pool:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"fewshot": 0})})
    else:  # as the loss measure's: the first N (`_loss_shots`)
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"fewshot_sampler": "first_n"})})
    passes = _plan(cfg, run, pool, questions, None, True, tok, "overlap")
    return [p for p in passes if p.name in ("base", "tuned") or cfg.eval.overlap and not p.name.startswith("step-")]


def generates_replies(cfg: Recipe, splits) -> bool:
    """Whether `replies` has rows to answer: held-out rows eval would score (`by_loss`) and eval.overlap or
    eval.samples asking for some."""
    return by_loss(cfg, splits) and (cfg.eval.overlap or cfg.eval.samples > 0) and not asks_nothing(
        _limited(cfg, splits)[1])


def asks_nothing(rows: list[Example]) -> bool:
    """Every row's prompt is empty (plain-text rows, the whole text the target): a reply would answer nothing, so
    they are measured by their target loss alone."""
    return all(not e.prompt.strip() for e in rows)


def replies_done(run: RunDir) -> bool:
    """`replies` has written its summary (base and tuned replies, scored)."""
    return done(RepliesDir(run.path))


def _budget(cfg: Recipe, mode: str, questions: list[Example], tok) -> int:
    """New tokens per answer: `eval.max_new_tokens`; for exact match at most twice the longest target's tokens + 16
    (a first line longer than that cannot equal a target, and a base model's rambling line would fill the budget) —
    but for the passes read after a reasoning template's thinking, which comes first (`_plan`)."""
    if mode != "exact":
        return cfg.eval.max_new_tokens
    longest = max(len(tok(q.target, add_special_tokens=False)["input_ids"]) for q in questions)
    return min(cfg.eval.max_new_tokens, 2 * longest + 16)


def _history(q: Example) -> list[dict]:
    """A conversation row's turns before its last user turn (`data.messages`); none for other rows."""
    return q.fields.get(chat.HISTORY, [])


def _answered(cfg: Recipe, run: RunDir, p: Pass, questions: list[Example], tok, device, journal: Journal,
              mode: str) -> tuple[list[dict], dict]:
    """One pass's prediction rows and stats: a base pass asked the same way before comes from the cross-run cache
    (its answers scored again against these questions' references: the same prompts may have other targets), anything
    else is answered (`_run_pass`), or with choice scoring its options' log-likelihoods measured (`_choice_pass`);
    the stats count the answers that reached the token budget."""
    rows, stats = _cached(cfg, p) if p.is_base and mode != "choice" else (None, None)
    if mode == "choice":  # nothing generated: each option's log-likelihood, journaled (a base pass's, cached)
        rows, stats = _choice_pass(cfg, p, questions, tok, device, journal)
    elif rows is not None:
        scored = _row_scorer(cfg, mode)
        rows = [_row(p, q, r["completion"], r["tokens"], scored) for q, r in zip(questions, rows)]
        stats.update(_figures(rows, mode))
    else:
        rows, stats = _run_pass(cfg, run, p, questions, tok, device, journal, mode)
        if p.is_base:
            _store(cfg, p, rows, stats)
    if p.shots_from:
        stats["shots_from"] = p.shots_from
    if p.asked_with:
        stats["asked_with"] = p.asked_with
    if p.think_end and mode != "choice":
        stats["think_end"] = p.think_end  # its replies were read after the thinking (the report's definition says so)
        stats["without_think_end"] = sum(p.think_end not in r["completion"] for r in rows)  # read whole
        stats["think_tokens"] = chat.think_tokens(tok)  # what vLLM's reasoning parsers need (the serve command)
    if mode == "choice":
        return rows, stats
    stats.update(max_new_tokens=p.max_new_tokens,  # answers cut there are scored on what they wrote
                 at_budget=sum(r["tokens"] >= p.max_new_tokens for r in rows))
    if mode != "overlap":  # completions the scoring read no answer from (no number, no match, a blank reply)
        stats["no_answer"] = sum(r["flexible_answer"] is None for r in rows)
    return rows, stats


def _choice_pass(cfg: Recipe, p: Pass, questions: list[Example], tok, device,
                 journal: Journal) -> tuple[list[dict], dict]:
    """One pass of multiple-choice scoring (`choices.answer`): each question's options' log-likelihoods after the
    pass's prompt (after a chat template's assistant header without the whitespace before them), the options picked
    by acc and acc_norm; its prediction rows and stats. A base pass's log-likelihoods are kept in the cross-run cache
    (as generated base passes' answers are), keyed by the model, its prompts and its options as written."""
    def load():
        model = load_model(cfg.model, device)
        return load_adapter(model, p.adapter, merge=True) if p.adapter is not None else model

    chat = cfg.data.chat_template or p.name.startswith(CHAT_BASELINE) or (p.name == PROMPT_BASELINE
                                                                          and asks_in_chat(cfg))
    cache = cache_dir() / "eval" / f"choice-{choices.choice_key(cfg, _pass_key(cfg, p), questions, chat)}.json"
    cached = p.is_base and cache.exists()  # the base model asked the same prompts with the same options before
    if cached:
        log.info("%s pass: cached result %s", p.name, cache)
        lls, seconds, forwarded = json.loads(cache.read_text())
    else:
        lls, seconds, forwarded = choices.answer(cfg, p.prompts, questions, load, tok, device, _pass_key(cfg, p),
                                                 journal, p.name, chat, p.prefix)
    if p.is_base and not cached and distributed.is_main_process():
        from tunelab.rundir import write_atomic
        write_atomic(cache, json.dumps([lls, seconds, forwarded]).encode())
    unscored = (short_answer, lambda completion, reference: {})
    rows = [{**_row(p, q, "", 0, unscored), **choices.row(cfg, q, scores)} for q, scores in zip(questions, lls)]
    figures = _figures(rows, "choice")
    log.info("%s: %s on %d questions (multiple choice, %.0f tokens/s)", p.name,
             ", ".join(f"{k.removesuffix('_accuracy')} {v:.3f}" for k, v in figures.items()), len(rows),
             forwarded / max(seconds, 1e-9))
    return rows, {"n": len(rows), **figures, "seconds": round(seconds, 2), "scored_tokens": forwarded,
                  "tokens_per_second": round(forwarded / max(seconds, 1e-9), 2), **({"cached": True} if cached else {})}


def _run_pass(cfg: Recipe, run: RunDir, p: Pass, questions: list[Example], tok, device,
              journal: Journal, mode: str) -> tuple[list[dict], dict]:
    """Answer every question not yet journaled for this pass; returns its prediction rows and stats."""
    from tunelab.evaluate.generate import generate
    key = _pass_key(cfg, p)
    have = journal.done(key)
    d = distributed.setup(device.type)  # under torchrun, each rank answers every W-th remaining question
    mine = [i for i in range(len(questions)) if i not in have][d.rank::d.world]
    seconds, new = 0.0, []
    if d.max(len(mine)):
        model = load_model(p.model or cfg.model, device)
        tok = _other_tokenizer(p.model) if p.model else tok
        if p.adapter is not None:
            model = load_adapter(model, p.adapter, merge=True)  # unmerged LoRA roughly halves generation speed

        def keep(j, g):
            journal.append(key, mine[j], g.completion, g.tokens)

        gens, seconds = generate(model, tok, [p.prompts[i] for i in mine], p.max_new_tokens,
                                 cfg.eval.batch_size, label=f"eval {p.name}", on_result=keep,
                                 stops=[p.stop_rule] * len(mine),
                                 prefix=p.prefix if isinstance(p.prefix, str) else None,
                                 sampling=p.sampling and replace(p.sampling, numbers=tuple(mine)))
        new = [(i, (g.completion, g.tokens)) for i, g in zip(mine, gens)]
        del model
    answers = {**have, **dict(d.gather(new))}
    seconds = max(d.gather([seconds]))
    scored = _row_scorer(cfg, mode)
    rows = [_row(p, q, *answers[i], scored) for i, q in enumerate(questions)]
    fresh = sum(tokens for i, (_, tokens) in dict(new).items())
    figures = _figures(rows, mode)
    stats = {"n": len(rows), **figures, "generated_tokens": sum(r["tokens"] for r in rows),
             "seconds": round(seconds, 2), "tokens_per_second": round(d.sum([fresh])[0] / max(seconds, 1e-9), 2)}
    if have:
        stats["resumed_answers"] = len(have)
    log.info("%s: %s on %d %s (%.0f tokens/s)", p.name,
             ", ".join(f"{k.removesuffix('_accuracy')} {v:.3f}" for k, v in figures.items()), stats["n"],
             "sampled answers" if p.sampling else "questions", stats["tokens_per_second"])
    return rows, stats


def _row_scorer(cfg: Recipe, mode: str) -> tuple:
    """How each row is scored, (reference of a target, score of a completion against it): an answer check's mode,
    or (no mode suits the data) the reply's overlap with its reference."""
    if mode == "overlap":
        return (lambda target: target.strip() or None), overlap.score
    return scorer(mode, cfg.eval.answer_pattern)


def _row(p: Pass, q: Example, completion: str, tokens: int, scored: tuple) -> dict:
    reference, score = scored
    ref, reply = reference(q.target), after_thinking(completion, p.think_end)
    return {"id": q.id, "model": p.name, "question": q.fields.get("question", q.prompt), "reference": ref,
            "completion": completion, **score(reply, ref or ""), **_worded(ref, reply, q.target), "tokens": tokens,
            **({"epoch": p.epoch} if p.epoch is not None else {}), **({"label": q.label} if q.label else {})}


def _worded(ref: str | None, reply: str, target: str) -> dict[str, float]:
    """Under tool scoring, a reply that should call no tool (the answer after a tool's result, a question no tool
    serves) is right when it calls none; how close its words come to the reference's is measured too, by chrF and
    ROUGE-L (`overlap.score`, against the target after its thinking). {} for any other row."""
    said = answer_of(target).strip()
    return overlap.score(reply, said) if ref == NO_CALL and said else {}


def _figures(rows: list[dict], mode: str) -> dict[str, float]:
    """A pass's figures: strict and flexible accuracy (and, multiple choice with labelled options, the mean mc2), or
    (overlap) each metric's mean over its replies."""
    def mean(key: str) -> float:
        return round(sum(r[key] for r in rows) / len(rows), 6)

    if mode == "overlap":
        return {metric: mean(metric) for metric in overlap.METRICS}
    out = {f"{kind}_accuracy": mean(f"{kind}_correct") for kind in ("strict", "flexible")}
    return {**out, "mc2": mean("mc2")} if rows and "mc2" in rows[0] else out


def written_format(cfg: Recipe) -> dict:
    """{"format": eval.source's prompt and target templates, and the lm-eval task that set them} when its rows are
    not written as data's; else {}."""
    if not own_format(cfg.data, cfg.eval):
        return {}
    written = formatted(cfg.data, cfg.eval)
    return {"format": {"template": written.template, "target": written.target,
                       **({"messages": written.messages} if written.messages else {}),
                       **({"task": cfg.eval.task} if cfg.eval.task else {})}}


def prompts_digest(cfg: Recipe, questions: list[Example]) -> str:
    """What identifies the prompts the questions were asked with: their rendered templates and the chat format (the
    prompt baseline's pass carries its own, `asked_with`)."""
    asked = [[q.prompt for q in questions], cfg.data.chat_template, cfg.data.system_prompt]
    return hashlib.sha256(json.dumps(asked).encode()).hexdigest()[:16]


def _kept_passes(cfg: Recipe, run: RunDir, questions: list[Example], running: set[str], mode: str,
                 prompts: str) -> tuple[list[dict], dict]:
    """Predictions and stats of earlier passes not being re-run, if they scored the same questions (ids and
    references: another eval.source numbers its rows the same way) the same way (mode, and regex's pattern), asked
    with the same prompts (`prompts_digest`: eval.template may have changed; the prompt baseline's pass, with the
    same eval.prompt_baseline asked the same way; another model's, while eval.models names it)."""
    previous = run.read_eval_summary() or {}
    if not _asked_alike(cfg, previous, mode, prompts):
        return [], {}
    old = run.read_predictions()
    asked = [(q.id, _reference(cfg, mode)(q.target)) for q in questions]
    kept, stats = [], {}
    for name in pass_names(previous):
        rows = [p for p in old if p["model"] == name]
        if name == PROMPT_BASELINE and previous[name].get("asked_with") != baseline_asked(cfg):
            continue
        if name.startswith(OTHER_MODEL) and name.removeprefix(OTHER_MODEL) not in {m.name for m in cfg.eval.models}:
            continue  # a model eval.models no longer names
        if name not in running and [(p["id"], p["reference"]) for p in rows] == asked:
            kept += rows
            stats[name] = previous[name]
    return kept, stats


def _asked_alike(cfg: Recipe, previous: dict, mode: str, prompts: str) -> bool:
    """An earlier eval summary scored the way this eval scores (mode, and the settings it reads: `_pattern`)
    questions asked with the same prompts (`prompts_digest`)."""
    settings = _pattern(cfg, mode)
    return (previous.get("scoring", "numeric") == mode and previous.get("prompts", prompts) == prompts
            and all(previous.get(k) == settings.get(k) for k in SCORED_WITH))


def _sampled(cfg: Recipe, run: RunDir, passes: list[Pass], questions: list[Example], tok, device, journal: Journal,
             mode: str, prompts: str) -> tuple[list[dict], dict | None]:
    """eval.pass_at_k: the base model's and the final adapter's k sampled answers to each question — the greedy
    pass's prompts, stop rule and budget, each answer drawn by its own generator (`Sampling`) — and, for a model not
    asked this time (--only), those an earlier eval drew the same way. Returns (prediction rows, each with its
    `sample` index; the summary's `sampled`: the settings, each model's pass stats, `sampled_comparison`), or
    ([], None) when off or when neither model has answers."""
    from tunelab.evaluate.generate import Sampling
    k = cfg.eval.pass_at_k
    if not k:
        return [], None
    settings = {"k": k, "temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p, "seed": cfg.eval.sample_seed}
    asking = [p for p in passes if p.name in ("base", "tuned")]
    rows, stats = _kept_sampled(cfg, run, questions, mode, prompts, settings, {p.name for p in asking})
    repeated = [q for q in questions for _ in range(k)]
    for p in asking:
        drawn = replace(p, name=f"{p.name}-sampled", prompts=[x for x in p.prompts for _ in range(k)],
                        sampling=Sampling(cfg.eval.temperature, cfg.eval.top_p, cfg.eval.sample_seed))
        answered, stats[p.name] = _answered(cfg, run, drawn, repeated, tok, device, journal, mode)
        rows[p.name] = [{**r, "model": p.name, "sample": i % k} for i, r in enumerate(answered)]
    if not rows:
        return [], None
    ordered = [m for m in ("base", "tuned") if m in rows]
    return ([r for m in ordered for r in rows[m]],
            {"settings": settings, "passes": {m: stats[m] for m in ordered},
             **sampled_comparison({m: rows[m] for m in ordered}, [q.id for q in questions], k)})


def _kept_sampled(cfg: Recipe, run: RunDir, questions: list[Example], mode: str, prompts: str, settings: dict,
                  running: set[str]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """The sampled answers (rows, pass stats) of models not being asked again, from an earlier eval that scored and
    asked alike (`_asked_alike`) and sampled with the same settings, k answers to each of the same questions."""
    previous = run.read_eval_summary() or {}
    before = previous.get("sampled") or {}
    if before.get("settings") != settings or not _asked_alike(cfg, previous, mode, prompts):
        return {}, {}
    old = run.read_jsonl(run.eval_sampled)
    wanted = [(q.id, _reference(cfg, mode)(q.target)) for q in questions for _ in range(settings["k"])]
    rows, stats = {}, {}
    for model, figures in before.get("passes", {}).items():
        mine = [r for r in old if r["model"] == model]
        if model not in running and [(r["id"], r["reference"]) for r in mine] == wanted:
            rows[model], stats[model] = mine, figures
    return rows, stats


# what decides a pass's answers: the journal key, and for base passes the cross-run cache key ------------
def _pass_key(cfg: Recipe, p: Pass) -> str:
    model = p.model or cfg.model
    path = Path(resolve(model.name)) / "config.json"
    weights = p.adapter / "adapter_model.safetensors" if p.adapter is not None else None
    ident = {"model": model.name, "revision": model.revision, "dtype": model.dtype,
             "weights": path.stat().st_mtime if path.exists() else None, "pass": p.name,
             "adapter": [weights.stat().st_mtime_ns, weights.stat().st_size] if weights and weights.exists() else None,
             "max_new_tokens": p.max_new_tokens, "prompts": p.prompts, "stops": getattr(p.stops, "pattern", p.stops),
             **({"sampling": asdict(p.sampling)} if p.sampling else {}),
             **({"think_end": p.think_end} if p.think_end else {})}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def _cached(cfg: Recipe, p: Pass) -> tuple[list[dict] | None, dict | None]:
    path = cache_dir() / "eval" / f"{_pass_key(cfg, p)}.json"
    if not path.exists():
        return None, None
    data = json.loads(path.read_text())
    log.info("%s pass: cached result %s", p.name, path)
    return data["predictions"], {**data["stats"], "cached": True}


def _store(cfg: Recipe, p: Pass, rows: list[dict], stats: dict) -> None:
    from tunelab.rundir import write_atomic
    path = cache_dir() / "eval" / f"{_pass_key(cfg, p)}.json"
    write_atomic(path, json.dumps({"predictions": rows, "stats": stats}).encode())
