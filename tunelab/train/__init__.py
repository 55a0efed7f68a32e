"""Training: the loop (loop.py), the supervised forward (forward.py), batching, checkpoints, LoRA speed-up.

Run as: tunelab train quickstart
"""

from tunelab.train.loop import TrainResult, done, train

__all__ = ["TrainResult", "done", "train"]
