"""Multiple-choice scoring by log-likelihood (`eval.scoring: choice`), as lm-evaluation-harness scores its
multiple_choice tasks (MMLU, ARC, HellaSwag, PIQA): each option is written after the question's prompt, and the
option the model finds most likely is its answer. Nothing is generated: each prompt runs once, and its options
continue copies of its KV cache.

    acc      = argmax over options of the summed log-likelihood of the option's tokens
    acc_norm = argmax of that sum divided by the option's length in characters, leading whitespace aside
               (lm-eval's acc_norm: a long option is not beaten for its length alone)

The options are a row's `eval.choices` field (a list; ARC's {text, label}) or fields (PIQA's [sol1, sol2]); the
answer is the option its rendered target names (`answer_of`). Each option is written by `eval.choice_target`:
{choice} its text, {letter} its letter — " {letter}" after a prompt that lists them (MMLU's format). The prompt is
tokenized as generation tokenizes it (with the tokenizer's BOS), the option apart from it, without EOS.

With `eval.choice_blank` (Winogrande's "_") the options fill a blank in the prompt instead: each option's context
is the prompt up to the blank with the option in it, and what is scored after every context is the same rest of the
question (lm-eval's partial scoring), so acc_norm is acc there.

With `eval.choice_labels` (TruthfulQA's mc2 labels) a question may have several true options: the pick is right when
it is one of them, and

    mc2 = sum over true options of exp(loglik) / sum over all options of exp(loglik)

the probability the model gives the true answers, normalised over the options (lm-eval 0.4's truthfulqa_mc2 acc,
its process_results_mc2: the options labelled 1 are the true ones).

A pass's answers are journaled a chunk of questions at a time: a killed eval resumes after the last chunk.

Run as: tunelab eval runs/smoke --set 'eval.also=[{source: allenai/ai2_arc, config: ARC-Easy, name: arc,
            template: "Question: {question}\\nAnswer:", target: "{answerKey}", choices: choices,
            choice_target: " {choice}"}]'
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import string
import time
from collections import Counter
from dataclasses import replace

from tunelab.config import Recipe
from tunelab.data import Example, render
from tunelab.evaluate.scoring import normalize_text

LETTERS = string.ascii_uppercase
CHUNK = 64  # questions scored (and journaled) together


def options(cfg: Recipe, fields: dict) -> list[str] | None:
    """A row's options (`eval.choices`): the field's list (ARC's {text: [...]}'s texts) or the fields' values;
    None unless there are two or more, none of them blank."""
    spec = cfg.eval.choices
    values = [fields.get(name) for name in spec] if isinstance(spec, list) else fields.get(spec)
    if isinstance(values, dict):
        values = values.get("text")
    if not isinstance(values, list) or len(values) < 2:
        return None
    if any(not isinstance(v, (str, int, float)) or not str(v).strip() for v in values):
        return None
    return [str(v) for v in values]


def answer_of(cfg: Recipe, row: Example) -> int | None:
    """The option a row's rendered target names, in this order: one of the options' labels (ARC's answerKey, whose
    labels may be 1-4), a 0-based index (MMLU's answer, HellaSwag's label), a letter (A = the first), an option's
    text (compared lower-cased, end punctuation removed); None when it names none. With eval.choice_labels, the
    first true option (it stands for them all where one is written: a shot, `check --show`)."""
    found = options(cfg, row.fields)
    if found is None or (cfg.eval.choice_blank and cfg.eval.choice_blank not in row.prompt):
        return None
    if cfg.eval.choice_labels:
        labels = true_options(cfg, row.fields)
        return labels.index(True) if labels else None
    key = row.target.strip()
    raw = row.fields.get(cfg.eval.choices) if isinstance(cfg.eval.choices, str) else None
    labels = [str(x).strip() for x in raw.get("label", [])] if isinstance(raw, dict) else []
    if key in labels and len(labels) == len(found):
        return labels.index(key)
    if key.isdigit() and int(key) < len(found):
        return int(key)
    if len(key) == 1 and key.upper() in LETTERS[:len(found)]:
        return LETTERS.index(key.upper())
    texts = [normalize_text(o) for o in found]
    return texts.index(normalize_text(key)) if normalize_text(key) in texts else None


def true_options(cfg: Recipe, fields: dict) -> list[bool] | None:
    """eval.choice_labels: which of a row's options are true, in their order (labels 1 / 0, or true / false); None
    unless the field holds one label per option, each of them one of those, and at least one true."""
    found, raw = options(cfg, fields), fields.get(cfg.eval.choice_labels)
    if found is None or not isinstance(raw, list) or len(raw) != len(found):
        return None
    said = [str(x).strip().lower() for x in raw]
    if any(x not in ("0", "1", "false", "true") for x in said):
        return None
    labels = [x in ("1", "true") for x in said]
    return labels if any(labels) else None


def resolved(cfg: Recipe, rows: list[Example]) -> list[Example]:
    """The rows with their target replaced by the text of the option it names (blank when it names none: such a
    row has no reference answer and is not scored)."""
    out = []
    for row in rows:
        k = answer_of(cfg, row)
        out.append(replace(row, target=options(cfg, row.fields)[k] if k is not None else ""))
    return out


def written(cfg: Recipe, row: Example, chat: bool = False) -> list[str]:
    """Each of a row's options as `eval.choice_target` writes it after the prompt; after a chat template's assistant
    header (`chat`) without the whitespace before it, as lm-eval drops its target delimiter there."""
    out = [render(cfg.eval.choice_target, {**row.fields, "choice": text, "letter": LETTERS[k]})
           for k, text in enumerate(options(cfg, row.fields) or [])]
    return [w.lstrip() for w in out] if chat else out


def blanked(cfg: Recipe, prompt: str, row: Example) -> tuple[list[str], str]:
    """eval.choice_blank: `prompt` (ending with the row's own prompt) up to the blank with each option written in it,
    and the text scored after each: the rest of the row's prompt after a space (lm-eval's partial scoring of
    Winogrande, its target delimiter " ")."""
    at = row.prompt.index(cfg.eval.choice_blank)
    start = len(prompt) - len(row.prompt) + at
    rest = row.prompt[at + len(cfg.eval.choice_blank):].strip()
    return [prompt[:start] + w for w in written(cfg, row)], " " + rest


def shot_rows(cfg: Recipe, pool: list[Example], n: int) -> list[Example]:
    """The few-shot baseline's shots: the first `n` rows of `pool` whose target names one of their options."""
    out = []
    for row in pool:
        if len(out) == n:
            break
        if answer_of(cfg, row) is not None:
            out.append(row)
    return out


def exchanges(cfg: Recipe, shots: list[Example]) -> list[tuple[str, str]]:
    """Each shot as (its prompt, its right option as written): lm-eval's multiple-choice few-shot, each shot written
    as the questions are."""
    if cfg.eval.choice_blank:  # the blank filled with the right option, then the rest (lm-eval's Winogrande shots)
        pairs = [blanked(cfg, row.prompt, row) for row in shots]
        return [(filled[answer_of(cfg, row)], rest) for row, (filled, rest) in zip(shots, pairs)]
    return [(row.prompt, written(cfg, row)[answer_of(cfg, row)]) for row in shots]


def fewshot_context(examples: list[tuple[str, str]]) -> str:
    """What every few-shot prompt starts with, written as plain text: each shot's prompt and right option, then a
    blank line (lm-eval's fewshot_delimiter)."""
    return "".join(f"{prompt}{option}\n\n" for prompt, option in examples)


def answer(cfg: Recipe, prompts: list[str], rows: list[Example], load, tok, device, key: str, journal,
           label: str, chat: bool = False,
           prefix: str | list[str] | None = None) -> tuple[list[list[float]], float, int]:
    """The log-likelihood of each option of each row after its prompt under the model `load()` returns: per row,
    the list; the seconds and the tokens forwarded. `chat`: the prompts end with a chat template's assistant header
    (`written`); `prefix`: text every prompt starts with (the few-shot shots), or each prompt's own (shots of its
    category), run once and its KV cache shared (`generate.SharedPrefix`) by the prompts that start with it, scored
    together. Rows journaled under `key` (a killed pass's) are read back, the others scored `CHUNK` rows at a time
    and journaled; under torchrun each rank scores every W-th remaining row."""
    from tunelab import distributed
    from tunelab.progress import bar
    key = choice_key(cfg, key, rows, chat)
    have = {i: json.loads(text) for i, (text, _) in journal.done(key).items()}
    d = distributed.setup(device.type)
    prefixes = prefix if isinstance(prefix, list) else [prefix] * len(rows)
    shared_by = Counter(prefixes)  # a prefix of one row alone (shots drawn for each question) gains nothing apart:
    prefixes = [p if shared_by[p] > 1 else None for p in prefixes]  # such rows are scored in groups, whole
    mine = sorted([i for i in range(len(rows)) if i not in have][d.rank::d.world], key=lambda i: prefixes[i] or "")
    forwarded, new, seconds, shared = 0, [], 0.0, _Shared(tok, device)
    model = load().eval() if d.max(len(mine)) else None
    with bar(f"eval {label}", total=len(mine)) as progress:
        for start in range(0, len(mine), CHUNK):
            chunk = mine[start:start + CHUNK]
            t0 = time.time()
            for run in _runs(chunk, prefixes):  # the chunk's rows that share a prefix, after its cache
                sums, n = _likelihoods(cfg, [prompts[i] for i in run], [rows[i] for i in run], model, tok, device,
                                       chat, shared.of(model, prefixes[run[0]]))
                forwarded += n
                for i, lls in zip(run, sums):
                    journal.append(key, i, json.dumps(lls), 0)
                    new.append((i, lls))
            seconds += time.time() - t0
            progress.advance(len(chunk))
    return ([{**have, **dict(d.gather(new))}[i] for i in range(len(rows))], max(d.gather([seconds])),
            d.sum([forwarded])[0])


def _runs(chunk: list[int], prefixes: list[str | None]) -> list[list[int]]:
    """`chunk`'s rows (sorted by prefix) in runs of the same prefix."""
    out = []
    for i in chunk:
        if out and prefixes[out[-1][0]] == prefixes[i]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


class _Shared:
    """The last prefix's `generate.SharedPrefix` (rows come sorted by prefix, so each one is run once)."""

    def __init__(self, tok, device):
        self.tok, self.device, self.text, self.cache = tok, device, None, None

    def of(self, model, text: str | None):
        import torch
        from tunelab.evaluate.generate import SharedPrefix
        if text and text != self.text:
            with torch.inference_mode():
                self.text, self.cache = text, SharedPrefix.run(model, self.tok, text, self.device)
        return self.cache if text else None


def choice_key(cfg: Recipe, key: str, rows: list[Example], chat: bool = False) -> str:
    """A pass's journal key (`key`: what decides its prompts and model) with the options it writes, tokenized as
    they continue their prompt (`batching.continuation_ids`; log-likelihoods cached before that are not reused)."""
    ident = [key, [written(cfg, r, chat) for r in rows], "continuation"]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]


def _likelihoods(cfg: Recipe, prompts: list[str], rows: list[Example], model, tok, device, chat: bool = False,
                 shared=None) -> tuple[list[list[float]], int]:
    """Summed log-likelihood of each option after its row's prompt, and the tokens forwarded: groups of prompts run
    once — after the shared prefix's cache (`shared`, a `generate.SharedPrefix`) when they all start with it —, and
    every option of a prompt continues a copy of its KV cache (`_group`), instead of each option running the prompt
    again as lm-eval does. A group holds as many options' caches as generation decodes rows together (`auto_slots`:
    CPU 48, CUDA what half the free memory holds), so as many prompts as that over the most options a row has."""
    if cfg.eval.choice_blank:  # each option's own prompt, one text scored after each: regrouped per row
        pairs = [blanked(cfg, prompt, r) for prompt, r in zip(prompts, rows)]
        flat, n = _likelihoods_of([c for cs, _ in pairs for c in cs], [[rest] for cs, rest in pairs for _ in cs],
                                  model, tok, device, shared)
        ends = [0, *itertools.accumulate(len(cs) for cs, _ in pairs)]
        return [[x for [x] in flat[a:b]] for a, b in zip(ends, ends[1:])], n
    return _likelihoods_of(prompts, [written(cfg, r, chat) for r in rows], model, tok, device, shared)


def _likelihoods_of(prompts: list[str], options: list[list[str]], model, tok, device,
                    shared=None) -> tuple[list[list[float]], int]:
    """`_likelihoods` of texts: each prompt's `options` (as written), summed log-likelihood after it."""
    import torch
    from tunelab.evaluate.generate import auto_slots
    from tunelab.train.batching import continuation_ids
    heads = tok(prompts, add_special_tokens=True)["input_ids"]
    flat = continuation_ids(tok, [t for texts in options for t in texts],
                            [prompt for prompt, texts in zip(prompts, options) for _ in texts])
    ends = [0, *itertools.accumulate(map(len, options))]
    tails = [flat[a:b] for a, b in zip(ends, ends[1:])]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    slots = auto_slots(base, device, max(len(h) + max(map(len, t)) for h, t in zip(heads, tails)))
    size = max(1, slots // max(map(len, tails)))  # each option holds its own copy of its prompt's cache
    out, skip = [], len(shared.ids) if shared is not None and all(map(shared.starts, heads)) else 0
    with torch.inference_mode():
        for at in range(0, len(heads), size):
            out += _group(base, heads[at:at + size], tails[at:at + size], tok.pad_token_id, device,
                          shared if skip else None)
    return out, sum(len(h) - skip + sum(map(len, t)) for h, t in zip(heads, tails)) + skip


HEAD_ROWS = 1024  # option positions put through the LM head at once (each one a vocabulary's logits)


def _group(model, heads: list[list[int]], tails: list[list[list[int]]], pad: int, device,
           shared=None) -> list[list[float]]:
    """Each option's summed log-likelihood for a group of prompts (token ids `heads`, left-padded together, explicit
    positions; after a copy of `shared`'s cache, the prefix they all start with, when given) and their options
    (`tails`, each prompt's): the prompts' last position predicts every option's first token; each option's other
    tokens run in one batch after a copy of its prompt's cache. The LM head sees only the positions that predict an
    option token."""
    import torch
    from transformers import DynamicCache
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    skip = len(shared.ids) if shared is not None else 0
    width = max(len(x) - skip for x in heads)
    ids = torch.full((len(heads), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, x in enumerate(heads):
        ids[r, width - len(x) + skip:], mask[r, width - len(x) + skip:] = torch.tensor(x[skip:]), 1
    ids, mask = ids.to(device), mask.to(device)
    cache = DynamicCache(config=model.config)
    if shared is not None:  # the prefix's keys and values, one copy per prompt (as generate's prefill)
        mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, skip), mask], dim=1)
        for layer, (keys, values) in zip(cache.layers, shared.kv):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = (t.expand(len(heads), -1, -1, -1) for t in (keys, values))
    last = decoder(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, skip:],
                   past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
    first = lm_head(last).float().log_softmax(-1)  # (G, V)
    owner = [r for r, options in enumerate(tails) for _ in options]
    options = [t for ts in tails for t in ts]
    sums = first[owner, [t[0] for t in options]].double()
    longest = max(len(t) for t in options) - 1
    if longest:  # the options' other tokens, each after its own copy of its prompt's cache
        cache.batch_select_indices(torch.tensor(owner, device=device))
        more = torch.full((len(options), longest), pad, dtype=torch.long)
        more_mask = torch.zeros_like(more)
        for k, t in enumerate(options):
            more[k, :len(t) - 1], more_mask[k, :len(t) - 1] = torch.tensor(t[:-1], dtype=torch.long), 1
        lengths = torch.tensor([len(heads[r]) for r in owner])
        hidden = decoder(input_ids=more.to(device), attention_mask=torch.cat([mask[owner], more_mask.to(device)], 1),
                         position_ids=(lengths[:, None] + torch.arange(longest)).to(device),
                         past_key_values=cache, use_cache=True).last_hidden_state  # (N, longest, H)
        at = [(k, j, t[j + 1]) for k, t in enumerate(options) for j in range(len(t) - 1)]
        for s in range(0, len(at), HEAD_ROWS):
            k, j, token = (torch.tensor(c, device=device) for c in zip(*at[s:s + HEAD_ROWS]))
            logp = lm_head(hidden[k, j]).float().log_softmax(-1)
            sums.index_add_(0, k, logp[torch.arange(len(token), device=device), token].double())
    out: list[list[float]] = [[] for _ in heads]
    for r, value in zip(owner, sums.tolist()):
        out[r].append(round(value, 6))
    return out


def row(cfg: Recipe, question: Example, lls: list[float]) -> dict:
    """A question's prediction fields: the option picked by acc (`strict_answer`) and by acc_norm
    (`flexible_answer`, also its `completion`), each against the reference (the target's option; with
    eval.choice_labels, any true option), the options' log-likelihoods, and with eval.choice_labels its mc2. acc_norm
    divides by the length of the option as written without the whitespace before it, as lm-eval divides by its
    choice's, written after its target delimiter."""
    found, lengths = options(cfg, question.fields), [max(len(w.lstrip()), 1) for w in written(cfg, question)]
    if cfg.eval.choice_blank:  # the same text scored after every option: per character ranks as the sum does
        lengths = [1] * len(lengths)
    by_sum = max(range(len(lls)), key=lambda k: lls[k])
    by_char = max(range(len(lls)), key=lambda k: lls[k] / lengths[k])
    true = true_options(cfg, question.fields) if cfg.eval.choice_labels else [o == question.target for o in found]
    return {"completion": found[by_char], "strict_answer": found[by_sum], "flexible_answer": found[by_char],
            "strict_correct": true[by_sum], "flexible_correct": true[by_char], "logliks": lls,
            **({"mc2": true_mass(lls, true)} if cfg.eval.choice_labels else {})}


def true_mass(lls: list[float], true: list[bool]) -> float:
    """mc2: the options' probabilities (exp of their summed log-likelihoods) on the true ones, over all of them."""
    top = max(lls)  # shifted before exp: sums below -745 would underflow to 0 / 0
    p = [math.exp(x - top) for x in lls]
    return round(sum(x for x, t in zip(p, true) if t) / sum(p), 6)
