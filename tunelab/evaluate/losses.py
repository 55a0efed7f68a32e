"""Loss on a test set whose answers no scoring mode suits (prose or chat replies: an `eval.also` set, or the run's own
held-out rows): the base model's, each kept epoch adapter's and the final adapter's target loss on the same rows,
paired row by row.

Answer accuracy needs a reference the answer can be checked against; a general instruction set has none. What it
does have is the reference reply, and how likely each model finds it is measured the way validation loss is
(completion-only, token-weighted). A fine-tune that raised it beyond noise made the model worse at writing such
replies: the forgetting a set like that is added to find.

Writes eval/also/<name>/ (or eval/loss/, the run's own rows) losses.jsonl (per row and model: loss, tokens) and
summary.json (`scoring: loss`); a killed pass is redone, the models already measured on the same rows asked the same
way are kept.

Run as: tunelab eval runs/smoke --set 'eval.also=[{source: yahma/alpaca-cleaned, limit: 200, name: alpaca}]'
        tunelab eval runs/chats          # a run on chat data: its own held-out replies, by loss
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from tunelab import cost, distributed
from tunelab.config import Recipe, categories_from
from tunelab.data import Example, question_text
from tunelab.evaluate.summary import CHAT_BASELINE, PROMPT_BASELINE
from tunelab.rundir import BEST_LOSS, START, ExtraSetDir
from tunelab.stats import paired_loss_difference

log = logging.getLogger(__name__)

LOSS = "loss"  # the eval summary's `scoring` of a set measured by loss


def measure(cfg: Recipe, view: ExtraSetDir, split: str, rows: list[Example], reason: str,
            only: str | None = None, adapter: bool = True, shots: list[Example] = ()) -> dict:
    """Target loss of the base model and the run's adapters on `rows` (the set's scored rows, `split`), into
    `view`'s eval files; returns its summary. `reason`: why its answers are not scored. `only` / `adapter` as for
    `stage.evaluate`; `shots`: the few-shot baseline's (eval.fewshot), for rows written as plain text."""
    from peft import PeftModel
    from tunelab.evaluate.stage import asks_nothing, baseline_asked
    from tunelab.models import load_model, load_tokenizer, pick_device
    from tunelab.progress import bar
    from tunelab.train.forward import SupervisedLM, loss_pass
    from tunelab.train.runtime import micro_batch_tokens, tune_for

    device = pick_device(cfg.train.device)
    tune_for(device)
    d = distributed.setup(device.type)
    tok = load_tokenizer(cfg.model)
    asked, shown = _asked(cfg, rows), _shots_digest(shots)
    kept = _kept(view, [r.id for r in rows], asked, shown, baseline_asked(cfg))
    models = [m for m in _models(cfg, view, only, adapter, len(shots)) if m[0] not in kept]
    written = {how: _written(how, cfg, rows, tok, shots) for how in {_format(n, cfg) for n, _ in models}}
    base = load_model(cfg.model, device) if models else None
    micro = micro_batch_tokens(cfg.train.micro_batch_tokens, device, base.config) if base is not None else 0
    with bar(f"{view.label}: loss passes", total=len(models) * len(rows)) as progress:  # rows, model by model
        for name, folder in models:
            net = PeftModel.from_pretrained(base, str(folder)) if folder else base
            t0 = time.time()
            stats, logged = loss_pass(SupervisedLM(net).eval(), written[_format(name, cfg)], rows, "test", 0,
                                      cfg.train.batch_size, tok.pad_token_id, micro, device, d,
                                      lambda n, model=name: progress.advance(n * d.world, model=model))
            kept[name] = {"loss": round(stats.loss, 6), "token_accuracy": round(stats.accuracy, 6),
                          "tokens": stats.supervised_tokens, "seconds": round(time.time() - t0, 2),
                          **({"shots": shown} if _is_fewshot(name) else {}),
                          **({"asked_with": baseline_asked(cfg)} if name == PROMPT_BASELINE else {}),
                          "rows": {r["id"]: (r["loss"], r["tokens"]) for r in logged}}
            base = net.unload() if folder else net  # the LoRA layers removed, nothing merged: the base model again
            log.info("%s on %s: target loss %.4f over %d rows", name, view.label, stats.loss, len(rows))
            if d.main:
                _write_rows(view, kept, asked, rows)
    summary = {**_summary(cfg, view, split, len(rows), reason, kept, device, d.world, len(shots)), "prompts": asked}
    if asks_nothing(rows):  # plain text: what the report calls a set's replies are texts, nothing asked before them
        summary["texts"] = True
    if categories := by_category(kept, {r.id: r.label for r in rows}, categories_from(cfg)):
        summary["by_category"] = categories
    if d.main:
        view.write_json(view.eval_summary, summary)
    return summary


def _format(name: str, cfg: Recipe) -> str:
    """How a model's pass writes the rows: as trained; as the chat baseline asks (base-chat); few-shot in lm-eval's
    text (base-Nshot of a run on plain text); few-shot with the shots as earlier chat turns (base-Nshot of a run
    on chat rows, base-chat-Nshot of one on plain text); or with eval.prompt_baseline (base-prompt)."""
    if name == CHAT_BASELINE:
        return "chat"
    if name == PROMPT_BASELINE:
        return "prompt"
    if name.startswith(f"{CHAT_BASELINE}-") or (name.startswith("base-") and cfg.data.chat_template):
        return "turns"
    return "fewshot" if name.startswith("base-") else "trained"


def _written(how: str, cfg: Recipe, rows: list[Example], tok, shots: list[Example]) -> list:
    """The rows tokenized for a loss pass, written `how` (`_format`): as trained; as `eval.chat_baseline` asks them
    (each rendered prompt, stripped, as the user turn of the tokenizer's chat template, the reply as the assistant
    turn); after lm-eval's few-shot context of `shots` ("Question: …\nAnswer: " then the reply, as the
    few-shot baseline asks); with `shots` as earlier chat turns, the row asked the same way after them and the
    reply as the assistant turn (lm-eval's --fewshot_as_multiturn, as the few-shot baseline asks a chat model); or
    asked with eval.prompt_baseline (`stage.prompt_baseline_texts`), through the chat template as eval asks it
    (`stage.asks_in_chat`), the reply after it.

    Raises:
        UserError: the chat baseline, and the tokenizer has no chat template; a row without a field
            eval.prompt_baseline names.
    """
    from dataclasses import replace
    from tunelab.data import chat
    from tunelab.evaluate.fewshot import TARGET_DELIMITER, ask_turn, exchanges, fewshot_context, fewshot_prompt
    from tunelab.train.batching import tokenize, tokenize_with
    if how == "trained":
        return tokenize_with(cfg, rows, tok)[0]
    if how == "turns":  # rendered here, shots and all: tokenized as the text it is
        chat.require(tok, "eval.fewshot")
        turns = exchanges(shots)
        asked = [replace(r, prompt=p, target=t) for r in rows for p, t in [chat.exchange(
            tok, ask_turn(r), r.target, r.fields.get(chat.HISTORY, []), turns)]]
        added = chat.context(tok, turns, rows[0].fields.get(chat.HISTORY, [])) if rows else ""
        room = cfg.train.max_length + len(tok(added, add_special_tokens=False)["input_ids"])
        return tokenize(asked, tok, room, cfg.train.completion_only, False, False)[0]
    if how == "prompt":
        return _prompted(cfg, rows, tok)
    if how == "fewshot":
        added, data = fewshot_context(shots), cfg.data
        asked = [replace(r, prompt=fewshot_prompt(shots, r) + TARGET_DELIMITER) for r in rows]
    else:
        chat.require(tok, "eval.chat_baseline")
        added, data = chat.prompt(tok, ""), cfg.data.model_copy(update={"chat_template": True})
        asked = [replace(r, prompt=r.prompt.strip()) for r in rows]
    # what the prompt adds on top of train.max_length: no reply is cut sooner than the trained pass cuts it
    room = cfg.train.max_length + len(tok(added, add_special_tokens=False)["input_ids"])
    return tokenize_with(cfg.model_copy(update={"data": data, "train": cfg.train.model_copy(
        update={"max_length": room})}), asked, tok)[0]


def _prompted(cfg: Recipe, rows: list[Example], tok) -> list:
    """The rows asked with eval.prompt_baseline for a loss pass (`_written`'s "prompt"): through the chat template
    when eval asks that way, each reply after its prompt; the prompt's room grown by the most tokens the baseline's
    text adds to a row's prompt (and the chat template's own, for a run trained on plain text), so no reply is cut
    sooner than the trained pass cuts it."""
    from dataclasses import replace
    from tunelab.data import chat
    from tunelab.evaluate.stage import asks_in_chat, prompt_baseline_texts
    from tunelab.train.batching import tokenize_with
    in_chat = asks_in_chat(cfg)
    if in_chat:
        chat.require(tok, "eval.prompt_baseline")
    texts = [t.strip() if in_chat else t for t in prompt_baseline_texts(cfg, rows)]
    size = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    wrapped = size(chat.prompt(tok, "")) if in_chat and not cfg.data.chat_template else 0
    room = cfg.train.max_length + wrapped + max([size(t) - size(r.prompt) for t, r in zip(texts, rows)] + [0])
    data = cfg.data.model_copy(update={"chat_template": in_chat})
    return tokenize_with(cfg.model_copy(update={"data": data, "train": cfg.train.model_copy(
        update={"max_length": room})}), [replace(r, prompt=t) for t, r in zip(texts, rows)], tok)[0]


def _asked(cfg: Recipe, rows: list[Example]) -> str:
    """What identifies the rows as measured: their prompts (`stage.prompts_digest`) and their targets."""
    from tunelab.evaluate.stage import prompts_digest
    targets = hashlib.sha256(json.dumps([r.target for r in rows]).encode()).hexdigest()[:16]
    return f"{prompts_digest(cfg, rows)}-{targets}"


def _models(cfg: Recipe, view: ExtraSetDir, only: str | None, adapter: bool,
            shots: int = 0) -> list[tuple[str, object]]:
    """(name, adapter folder or None) of each model to measure, in eval's order: base, the base model prompted
    `shots`-shot (eval.fewshot; for chat rows the shots are earlier turns), for rows not trained in the chat template
    the base model asked through it (eval.chat_baseline) zero-shot and `shots`-shot, the base model asked with
    eval.prompt_baseline, the adapter the run continued (adapters/start/), each kept epoch's adapter and
    adapters/best-loss (eval.epochs all), the final adapter."""
    from tunelab.evaluate.stage import epochs_to_score
    out = [("base", None)] if only in (None, "base") else []
    if out and shots:
        out.append((f"base-{shots}shot", None))
    if out and cfg.eval.chat_baseline and not cfg.data.chat_template:
        out.append((CHAT_BASELINE, None))
        if shots:
            out.append((f"{CHAT_BASELINE}-{shots}shot", None))
    if out and cfg.eval.prompt_baseline:
        out.append((PROMPT_BASELINE, None))
    if adapter and only in (None, "tuned"):
        last = view.trained_epochs(cfg)
        if (view.start_adapter / "adapter_config.json").exists():
            out.append((START, view.start_adapter))
        if epochs_to_score(cfg, last) == "all":
            out += [(f"epoch-{k}", view.epoch_adapter(k)) for k in range(1, last)
                    if (view.epoch_adapter(k) / "adapter_config.json").exists()]
            if (view.best_loss_adapter / "adapter_config.json").exists():
                out.append((BEST_LOSS, view.best_loss_adapter))
        out.append(("tuned", view.adapter))
    return out


def _shots_digest(shots: list[Example]) -> str:
    """What identifies a few-shot pass's shots (eval.fewshot_from can change them while N stays)."""
    return hashlib.sha256(json.dumps([[s.id, s.prompt, s.target] for s in shots]).encode()).hexdigest()[:16]


def _is_fewshot(name: str) -> bool:
    return name.startswith("base-") and name.endswith("shot")  # base-Nshot, base-chat-Nshot


def _kept(view: ExtraSetDir, ids: list[str], asked: str, shots: str, prompted: dict | None = None) -> dict[str, dict]:
    """Models measured by an earlier (or killed) eval of this set on the same rows written the same way (`asked`:
    `_asked`) and, for a few-shot pass, after the same shots (`shots`: `_shots_digest`), for the prompt baseline's,
    asked the same way (`prompted`: `stage.baseline_asked`): name -> its figures. A run's adapters do not change once
    trained, so what was measured stands."""
    summary = view.read_eval_summary() or {}
    if summary.get("prompts") != asked:
        return {}
    previous = summary.get("losses", {})
    by: dict[str, dict] = {}
    for r in view.read_jsonl(view.losses):
        by.setdefault(r["model"], {})[r["id"]] = (r["loss"], r["tokens"])
    return {name: {**previous.get(name, {}), "rows": rows} for name, rows in by.items()
            if sorted(rows) == sorted(ids) and "loss" in previous.get(name, {})
            and (not _is_fewshot(name) or previous[name].get("shots") == shots)
            and (name != PROMPT_BASELINE or previous[name].get("asked_with") == prompted)}


def _write_rows(view: ExtraSetDir, kept: dict[str, dict], asked: str, rows: list[Example]) -> None:
    """losses.jsonl (each row's question, for the report's largest changes, and its label, for compare's categories),
    and the summary's per-model figures so far (what a killed eval keeps)."""
    questions, labels = {r.id: question_text(r) for r in rows}, {r.id: r.label for r in rows if r.label is not None}
    view.write_jsonl(view.losses, [{"id": i, "model": name, "loss": loss, "tokens": n, "question": questions.get(i),
                                    **({"label": labels[i]} if i in labels else {})}
                                   for name, m in kept.items() for i, (loss, n) in m["rows"].items()])
    partial = view.read_eval_summary() or {}
    view.write_json(view.eval_summary, {**partial, "prompts": asked, "losses": _figures(kept)})


def _figures(kept: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: v for k, v in m.items() if k != "rows"} for name, m in kept.items()}


def _summary(cfg: Recipe, view: ExtraSetDir, split: str, n: int, reason: str, kept: dict[str, dict], device,
             world: int, shots: int = 0) -> dict:
    """The set's eval summary: each model's loss, the tuned − base paired difference (and tuned − base-chat, the
    chat baseline; tuned − base-Nshot and base-chat-Nshot, the few-shot baselines, N = `shots`; tuned − base-prompt,
    eval.prompt_baseline), the loss per epoch, and the cost of the passes run."""
    from tunelab.evaluate.stage import written_format
    fewshot = [k for k in kept if _is_fewshot(k)]
    epochs = sorted((k for k in kept if k.startswith("epoch-")), key=lambda k: int(k.split("-")[1]))
    order = ["base", *fewshot, CHAT_BASELINE, PROMPT_BASELINE, START, *epochs, BEST_LOSS, "tuned"]
    kept = {k: kept[k] for k in order if k in kept}
    out = {"scoring": LOSS, "reason": reason, "split": split, "source": cfg.eval.source, **written_format(cfg), "n": n,
           "losses": _figures(kept)}
    if "base" in kept and "tuned" in kept:
        out["loss_difference"] = paired_loss_difference(kept["base"]["rows"], kept["tuned"]["rows"])
    if START in kept and "tuned" in kept:  # what this run's training added to the adapter it continued
        out["start_baseline"] = paired_loss_difference(kept[START]["rows"], kept["tuned"]["rows"])
    if CHAT_BASELINE in kept and "tuned" in kept:  # the fine-tune against simply asking the instruct model
        out["chat_baseline"] = paired_loss_difference(kept[CHAT_BASELINE]["rows"], kept["tuned"]["rows"])
    if PROMPT_BASELINE in kept and "tuned" in kept:  # and against asking the base model in the user's own words
        d = paired_loss_difference(kept[PROMPT_BASELINE]["rows"], kept["tuned"]["rows"])
        out["prompt_baseline"] = d and {**kept[PROMPT_BASELINE]["asked_with"], **d}
    for key, name in (("fewshot_baseline", f"base-{shots}shot"), ("chat_fewshot_baseline",
                                                                   f"{CHAT_BASELINE}-{shots}shot")):
        if shots and name in kept and "tuned" in kept:  # and against prompting the base model with examples
            d = paired_loss_difference(kept[name]["rows"], kept["tuned"]["rows"])
            out[key] = d and {"model": name, "shots": shots, "turns": _format(name, cfg) == "turns", **d}
    out = {k: v for k, v in out.items() if v is not None}  # no rows in common: no difference to state
    out["epochs"] = _per_epoch(kept, view.trained_epochs(cfg))
    out["cost"] = cost.actual(sum(m["seconds"] for m in kept.values()), device, cfg.cost.usd_per_hour, world)
    return out


def _per_epoch(kept: dict[str, dict], last: int) -> list[dict]:
    """Each measured epoch's loss and its paired change from the model measured before it (`vs_previous`: the
    epoch before, or for the first the adapter the run continued or the base model), so a user sees whether the last
    epoch still helped."""
    out, previous = [], START if START in kept else "base" if "base" in kept else None
    for k in (k for k in kept if k.startswith("epoch-") or k == "tuned"):
        entry = {"epoch": int(k.split("-")[1]) if k != "tuned" else last, "model": k, "loss": kept[k]["loss"]}
        if previous and (d := paired_loss_difference(kept[previous]["rows"], kept[k]["rows"])):
            entry["vs_previous"] = {"model": previous, **d}
        out.append(entry)
        previous = k
    return out


MIN_CATEGORY_ROWS = 10  # a category with fewer rows is listed, not judged: a bootstrap of a handful of rows is no test


def by_category(kept: dict[str, dict], labels: dict[str, str | None], labelled: str | None, key: str = "loss",
                measure: str = "target loss") -> dict | None:
    """Per category of row (its label; `labelled`: where from, `config.categories_from`), the base model's and the
    final adapter's target loss on its rows (`kept[model]["rows"]`: id -> (value, weight); `key` / `measure`: another
    per-row figure's name, such as a reply's chrF) and, for a category of `MIN_CATEGORY_ROWS` rows or more, their
    paired difference with an interval widened for the number of categories judged (Bonferroni); the most rows
    first. None unless every row has a label, there are two categories or more, and base and tuned were both
    measured."""
    if not labelled or not labels or "base" not in kept or "tuned" not in kept or None in labels.values():
        return None
    groups: dict[str, list[str]] = {}
    for i, label in labels.items():
        groups.setdefault(str(label), []).append(i)
    if len(groups) < 2:
        return None
    judged = sum(len(m) >= MIN_CATEGORY_ROWS for m in groups.values())
    level = 1 - 0.05 / max(judged, 1)
    rows = []
    for category, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        base, tuned = ({i: kept[m]["rows"][i] for i in members} for m in ("base", "tuned"))
        d = paired_loss_difference(base, tuned, level=level)
        d["ci"] = d.pop("ci95") if len(members) >= MIN_CATEGORY_ROWS else None  # at `level`, not 95 %
        rows.append({"category": category, "n": len(members), f"base_{key}": d["means"][0],
                     f"tuned_{key}": d["means"][1], "difference": d})
    return {"source": labelled, "rows": rows, "level": round(level, 6), "judged": judged,
            "rule": f"paired bootstrap {100 * level:.2f} % interval per category of tuned − base {measure} (95 % "
                    f"Bonferroni-corrected over the {judged} categories of {MIN_CATEGORY_ROWS} rows or more; "
                    f"smaller ones are not judged); beyond noise = it excludes 0"}


def done(summary: dict | None) -> bool:
    """A set measured by loss whose base model and final adapter were both measured."""
    return bool(summary) and summary.get("scoring") == LOSS and {"base", "tuned"} <= set(summary.get("losses", {}))
