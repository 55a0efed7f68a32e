"""Reporting: the report stage (stage.py), run comparison (compare.py), observation rules, rendering, curves.

Run as: tunelab report runs/smoke
"""

from tunelab.report.compare import (best_loss_line, compare, early_stopping_line, eval_lines, headline,
                                    train_loss_change)
from tunelab.report.stage import load_run, write_report

__all__ = ["compare", "eval_lines", "headline", "load_run", "train_loss_change", "write_report"]
