"""Shared by the benchmarks: run one measured workload in a fresh process (its own peak memory, nothing warm).

Run as: part of benchmarks/train_throughput.py and benchmarks/gpu_check.py.
"""

from __future__ import annotations

import multiprocessing as mp


def child(target, *args) -> dict:
    """`target(*args, queue)` in a spawned process; returns what it put on the queue. Stops the benchmark with the
    child's exit code when it dies before answering (its traceback is on stderr above)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: still running, or dead
            if not proc.is_alive():
                raise SystemExit(f"{target.__name__} failed (exit code {proc.exitcode}); see its traceback above")
    proc.join()
    return result
