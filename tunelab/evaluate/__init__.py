"""Evaluation: the stage (stage.py), continuous-batching generation (generate.py), GSM8K scoring (scoring.py),
replies scored by their overlap with the references (overlap.py), the few-shot prompting baseline (fewshot.py),
the resume journal (journal.py) and `tunelab generate`'s answers to your own prompts (inference.py).

Kept free of imports so that torch-free readers (report, compare) can use `evaluate.scoring`.

Run as: tunelab eval runs/smoke
"""
