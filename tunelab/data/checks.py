"""Data checks: test-set contamination, duplicates inside the training split, the length profile under the
recipe's tokenizer, and whether the targets carry an answer the evaluation can score.

Overlap of test (and validation) rows with training rows, three kinds, each pair named by both row ids:
- exact: the same text after lower-casing and dropping punctuation and extra whitespace;
- ngram: a run of `checks.ngram` consecutive words (13, lm-evaluation-harness's decontamination
  convention) shared with a training row, compared on skeletons (numbers as `#`, capitalised words as `@`)
  so that a copy with its names and numbers changed still matches; score = share of the row's n-grams
  found in that training row;
- near: cosine similarity of all-MiniLM-L6-v2 embeddings (cached) >= `data.near_threshold`.
A pair is reported once, under the strongest kind (exact, then ngram, then near).

Run as: tunelab check gsm8k-smollm2-135m --set data.source=../shared/data/gsm8k
        tunelab check my-recipe.yaml --device A100-80GB --json
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

import numpy as np

from tunelab.config import also_names, also_recipe, formatted
from tunelab.data import Example, Splits, every_reply, question_text, source_of, source_weights

KINDS = ("exact", "ngram", "near")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what `exact` compares."""
    return " ".join(_WORD.findall(text.lower()))


def skeleton(text: str) -> list[str]:
    """The text's words with every number as `#` and every capitalised word (names, sentence starts) as `@`,
    the rest lower-cased: a copy of a question with its names and numbers changed has the same skeleton."""
    return ["#" if any(c.isdigit() for c in w) else "@" if w[0].isupper() else w.lower() for w in _WORD.findall(text)]


def ngrams(text: str, n: int) -> set[int]:
    """Hashes of the runs of `n` consecutive words of the text's skeleton."""
    words = skeleton(text)
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def exact_pairs(rows: list[Example], train: list[Example]) -> list[tuple[str, str, float]]:
    """(row id, train id, 1.0) for every row whose normalised text equals a training row's."""
    index: dict[str, list[str]] = defaultdict(list)
    for t in train:
        index[normalize(question_text(t))].append(t.id)
    return [(r.id, tid, 1.0) for r in rows for tid in index.get(normalize(question_text(r)), [])[:1]]


def ngram_pairs(rows: list[Example], train: list[Example], n: int) -> list[tuple[str, str, float]]:
    """(row id, train id, share of the row's n-grams in that training row) for the best-matching training row
    of every row sharing at least one n-gram. An index of n-gram hashes, not pairwise string compares."""
    index: dict[int, list[int]] = defaultdict(list)
    for j, t in enumerate(train):
        for g in ngrams(question_text(t), n):
            index[g].append(j)
    out = []
    for r in rows:
        grams = ngrams(question_text(r), n)
        hits: dict[int, int] = defaultdict(int)
        for g in grams:
            for j in index.get(g, ()):
                hits[j] += 1
        if hits:
            j, count = max(hits.items(), key=lambda kv: (kv[1], -kv[0]))
            out.append((r.id, train[j].id, round(count / len(grams), 4)))
    return out


def near_pairs(row_vecs: np.ndarray, rows: list[Example], train_vecs: np.ndarray, train: list[Example],
               threshold: float) -> list[tuple[str, str, float]]:
    """(row id, train id, cosine) of each row's most similar training row when the cosine >= threshold.
    Vectors are L2-normalised (N, D) float32; compared in blocks of 1,024 rows."""
    out = []
    for start in range(0, len(rows), 1024):
        sims = row_vecs[start:start + 1024] @ train_vecs.T  # (b, N_train)
        best = sims.argmax(1)
        for k, j in enumerate(best):
            if sims[k, j] >= threshold:
                out.append((rows[start + k].id, train[j].id, round(float(sims[k, j]), 4)))
    return out


def overlap(split: str, rows: list[Example], train: list[Example], row_vecs, train_vecs, n: int,
            threshold: float) -> list[dict]:
    """Every row of `split` that overlaps a training row, once, under its strongest kind."""
    found: dict[str, dict] = {}
    kinds = [("exact", exact_pairs(rows, train)), ("ngram", ngram_pairs(rows, train, n))]
    if row_vecs is not None:
        kinds.append(("near", near_pairs(row_vecs, rows, train_vecs, train, threshold)))
    for kind, pairs in kinds:
        for rid, tid, score in pairs:
            found.setdefault(rid, {"split": split, "row_id": rid, "train_id": tid, "kind": kind, "score": score})
    order = {r.id: i for i, r in enumerate(rows)}
    text = {e.id: question_text(e) for e in [*rows, *train]}
    for o in found.values():  # the evidence, for the report and --json readers
        o["row_text"], o["train_text"] = text[o["row_id"]][:400], text[o["train_id"]][:400]
    return sorted(found.values(), key=lambda o: order[o["row_id"]])


def train_duplicates(train: list[Example], vecs, threshold: float) -> dict:
    """Exact duplicate groups and near-duplicate pairs inside the training rows (first id kept, rest listed)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for t in train:
        groups[normalize(question_text(t))].append(t.id)
    exact = [ids for ids in groups.values() if len(ids) > 1]
    exact_ids = {i for ids in exact for i in ids[1:]}
    near = []
    if vecs is not None:
        for start in range(0, len(train), 1024):
            sims = vecs[start:start + 1024] @ vecs.T  # (b, N)
            for k in range(sims.shape[0]):
                i = start + k
                sims[k, :i + 1] = -1  # each pair once, no self
                j = int(sims[k].argmax()) if sims.shape[1] else 0
                if sims.shape[1] and sims[k, j] >= threshold and train[j].id not in exact_ids:
                    near.append({"kept": train[i].id, "duplicate": train[j].id, "score": round(float(sims[k, j]), 4)})
    return {"exact_groups": len(exact), "exact_rows": len(exact_ids), "exact": exact[:50],
            "near_pairs": len(near), "near": near[:50]}


def duplicate_ids(rows: list[Example], kind: str, vectors=None, threshold: float = 1.0) -> set[str]:
    """The ids `data.dedup` drops: every exact (or, with `near`, near) duplicate of an earlier row."""
    seen: set[str] = set()
    drop = set()
    for r in rows:
        key = normalize(question_text(r))
        if key in seen:
            drop.add(r.id)
        seen.add(key)
    if kind == "near" and vectors is not None:
        for start in range(0, len(rows), 1024):
            sims = vectors[start:start + 1024] @ vectors.T
            for k in range(sims.shape[0]):
                i = start + k
                if rows[i].id in drop:
                    continue
                later = np.flatnonzero(sims[k, i + 1:] >= threshold) + i + 1
                drop.update(rows[j].id for j in later)
    return drop


def lengths(cfg, splits: Splits, tok, items: list) -> tuple[dict, np.ndarray]:
    """Prompt and target token lengths (percentiles), rows cut by train.max_length, the padding share of the
    batch plan (under the source weights), and a max_length recommendation; and every row's
    total length (for the histogram). `items`: the train rows tokenized as training takes them."""
    from tunelab.train.batching import batches, encode, weights
    rows = splits.train + splits.val
    prompt_ids, target_ids, _ = encode(rows, tok, cfg.data.chat_template, history_loss=False)  # lengths only
    prompts, targets = [len(x) for x in prompt_ids], [len(x) for x in target_ids]
    totals = np.array(prompts) + np.array(targets)
    plain = np.array([cfg.data.chunk and not e.prompt.strip() for e in rows], dtype=bool)  # split, not cut
    cut = int(((totals > cfg.train.max_length) & ~plain).sum())
    windowed = int(((totals > cfg.train.max_length) & plain).sum())
    plan = batches(items, cfg.train.batch_size, tok.pad_token_id or 0, cfg.train.seed, cfg.train.group_by_length,
                   weights(cfg, splits.train, items))
    padded = sum(b.input_ids.numel() for b in plan)
    real = sum(b.real_tokens for b in plan)
    p99 = int(np.percentile(totals, 99))
    recommended = int(2 ** np.ceil(np.log2(max(totals.max(), 8))))  # the next power of two that holds every row
    return {"rows": len(rows), "max_length": cfg.train.max_length, "truncated": cut, "windowed": windowed,
            "prompt": _percentiles(prompts), "target": _percentiles(targets), "total": _percentiles(totals.tolist()),
            "padding_share": round(1 - real / max(padded, 1), 4), "p99_total": p99,
            "recommended_max_length": recommended,
            "recommendation": _recommend(cfg.train.max_length, cut, int(totals.max()), recommended)}, totals


UNTRAINED_RULE = ("an embedding row is untrained when its L2 norm is at most a millionth of the median row's; input "
                  "rows for every token of a training row, output rows for the tokens with loss (the model must "
                  "emit them)")


def untrained_tokens(cfg, tok, items: list) -> dict:
    """The tokens the training rows use whose embedding rows the base model never trained (`UNTRAINED_RULE`), each
    with the number of rows using it and whether the recipe trains its row (lora.modules_to_save trains the whole
    matrix, lora.trainable_tokens its rows): LoRA leaves them as they are, so a model cannot learn to read (input)
    or emit (output) such a token. {"skipped": why} without the weights on this machine."""
    import torch

    from tunelab.models import embedding_norms, meta_model, row_ids, saved_modules, token_rows, untrained_norms
    from tunelab.train.batching import IGNORE
    norms = embedding_norms(cfg.model)
    if norms is None:
        return {"skipped": "the model's weights are not on this machine (read from the weight files, not downloaded)"}

    def flagged(norms: np.ndarray) -> set[int]:
        return set(np.flatnonzero(untrained_norms(torch.from_numpy(norms)).numpy()).tolist())
    dead = {"input": flagged(norms["input"])}
    dead["output"] = dead["input"] if norms["output"] is None else flagged(norms["output"])
    used: dict[str, dict[int, int]] = {"input": defaultdict(int), "output": defaultdict(int)}
    for item in items:
        for i in set(item.input_ids) & dead["input"]:
            used["input"][i] += 1
        for i in {t for t in item.labels[1:] if t != IGNORE} & dead["output"]:
            used["output"][i] += 1
    model = meta_model(cfg.model)
    whole = saved_modules(model, cfg.lora)
    into, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = norms["output"] is None
    trained = {"input": any(m is into or (tied and m is out) for m in whole),
               "output": any(m is out or (tied and m is into) for m in whole)}
    rows = set(row_ids(token_rows(model, cfg.lora, tok))) if cfg.lora.trainable_tokens else set()
    return {"rule": UNTRAINED_RULE, "untrained_rows": {k: len(v) for k, v in dead.items()},
            **{side: [{"id": i, "token": tok.convert_ids_to_tokens(i), "rows": n,
                       "trained": trained[side] or i in rows}  # by lora.modules_to_save or lora.trainable_tokens
                      for i, n in sorted(used[side].items(), key=lambda kv: (-kv[1], kv[0]))] for side in used}}


MARKER = re.compile(r"<[|｜][^|｜<>\s]{1,40}[|｜]>")  # <|im_start|>, <|eot_id|>, <|end|>; DeepSeek's <｜User｜>
MARKER_RULE = ("a chat marker is text of the form <|name|> (ChatML's <|im_start|>, Llama 3's <|eot_id|>; DeepSeek's "
               "<｜User｜>, full-width) in a training row's input; split when the tokenizer writes it as more than one "
               "token")


def markers(cfg, tok, items: list) -> dict:
    """The chat markers (`MARKER`) the training rows write that the tokenizer splits into several tokens — a chat
    template a base model's tokenizer lacks the tokens of —, each with its piece count and the rows using it
    (commonest first); and the model.added_tokens that no training row uses, whose rows would not train."""
    counts: dict[str, int] = defaultdict(int)
    added = {tok.convert_tokens_to_ids(t): t for t in cfg.model.added_tokens}
    used: set[int] = set()
    for item in items:
        used |= added.keys() & set(item.input_ids)
        for marker in set(MARKER.findall(tok.decode(item.input_ids))):
            counts[marker] += 1
    split = [{"marker": m, "pieces": len(tok.tokenize(m)), "rows": n}
             for m, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"rule": MARKER_RULE, "split": [s for s in split if s["pieces"] > 1],
            "unused_added": [t for i, t in added.items() if i not in used]}


def markers_line(found: dict) -> str | None:
    """One line on `markers`: the split markers and what to do, the added tokens no row uses; None when neither."""
    said = []
    if split := found.get("split"):
        shown = ", ".join(f"{s['marker']} as {s['pieces']} tokens" for s in split[:4]) + (", …" if len(split) > 4
                                                                                          else "")
        said.append(f"the training rows write chat markers the tokenizer splits ({shown}; the commonest in "
                    f"{split[0]['rows']} rows): make them tokens of their own (model.added_tokens)")
    if unused := found.get("unused_added"):
        said.append(f"added tokens {', '.join(unused)} (model.added_tokens) are in no training row, so their "
                    "embedding rows do not train")
    return "; ".join(said) or None


def untrained_line(found: dict) -> str | None:
    """One line on `untrained_tokens`: the tokens and what to do; None when the rows use none (or it was skipped)."""
    sides = [side for side in ("input", "output") if found.get(side)]
    if not sides:
        return None
    tokens = {t["id"]: t["token"] for side in sides for t in found[side]}
    shown = ", ".join(tokens[i] for i in list(tokens)[:5]) + (", …" if len(tokens) > 5 else "")
    rows = max(t["rows"] for side in sides for t in found[side])
    said = (f"{len(tokens)} tokens of the training rows ({shown}; the commonest in {rows} rows) have untrained "
            f"{' and '.join(sides)} embedding rows in the base model")
    if not left_untrained(found):
        return f"{said}; lora.modules_to_save or lora.trainable_tokens trains them, from the mean trained row"
    left = [t["token"] for side in sides for t in found[side] if not t["trained"]]
    return (f"{said}, which LoRA leaves as they are: set lora.trainable_tokens: [{', '.join(dict.fromkeys(left))}] "
            "to train those rows (or lora.modules_to_save: [embed_tokens, lm_head], the whole matrices)")


def left_untrained(found: dict) -> bool:
    """The training rows use a token whose untrained embedding row (`untrained_tokens`) nothing will train."""
    return any(not t["trained"] for side in ("input", "output") for t in found.get(side) or [])


def untrained_cell(found: dict) -> str:
    """The data table's cell for `untrained_tokens`."""
    if "skipped" in found:
        return f"not checked: {found['skipped']}"
    return (f"{len(found['input'])} input / {len(found['output'])} output tokens of "
            f"{found['untrained_rows']['input']} / {found['untrained_rows']['output']} untrained rows"
            + (" (trained: lora.modules_to_save or lora.trainable_tokens)" if (found["input"] or found["output"])
               and not left_untrained(found) else ""))


def first_of_each_source(cfg, rows: list[Example], n: int) -> list[Example]:
    """The first `n` rows of each source (data.source, then each data.mix entry: each has its own template)."""
    kept: dict[str, list[Example]] = {}
    for e in rows:
        if len(group := kept.setdefault(source_of(e.id, cfg.data), [])) < n:
            group.append(e)
    return [e for group in kept.values() for e in group]


def preview(cfg, rows: list[Example], tok) -> list[dict]:
    """`rows` as the model trains on them: `id`, `tokens`, `supervised_tokens`, and `segments` — the decoded text in
    runs of tokens that do (`loss`) or do not carry loss, under the recipe's template, chat template, max_length."""
    from tunelab.train.batching import IGNORE, tokenize_with
    items, _ = tokenize_with(cfg, rows, tok)
    out = []
    for item in items:
        segments, start = [], 0
        for i in range(1, len(item.input_ids) + 1):
            if i == len(item.input_ids) or (item.labels[i] != IGNORE) != (item.labels[start] != IGNORE):
                segments.append({"text": tok.decode(item.input_ids[start:i]), "loss": item.labels[start] != IGNORE})
                start = i
        out.append({"id": rows[item.index].id, "tokens": len(item.input_ids), "supervised_tokens": item.supervised,
                    "segments": segments})
    return out


def _percentiles(values: list[int]) -> dict:
    v = np.array(values)
    return {"min": int(v.min()), "p50": int(np.percentile(v, 50)), "p90": int(np.percentile(v, 90)),
            "p99": int(np.percentile(v, 99)), "max": int(v.max()), "mean": round(float(v.mean()), 1)}


def _recommend(current: int, cut: int, longest: int, recommended: int) -> str:
    if cut:
        return f"raise train.max_length to {recommended}: {cut} rows are longer than {current}"
    if longest * 2 <= current:
        return (f"train.max_length {current} is more than twice the longest row ({longest} tokens); "
                f"{recommended} holds every row (max_length caps memory, it does not pad)")
    return f"train.max_length {current} holds every row (longest {longest} tokens)"


def targets(splits: Splits, mode: str | None, cfg=None) -> dict:
    """Share of train and test targets holding a reference answer the eval stage can score in `mode`, the scoring
    mode it would use under the recipe `cfg` (regex: the targets eval.answer_pattern matches, the others being
    scored against their whole text; tool: the targets making a call, the others scored on calling none; choice:
    the rows whose target names one of their eval.choices options, or with eval.choice_labels, whose labels fit
    their options and mark one true). With no mode (none suits the data), how far it is from one: how many targets
    state a final number and how many are short answers, two of the shares eval.scoring=auto looks at. With
    eval.turns all, each test conversation counts every reply (`data.every_reply`), as the eval asks them."""
    from tunelab.evaluate.scoring import ANSWER_TAG, is_short, scorer, states_answer, tool_calls_in
    if mode == "choice":
        from tunelab.evaluate.choices import answer_of
        has_answer = lambda e: answer_of(cfg, e) is not None  # noqa: E731
    elif mode == "tool":  # every target is scored (one that calls nothing, on calling nothing): the calls counted
        has_answer = lambda e: tool_calls_in(e.target) is not None  # noqa: E731
    else:
        pattern = cfg.eval.answer_pattern if cfg is not None else None
        read = re.compile(pattern or ANSWER_TAG).search if mode == "regex" else mode and scorer(mode)[0]
        has_answer = lambda e: read(e.target)  # noqa: E731
    out, test = {}, splits.test
    if cfg is not None and cfg.eval.turns == "all" and (rendered := formatted(cfg.data, cfg.eval)).messages:
        test = [asked for e in test for asked in every_reply(rendered, e)]
    for name, rows in (("train", splits.train + splits.val), ("test", test)):
        if mode is None:
            out[name] = {"rows": len(rows), "scoring": None, "stated": sum(states_answer(e.target) for e in rows),
                         "short": sum(is_short(e.target) for e in rows)}
            continue
        missing = [e.id for e in rows if not has_answer(e)]
        out[name] = {"rows": len(rows), "scoreable": len(rows) - len(missing), "scoring": mode,
                     "share": round((len(rows) - len(missing)) / len(rows), 4) if rows else None,
                     "without_answer": missing[:20], **({"labelled": True} if mode == "choice" and
                                                        cfg.eval.choice_labels else {})}
    return out


def targets_line(split: str, counts: dict) -> tuple[str, str]:
    """One split's entry of `targets` as (figure, value), for the report's data table and `tunelab check`."""
    if counts.get("scoring") is None and "stated" in counts:
        return (f"{split} targets stating a final number / short answers (no scoring mode suits them)",
                f"{counts['stated']} / {counts['short']} of {counts['rows']}")
    if counts.get("scoring") == "regex":
        return (f"{split} targets eval.answer_pattern matches (regex scoring)",
                f"{counts['scoreable']} / {counts['rows']}")
    if counts.get("labelled"):
        return (f"{split} rows whose labels mark a true option among their options (multiple choice, "
                "eval.choice_labels)", f"{counts['scoreable']} / {counts['rows']}")
    if counts.get("scoring") == "tool":
        return (f"{split} targets making a tool call (tool scoring; the others are right when no call is made, and "
                "are measured by their words)", f"{counts['scoreable']} / {counts['rows']}")
    if counts.get("scoring") == "choice":
        return (f"{split} targets naming one of the row's options (multiple-choice scoring)",
                f"{counts['scoreable']} / {counts['rows']}")
    return (f"{split} targets with a scoreable answer ({counts.get('scoring') or 'numeric'} scoring)",
            f"{counts['scoreable']} / {counts['rows']}")


def run_checks(cfg, splits: Splits, tok, embed_texts=None) -> tuple[dict, np.ndarray]:
    """Every check on the recipe's splits. `embed_texts(texts) -> (N, D)` enables the near-duplicate checks
    (None skips them). Returns the data_checks.json object (without the estimate) and the rows' total token
    lengths (for `write`'s histogram)."""
    clock, seconds = time.time(), {}
    train = splits.train
    train_vecs = test_vecs = val_vecs = None
    if embed_texts is not None:
        all_vecs = embed_texts([question_text(e) for e in splits.train + splits.val])
        train_vecs, val_vecs = all_vecs[:len(train)], all_vecs[len(train):]
        test_vecs = embed_texts([question_text(e) for e in splits.test]) if splits.test else None
        seconds["embed"], clock = time.time() - clock, time.time()
    n, threshold = cfg.checks.ngram, cfg.data.near_threshold
    # test rows against every row of the training data (both splits: validation rows are the user's data too)
    source, source_vecs = train + splits.val, None if train_vecs is None else np.concatenate([train_vecs, val_vecs])
    found = overlap("test", splits.test, source, test_vecs, source_vecs, n, threshold) if splits.test else []
    found += overlap("validation", splits.val, train, val_vecs, train_vecs, n, threshold)
    extra = {name: _extra_overlap(cfg, entry, source, source_vecs, embed_texts)
             for entry, name in zip(cfg.eval.also, also_names(cfg.eval))}
    duplicates = train_duplicates(train, train_vecs, threshold)
    seconds["overlap_duplicates"], clock = time.time() - clock, time.time()
    from tunelab.train.batching import tokenize_with
    items, _ = tokenize_with(cfg, splits.train, tok)
    profile, totals = lengths(cfg, splits, tok, items)
    from tunelab.train.batching import boundary_merges
    boundary = {"rows": 0, "of": 0} if cfg.data.chat_template else boundary_merges(train, tok)
    seconds["lengths"], clock = time.time() - clock, time.time()
    untrained, marked = untrained_tokens(cfg, tok, items), markers(cfg, tok, items)
    seconds["untrained"] = time.time() - clock
    from tunelab.evaluate.stage import by_loss, generates_replies, scoring_mode, think_end, traced_end
    mode, skipped = scoring_mode(cfg, splits)
    thinking = (think_end(cfg, tok) if cfg.data.chat_template else None) or \
        traced_end(cfg, [e.target for e in splits.test])  # the run's own passes read after it
    counts = {split: {k: sum(1 for o in found if o["split"] == split and o["kind"] == k) for k in KINDS}
              for split in ("test", "validation")}
    return {"settings": {"ngram": n, "near_threshold": threshold,
                         "near": embed_texts is not None, "embedder": "minilm"},
            "rows": {"train": len(train), "validation": len(splits.val), "test": len(splits.test),
                     "deduplicated": splits.deduplicated, **_sources(cfg, splits, found, items)},
            "test_source": cfg.eval.source or cfg.data.source,
            "overlap_counts": counts, "overlap": found, **({"extra_sets": extra} if extra else {}),
            "train_duplicates": duplicates, "lengths": profile,
            "boundary": boundary, "untrained_tokens": untrained, "markers": marked,
            "targets": targets(splits, mode, cfg), "eval_skipped": skipped,
            "eval_by_loss": bool(skipped) and by_loss(cfg, splits),
            "eval_by_overlap": bool(skipped) and generates_replies(cfg, splits) and cfg.eval.overlap,
            "eval_texts": bool(skipped) and cfg.data.plain_text,
            **({"eval_think_end": thinking, "eval_max_new_tokens": cfg.eval.max_new_tokens}
               if thinking and not skipped else {}),
            "seconds": {k: round(v, 2) for k, v in seconds.items()}}, totals


def _extra_overlap(cfg, entry, train: list[Example], train_vecs, embed_texts) -> dict:
    """One `eval.also` test set's rows against the training rows, by the same kinds as the test rows': its source,
    rows, counts per kind and the overlapping rows (the first 20)."""
    from tunelab.data import load_splits
    extra = also_recipe(cfg, entry)
    rows = load_splits(extra.data, extra.eval).test
    vecs = embed_texts([question_text(e) for e in rows]) if embed_texts is not None and rows else None
    found = overlap("test", rows, train, vecs, train_vecs, cfg.checks.ngram, cfg.data.near_threshold) if rows else []
    return {"source": entry.source, "rows": len(rows), "overlap_counts": {k: sum(o["kind"] == k for o in found)
                                                                           for k in KINDS}, "overlap": found[:20]}


def _sources(cfg, splits: Splits, found: list[dict], items: list) -> dict:
    """With data.mix: {"sources": {name: {train, validation, test_overlap, weight, per_epoch, loss_share}}},
    test_overlap = the test rows found overlapping a row of that source (which source brought a test row in),
    per_epoch = the train rows an epoch trains under its weight (repeats counted), loss_share = its share of the
    tokens an epoch takes the loss on (its tokenized train `items`' supervised tokens × its weight); else nothing."""
    from tunelab.train.batching import trained_per_epoch
    if not cfg.data.mix:
        return {}
    out = {name: {"train": 0, "validation": 0, "test_overlap": 0, "weight": w}
           for name, w in source_weights(cfg.data).items()}
    for split, rows in (("train", splits.train), ("validation", splits.val)):
        for e in rows:
            out[source_of(e.id, cfg.data)][split] += 1
    for o in found:
        if o["split"] == "test":
            out[source_of(o["train_id"], cfg.data)]["test_overlap"] += 1
    supervised = {name: 0 for name in out}
    for item in items:
        supervised[source_of(splits.train[item.index].id, cfg.data)] += item.supervised
    total = sum(out[name]["weight"] * n for name, n in supervised.items())
    for name, c in out.items():
        c["per_epoch"] = trained_per_epoch(c["weight"], c["train"])
        c["loss_share"] = round(c["weight"] * supervised[name] / total, 4) if total else 0.0
    return {"sources": out}


def source_note(source: dict) -> str:
    """" (weight 2: 576 trained per epoch; 45 % of the loss tokens)" for a source of `_sources`: its weight when it is
    not 1, its share of the tokens an epoch takes the loss on; "" when neither is known."""
    said = [f"weight {source['weight']:g}: {source['per_epoch']} trained per epoch"] if source.get("weight", 1) != 1 \
        else []
    said += [f"{100 * source['loss_share']:.0f} % of the loss tokens"] if "loss_share" in source else []
    return f" ({'; '.join(said)})" if said else ""


def minilm(texts: list[str]) -> np.ndarray:
    """The near-duplicate embedder: all-MiniLM-L6-v2, L2-normalised, through the analysis embedding cache."""
    from tunelab.analysis.embed import embed
    return embed(texts, "minilm")


def write(run, checks: dict, totals: np.ndarray) -> None:
    """analysis/data_checks.json and the length histogram of a run directory."""
    from tunelab.analysis.plots import lengths_png
    run.analysis_dir.mkdir(parents=True, exist_ok=True)
    lengths_png(totals, checks["lengths"]["max_length"], run.lengths_png)
    run.write_json(run.data_checks, checks)


def verdict(checks: dict) -> str:
    """One line: test overlap by kind, or clean; duplicates and truncation when present."""
    test = checks["overlap_counts"]["test"]
    parts = []
    if not checks["rows"]["test"]:
        parts.append("no test split to check for overlap")
    elif sum(test.values()):
        parts.append("test overlap found: " + ", ".join(f"{v} {k}" for k, v in test.items() if v))
    else:
        kinds = "exact, 13-gram and near-duplicate" if checks["settings"]["near"] else "exact and n-gram"
        parts.append(f"no test row overlaps the training rows ({kinds} checks)")
    for name, extra in checks.get("extra_sets", {}).items():
        if sum(extra["overlap_counts"].values()):
            parts.append(f"eval.also {name} overlap found: " + ", ".join(f"{v} {k}" for k, v in
                                                                      extra["overlap_counts"].items() if v))
    d = checks["train_duplicates"]
    if d["exact_rows"] or d["near_pairs"]:
        parts.append(f"{d['exact_rows']} exact and {d['near_pairs']} near duplicates inside train")
    if checks["lengths"]["truncated"]:
        parts.append(f"{checks['lengths']['truncated']} rows longer than train.max_length")
    for line in (untrained_line(checks.get("untrained_tokens") or {}), markers_line(checks.get("markers") or {})):
        if line:
            parts.append(line)
    if not fits(checks):
        from tunelab.memory import describe
        e = checks["estimate"]
        parts.append(f"on the {e['device']}: {describe(e['gpu_memory'], e['memory_gib'])}")
    return "; ".join(parts)


def fits(checks: dict) -> bool:
    """The recipe's peak GPU memory fits the GPU its estimate was made for (True without one: a CPU, no estimate)."""
    return ((checks.get("estimate") or {}).get("gpu_memory") or {}).get("fits", True)
