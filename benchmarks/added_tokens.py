"""A chat format whose markers the tokenizer lacks: written as pieces, against model.added_tokens.

A base model given a chat template it was never built for (ChatML on Mistral-7B-v0.1) writes each marker as several
tokens unless the markers are added. No such base model is offline here, so this gives SmolLM2-135M-Instruct a
template of markers its tokenizer splits (<|user|>, <|assistant|>, <|end|>) and trains the same chat-template
recipe (synthetic:arith, the quickstart's rows and settings, 2 epochs) two ways: the markers as pieces (the reply
ends with <|end|>'s pieces, then the tokenizer's EOS), and the markers as tokens of their own (model.added_tokens,
<|end|> the EOS, their rows trained: lora.trainable_tokens). Each is measured on the same held-out questions:
answer accuracy (numeric, flexible), the share of replies that never ended (they ran to eval.max_new_tokens), the
tokens per training row and the training seconds, and the accuracy difference with its paired 95 % interval. The
data checks' verdict on the pieces is printed first.

Run as: .venv/bin/python benchmarks/added_tokens.py           (~10 min on 2 cores)
        .venv/bin/python benchmarks/added_tokens.py --tiny    (a 2-layer random model: the logic, seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import tiny_llama, trained_and_scored  # noqa: E402

MARKERS = ["<|user|>", "<|assistant|>", "<|end|>"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
WAYS = {"markers as pieces": {}, "model.added_tokens": {"added_tokens": MARKERS,
                                                        "special_tokens": {"eos_token": "<|end|>"}}}


def recipe(model: Path, tiny: bool, **tokens) -> dict:
    return {"name": "added", "model": {"name": str(model), "chat_template": TEMPLATE, **tokens},
            "data": {"source": "synthetic:arith", "template": "{question}", "target": "{answer}",
                     "chat_template": True, "synthetic_rows": 48 if tiny else 320,
                     "synthetic_test_rows": 8 if tiny else 40, "val_fraction": 0.1},
            "lora": {"r": 8 if tiny else 16, "alpha": 16 if tiny else 32, "dropout": 0.0},
            "train": {"epochs": 1 if tiny else 2, "batch_size": 8, "lr": 1e-3, "max_length": 256},
            "eval": {"limit": 8 if tiny else 40, "max_new_tokens": 16 if tiny else 96, "fewshot": 0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random model: checks the logic in seconds")
    args = ap.parse_args()
    from tunelab.config import validate
    from tunelab.data import load_splits
    from tunelab.data.checks import markers, markers_line
    from tunelab.models import load_tokenizer, resolve
    from tunelab.stats import paired_difference
    from tunelab.train.batching import tokenize_with
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(resolve("smollm2-135m-instruct"))
        model = tiny_llama(source, Path(tmp) / "tiny") if args.tiny else source
        cfg = validate(recipe(model, args.tiny), "pieces")
        tok = load_tokenizer(cfg.model)
        items, _ = tokenize_with(cfg, load_splits(cfg.data).train, tok)
        print(f"tunelab check: {markers_line(markers(cfg, tok, items))}", flush=True)
        scored = {way: trained_and_scored(validate(recipe(model, args.tiny, **tokens), way), Path(tmp) / f"run-{i}")
                  for i, (way, tokens) in enumerate(WAYS.items())}
    results = {way: figures for way, (figures, _) in scored.items()}
    (_, pieces), (_, added) = scored.values()
    results["difference"] = paired_difference([pieces[i] for i in sorted(pieces)], [added[i] for i in sorted(pieces)])
    for way, r in list(results.items())[:2]:
        print(f"{way:20s} accuracy {100 * r['accuracy']:.1f} %, replies that never ended {100 * r['never_ended']:.0f} "
              f"% (n = {r['n']}), {r['tokens_per_row']} tokens per training row, {r['train_seconds']} s training")
    d = results["difference"]
    print(f"accuracy, added tokens - pieces: {d['delta_pts']:+.1f} pts (95 % CI {d['ci95_pts'][0]:+.1f}.."
          f"{d['ci95_pts'][1]:+.1f}, paired over the same {d['n']} questions)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
