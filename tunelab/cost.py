"""Cost: what a run cost (device-hours x price) and what a recipe will cost before it runs.

Prices and throughputs are a dated built-in table (approximate public on-demand list prices and
vendor dense bf16 peaks); set `cost.usd_per_hour` for your own price.

Run as: tunelab estimate gsm8k-mistral-7b --device A100-80GB
"""

from __future__ import annotations

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
GPU_UTILISATION = 0.35  # share of peak a LoRA fine-tune typically reaches (assumption, stated in reports)


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


def actual(wall_seconds: float, device, override: float | None) -> dict:
    """The cost.json of a finished stage: device-hours x price."""
    usd_per_hour, source = price_per_hour(device, override)
    hours = wall_seconds / 3600
    return {"device": device.type, "device_hours": round(hours, 9), "usd_per_hour": usd_per_hour,
            "cost_usd": round(hours * usd_per_hour, 9), "price_source": source}
