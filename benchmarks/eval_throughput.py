"""Generation throughput: tunelab's batched generator vs a naive batch-1 `model.generate` loop.

Same N GSM8K test questions (default 32), same model (SmolLM2-135M-Instruct), same greedy settings
and stop rule, one process. Prints generated tokens/s of both, their ratio, and the share of
questions whose extracted answers agree. The last line is one JSON object.

Run as: .venv/bin/python benchmarks/eval_throughput.py [--n 32] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tunelab.config import load_recipe  # noqa: E402
from tunelab.data import load_splits  # noqa: E402
from tunelab.evaluate.generate import ANSWER_LINE, generate  # noqa: E402
from tunelab.evaluate.scoring import extract_flexible, extract_strict, normalize  # noqa: E402
from tunelab.models import load_model, load_tokenizer  # noqa: E402




class StopAfterAnswer:  # the naive baseline's stop rule, as a transformers StoppingCriteria
    """Per-row stop once the generated text holds a finished `#### N` line (EOS is handled by generate)."""

    def __init__(self, tok, prompt_width: int):
        self.tok, self.prompt_width = tok, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tok.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([bool(ANSWER_LINE.search(t)) for t in texts], device=input_ids.device)


def naive(model, tok, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int, float]:
    """The loop users write first: one question at a time through `model.generate`."""
    from transformers import StoppingCriteriaList
    texts, tokens, t0 = [], 0, time.time()
    for p in prompts:
        ids = tok(p, return_tensors="pt")
        width = ids["input_ids"].shape[1]
        out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             top_p=None, top_k=None, temperature=None,
                             stopping_criteria=StoppingCriteriaList([StopAfterAnswer(tok, width)]))
        new = out[0, width:]
        tokens += int(new.shape[0])
        texts.append(tok.decode(new, skip_special_tokens=True))
    return texts, tokens, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    args = ap.parse_args()

    cfg = load_recipe("gsm8k-smollm2-135m", [f"data.source={args.gsm8k}"])
    questions = load_splits(cfg.data).test[:args.n]
    prompts = [q.prompt for q in questions]
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, torch.device("cpu"))

    gens, fast_s = generate(model, tok, prompts, args.max_new_tokens, args.batch_size)
    fast_tokens = sum(g.tokens for g in gens)
    slow_texts, slow_tokens, slow_s = naive(model, tok, prompts, args.max_new_tokens)

    def answers(text):
        return normalize(extract_strict(text)), normalize(extract_flexible(text))

    agree = sum(answers(g.completion) == answers(t) for g, t in zip(gens, slow_texts)) / len(prompts)
    fast_tps, slow_tps = fast_tokens / fast_s, slow_tokens / slow_s
    print(f"tunelab batched: {fast_tokens} tokens in {fast_s:.1f} s = {fast_tps:.1f} tokens/s")
    print(f"naive batch-1:   {slow_tokens} tokens in {slow_s:.1f} s = {slow_tps:.1f} tokens/s")
    print(f"speed-up {fast_tps / slow_tps:.2f}x, wall-time ratio {slow_s / fast_s:.2f}x, answers agree on "
          f"{100 * agree:.1f} % of {len(prompts)} questions")
    print(json.dumps({"benchmark": "eval_throughput", "n": len(prompts), "max_new_tokens": args.max_new_tokens,
                      "tunelab_tokens_per_second": round(fast_tps, 2), "naive_tokens_per_second": round(slow_tps, 2),
                      "ratio": round(fast_tps / slow_tps, 3), "wall_ratio": round(slow_s / fast_s, 3),
                      "answer_agreement": round(agree, 4), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
