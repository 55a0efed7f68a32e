"""What a run ran on: library versions and the device, saved as the run's environment.json."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def describe(device) -> dict:
    import torch
    versions = {}
    for package in ("tunelab", "torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    cuda = device.type == "cuda"
    return {
        "python": platform.python_version(), "platform": platform.platform(), **versions,
        "device": device.type, "device_name": device_name(device),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu_count": torch.cuda.device_count() if cuda else 0,
    }


def device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"
