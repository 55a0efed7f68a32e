"""Training throughput: tunelab's loop vs TRL's SFTTrainer on the same CPU workload.

Same model (SmolLM2-135M-Instruct), LoRA (r=16, alpha 32, dropout 0 = PEFT's default, all linear layers), GSM8K rows
with the flagship template, completion-only loss (TRL gets tunelab's token ids and labels, so both
train on the same tokens), max_length 512, batch 8, 1 epoch, lr 5e-4 cosine
with 3 % warmup, seed 0, fp32 (TRL's SFTConfig turns bf16 on by default: we set bf16=False — we beat
TRL's best, not its pitfall), no gradient checkpointing. Each trainer runs in its own child process
(back to back) so peak RSS is its own. Counts non-pad tokens per second of training. Also prints
each run's mean step loss (same objective: they must agree closely) and the share of this machine's
measured fp32 matmul rate reached at 4*N FLOPs per token. Same objective check: each trainer's
final adapter is scored on the same validation rows by the same code (token-weighted loss); the
two must agree within 2 %. The last line is one JSON object.

Run as: .venv/bin/python benchmarks/train_throughput.py [--rows 64]
TRL is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import child  # noqa: E402

LR, EPOCHS, BATCH, MAX_LEN, SEED = 5e-4, 1, 8, 512, 0
DROPOUT = 0.0  # PEFT's default; dropout costs both trainers the same absolute time (--dropout to change)


def _recipe(gsm8k: str, rows: int, out: Path):
    from tunelab.config import load_recipe
    return load_recipe("gsm8k-smollm2-135m", [
        f"data.source={gsm8k}", f"data.limit={rows}", "data.val_fraction=0.1", f"train.epochs={EPOCHS}",
        f"train.batch_size={BATCH}", f"train.lr={LR}", f"train.max_length={MAX_LEN}", f"train.seed={SEED}",
        "train.warmup_ratio=0.03", "train.scheduler=cosine", "lora.r=16", "lora.alpha=32", f"lora.dropout={DROPOUT}"])


def run_tunelab(gsm8k: str, rows: int, queue) -> None:
    from tunelab.rundir import RunDir
    from tunelab.train import train
    out = Path(tempfile.mkdtemp(prefix="bench-tunelab-"))
    result = train(_recipe(gsm8k, rows, out), RunDir(out / "run"))
    steps = RunDir(out / "run").read_jsonl(RunDir(out / "run").steps)
    s = result.summary
    queue.put({"tokens": s["train_tokens"], "seconds": s["train_seconds"],
               "mean_step_loss": sum(x["loss"] for x in steps) / len(steps),
               "train_loss": s["final_train_loss"], "val_loss": s["final_val_loss"],
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_trl(gsm8k: str, rows: int, queue) -> None:
    import torch
    if os.environ.get("BENCH_TRL_KEEP_FREED_MEMORY") == "1":  # --trl-same-allocator: tunelab's glibc setting
        from tunelab.train.runtime import keep_freed_memory
        keep_freed_memory()
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer
    from tunelab.data import load_splits
    from tunelab.models import load_model, load_tokenizer
    from tunelab.train.batching import tokenize_with
    cfg = _recipe(gsm8k, rows, Path("."))
    splits = load_splits(cfg.data)  # the same train rows tunelab trains on (same seeded split)
    model = load_model(cfg.model, torch.device("cpu"))
    tok = load_tokenizer(cfg.model)
    # identical token ids and labels (prompt masked, EOS supervised): the same objective, token for token
    items, _ = tokenize_with(cfg, splits.train, tok)
    data = Dataset.from_list([{"input_ids": it.input_ids, "labels": it.labels} for it in items])
    steps = -(-len(data) // BATCH) * EPOCHS
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=BATCH,
                     num_train_epochs=EPOCHS, learning_rate=LR, lr_scheduler_type="cosine",
                     warmup_steps=round(0.03 * steps),  # = tunelab's warmup_ratio 0.03
                     max_length=MAX_LEN, bf16=False, fp16=False, gradient_checkpointing=False,
                     logging_steps=1, report_to=[], save_strategy="no", seed=SEED,
                     use_cpu=True, dataloader_num_workers=0)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=DROPOUT, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * EPOCHS  # no padding in the stored rows
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    queue.put({"tokens": tokens, "seconds": seconds, "mean_step_loss": sum(losses) / len(losses),
               "train_loss": sum(losses) / len(losses), "val_loss": _val_loss(trainer.model, tok, cfg, splits),
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _val_loss(model, tok, cfg, splits) -> float:
    """Token-weighted loss on the validation rows, computed exactly as tunelab computes its own."""
    import torch
    from tunelab.train.forward import forward_tokens
    from tunelab.train.batching import batches, tokenize_with
    items, _ = tokenize_with(cfg, splits.val, tok)
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for b in batches(items, cfg.train.batch_size, tok.pad_token_id, None, True):
            losses, _, _ = forward_tokens(model, b, torch.device("cpu"))
            total, tokens = total + float(losses.sum()), tokens + b.supervised
    return total / tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64, help="GSM8K train rows (10 %% go to validation)")
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--trl-same-allocator", action="store_true",
                    help="give TRL's process tunelab's glibc setting too (freed memory kept, no per-step page faults)")
    args = ap.parse_args()
    os.environ["BENCH_TRL_KEEP_FREED_MEMORY"] = "1" if args.trl_same_allocator else "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tunelab.cost import measure_cpu_flops
    from tunelab.models import model_size
    from tunelab.config import load_recipe
    n_params = model_size(load_recipe("gsm8k-smollm2-135m").model)[0]
    matmul = measure_cpu_flops(2.0)
    ours = child(run_tunelab, args.gsm8k, args.rows)
    theirs = child(run_trl, args.gsm8k, args.rows)
    tps = {k: r["tokens"] / r["seconds"] for k, r in (("tunelab", ours), ("trl", theirs))}
    loss_gap = abs(ours["val_loss"] - theirs["val_loss"]) / theirs["val_loss"]
    for name, r in (("tunelab", ours), ("trl", theirs)):
        print(f"{name:8s} {r['tokens']} tokens in {r['seconds']:.1f} s = {tps[name]:.1f} tokens/s, train loss "
              f"{r['train_loss']:.4f}, final validation loss {r['val_loss']:.4f}, peak RSS {r['peak_rss_mib']:.0f} MiB, "
              f"{100 * 4 * n_params * tps[name] / matmul:.0f} % of the {matmul / 1e9:.0f} GFLOP/s fp32 matmul rate")
    print(f"ratio {tps['tunelab'] / tps['trl']:.2f}x, final validation loss gap {100 * loss_gap:.2f} % "
          f"(train loss: tunelab's is token-weighted over the epoch, TRL's the mean of its step losses)")
    print(json.dumps({"benchmark": "train_throughput", "rows": args.rows, "tunelab_tokens_per_second": round(tps["tunelab"], 2),
                      "trl_tokens_per_second": round(tps["trl"], 2), "ratio": round(tps["tunelab"] / tps["trl"], 3),
                      "tunelab_train_loss": round(ours["train_loss"], 5), "trl_train_loss": round(theirs["train_loss"], 5),
                      "tunelab_val_loss": round(ours["val_loss"], 5), "trl_val_loss": round(theirs["val_loss"], 5),
                      "val_loss_gap": round(loss_gap, 5), "lora_dropout": DROPOUT,
                      "trl_same_allocator": args.trl_same_allocator,
                      "tunelab_peak_rss_mib": round(ours["peak_rss_mib"]), "trl_peak_rss_mib": round(theirs["peak_rss_mib"]),
                      "matmul_gflops": round(matmul / 1e9, 1),
                      "tunelab_matmul_share": round(4 * n_params * tps["tunelab"] / matmul, 3),
                      "trl_matmul_share": round(4 * n_params * tps["trl"] / matmul, 3)}))


if __name__ == "__main__":
    main()
