"""Greedy batched generation: left-padded, KV-cached, length-sorted, stopping at EOS or after the `#### N` line.

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


class StopAfterAnswer:
    """Per-row stop once the generated text holds a finished `#### N` line (EOS is handled by generate)."""

    def __init__(self, tok, prompt_width: int):
        self.tok, self.prompt_width = tok, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tok.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([bool(ANSWER_LINE.search(t)) for t in texts], device=input_ids.device)


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
    from transformers import StoppingCriteriaList
    device = next(model.parameters()).device
    batch_size = batch_size or auto_batch_size(device)
    model.eval()
    tok.padding_side = "left"
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
                outs = _generate_batch(model, tok, [encoded[i] for i in chunk], max_new_tokens, device,
                                       StoppingCriteriaList)
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


def _generate_batch(model, tok, ids: list[list[int]], max_new_tokens: int, device, StoppingCriteriaList):
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x)
        mask[row, width - len(x):] = 1
    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                         max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, top_p=None, top_k=None, temperature=None,
                         stopping_criteria=StoppingCriteriaList([StopAfterAnswer(tok, width)]))
    new = out[:, width:].cpu()
    gens = []
    for row in new.tolist():
        n = len(row)
        while n and row[n - 1] == tok.pad_token_id and tok.pad_token_id != tok.eos_token_id:
            n -= 1
        if tok.eos_token_id in row[:n]:  # stop at the first EOS (pad may equal EOS)
            n = row.index(tok.eos_token_id) + 1
            if ANSWER_LINE.search(tok.decode(row[:n - 1], skip_special_tokens=True)):
                n -= 1  # stopped by the answer line: that "EOS" is padding, not a generated token
        gens.append(Generation(tok.decode(row[:n], skip_special_tokens=True), n))
    return gens
