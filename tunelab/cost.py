"""Cost: what a run cost (device-hours x price) and what a recipe will cost before it runs.

Prices and throughputs are a dated built-in table (approximate public on-demand list prices and
vendor dense bf16 peaks); set `cost.usd_per_hour` for your own price.

Run as: tunelab estimate gsm8k-mistral-7b --device A100-80GB
"""

from __future__ import annotations

import math
import os

TABLE_DATE = "2026-11"
TABLE_SOURCE = (f"tunelab built-in table ({TABLE_DATE}): approximate on-demand list prices of common clouds; "
                "set cost.usd_per_hour for your own")
# device: (USD per hour, dense bf16 peak TFLOP/s, memory GiB)
GPUS = {
    "H200": (3.50, 989.0, 141), "H100-80GB": (2.49, 989.0, 80), "A100-80GB": (1.79, 312.0, 80),
    "A100-40GB": (1.29, 312.0, 40), "L40S": (0.99, 362.0, 48), "A10G": (1.01, 70.0, 24),
    "L4": (0.71, 121.0, 24), "RTX-4090": (0.69, 165.0, 24), "T4": (0.35, 65.0, 16), "V100": (0.90, 125.0, 16),
}
CPU_USD_PER_CORE_HOUR = 0.0425  # a 2-vCPU compute-optimised cloud VM at ~$0.085/h
# Share of the table's dense bf16 peak that tunelab's LoRA training reaches, per device; stated in every estimate.
# Hopper (H100 and H200, the same chip): measured by benchmarks/gpu_check.py on an H200 (2026-11-28: the seed's
# recipe, 7B Mistral, batches of 16 GSM8K rows, two runs: 0.18 and 0.204; the loop is CPU-bound there, see
# benchmarks/README.md). Others: not measured, an assumption.
GPU_UTILISATION = {"H200": 0.19, "H100-80GB": 0.19}
GPU_UTILISATION_ASSUMED = 0.35


def gpu_utilisation(key: str) -> tuple[float, str]:
    """(share of peak, where it comes from) for a table GPU."""
    if key in GPU_UTILISATION:
        return GPU_UTILISATION[key], "measured on an H200 by benchmarks/gpu_check.py"
    return GPU_UTILISATION_ASSUMED, "assumed, not measured on this GPU"


def gpu_key(name: str, memory_gib: float | None = None) -> str | None:
    """Map a CUDA device name (e.g. 'NVIDIA A100-SXM4-80GB') to a table key."""
    upper = name.upper().replace(" ", "-")
    for key in GPUS:
        family = key.split("-")[0] if key.startswith(("H100", "A100")) else key
        if family in upper:
            if family in ("H100", "A100"):
                big = "80GB" in upper or (memory_gib or 0) > 50
                return f"{family}-80GB" if big or family == "H100" else f"{family}-40GB"
            return key
    return None


def price_per_hour(device, override: float | None) -> tuple[float, str]:
    """(USD per hour, where the price came from) for a torch device."""
    if override is not None:
        return override, "recipe cost.usd_per_hour"
    if device.type == "cuda":
        import torch
        props = torch.cuda.get_device_properties(device)
        key = gpu_key(props.name, props.total_memory / 2**30)
        if key is None:
            return 0.0, f"unknown GPU {props.name!r}: set cost.usd_per_hour"
        return GPUS[key][0], f"{TABLE_SOURCE}; {key}"
    cores = os.cpu_count() or 1
    return CPU_USD_PER_CORE_HOUR * cores, f"{TABLE_SOURCE}; CPU at ${CPU_USD_PER_CORE_HOUR}/core-hour x {cores} cores"


def actual(wall_seconds: float, device, override: float | None, processes: int = 1) -> dict:
    """The cost of a finished stage: device-hours x price. `processes` GPUs (one per process) each count their wall
    hours; processes on one CPU share the machine the price is for."""
    usd_per_hour, source = price_per_hour(device, override)
    gpus = processes if device.type == "cuda" else 1
    hours = wall_seconds * gpus / 3600
    return {"device": device.type, "device_hours": round(hours, 9), "usd_per_hour": usd_per_hour,
            "cost_usd": round(hours * usd_per_hour, 9), "price_source": source + (f"; {gpus} GPUs" if gpus > 1 else "")}


CPU_UTILISATION = 0.5  # share of this machine's measured fp32 matmul rate that LoRA training reaches (assumption)


def measure_cpu_flops(seconds: float = 0.5) -> float:
    """This machine's fp32 matmul rate in FLOP/s (1024x1024 @ 1024x1024, repeated for `seconds`)."""
    import time
    import torch
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b  # warm-up
    n, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 1024 ** 3 / (time.time() - t0)


def flops(train_lengths: list[int], val_lengths: list[int], epochs: float, n_params: int, n_layers: int,
          d_model: int, gradient_checkpointing: bool, base_twice: bool = False, val_passes: int | None = None,
          train_weights: list[float] | None = None) -> dict:
    """Training + validation FLOPs: 4*N per trained token (6*N with gradient checkpointing), 2*N per
    validated token, plus causal attention 2*L*d*n^2 per forward of an n-token sequence (x2 or x3 in training).
    `base_twice`: training runs each weight's matmul twice, forward and backward (PEFT's DoRA with LoRA dropout
    recomputes the base layer on the dropped-out input): 4*N more per trained token. `val_passes`: validation
    passes over the split (default one before training and one per epoch). `train_weights`: times each train row
    is trained per epoch (`data.weight`, data.mix weights; default once). `epochs` may end in a fraction (a last
    epoch cut short by train.max_steps)."""
    val_passes = math.ceil(epochs) + 1 if val_passes is None else val_passes
    train_mult = (3 if gradient_checkpointing else 2) + (2 if base_twice else 0)  # passes relative to one forward
    weights = train_weights or [1.0] * len(train_lengths)
    train_tokens, val_tokens = round(sum(w * n for w, n in zip(weights, train_lengths))), sum(val_lengths)
    attn_train = 2 * n_layers * d_model * sum(w * n * n for w, n in zip(weights, train_lengths))
    attn_val = 2 * n_layers * d_model * sum(n * n for n in val_lengths)
    total = epochs * train_mult * (2 * n_params * train_tokens + attn_train) \
        + val_passes * (2 * n_params * val_tokens + attn_val)
    return {"train_tokens_per_epoch": train_tokens, "val_tokens": val_tokens, "epochs": epochs,
            "val_passes": val_passes,
            "flops": float(total), "flops_per_train_token": 2 * train_mult * n_params}


def recipe_work(cfg, train_items, val_items, weights=None, processes: int = 1) -> dict:
    """The FLOPs of a recipe's training + validation passes over its tokenized splits (exact token counts; with
    `weights`, `tunelab.train.batching.Weights`, each train row as often as it is trained per epoch); the model's
    size comes from its config alone; `processes` share each optimizer step's batches. Shared by `tunelab estimate`
    and the train stage."""
    from dataclasses import asdict

    from tunelab import memory
    from tunelab.models import adapted_counts
    counts = adapted_counts(cfg.model, cfg.lora)
    n_params, layers, hidden = counts["params"], counts["layers"], counts["hidden"]
    t = cfg.train
    rows = weights.rows if weights else len(train_items)
    per_epoch = steps_per_epoch(rows, t.batch_size, t.grad_accum * processes)
    epochs, steps = planned(t, per_epoch)
    work = flops([len(i.input_ids) for i in train_items], [len(i.input_ids) for i in val_items],
                 steps / per_epoch, n_params, layers, hidden, t.gradient_checkpointing,
                 base_twice=cfg.lora.use_dora and cfg.lora.dropout > 0,
                 val_passes=validation_passes(steps, per_epoch, t.val_every),
                 train_weights=weights.per_item() if weights else None)
    return {**work, "epochs": epochs, "steps": steps, "steps_per_epoch": per_epoch,
            "train_tokens": round(work["train_tokens_per_epoch"] * steps / per_epoch), "n_params": n_params,
            "processes": processes, "memory": asdict(memory.workload(cfg, counts, train_items, weights, processes))}


def steps_per_epoch(rows: int, batch_size: int, batches_per_step: int) -> int:
    """Optimizer steps in one epoch of `rows` train rows: batches of `batch_size`, `batches_per_step` of them
    (train.grad_accum x processes) per step, the last step taking what is left."""
    return math.ceil(math.ceil(rows / batch_size) / batches_per_step)


def planned(t, per_epoch: int) -> tuple[int, int]:
    """(epochs, optimizer steps) a run of `t` (the recipe's train section) trains at `per_epoch` steps an epoch:
    train.epochs whole epochs, or with train.max_steps that many steps, the last epoch cut short at the step."""
    if t.max_steps is None:
        return t.epochs, per_epoch * t.epochs
    return math.ceil(t.max_steps / per_epoch), t.max_steps


def splits_work(cfg, splits, tok, processes: int = 1) -> dict:
    """`recipe_work` of a recipe's splits, tokenized and weighted as training takes them, over `processes` GPUs."""
    from tunelab.train.batching import tokenize_splits, weights
    train_items, val_items, _ = tokenize_splits(cfg, splits, tok)
    return recipe_work(cfg, train_items, val_items, weights(cfg, splits.train, train_items), processes)


def validation_passes(steps: int, per_epoch: int, val_every: int) -> int:
    """Validation passes of a run of `steps` optimizer steps: before training, at each epoch's end (the last one's
    at the run's last step), and every `val_every` optimizer steps inside an epoch (`train.val_every`; a step that
    ends an epoch is validated once)."""
    between = range(val_every, steps, val_every) if val_every else ()
    return 1 + math.ceil(steps / per_epoch) + sum(1 for step in between if step % per_epoch)


def duration(hours: float) -> str:
    """A time for people: 40 s, 6.9 min, 3.24 h."""
    return f"{hours * 3600:.0f} s" if hours < 1 / 60 else f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.2f} h"


def dollars(usd: float) -> str:
    """A price for people: cents for a dollar or more, two significant digits below ($2.08, $0.0057, $0.000095)."""
    if usd >= 1 or usd <= 0:
        return f"${usd:,.2f}"
    return f"${usd:.{max(2, 1 - math.floor(math.log10(usd)))}f}"


def estimate_or_unpriced(work: dict, device: str) -> dict:
    """`estimate`, or for a GPU missing from the table the work figures with no price."""
    from tunelab.errors import UserError
    try:
        return estimate(work, device)
    except UserError as err:
        return {**work, "device": device, "hours": None, "cost_usd": None, "basis": str(err)}


def estimate(work: dict, device: str) -> dict:
    """Hours and dollars for `work` (from `flops`) on a table GPU, or "cpu" (this machine, measured)."""
    if device == "cpu":
        rate = measure_cpu_flops() * CPU_UTILISATION
        usd = CPU_USD_PER_CORE_HOUR * (os.cpu_count() or 1)
        basis = (f"this machine's measured fp32 matmul rate x {CPU_UTILISATION} utilisation; "
                 f"${usd:.3f}/h ({os.cpu_count()} cores)")
    else:
        key = device if device in GPUS else gpu_key(device)
        if key is None:
            from tunelab.errors import UserError
            raise UserError(f"--device: unknown device {device!r}; known: {', '.join(GPUS)}, cpu")
        usd, peak, memory_gib = GPUS[key]
        share, source = gpu_utilisation(key)
        rate = peak * 1e12 * share
        device = key
        basis = (f"{peak:.0f} TFLOP/s dense bf16 peak x {share} utilisation ({source}); ${usd:.2f}/h "
                 f"({TABLE_SOURCE})")
    hours = work["flops"] / rate / 3600
    out = {**work, "device": device, "effective_flops_per_second": rate, "hours": round(hours, 6),
           "usd_per_hour": usd, "cost_usd": round(hours * usd, 6), "basis": basis, "table_date": TABLE_DATE}
    if device != "cpu" and work.get("processes", 1) > 1:  # `hours` are device-hours, as the cost counts them
        out.update(gpus=work["processes"], wall_hours=round(hours / work["processes"], 6))  # linear scaling assumed
    if device != "cpu" and work.get("memory"):  # the peak GPU memory on this device's memory
        from tunelab import memory
        out.update(gpu_memory=memory.on_device(memory.Workload(**work["memory"]), memory_gib), memory_gib=memory_gib)
    return out
