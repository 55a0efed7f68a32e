"""Generation throughput: tunelab's continuous-batching generator vs a naive batch-1 `model.generate` loop.

Same N GSM8K test questions (default 128), same model (SmolLM2-135M-Instruct), same greedy settings
and stop rule, one process. Prints generated tokens/s of both, their ratio, and the share of
questions whose extracted answers agree; then the same figures for the first 32 questions (tunelab
run again on those alone, the naive loop's time on them measured inside its 128-question pass).
Also tunelab without its prompt-lookup drafts (speculate=False) and without its oneDNN-packed weights
(pack=False), to show what each buys.
The last line is one JSON object. Takes ~8 min here (the naive loop is most of it).

With --fewshot N it times something else: tunelab's N-shot pass (lm-eval's GSM8K prompts) with the shots'
context prefilled once and shared, against prefilling each whole prompt (~6 min for 128 questions, 5 shots).
With --tools: the questions asked through Qwen2.5's chat template with three tool schemas in its system turn (a
tool-calling run's eval prompts), the tokens they all start with prefilled once and shared against prefilling every
whole prompt (~5 min for 128 questions, 128 new tokens).
With --sample T: tunelab's sampled decoding at temperature T (eval.pass_at_k's: top-p 0.95, a seeded generator per
row) against its greedy decoding with and without prompt-lookup drafts, tokens/s each (~4 min for 128 questions).

Run as: .venv/bin/python benchmarks/eval_throughput.py [--n 128] [--max-new-tokens 256] [--slots 0] [--fewshot 5]
        [--sample 0.6] [--tools]
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
from tunelab.evaluate.fewshot import STOP, fewshot_context, fewshot_prompt  # noqa: E402
from tunelab.evaluate.generate import ANSWER_LINE, Sampling, generate  # noqa: E402
from tunelab.evaluate.scoring import extract_flexible, extract_strict, normalize  # noqa: E402
from tunelab.models import load_model, load_tokenizer  # noqa: E402




class StopAfterAnswer:  # the naive baseline's stop rule, as a transformers StoppingCriteria
    """Per-row stop once the generated text holds a finished `#### N` line (EOS is handled by generate)."""

    def __init__(self, tok, prompt_width: int):
        self.tok, self.prompt_width = tok, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tok.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([bool(ANSWER_LINE.search(t)) for t in texts], device=input_ids.device)


def naive(model, tok, prompts: list[str], max_new_tokens: int) -> tuple[list[str], list[int], list[float]]:
    """The loop users write first: one question at a time through `model.generate`. Per question: text,
    generated tokens, seconds."""
    from transformers import StoppingCriteriaList
    texts, tokens, seconds = [], [], []
    for p in prompts:
        t0 = time.time()
        ids = tok(p, return_tensors="pt")
        width = ids["input_ids"].shape[1]
        out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             top_p=None, top_k=None, temperature=None,
                             stopping_criteria=StoppingCriteriaList([StopAfterAnswer(tok, width)]))
        new = out[0, width:]
        tokens.append(int(new.shape[0]))
        texts.append(tok.decode(new, skip_special_tokens=True))
        seconds.append(time.time() - t0)
    return texts, tokens, seconds


def answers(text: str) -> tuple:
    return normalize(extract_strict(text)), normalize(extract_flexible(text))


def compare(gens, fast_s: float, slow_texts, slow_tokens, slow_s: float) -> dict:
    fast_tokens = sum(g.tokens for g in gens)
    agree = sum(answers(g.completion) == answers(t) for g, t in zip(gens, slow_texts)) / len(gens)
    fast_tps, slow_tps = fast_tokens / fast_s, sum(slow_tokens) / slow_s
    print(f"{len(gens)} questions: tunelab {fast_tokens} tokens in {fast_s:.1f} s = {fast_tps:.1f} tokens/s; "
          f"naive {sum(slow_tokens)} tokens in {slow_s:.1f} s = {slow_tps:.1f} tokens/s; "
          f"speed-up {fast_tps / slow_tps:.2f}x (wall {slow_s / fast_s:.2f}x), answers agree on {100 * agree:.1f} %")
    return {"n": len(gens), "tunelab_tokens_per_second": round(fast_tps, 2),
            "naive_tokens_per_second": round(slow_tps, 2), "ratio": round(fast_tps / slow_tps, 3),
            "wall_ratio": round(slow_s / fast_s, 3), "answer_agreement": round(agree, 4)}


def fewshot(model, tok, shots, questions, args) -> None:
    """The N-shot pass with its context prefilled once and shared, against the same pass prefilling every prompt."""
    prompts = [fewshot_prompt(shots, q) for q in questions]
    stops = [STOP] * len(prompts)
    width = sum(len(x) for x in tok(prompts)["input_ids"]) / len(prompts)
    shared, shared_s = generate(model, tok, prompts, args.max_new_tokens, args.slots, stops=stops,
                                prefix=fewshot_context(shots))
    whole, whole_s = generate(model, tok, prompts, args.max_new_tokens, args.slots, stops=stops, share=False)
    same = sum(a.completion == b.completion for a, b in zip(shared, whole)) / len(prompts)
    tokens = sum(g.tokens for g in shared)
    print(f"{len(prompts)} questions {len(shots)}-shot ({width:.0f} prompt tokens each): shared prefix {shared_s:.1f} s, "
          f"whole prompts {whole_s:.1f} s: {whole_s / shared_s:.2f}x faster; identical completions {100 * same:.1f} %")
    print(json.dumps({"benchmark": "eval_throughput_fewshot", "n": len(prompts), "shots": len(shots),
                      "prompt_tokens": round(width, 1), "generated_tokens": tokens,
                      "shared_prefix_seconds": round(shared_s, 2), "whole_prompt_seconds": round(whole_s, 2),
                      "ratio": round(whole_s / shared_s, 3), "identical_completions": round(same, 4)}))


def tool_prompts(model, tok, questions, args) -> None:
    """The questions asked through Qwen2.5's chat template with benchmarks/tool_data.py's three tool schemas in its
    system turn (a tool-calling run's eval prompts): the tokens every prompt starts with prefilled once and shared,
    against prefilling each whole prompt."""
    from tool_data import TOOLS
    from tunelab.config import ModelConfig
    tok.chat_template = ModelConfig(name="x", chat_template="qwen_25").chat_template
    prompts = [tok.apply_chat_template([{"role": "user", "content": q.prompt}], tools=TOOLS, tokenize=False,
                                       add_generation_prompt=True) for q in questions]
    widths = [len(x) for x in tok(prompts)["input_ids"]]
    shared, shared_s = generate(model, tok, prompts, args.max_new_tokens, args.slots)
    whole, whole_s = generate(model, tok, prompts, args.max_new_tokens, args.slots, share=False)
    same = sum(a.completion == b.completion for a, b in zip(shared, whole)) / len(prompts)
    print(f"{len(prompts)} questions with tool schemas ({sum(widths) / len(widths):.0f} prompt tokens each): shared "
          f"prefix {shared_s:.1f} s, whole prompts {whole_s:.1f} s: {whole_s / shared_s:.2f}x faster; identical "
          f"completions {100 * same:.1f} %")
    print(json.dumps({"benchmark": "eval_throughput_tools", "n": len(prompts),
                      "prompt_tokens": round(sum(widths) / len(widths), 1),
                      "generated_tokens": sum(g.tokens for g in shared), "shared_prefix_seconds": round(shared_s, 2),
                      "whole_prompt_seconds": round(whole_s, 2), "ratio": round(whole_s / shared_s, 3),
                      "identical_completions": round(same, 4)}))


def sampled(model, tok, prompts: list[str], args) -> None:
    """Sampled decoding's cost per token against greedy decoding's, in the same loop on the same prompts."""
    drawn, drawn_s = generate(model, tok, prompts, args.max_new_tokens, args.slots,
                              sampling=Sampling(args.sample, 0.95, 0))
    plain, plain_s = generate(model, tok, prompts, args.max_new_tokens, args.slots, speculate=False)
    greedy, greedy_s = generate(model, tok, prompts, args.max_new_tokens, args.slots)
    rates = {name: sum(g.tokens for g in gens) / seconds for name, gens, seconds in
             (("sampled", drawn, drawn_s), ("greedy_without_drafts", plain, plain_s), ("greedy", greedy, greedy_s))}
    print(f"{len(prompts)} questions: sampled at T={args.sample} {rates['sampled']:.1f} tokens/s; greedy without "
          f"drafts {rates['greedy_without_drafts']:.1f}; greedy {rates['greedy']:.1f}; sampled / greedy without "
          f"drafts {rates['sampled'] / rates['greedy_without_drafts']:.2f}x")
    print(json.dumps({"benchmark": "eval_throughput_sampled", "n": len(prompts), "temperature": args.sample,
                      **{f"{k}_tokens_per_second": round(v, 2) for k, v in rates.items()},
                      "sampled_tokens": sum(g.tokens for g in drawn), "greedy_tokens": sum(g.tokens for g in plain),
                      "ratio_to_greedy_without_drafts": round(rates["sampled"] / rates["greedy_without_drafts"], 3),
                      "ratio_to_greedy": round(rates["sampled"] / rates["greedy"], 3)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--slots", type=int, default=0, help="continuous-batching slots (0 = automatic)")
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--fewshot", type=int, default=0,
                    help="instead: time tunelab's N-shot pass (lm-eval format) with and without the shared prefix")
    ap.add_argument("--tools", action="store_true",
                    help="instead: time prompts with tool schemas (Qwen2.5's template) with and without sharing the "
                         "tokens they all start with")
    ap.add_argument("--sample", type=float, default=0.0,
                    help="instead: time tunelab's sampled decoding at this temperature against its greedy decoding")
    args = ap.parse_args()

    cfg = load_recipe("gsm8k-smollm2-135m", [f"data.source={args.gsm8k}"])
    questions = load_splits(cfg.data).test[:args.n]
    prompts = [q.prompt for q in questions]
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, torch.device("cpu"))

    generate(model, tok, prompts[:8], 32, args.slots)  # warm-up (allocator, kernels): not timed
    if args.fewshot:
        return fewshot(model, tok, load_splits(cfg.data).train[:args.fewshot], questions, args)
    if args.sample:
        return sampled(model, tok, prompts, args)
    if args.tools:
        return tool_prompts(model, tok, questions, args)
    gens, fast_s = generate(model, tok, prompts, args.max_new_tokens, args.slots)
    gens32, fast32_s = generate(model, tok, prompts[:32], args.max_new_tokens, args.slots)
    plain, plain_s = generate(model, tok, prompts, args.max_new_tokens, args.slots, speculate=False)
    same = sum(a.completion == b.completion for a, b in zip(gens, plain)) / len(gens)
    unpacked, unpacked_s = generate(model, tok, prompts, args.max_new_tokens, args.slots, pack=False)
    same_unpacked = sum(a.completion == b.completion for a, b in zip(gens, unpacked)) / len(gens)
    slow_texts, slow_tokens, slow_seconds = naive(model, tok, prompts, args.max_new_tokens)
    print("without prompt-lookup drafts:", end=" ")
    without = compare(plain, plain_s, slow_texts, slow_tokens, sum(slow_seconds))
    print(f"with drafts vs without: {plain_s / fast_s:.2f}x faster, identical completions on {100 * same:.1f} %")
    print("without packed weights:", end=" ")
    without_packing = compare(unpacked, unpacked_s, slow_texts, slow_tokens, sum(slow_seconds))
    print(f"packed weights vs plain F.linear: {unpacked_s / fast_s:.2f}x faster, "
          f"identical completions on {100 * same_unpacked:.1f} %")
    result = {"benchmark": "eval_throughput", "max_new_tokens": args.max_new_tokens, "slots": args.slots or "auto",
              **compare(gens, fast_s, slow_texts, slow_tokens, sum(slow_seconds)),
              "first_32": compare(gens32, fast32_s, slow_texts[:32], slow_tokens[:32], sum(slow_seconds[:32])),
              "without_drafts": without, "drafts_identical_completions": round(same, 4),
              "without_packed_weights": without_packing, "packing_identical_completions": round(same_unpacked, 4),
              "torch_threads": torch.get_num_threads()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
