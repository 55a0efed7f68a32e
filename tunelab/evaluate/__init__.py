"""Evaluation: the stage (stage.py), batched generation (generate.py), GSM8K scoring (scoring.py).

Run as: tunelab eval runs/smoke
"""

from tunelab.evaluate.stage import EvalResult, done, evaluate

__all__ = ["EvalResult", "done", "evaluate"]
