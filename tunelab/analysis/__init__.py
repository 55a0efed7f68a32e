"""Analysis: the stage (stage.py), embeddings (embed.py), terms and word clouds (terms.py), pictures (plots.py).

Run as: tunelab analyze runs/smoke
"""

from tunelab.analysis.stage import analyze, done

__all__ = ["analyze", "done"]
