"""Tokenize examples and cut them into padded batches, grouped by length (same loss, less padding).

Labels are -100 on the prompt when training completion-only; every sequence ends with EOS so the
model learns to stop. With `data.chat_template` the texts are one exchange in the tokenizer's chat format
(`tunelab/data/chat.py`). Truncation to `max_length` is counted, never silent.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

IGNORE = -100
GROUP_CHUNK = 64  # batches per length-sorted chunk: order stays random across chunks


@dataclass
class Tokenized:
    index: int  # position in the split's example list
    input_ids: list[int]
    labels: list[int]

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE)


@dataclass
class Batch:
    index: torch.Tensor  # (B,) example positions
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE on prompt and padding
    real_tokens: int  # non-pad tokens (prompt + target)
    supervised: int  # tokens that carry loss


def encode(examples, tok, chat: bool = False, history_loss: bool = True) -> tuple[list, list, list]:
    """Per example: prompt ids, target ids (ending with EOS), and which prompt tokens carry loss (None: none) — the
    earlier assistant turns of a conversation row (`data.messages`) when `history_loss`. Plain rows, or through the
    chat template (`data.chat_template`)."""
    spans = [[] for _ in examples]
    if chat:
        from tunelab.data import chat as chat_format
        chat_format.require(tok)
        histories = [e.fields.get(chat_format.HISTORY, []) for e in examples]
        pairs = [chat_format.exchange(tok, e.prompt, e.target, h) for e, h in zip(examples, histories)]
        prompts, targets = [p for p, _ in pairs], [t for _, t in pairs]
        if history_loss:
            earlier = [any(t["role"] == "assistant" for t in h) for h in histories]
            spans = [chat_format.reply_spans(tok, e.prompt, h) if on else []
                     for e, h, on in zip(examples, histories, earlier)]
            if any(on and not row for on, row in zip(earlier, spans)):
                log.warning("data.history_loss: the chat template does not write these conversations turn by turn; "
                            "%d rows train on their last reply only",
                            sum(on and not r for on, r in zip(earlier, spans)))
    else:
        prompts, targets = [e.prompt for e in examples], [e.target for e in examples]
    if not examples:
        return [], [], []
    encoded = tok(prompts, add_special_tokens=True, return_offsets_mapping=any(spans))
    target_ids = continuation_ids(tok, targets, prompts)
    eos = tok.eos_token_id
    trained = [[e > s and any(a <= s and e <= b for a, b in row) for s, e in offsets] if row else None
               for row, offsets in zip(spans, encoded.get("offset_mapping") or [None] * len(examples))]
    return encoded["input_ids"], [t if t[-1:] == [eos] else t + [eos] for t in target_ids], trained


PROBE = "\n"  # what continuation_ids tokenizes a text after: a newline (SentencePiece's <0x0A>) joins no neighbour


def continuation_ids(tok, texts: list[str], prompts: list[str]) -> list[list[int]]:
    """Token ids of `texts` as they continue their `prompts`: `tok(texts)` without special tokens, less the
    word-start marker that a SentencePiece tokenizer with a dummy prefix (Llama 2, Mistral-7B-v0.1: "▁") puts before
    a text's first character when the text starts the input. After a prompt that marker is a spurious token: a
    second space after "Response: " (`▁ ▁ N atalia` where the text has one), trained on and scored, never what the
    model saw in text. Such a tokenizer (`word_start_prefix`) tokenizes each text after a newline, whose tokens are
    then cut off (lm-eval tokenizes context and continuation together for the same reason). A text after an empty
    prompt starts the input, and other tokenizers add nothing: `tok(texts)` as it is."""
    if not texts:
        return []
    plain = tok(texts, add_special_tokens=False)["input_ids"]
    if not word_start_prefix(tok):
        return plain
    anchor = tok(PROBE, add_special_tokens=False)["input_ids"]
    joined = tok([PROBE + t for t in texts], add_special_tokens=False)["input_ids"]
    return [j[len(anchor):] if prompt and j[:len(anchor)] == anchor else p
            for j, p, prompt in zip(joined, plain, prompts)]


def word_start_prefix(tok) -> bool:
    """Whether the tokenizer puts a word-start marker before a text that starts the input (SentencePiece's dummy
    prefix: Llama 2, Mistral-7B-v0.1), told by a text tokenizing otherwise alone than after a newline."""
    anchor = tok(PROBE, add_special_tokens=False)["input_ids"]
    after, alone = tok([PROBE + "a", "a"], add_special_tokens=False)["input_ids"]
    return after[:len(anchor)] == anchor and after[len(anchor):] != alone


def boundary_merges(examples, tok) -> dict:
    """Rows whose prompt and target tokenize differently together than apart: the tokens of prompt + target do not
    begin with the prompt's own (a template ending in a space: " " + "Distance" becomes " Distance"). tunelab
    tokenizes them apart, as a prompt is given at inference; a trainer that tokenizes them together (TRL's
    prompt-completion rows) trains the merged token, which a prompt given alone never ends with.
    Returns {rows, of, example: {id, prompt_end, together}} (example only when some merge)."""
    if not examples:
        return {"rows": 0, "of": 0}
    prompts = tok([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    joined = tok([e.prompt + e.target for e in examples], add_special_tokens=True)["input_ids"]
    merged = [k for k, (p, j) in enumerate(zip(prompts, joined)) if j[:len(p)] != p]
    out = {"rows": len(merged), "of": len(examples)}
    if merged:
        k = merged[0]
        p, j = prompts[k], joined[k]
        at = next((i for i, (a, b) in enumerate(zip(p, j)) if a != b), min(len(p), len(j)))
        out["example"] = {"id": examples[k].id, "prompt_end": _text_after(tok, p, at, len(p)),
                          "together": _text_after(tok, j, at, at + 1)}
    return out


def _text_after(tok, ids: list[int], start: int, end: int) -> str:
    """The text of ids[start:end] as it reads after the token before it: decoded alone, a SentencePiece tokenizer's
    word-start space (Mistral-7B-v0.1's lone ▁) would read as nothing."""
    before = max(start - 1, 0)
    return tok.decode(ids[before:end])[len(tok.decode(ids[before:start])):]


def tokenize(examples, tok, max_length: int, completion_only: bool, chat: bool = False,
             history_loss: bool = True, chunk: bool = False) -> tuple[list[Tokenized], int]:
    """Token ids and labels per example; returns (kept examples, how many were truncated).

    Examples left with no supervised token after truncation are dropped (they count as truncated). `chunk`: an
    example of plain text (an empty prompt) longer than max_length is split into consecutive windows of max_length
    tokens instead, each an item of the same `index` (HF run_clm's blocks, within a row), and is not truncated.
    """
    out, truncated = [], 0
    for i, (p, t, trained) in enumerate(zip(*encode(examples, tok, chat, history_loss))):
        ids = p + t
        if not completion_only:
            prompt_labels = list(p)
        else:
            prompt_labels = [x if on else IGNORE for x, on in zip(p, trained)] if trained else [IGNORE] * len(p)
        labels = prompt_labels + t
        split = chunk and not examples[i].prompt.strip()  # plain text: no prompt to cut from its answer
        if len(ids) > max_length and not split:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        for start in range(0, len(ids), max_length):
            item = Tokenized(i, ids[start:start + max_length], labels[start:start + max_length])
            if item.supervised > 0:
                out.append(item)
    return out, truncated


def tokenize_with(cfg, examples, tok) -> tuple[list[Tokenized], int]:
    """`tokenize` under a recipe's settings (max_length, completion_only, chat_template, history_loss)."""
    return tokenize(examples, tok, cfg.train.max_length, cfg.train.completion_only, cfg.data.chat_template,
                    cfg.data.history_loss, cfg.data.chunk)


def tokenize_splits(cfg, splits, tok) -> tuple[list[Tokenized], list[Tokenized], int]:
    """(train items, validation items, truncated count) of a recipe's splits under its tokenizer.

    Raises:
        UserError: no example keeps a supervised token within train.max_length.
    """
    from tunelab.errors import UserError
    train_items, train_cut = tokenize_with(cfg, splits.train, tok)
    val_items, val_cut = tokenize_with(cfg, splits.val, tok)
    if not train_items or not val_items:
        raise UserError(f"data.source: no train or validation example has a supervised token within "
                        f"train.max_length={cfg.train.max_length}")
    return train_items, val_items, train_cut + val_cut


@dataclass
class Weights:
    """How often each train row is trained per epoch (`data.weight`, each `data.mix` entry's `weight`): every row of
    a source of weight w floor(w) times, and a seeded draw of round(frac(w) × its rows) once more, drawn afresh each
    epoch — so a source's share of the epoch is exact and its rows take turns."""
    source: list[int]  # per train item: its source's position (data.source 0, then the data.mix entries)
    weight: list[float]  # per source

    def order(self, rng: random.Random) -> list[int]:
        """One epoch's item positions, unshuffled: each source's repeats, then its draw."""
        out = []
        for s, w in enumerate(self.weight):
            mine = [i for i, k in enumerate(self.source) if k == s]
            out += mine * int(w) + rng.sample(mine, _drawn(w, len(mine)))
        return out

    @property
    def rows(self) -> int:
        """Rows trained per epoch (the same every epoch)."""
        counts = Counter(self.source)
        return sum(trained_per_epoch(w, counts[s]) for s, w in enumerate(self.weight))

    def per_item(self) -> list[float]:
        return [self.weight[s] for s in self.source]


def _drawn(weight: float, rows: int) -> int:
    return round((weight - int(weight)) * rows)


def trained_per_epoch(weight: float, rows: int) -> int:
    """How many of a source's `rows` one epoch trains under its weight, repeats counted."""
    return int(weight) * rows + _drawn(weight, rows)


def weights(cfg, examples: list, items: list[Tokenized]) -> Weights | None:
    """The recipe's row weights over its tokenized train items (`examples`: the train split they index); None when
    every source's weight is 1 (each row once per epoch, in the order a run without weights has).

    Raises:
        UserError: a source's weight draws none of its rows.
    """
    from tunelab.data import source_of, source_weights
    from tunelab.errors import UserError
    by_name = source_weights(cfg.data)
    if all(w == 1 for w in by_name.values()):
        return None
    names, per_source = list(by_name), list(by_name.values())
    out = Weights([names.index(source_of(examples[it.index].id, cfg.data)) for it in items], per_source)
    counts = Counter(out.source)
    for s, w in enumerate(per_source):
        if counts[s] and not trained_per_epoch(w, counts[s]):
            key = f"data.mix.{s - 1}.weight" if s else "data.weight"
            raise UserError(f"{key}: {w} × {counts[s]} train rows trains none of them per epoch; raise it to at "
                            f"least {1 / counts[s]:.3g}")
    return out


def batches(items: list[Tokenized], batch_size: int, pad_id: int, seed: int | None,
            group_by_length: bool, weights: Weights | None = None) -> list[Batch]:
    """Batches for one pass. seed=None keeps order (evaluation); grouping sorts within chunks. `weights`: the
    epoch's rows repeated and drawn by the source weights (from the same seed)."""
    rng = random.Random(seed)
    order = weights.order(rng) if weights else list(range(len(items)))
    if seed is not None:
        rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * GROUP_CHUNK
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda i: -len(items[i].input_ids))]
    groups = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length and seed is not None:
        rng.shuffle(groups)
    return [collate([items[i] for i in g], pad_id) for g in groups]


def collate(group: list[Tokenized], pad_id: int) -> Batch:
    width = max(len(x.input_ids) for x in group)
    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    labels = torch.full((len(group), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    for row, x in enumerate(group):
        n = len(x.input_ids)
        ids[row, :n] = torch.tensor(x.input_ids)
        labels[row, :n] = torch.tensor(x.labels)
        mask[row, :n] = 1
    return Batch(torch.tensor([x.index for x in group]), ids, mask, labels, int(mask.sum()),
                 sum(x.supervised for x in group))


def split(batch: Batch, max_tokens: int) -> list[Batch]:
    """Cut a batch into row slices of at most `max_tokens` padded tokens each (0 = no split).

    The caller sums token losses over all slices and divides once, so the loss and gradient are
    those of the whole batch; only peak activation memory changes (~1.7 MB per token for SmolLM2-135M).
    """
    if max_tokens <= 0 or batch.input_ids.numel() <= max_tokens:
        return [batch]
    lengths = batch.attention_mask.sum(1).tolist()
    out, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and (end + 1 - start) * max(lengths[start:end + 1]) <= max_tokens:
            end += 1
        width = max(lengths[start:end])
        labels = batch.labels[start:end, :width]
        mask = batch.attention_mask[start:end, :width]
        out.append(Batch(batch.index[start:end], batch.input_ids[start:end, :width], mask, labels,
                         int(mask.sum()), int((labels[:, 1:] != IGNORE).sum())))
        start = end
    return out
