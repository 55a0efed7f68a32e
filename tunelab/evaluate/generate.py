"""Greedy batched generation: left-padded, KV-cached, length-sorted, stopping at EOS or after the `#### N` line.

Hand-written decode loop (not `model.generate`): rows that finish leave the batch and the KV cache
immediately, which `generate` does not do; see benchmarks/eval_throughput.py.

Deterministic: greedy decoding, fixed order. Batch size is the user's or automatic (CPU: 32; CUDA:
start at 64 and halve on out-of-memory).

Run as: tunelab eval runs/smoke --limit 200
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from tunelab.progress import bar

ANSWER_LINE = re.compile(r"####[^\n]*\d[^\n]*\n")  # a complete line after the final-answer marker


@dataclass
class Generation:
    completion: str
    tokens: int  # generated tokens up to and including the stop


def auto_batch_size(device: torch.device) -> int:
    return 64 if device.type == "cuda" else 32


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int = 0,
             label: str = "generate", on_result=None) -> tuple[list[Generation], float]:
    """Completions for `prompts` (same order) and the seconds spent.

    Args:
        batch_size: prompts per batch; 0 = automatic.
        on_result: called with (prompt index, Generation) as results arrive (running accuracy).
    """
    device = next(model.parameters()).device
    batch_size = batch_size or auto_batch_size(device)
    model.eval()
    encoded = tok(prompts, add_special_tokens=True)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
    results: list[Generation | None] = [None] * len(prompts)
    started = time.time()
    generated = 0
    with bar(label, total=len(prompts)) as progress:
        start = 0
        while start < len(order):
            chunk = order[start:start + batch_size]
            try:
                outs = _generate_batch(model, tok, [encoded[i] for i in chunk], max_new_tokens, device)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                torch.cuda.empty_cache()
                continue
            for i, g in zip(chunk, outs):
                results[i] = g
                generated += g.tokens
                if on_result:
                    on_result(i, g)
            start += len(chunk)
            progress.advance(len(chunk), tok_s=f"{generated / (time.time() - started):.0f}")
    return results, time.time() - started


def _generate_batch(model, tok, ids: list[list[int]], max_new_tokens: int, device) -> list[Generation]:
    """Greedy decoding with a KV cache; finished rows leave the batch (and the cache) at once, so a
    long answer never makes the short ones pay for its extra steps."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x)
        mask[row, width - len(x):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding shifts nothing
    eos = _eos_ids(model, tok)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)  # (B,)
    last = positions[:, -1]
    active = list(range(len(ids)))
    generated: list[list[int]] = [[] for _ in ids]
    stopped_by_eos = [False] * len(ids)
    for step in range(max_new_tokens):
        keep = []
        for j, row in enumerate(active):
            token = int(nxt[j])
            generated[row].append(token)
            if token in eos:
                stopped_by_eos[row] = True
            elif step + 1 < max_new_tokens and not _answer_done(tok, generated[row], token):
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, nxt, last = mask[index], nxt[index], last[index]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last = last + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], past_key_values=cache,
                    use_cache=True)
        nxt = out.logits[:, -1].argmax(-1)
    return [Generation(tok.decode(g[:-1] if stopped_by_eos[r] else g, skip_special_tokens=True), len(g))
            for r, g in enumerate(generated)]


def _eos_ids(model, tok) -> set[int]:
    ids = {tok.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    return {i for i in ids if i is not None}


def _answer_done(tok, tokens: list[int], last: int) -> bool:
    """True once the text holds a finished `#### N` line; decoded only when a newline may have arrived."""
    if "\n" not in tok.decode([last]):
        return False
    return bool(ANSWER_LINE.search(tok.decode(tokens, skip_special_tokens=True)))
