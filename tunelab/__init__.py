"""tunelab: run a LoRA fine-tuning experiment from a recipe, measure it, price it, report it.

Run as: tunelab --help
"""

__version__ = "0.1.0"
