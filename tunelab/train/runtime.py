"""Process-level concerns of a run: per-device process settings (allocator, attention kernels) and Ctrl-C / SIGTERM.

Run as: tunelab train quickstart      (press Ctrl-C: a checkpoint is saved after the current step)
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager

log = logging.getLogger(__name__)


def keep_freed_memory() -> None:
    """Have glibc keep freed blocks in the process instead of returning them to the OS.

    By default blocks over 32 MB (the (N, V) logits, the largest activations) are mmap'd and
    munmap'd every micro-batch, and the next step pays page faults on fresh zeroed pages: ~2.5 s of
    system time per training minute on this CPU, 3-4 % of the step time (benchmarks/README.md). Peak
    RSS moves by ~2 %. A no-op where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    mallopt(M_MMAP_MAX, 0)  # no mmap'd blocks: everything from the heap
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and the heap is not trimmed back after each step


def tune_for(device) -> None:
    """Process settings measured to pay on `device` (train and eval stages call this once).

    CPU: glibc keeps freed memory (`keep_freed_memory`). CUDA: scaled-dot-product attention without cuDNN's
    kernel. On an H200 (torch 2.11) SDPA chose cuDNN's attention, which spent ~2 ms of CPU per call, every
    training batch length and every decode step being a new shape: 229 ms of CPU in 4 training steps
    (CPU-bound: 1.85 s of CPU for 1.20 s of GPU work) and 2.1 s of a 4.3 s decode (benchmarks/README.md,
    GPU check). The flash and memory-efficient kernels take the same inputs without that.
    """
    if device.type == "cpu":
        keep_freed_memory()
    elif device.type == "cuda":
        import torch
        torch.backends.cuda.enable_cudnn_sdp(False)


CPU_MICRO_BATCH_TOKENS = 512  # measured best on this 2-core CPU (benchmarks/README.md)
# bytes of training activations per padded token, hidden unit and layer that micro-batches on CUDA are sized by:
# measured on an H200 (Mistral-7B bf16, LoRA r=16 on all linear layers, the largest batch 16 GSM8K rows padded to
# 512 tokens): 64 with LoRA dropout 0.05, 47 without (tunelab.memory); 100 leaves room for wider MLPs than
# Mistral's 3.5x hidden and for fragmentation (benchmarks/README.md, GPU check)
CUDA_ACTIVATION_BYTES = 100


def micro_batch_tokens(chosen: int | None, device, model_config) -> int:
    """`train.micro_batch_tokens`, or by default: 512 on CPU; on CUDA as many padded tokens as 80 % of the memory
    free once the model is loaded holds activations for (so a 24 GB card splits the batches an H200 takes whole)."""
    if chosen is not None:
        return chosen
    if device.type != "cuda":
        return CPU_MICRO_BATCH_TOKENS
    import torch
    free, _ = torch.cuda.mem_get_info(device)
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return cuda_slice_tokens(free, text.hidden_size, text.num_hidden_layers)


def cuda_slice_tokens(free_bytes: float, hidden: int, layers: int) -> int:
    """The padded tokens per forward that 80 % of `free_bytes` (free once the model is loaded) holds activations
    for, at CUDA_ACTIVATION_BYTES per token, hidden unit and layer; 256 at the least."""
    return max(256, int(0.8 * free_bytes / (CUDA_ACTIVATION_BYTES * hidden * layers)))


class NonFinite(Exception):
    """A NaN or infinite loss or gradient norm."""


class _StopFlag:
    requested = False


@contextmanager
def stop_signals():
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint after the current step and exits."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt("interrupted twice: stopped without a final checkpoint")
        flag.requested = True
        log.warning("%s: saving a checkpoint after this step (press Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
