"""Chat tokens the base model never trained: LoRA alone, against lora.trainable_tokens and lora.modules_to_save.

Llama 3's base model ships its chat tokens' embedding rows untrained (~1e-23), and LoRA leaves embedding rows as
they are. No such model is offline here, so this makes one: SmolLM2-135M-Instruct with the rows of its chat tokens
<|im_start|> and <|im_end|> (its EOS) set to 1e-24 noise, input and output alike (the embeddings are tied). Then
the same chat-template recipe (synthetic:arith, the quickstart's rows and settings, 2 epochs) trains three ways:
LoRA alone, LoRA + those two rows (lora.trainable_tokens), LoRA + the whole tied embedding (lora.modules_to_save:
[lm_head]); each is measured on the same held-out questions: the final validation loss, answer accuracy (numeric,
flexible), and the share of replies that never ended (they ran to eval.max_new_tokens: no <|im_end|> emitted).
The data checks' verdict on the damaged model is printed first.

Run as: .venv/bin/python benchmarks/untrained_tokens.py           (~15 min on 2 cores)
        .venv/bin/python benchmarks/untrained_tokens.py --tiny    (a 2-layer random model: the logic, seconds)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import tiny_llama, trained_and_scored  # noqa: E402

TOKENS = ["<|im_start|>", "<|im_end|>"]
WAYS = {"lora alone": {}, "lora.trainable_tokens": {"trainable_tokens": TOKENS},
        "lora.modules_to_save": {"modules_to_save": ["lm_head"]}}


def damaged(source: Path, out: Path, tiny: bool) -> Path:
    """A copy of the model at `source` (or, `tiny`, a 2-layer random Llama with its tokenizer) whose chat tokens'
    embedding rows are 1e-24 noise."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(source)
    if tiny:
        tiny_llama(source, out)
    else:
        shutil.copytree(source, out)
    weights = load_file(out / "model.safetensors")
    key = next(k for k in weights if k.endswith("embed_tokens.weight"))
    for token in TOKENS:
        weights[key][tok.convert_tokens_to_ids(token)] = 1e-24 * torch.randn(weights[key].shape[1])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def recipe(model: Path, tiny: bool, **lora) -> dict:
    return {"name": "untrained", "model": {"name": str(model)},
            "data": {"source": "synthetic:arith", "template": "{question}", "target": "{answer}",
                     "chat_template": True, "synthetic_rows": 48 if tiny else 320,
                     "synthetic_test_rows": 8 if tiny else 40, "val_fraction": 0.1},
            "lora": {"r": 8 if tiny else 16, "alpha": 16 if tiny else 32, "dropout": 0.0, **lora},
            "train": {"epochs": 1 if tiny else 2, "batch_size": 8, "lr": 1e-3, "max_length": 256},
            "eval": {"limit": 8 if tiny else 40, "max_new_tokens": 16 if tiny else 64, "fewshot": 0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random model: checks the logic in seconds")
    args = ap.parse_args()
    from tunelab.config import validate
    from tunelab.data import load_splits
    from tunelab.data.checks import untrained_line, untrained_tokens
    from tunelab.models import load_tokenizer, resolve
    from tunelab.train.batching import tokenize_with
    with tempfile.TemporaryDirectory() as tmp:
        model = damaged(Path(resolve("smollm2-135m-instruct")), Path(tmp) / "damaged", args.tiny)
        cfg = validate(recipe(model, args.tiny), "untrained")
        tok = load_tokenizer(cfg.model)
        items, _ = tokenize_with(cfg, load_splits(cfg.data).train, tok)
        print(f"tunelab check: {untrained_line(untrained_tokens(cfg, tok, items))}", flush=True)
        results = {way: trained_and_scored(validate(recipe(model, args.tiny, **lora), way),
                                           Path(tmp) / f"run-{i}")[0] for i, (way, lora) in enumerate(WAYS.items())}
    for way, r in results.items():
        print(f"{way:24s} val loss {r['final_val_loss']:.4f}, accuracy {100 * r['accuracy']:.1f} %, replies that "
              f"never ended {100 * r['never_ended']:.0f} % (n = {r['n']})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
