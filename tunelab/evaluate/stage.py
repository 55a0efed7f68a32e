"""The eval stage: exact-match accuracy on held-out questions, base model vs fine-tuned adapter, same questions.

Writes eval/predictions.jsonl and eval/summary.json (with the paired difference and its 95 % CI); it
rewrites no other stage's file. The base pass is cached per model + data + settings.

Run as: tunelab eval runs/smoke --limit 200
        tunelab eval runs/smoke --only tuned
        tunelab eval quickstart                  # a bare recipe: base model only
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tunelab import distributed
from tunelab.config import Recipe, to_yaml
from tunelab.data import Example, load_splits
from tunelab.errors import UserError
from tunelab.evaluate.scoring import paired_difference, reference_answer, score
from tunelab.models import cache_dir, load_adapter, load_model, load_tokenizer, pick_device, resolve
from tunelab.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    summary: dict
    predictions: list[dict]


def done(run: RunDir) -> bool:
    """The eval stage has scored both the base model and the tuned adapter."""
    return {"base", "tuned"} <= set(run.read_eval_summary() or {})


def evaluate(cfg: Recipe, run: RunDir, only: str | None = None, adapter: bool = True) -> EvalResult:
    """Score the base model and (when `adapter`) the run's adapter on the same held-out questions.

    Args:
        only: "base" or "tuned" to run one pass; the other is kept from an earlier eval when present.
        adapter: False for a bare recipe (base model only; its run dir gets the recipe's config.yaml).

    Raises:
        UserError: no adapter in the run dir, no held-out rows, no reference answers.
    """
    passes = [p for p in ("base", "tuned") if only in (None, p)]
    if not adapter:
        if only == "tuned":
            raise UserError("--only tuned: a bare recipe has no adapter; evaluate a run directory")
        passes = ["base"]
    if "tuned" in passes:
        run.require(run.adapter_config, "adapter: train first (tunelab train) or use --only base")
    questions = _questions(cfg, cfg.eval.limit)
    device = pick_device(cfg.train.device)
    tok = load_tokenizer(cfg.model)
    batch_size = cfg.eval.batch_size
    if not adapter and distributed.is_main_process() and not run.config.exists():
        run.create()
        run.write_text(run.config, to_yaml(cfg))

    predictions, summary = _kept_passes(run, [q.id for q in questions], passes)
    for name in passes:
        preds, stats = _cached_base(cfg, questions) if name == "base" else (None, None)
        if preds is None:
            preds, stats = _run_pass(cfg, run, name, questions, tok, device, batch_size)
            if name == "base":
                _store_base(cfg, questions, preds, stats)
        predictions = [p for p in predictions if p["model"] != name] + preds
        summary[name] = stats
    summary.update(_comparison(predictions, summary, questions))
    if distributed.is_main_process():
        run.write_jsonl(run.predictions, predictions)
        run.write_json(run.eval_summary, summary)
    return EvalResult(summary, predictions)


def _questions(cfg: Recipe, limit: int | None) -> list[Example]:
    splits = load_splits(cfg.data)
    rows = splits.test if cfg.eval.split == "test" else splits.val
    if not rows and cfg.eval.split == "test":
        log.warning("%s has no test split: scoring the validation split instead", cfg.data.source)
        rows = splits.val
    if not rows:
        raise UserError(f"eval.split: {cfg.data.source} has no {cfg.eval.split} rows to score")
    rows = rows[:limit] if limit else rows
    if not any(reference_answer(e.target) for e in rows):
        raise UserError(f"data.target: no numeric reference answer in the {cfg.eval.split} rows "
                        f"(expected '#### N' or a number in {cfg.data.target!r})")
    return rows


def _run_pass(cfg: Recipe, run: RunDir, name: str, questions: list[Example], tok, device,
              batch_size: int) -> tuple[list[dict], dict]:
    from tunelab.evaluate.generate import Generation, generate
    model = load_model(cfg.model, device)
    if name == "tuned":
        model = load_adapter(model, run.adapter, merge=True)  # unmerged LoRA roughly halves generation speed
    refs = [reference_answer(q.target) for q in questions]
    running = {"n": 0, "correct": 0}

    def on_result(i, g):
        running["n"] += 1
        running["correct"] += score(g.completion, refs[i] or "")["flexible_correct"]

    d = distributed.setup(device.type)  # under torchrun, each rank answers every W-th question
    mine = list(range(d.rank, len(questions), d.world))
    local, seconds = generate(model, tok, [questions[i].prompt for i in mine], cfg.eval.max_new_tokens, batch_size,
                              label=f"eval {name}", on_result=lambda j, g: on_result(mine[j], g))
    gens = [None] * len(questions)
    for i, g in d.gather(list(zip(mine, [(g.completion, g.tokens) for g in local]))):
        gens[i] = Generation(*g)
    seconds = max(d.gather([seconds]))
    preds = []
    for q, ref, g in zip(questions, refs, gens):
        preds.append({"id": q.id, "model": name, "question": q.fields.get("question", q.prompt), "reference": ref,
                      "completion": g.completion, **score(g.completion, ref or ""), "tokens": g.tokens,
                      **({"label": q.label} if q.label else {})})
    tokens = sum(g.tokens for g in gens)
    n = len(preds)
    stats = {"n": n, "strict_accuracy": round(sum(p["strict_correct"] for p in preds) / n, 6),
             "flexible_accuracy": round(sum(p["flexible_correct"] for p in preds) / n, 6),
             "generated_tokens": tokens, "seconds": round(seconds, 2),
             "tokens_per_second": round(tokens / max(seconds, 1e-9), 2)}
    log.info("%s: strict %.3f, flexible %.3f on %d questions (%.0f tokens/s)", name, stats["strict_accuracy"],
             stats["flexible_accuracy"], n, stats["tokens_per_second"])
    return preds, stats


def _comparison(predictions: list[dict], summary: dict, questions: list[Example]) -> dict:
    if "base" not in summary or "tuned" not in summary:
        return {}
    by = {m: {p["id"]: p for p in predictions if p["model"] == m} for m in ("base", "tuned")}
    ids = [q.id for q in questions if q.id in by["base"] and q.id in by["tuned"]]
    out = {}
    for metric in ("strict", "flexible"):
        out[f"{metric}_difference"] = paired_difference([by["base"][i][f"{metric}_correct"] for i in ids],
                                                        [by["tuned"][i][f"{metric}_correct"] for i in ids])
    return out


def _kept_passes(run: RunDir, ids: list[str], passes: list[str]) -> tuple[list[dict], dict]:
    """Predictions and stats of an earlier pass not being re-run, if it scored the same questions."""
    previous = run.read_eval_summary() or {}
    old = run.read_predictions()
    kept, summary = [], {}
    for other in ("base", "tuned"):
        rows = [p for p in old if p["model"] == other]
        if other not in passes and other in previous and [p["id"] for p in rows] == ids:
            kept += rows
            summary[other] = previous[other]
    return kept, summary


# base-model cache: the base pass depends only on model, questions and generation settings --------------
def _base_key(cfg: Recipe, questions: list[Example]) -> str:
    path = resolve(cfg.model.name)
    weights = Path(path) / "config.json"
    ident = {"model": cfg.model.name, "revision": cfg.model.revision, "dtype": cfg.model.dtype,
             "weights": weights.stat().st_mtime if weights.exists() else None,
             "max_new_tokens": cfg.eval.max_new_tokens, "prompts": [q.prompt for q in questions],
             "targets": [q.target for q in questions]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def _cached_base(cfg: Recipe, questions: list[Example]) -> tuple[list[dict] | None, dict | None]:
    path = cache_dir() / "eval" / f"{_base_key(cfg, questions)}.json"
    if not path.exists():
        return None, None
    data = json.loads(path.read_text())
    log.info("base pass: cached result %s", path)
    return data["predictions"], {**data["stats"], "cached": True}


def _store_base(cfg: Recipe, questions: list[Example], preds: list[dict], stats: dict) -> None:
    from tunelab.rundir import write_atomic
    path = cache_dir() / "eval" / f"{_base_key(cfg, questions)}.json"
    write_atomic(path, json.dumps({"predictions": preds, "stats": stats}).encode())
