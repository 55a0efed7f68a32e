"""The GPU check, one command: tunelab vs TRL on a Mistral-7B-v0.1 architecture, decode speed, and what the
seed's experiment costs on this GPU.

1. the `gpu`-marked tests (pytest -m gpu);
2. Mistral-7B-v0.1's real config with random bf16 weights (`model.init: random`) and its real tokenizer (the
   copy PyPI's mistral-common ships), LoRA r=16 / alpha 32 / dropout 0.05 on all linear layers (the
   flagship recipe), GSM8K rows with the flagship template, one epoch of `--steps` optimizer steps of 16 rows
   (the seed's effective batch): `tunelab train`, then TRL's SFTTrainer on the same token ids and labels,
   bf16 on, once with its defaults (gradient checkpointing on) and once without checkpointing (as tunelab
   trains). Padding-free / packing is not used for TRL: TRL supports it with flash-attention kernels only,
   which this machine lacks; both trainers run SDPA attention. Real (non-pad) tokens per second of training,
   their ratio, peak GPU memory, and model FLOPs utilisation (LoRA: 4 N FLOPs per token + attention)
   against the bf16 matmul rate measured here;
3. `tunelab eval` of that run's adapter (decode throughput only: random weights write nonsense, so new tokens
   are capped);
4. the seed's experiment (3 epochs over 90 % of GSM8K train, validation before and after each epoch) timed from
   the measured train and validation tokens/s, priced at the built-in table's price for this GPU, next to the
   seed's reported $2.075 and to `tunelab estimate`'s prediction; the utilisation that would make the
   estimate exact is printed, to correct `cost.GPU_UTILISATION` when the estimate is off by more than 1.5x;
5. a torch.profiler table of 4 training steps and of a 32-question decode (<out>/profile_*.txt);
6. the next design for MFU: `tunelab train` again with `train.compile=true` (decoder layers under torch.compile),
   its tokens/s over the whole run and after the first 5 steps (compiling), last because compiling takes minutes.

The last line printed is one JSON object; with $OUT (or --out) set, the log is also written to
<out>/gpu_check.log and the JSON to <out>/gpu_check.json.

Run as: .venv/bin/python benchmarks/gpu_check.py            # a CUDA machine: ~6 minutes on one H200, then compiling
        .venv/bin/python benchmarks/gpu_check.py --tiny     # the same steps on CPU, 2-layer model (make test)
Needs TRL (a benchmark-only dependency, in requirements.txt) and mistral-common's wheel (make setup downloads it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import child  # noqa: E402

SEED_USD = 2.075  # what the seed's report said its 3-epoch run cost
MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1 config.json
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000,
}
TINY = {**MISTRAL_7B, "hidden_size": 128, "intermediate_size": 448, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}
LOG: list[Path] = []  # the log file, when --out / $OUT is set


def say(line: str) -> None:
    """Print, and append to <out>/gpu_check.log at once (a run cut short still leaves its log)."""
    print(line, flush=True)
    if LOG:
        with open(LOG[0], "a") as f:
            f.write(line + "\n")


def model_folder(out: Path, tiny: bool, wheel: Path) -> Path:
    """A model folder with Mistral-7B-v0.1's config (or its 2-layer cut) and tokenizer, no weights."""
    import zipfile
    from transformers import LlamaTokenizer
    if not wheel.is_file():
        raise SystemExit(f"gpu_check: {wheel}: no mistral-common wheel (make setup downloads it; or pip download "
                         f"--no-deps mistral-common==1.13.1 and pass --mistral-wheel)")
    folder = out / ("mistral-7b-v0.1-tiny" if tiny else "mistral-7b-v0.1")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY if tiny else MISTRAL_7B, indent=1))
    sp_model = "mistral_common/data/tokenizer.model.v1"  # Mistral-7B-v0.1's sentencepiece model
    (folder / "tokenizer.model").write_bytes(zipfile.ZipFile(wheel).read(sp_model))
    try:  # converted by transformers with sentencepiece + protobuf
        tok = LlamaTokenizer.from_pretrained(folder, add_bos_token=True, add_eos_token=False)
    except (ImportError, ValueError) as err:
        raise SystemExit(f"gpu_check: cannot convert {wheel}:{sp_model} (needs sentencepiece and protobuf): {err}")
    if len(tok) != MISTRAL_7B["vocab_size"]:
        raise SystemExit(f"gpu_check: {sp_model} converted to {len(tok)} tokens, not 32000")
    tok.save_pretrained(folder)
    return folder


def matmul_rate(device: str) -> float:
    """FLOP/s of this device's training matmul: bf16 8192^3 on CUDA (mean of 10 after 3 warm-ups), fp32 on CPU."""
    import torch
    if device != "cuda":
        from tunelab.cost import measure_cpu_flops
        return measure_cpu_flops(1.0)
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * n ** 3 / (time.perf_counter() - t0)


def overrides(folder: Path, gsm8k: str, rows: int | None, batch: int, epochs: int) -> list[str]:
    """The flagship recipe on the local model folder and GSM8K copy, `batch` rows per optimizer step."""
    out = [f"model.name={folder}", "model.init=random", f"data.source={gsm8k}", f"train.epochs={epochs}",
           f"train.batch_size={batch}", "train.grad_accum=1"]
    return out + ([f"data.limit={rows}"] if rows else [])


def run_tunelab(folder: Path, gsm8k: str, rows: int, batch: int, work: Path, extra: tuple[str, ...] = ()) -> dict:
    """`tunelab train` as a user runs it (with `extra` overrides); its figures."""
    from tunelab.rundir import RunDir
    run = work / ("tunelab-run" + "-".join(extra).replace("=", "-").replace(".", "-"))
    sets = overrides(folder, gsm8k, rows, batch, 1) + ["train.keep_epoch_adapters=false",
                                                       "train.checkpoint_every=0", *extra]
    cli = [sys.executable, "-m", "tunelab.cli", "-q"]
    _call(cli + ["train", "gsm8k-mistral-7b", "--run-dir", str(run)] + [a for s in sets for a in ("--set", s)])
    r = RunDir(run)
    summary, epochs, steps = r.read_json(r.summary), r.read_jsonl(r.epochs), r.read_jsonl(r.steps)
    skip = min(5, len(steps) // 2)  # steady state: after the first steps (kernel warm-up, compiling)
    steady = sum(s["tokens"] for s in steps[skip:]) / max(steps[-1]["seconds"] - steps[skip - 1]["seconds"], 1e-9) \
        if skip else None
    return {"tokens": summary["train_tokens"], "seconds": summary["train_seconds"], "steady_tokens_per_second": steady,
            "val_tokens": sum(e["val_tokens"] for e in epochs), "val_seconds": sum(e["val_seconds"] for e in epochs),
            "steps": len(r.read_jsonl(r.steps)), "peak_gpu_mib": summary.get("peak_gpu_memory_mib"),
            "estimated_gpu_mib": round(1024 * r.read_json(r.estimate)["gpu_memory"]["allocated_gib"])
            if "gpu_memory" in r.read_json(r.estimate) else None,  # tunelab.memory's, before the first step
            "final_val_loss": summary["final_val_loss"], "run": str(run)}


def run_decode(run: str, questions: int, new_tokens: int) -> dict:
    """`tunelab eval` of the run's final adapter, zero-shot, `questions` test questions; its generation speed."""
    from tunelab.rundir import RunDir
    _call([sys.executable, "-m", "tunelab.cli", "-q", "eval", run, "--only", "tuned"] + [a for s in (
        f"eval.limit={questions}", f"eval.max_new_tokens={new_tokens}", "eval.fewshot=0", "eval.epochs=last")
        for a in ("--set", s)])
    tuned = RunDir(Path(run)).read_eval_summary()["tuned"]
    say(f"decode: {tuned['generated_tokens']} tokens in {tuned['seconds']} s = {tuned['tokens_per_second']} tokens/s "
        f"({questions} questions, <= {new_tokens} new tokens each)")
    return {"tokens_per_second": tuned["tokens_per_second"], "tokens": tuned["generated_tokens"],
            "seconds": tuned["seconds"], "questions": questions, "max_new_tokens": new_tokens}


def _call(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: {' '.join(argv[3:6])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def run_trl(folder: str, gsm8k: str, rows: int, batch: int, checkpointing: bool, queue) -> None:
    """TRL's SFTTrainer on tunelab's token ids and labels (the same objective token for token), in its own process."""
    import torch
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer
    from tunelab.config import load_recipe
    from tunelab.data import load_splits
    from tunelab.models import load_model, load_tokenizer, pick_device
    from tunelab.train.batching import tokenize_with
    cfg = load_recipe("gsm8k-mistral-7b", overrides(Path(folder), gsm8k, rows, batch, 1))
    device = pick_device("auto")
    cuda = device.type == "cuda"
    splits = load_splits(cfg.data)  # the rows tunelab trained on (same seeded split)
    tok = load_tokenizer(cfg.model)
    items, _ = tokenize_with(cfg, splits.train, tok)
    datasets.disable_progress_bars()
    data = datasets.Dataset.from_list([{"input_ids": it.input_ids, "labels": it.labels} for it in items])
    model = load_model(cfg.model, device)  # the same random weights (seed 0) as tunelab's
    steps = math.ceil(len(data) / batch)
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="gpu-check-trl-"), per_device_train_batch_size=batch,
                     num_train_epochs=1, learning_rate=cfg.train.lr, lr_scheduler_type="cosine",
                     warmup_steps=round(cfg.train.warmup_ratio * steps), max_length=cfg.train.max_length,
                     bf16=cuda, gradient_checkpointing=checkpointing, logging_strategy="no", report_to=[],
                     save_strategy="no", seed=cfg.train.seed, use_cpu=not cuda, dataloader_num_workers=0,
                     disable_tqdm=True)
    peft = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    clock = _FirstStepClock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft,
                         callbacks=[clock])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.time() - clock.started  # from the first step, as tunelab's train_seconds counts
    queue.put({"tokens": sum(len(it.input_ids) for it in items), "seconds": seconds, "steps": trainer.state.global_step,
               "seconds_with_setup": time.time() - t0,
               "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None})


class _FirstStepClock:
    """A TrainerCallback noting when the first optimizer step begins (TRL's setup before it is not timed)."""
    started: float | None = None

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_begin(self, *args, **kwargs):
        if self.started is None:
            self.started = time.time()


def gpu_tests() -> dict:
    """pytest -m gpu: counts of passed / failed / skipped (all skip without CUDA)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_gpu.py")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": _pythonpath()})
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    for part in last.strip("= ").split(","):
        words = part.split()
        if len(words) >= 2 and words[1].rstrip("s") in counts:
            counts[words[1].rstrip("s")] = int(words[0])
    if proc.returncode not in (0, 5) or counts["failed"] or counts["error"]:
        say(proc.stdout[-6000:] + proc.stderr[-2000:])
    return {**counts, "summary": last}


def seed_cost(folder: Path, gsm8k: str, tunelab: dict, device: str) -> dict:
    """The seed's run (flagship recipe, all 7,473 train rows, 3 epochs) timed from the measured rates and priced."""
    import torch
    from tunelab import cost
    from tunelab.config import load_recipe
    from tunelab.data import load_splits
    from tunelab.environment import device_name
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize_splits
    cfg = load_recipe("gsm8k-mistral-7b", [f"model.name={folder}", "model.init=random", f"data.source={gsm8k}"])
    splits = load_splits(cfg.data)
    train_items, val_items, _ = tokenize_splits(cfg, splits, load_tokenizer(cfg.model))
    work = cost.recipe_work(cfg, train_items, val_items)
    train_tps, val_tps = tunelab["tokens"] / tunelab["seconds"], tunelab["val_tokens"] / tunelab["val_seconds"]
    seconds = cfg.train.epochs * work["train_tokens_per_epoch"] / train_tps \
        + (cfg.train.epochs + 1) * work["val_tokens"] / val_tps
    if device == "cuda":
        name = device_name(torch.device("cuda"))
        key = cost.gpu_key(name, torch.cuda.get_device_properties(0).total_memory / 2**30)
        if key is None:
            raise SystemExit(f"gpu_check: {name!r} is not in tunelab's price table (tunelab/cost.py GPUS)")
        usd_per_hour, peak = cost.GPUS[key][0], cost.GPUS[key][1] * 1e12
    else:
        key, usd_per_hour, peak = "cpu", cost.CPU_USD_PER_CORE_HOUR * (os.cpu_count() or 1), None
    est = cost.estimate(work, key)
    out = {"device": key, "train_tokens_per_epoch": work["train_tokens_per_epoch"], "val_tokens": work["val_tokens"],
           "flops": work["flops"], "measured_hours": round(seconds / 3600, 4), "usd_per_hour": usd_per_hour,
           "measured_usd": round(seconds / 3600 * usd_per_hour, 3), "seed_usd": SEED_USD,
           "estimate_hours": est["hours"], "estimate_usd": est["cost_usd"],
           "estimate_over_measured": round(est["hours"] * 3600 / seconds, 3)}
    if peak:
        out["utilisation_assumed"] = cost.gpu_utilisation(key)[0]
        out["utilisation_that_fits"] = round(work["flops"] / seconds / peak, 3)  # vs the table's peak, as estimate uses
    say(f"seed experiment on {key}: {out['measured_hours']:.3f} h = ${out['measured_usd']:.3f} at ${usd_per_hour}/h "
        f"(the seed reported ${SEED_USD}); tunelab estimate {out['estimate_hours']:.3f} h = ${out['estimate_usd']:.3f}, "
        f"{out['estimate_over_measured']:.2f}x the measured time"
        + (f"; utilisation that fits: {out['utilisation_that_fits']} (assumed {out['utilisation_assumed']})" if peak else ""))
    return out


def mfu(folder: Path, tokens_per_second: float, rate: float, lengths_per_token: float) -> float:
    """Model FLOPs per second of training over the measured matmul rate. LoRA training takes 4 N FLOPs per token
    (forward, and backward to the activations: the frozen weights get no gradient), N = parameters less the input
    embedding (a lookup), plus causal attention, 2 x 2 L d n per token of an n-token row."""
    from tunelab.config import ModelConfig
    from tunelab.models import model_size
    n_params, layers, hidden = model_size(ModelConfig(name=str(folder)))
    config = json.loads((folder / "config.json").read_text())
    per_token = 4 * (n_params - config["vocab_size"] * hidden) + 2 * 2 * layers * hidden * lengths_per_token
    return per_token * tokens_per_second / rate


def profile(folder: Path, gsm8k: str, rows: int, batch: int, work: Path, out: str | None) -> dict:
    """Where the time goes: torch.profiler over 4 training steps (after 2 warm-up steps) and over a 32-question decode,
    in this process; the top operators are written to <out>/profile_train.txt and profile_decode.txt."""
    import torch
    from torch.profiler import ProfilerActivity
    from tunelab.config import load_recipe
    from tunelab.evaluate.generate import generate
    from tunelab.models import load_tokenizer
    from tunelab.rundir import RunDir
    from tunelab.train.batching import batches
    from tunelab.train.forward import PassStats
    from tunelab.train.loop import _start, _step
    cfg = load_recipe("gsm8k-mistral-7b", overrides(folder, gsm8k, rows, batch, 1))
    loop = _start(cfg, RunDir(work / "profile-run"), False)
    cuda = loop.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    todo = batches(loop.train_items, batch, loop.pad_id, 1, True)[:6]
    stats, examples, timings = PassStats(), [], {}

    def steps(chunk):
        for b in chunk:
            _step(loop, [b], stats, 1, examples, todo[0])
        if cuda:
            torch.cuda.synchronize()

    steps(todo[:2])
    t0 = time.time()
    with torch.profiler.profile(activities=activities) as prof:
        steps(todo[2:])
    timings["train_step_seconds"] = round((time.time() - t0) / len(todo[2:]), 4)
    tables = {"train": prof.key_averages().table(sort_by=sort, row_limit=45)}
    model = loop.model.merge_and_unload()
    tok = load_tokenizer(cfg.model)
    prompts = [e.prompt for e in loop.splits.val[:32]]
    generate(model, tok, prompts[:4], 4)  # warm-up
    with torch.profiler.profile(activities=activities) as prof:
        _, seconds = generate(model, tok, prompts, 32)
    timings["decode_seconds_32x32"] = round(seconds, 3)
    tables["decode"] = prof.key_averages().table(sort_by=sort, row_limit=45)
    for name, table in tables.items():
        if out:
            (Path(out) / f"profile_{name}.txt").write_text(table)
        say(f"profile {name}: top operators\n" + "\n".join(table.splitlines()[:14]))
    say(f"profile: {timings}")
    return timings


def phase(name: str, fn, *args):
    """fn(*args), or {"error": ...} when it fails: one broken part still leaves the others' figures."""
    t0 = time.time()
    try:
        out = fn(*args)
    except (Exception, SystemExit) as err:
        say(f"{name}: FAILED: {err}")
        return {"error": f"{type(err).__name__}: {str(err)[-1500:]}"}
    say(f"{name}: done in {time.time() - t0:.0f} s")
    return out


def compare(runs: dict, folder: Path, gsm8k: str, rows: int, batch: int, rate: float) -> dict:
    """tokens/s, ratios, MFU and peak memory of the training runs that finished."""
    from tunelab.config import load_recipe
    from tunelab.data import load_splits
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize_splits
    ok = {name: r for name, r in runs.items() if "error" not in r}
    cfg = load_recipe("gsm8k-mistral-7b", overrides(folder, gsm8k, rows, batch, 1))
    items = tokenize_splits(cfg, load_splits(cfg.data), load_tokenizer(cfg.model))[0]
    n_per_token = sum(len(i.input_ids) ** 2 for i in items) / sum(len(i.input_ids) for i in items)
    tps = {name: r["tokens"] / r["seconds"] for name, r in ok.items()}
    util = {name: mfu(folder, v, rate, n_per_token) for name, v in tps.items()}
    steady = {name: r["steady_tokens_per_second"] for name, r in ok.items() if r.get("steady_tokens_per_second")}
    for name, r in ok.items():
        after = f", {steady[name]:.0f} after the first steps" if name in steady else ""
        say(f"{name:22s} {r['tokens']} tokens in {r['seconds']:.1f} s ({r['steps']} steps) = {tps[name]:.0f} "
            f"tokens/s{after}, MFU {100 * util[name]:.1f} %, peak GPU memory {r['peak_gpu_mib']} MiB"
            + (f" (estimated {r['estimated_gpu_mib']} MiB)" if r.get("estimated_gpu_mib") else ""))
    out = {"tokens_per_second": {k: round(v, 1) for k, v in tps.items()}, "mfu": {k: round(v, 4) for k, v in util.items()},
           "steady_tokens_per_second": {k: round(v, 1) for k, v in steady.items()},
           "steady_mfu": {k: round(mfu(folder, v, rate, n_per_token), 4) for k, v in steady.items()},
           "peak_gpu_mib": {k: r["peak_gpu_mib"] for k, r in ok.items()},
           "estimated_gpu_mib": {k: r["estimated_gpu_mib"] for k, r in ok.items() if r.get("estimated_gpu_mib")},
           "errors": {k: r["error"] for k, r in runs.items() if "error" in r}}
    trl = [v for k, v in tps.items() if k.startswith("trl")]
    if "tunelab" in tps and trl:
        out["ratio_vs_trl_default"] = round(tps["tunelab"] / tps["trl_default"], 3) if "trl_default" in tps else None
        out["ratio_vs_trl_best"] = round(tps["tunelab"] / max(trl), 3)
        say(f"ratio: tunelab / TRL defaults {out['ratio_vs_trl_default']}x, / TRL's best {out['ratio_vs_trl_best']}x")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="2-layer Mistral config, a few steps, on CPU if no GPU")
    ap.add_argument("--steps", type=int, help="optimizer steps of 16 rows (default 50; --tiny 3)")
    ap.add_argument("--gsm8k", default=os.environ.get("TUNELAB_GSM8K", str(ROOT.parent / "shared" / "data" / "gsm8k")))
    ap.add_argument("--mistral-wheel", type=Path, default=next(iter(sorted((ROOT / ".venv" / "share").glob(
        "mistral_common-*.whl"))), ROOT / ".venv" / "share" / "mistral_common.whl"), help="mistral-common's wheel")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.log and gpu_check.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        raise SystemExit("gpu_check: no CUDA device here; run with --tiny for the CPU dry run")
    batch = 4 if args.tiny else 16
    steps = args.steps or (3 if args.tiny else 50)
    rows = math.ceil(steps * batch / 0.9) + 1  # 90 % of them train: `steps` steps of `batch` rows
    decode = (4, 8) if args.tiny else (128, 64)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        LOG.append(Path(args.out) / "gpu_check.log")
        LOG[0].write_text("")
    say(f"gpu_check on {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}), torch "
        f"{torch.__version__}, {'tiny 2-layer' if args.tiny else 'Mistral-7B-v0.1'} config, {steps} steps of {batch} rows")
    result = {"benchmark": "gpu_check", "device": device, "tiny": args.tiny, "steps": steps, "batch": batch}
    result["gpu_tests"] = phase("gpu tests", gpu_tests)
    say(f"gpu tests: {result['gpu_tests'].get('summary', result['gpu_tests'])}")
    folder = model_folder(work, args.tiny, args.mistral_wheel)
    rate = matmul_rate(device)
    result["matmul_tflops"] = round(rate / 1e12, 2)
    say(f"matmul rate: {rate / 1e12:.1f} TFLOP/s ({'bf16' if device == 'cuda' else 'fp32'})")
    runs = {"tunelab": phase("tunelab", run_tunelab, folder, args.gsm8k, rows, batch, work),
            "trl_default": phase("TRL defaults", child, run_trl, str(folder), args.gsm8k, rows, batch, True),
            "trl_no_checkpointing": phase("TRL without checkpointing", child, run_trl, str(folder), args.gsm8k,
                                          rows, batch, False),
            "tunelab_lora_dropout_0": phase("tunelab, lora.dropout=0", run_tunelab, folder, args.gsm8k, rows, batch,
                                            work, ("lora.dropout=0",))}
    result.update(compare(runs, folder, args.gsm8k, rows, batch, rate))
    if "error" not in runs["tunelab"]:
        result["tunelab_final_val_loss"] = runs["tunelab"]["final_val_loss"]
        result["decode"] = phase("decode", run_decode, runs["tunelab"]["run"], *decode)
        result["seed"] = phase("seed cost", seed_cost, folder, args.gsm8k, runs["tunelab"], device)
    result["profile"] = phase("profile", profile, folder, args.gsm8k, rows, batch, work, args.out)
    save(result, started, args.out)  # kept if the last phase runs out of time
    # the next design for MFU, last because compiling takes minutes: the decoder layers under torch.compile
    runs = {"tunelab": runs["tunelab"],
            "tunelab_compile": phase("tunelab, train.compile=true", run_tunelab, folder, args.gsm8k, rows, batch,
                                     work, ("train.compile=true",))}
    result["compile"] = compare(runs, folder, args.gsm8k, rows, batch, rate)
    print(save(result, started, args.out))


def save(result: dict, started: float, out: str | None) -> str:
    """The result as one JSON line, also written to <out>/gpu_check.json."""
    result["seconds"] = round(time.time() - started, 1)
    line = json.dumps(result)
    if out:
        (Path(out) / "gpu_check.json").write_text(line + "\n")
    return line


if __name__ == "__main__":
    main()
