"""The `tunelab` command: one subcommand per stage; user mistakes exit with status 2 and a clear message.

Run as: tunelab --help
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tunelab.errors import UserError

log = logging.getLogger("tunelab")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    try:
        return args.func(args) or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Our progress bars and messages only: the libraries' own bars and deprecation chatter are noise here."""
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        from datasets.utils.logging import disable_progress_bar
        disable_progress_bar()
    except ImportError:  # report/compare run without the ML stack
        pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunelab", description="LoRA fine-tuning experiments, measured and reported.")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("recipes", help="list built-in recipes (or print the recipe reference)")
    s.add_argument("--reference", action="store_true", help="print every recipe key with default and meaning")
    s.set_defaults(func=cmd_recipes)

    s = sub.add_parser("show-recipe", help="print a recipe resolved with overrides")
    _recipe_args(s)
    s.set_defaults(func=cmd_show_recipe)

    s = sub.add_parser("train", help="train a LoRA adapter from a recipe into a run directory")
    _recipe_args(s)
    s.add_argument("--run-dir", help="where to write the run (default runs/<recipe name>)")
    s.set_defaults(func=cmd_train)
    return p


def _recipe_args(s: argparse.ArgumentParser, optional: bool = False) -> None:
    s.add_argument("recipe", nargs="?" if optional else None, default="quickstart" if optional else None,
                   help="built-in recipe name or path to a recipe YAML")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.epochs=2 (repeatable)")


def cmd_recipes(args) -> int:
    from tunelab.config import builtin_recipes, reference
    if args.reference:
        print(reference())
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table("recipe", "description")
    for name, description in builtin_recipes().items():
        table.add_row(name, description)
    Console().print(table)
    return 0


def cmd_show_recipe(args) -> int:
    from tunelab.config import load_recipe, to_yaml
    print(to_yaml(load_recipe(args.recipe, args.overrides)), end="")
    return 0


def cmd_train(args) -> int:
    from tunelab.config import load_recipe
    from tunelab.rundir import RunDir
    cfg = load_recipe(args.recipe, args.overrides)
    run = RunDir(args.run_dir or Path("runs") / cfg.name)
    from tunelab.train import train
    result = train(cfg, run)
    _print_epochs(result.epochs, result.summary, run)
    return 0


def _print_epochs(epochs: list[dict], summary: dict, run) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    table = Table("epoch", "train loss", "train tok acc", "val loss", "val tok acc", "seconds", "tokens",
                  title=f"{run.path}")
    for e in epochs:
        table.add_row(str(e["epoch"]), fmt(e["train_loss"], ".4f"), fmt(e["train_token_accuracy"], ".3f"),
                      fmt(e["val_loss"], ".4f"), fmt(e["val_token_accuracy"], ".3f"), fmt(e["seconds"], ".1f"),
                      str(e["tokens"]))
    console = Console()
    console.print(table)
    console.print(f"train loss improvement {summary['train_loss_improvement_pct']:.1f} %, "
                  f"val loss improvement {summary['val_loss_improvement_pct']:.1f} %, "
                  f"{summary['train_tokens_per_second']:.0f} tokens/s, peak RSS {summary['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
