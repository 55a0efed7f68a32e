"""The `tunelab` command: one subcommand per stage; user mistakes exit with status 2 and a clear message.

Run as: tunelab --help
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

from tunelab.distributed import is_main_process
from tunelab.errors import UserError
from tunelab.evaluate.inference import UNTIL
from tunelab.rundir import default_run_dir, locked, open_run

log = logging.getLogger("tunelab")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "generate" and not any(e.startswith("-") for e in extra):
        args.text += extra  # prompts after an option (`generate RUN --base "2 + 2?"`), which argparse leaves over
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if is_main_process() and not args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    try:
        return args.func(args) or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        print(f"interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun / accelerate: destroy the process group before exiting; left to interpreter
    shutdown, gloo's threads can abort the process ("terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")  # never imports torch (report and compare run without it)
    if dist is not None and dist.is_available() and dist.is_initialized():
        try:  # every rank done with its collectives before any tears the group down
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60)) if dist.get_backend() == "gloo" \
                else dist.barrier()
        except RuntimeError:  # a rank that failed never arrives: tear down anyway
            pass
        dist.destroy_process_group()


def _quiet_libraries() -> None:
    """Our progress bars and messages only: the libraries' own bars and deprecation chatter are noise here."""
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read by datasets when (if) it is imported
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # report/compare run without the ML stack
        pass
    try:  # its warnings (an unreachable Hub's retries) go to its own handler: not to ours as well, printed twice
        from huggingface_hub.utils import logging as hub_logging
        hub_logging.disable_propagation()
    except ImportError:
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
    _recipe_args(s, optional=True, default=None)
    s.add_argument("--run-dir", help="where to write the run (default runs/<recipe name>)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="score the base model, its baselines and each epoch's adapter on held-out "
                                    "rows: their answers, choices, or loss")
    s.add_argument("target", help="a run directory, or a recipe (base model only)")
    _set_arg(s, "override a recipe key; on a run directory, for this evaluation only (e.g. --set eval.limit=50)")
    s.add_argument("--only", choices=["base", "tuned"], help="run one pass (the other is kept if present)")
    _shorthand(s, "--limit", "eval.limit", "questions to score")
    _shorthand(s, "--batch-size", "eval.batch_size", "questions per batch (0 = automatic)")
    s.add_argument("--run-dir", help="for a bare recipe: where to write (default runs/<recipe>-base)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("analyze", help="word cloud, embeddings, UMAP + KMeans clusters, outliers, data map")
    s.add_argument("run_dir", nargs="?", help="a run directory (uses its losses, eval and adapter)")
    s.add_argument("--recipe", help="analyse a recipe's data before training")
    _set_arg(s, "override a recipe key (repeatable)")
    s.add_argument("--run-dir", dest="out_dir", help="with --recipe: where to write analysis/")
    _shorthand(s, "--embedder", "analysis.embedder", "minilm, model, or a sentence-transformers folder")
    _shorthand(s, "-k", "analysis.k", "number of clusters (default: best silhouette)")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("report", help="write report.md and a self-contained report.html for a run")
    s.add_argument("run_dir")
    s.add_argument("--baseline", help="an earlier run to compare with")
    s.add_argument("--strict", action="store_true", help="exit 1 when any observation is one to watch (a CI gate: "
                                                        "accuracy fell, a benchmark got worse, test overlap, ...)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("compare", help="table of every summary figure and overlaid learning curves of runs")
    s.add_argument("run_dirs", nargs="+", help="run folders, or a sweep's folder (its finished runs)")
    s.add_argument("--out", help="where to write compare.md/.html/.png (default runs/compare; a lone sweep "
                                 "folder: that folder)")
    s.set_defaults(func=cmd_compare)

    _file_commands(sub)
    _planning_commands(sub)
    _output_commands(sub)
    return p


def _file_commands(sub) -> None:
    """The commands that read files and run nothing: where the run directories stand, another trainer's config."""
    s = sub.add_parser("ls", help="every run directory under a folder: running, stopped, done; its figures and "
                                  "the command that finishes it")
    s.add_argument("folders", nargs="*", default=["runs"], help="folders holding run directories (default runs)")
    s.add_argument("--json", action="store_true", help="one JSON object per run directory")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("convert", help="an Axolotl, LLaMA-Factory or TRL config as a tunelab recipe: the same model, "
                                       "data, prompt format and settings, every key not carried over exactly named")
    s.add_argument("config", help="an Axolotl, LLaMA-Factory or TRL (trl sft --config) YAML config")
    s.add_argument("-o", "--out", help="the recipe file to write (default: print it)")
    s.set_defaults(func=cmd_convert)


def _planning_commands(sub) -> None:
    """The commands that look at a recipe before anything is spent: data checks and the cost estimate."""
    s = sub.add_parser("check", help="data checks before training: test overlap, duplicates, lengths, "
                                     "scoreable targets, and the cost estimate")
    _recipe_args(s)
    s.add_argument("--device", help="price the estimate on this device (a table GPU or cpu; default: this machine)")
    _gpus_arg(s)
    s.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    s.add_argument("--strict", action="store_true", help="exit 1 when a test row overlaps the training rows, or the "
                   "recipe's peak memory does not fit --device's")
    s.add_argument("--run-dir", help="also write analysis/data_checks.json and analysis/lengths.png there")
    s.add_argument("--show", type=int, default=0, metavar="N",
                   help="also print the first N training rows (of each data.mix source too) as the model "
                        "sees them, the tokens that carry loss marked ⟦…⟧ (chat templates, truncation and EOS "
                        "included), and the first N scored questions of each test set as the eval asks them, "
                        "with the reference answer (and the first one's few-shot prompt, with eval.fewshot)")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("estimate", help="hours and dollars of a recipe before training")
    _recipe_args(s)
    s.add_argument("--device", default=None, help="a GPU from the price table (e.g. A100-80GB) or cpu; "
                                                   "default: every table GPU and this CPU")
    _gpus_arg(s)
    s.set_defaults(func=cmd_estimate)


def _gpus_arg(s) -> None:
    s.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="train on N GPUs, one process each (torchrun): the steps an epoch, the wall time (linear "
                        "scaling assumed), and each GPU's memory (its share of the weights under train.sharding=fsdp)")


def _output_commands(sub) -> None:
    """The commands that run every stage or take a finished run elsewhere."""
    s = sub.add_parser("run", help="train → eval → analyze → report, resumable stage by stage")
    _recipe_args(s, optional=True)
    s.add_argument("--run-dir", help="where to write the run (default runs/<recipe name>)")
    s.add_argument("--baseline", help="an earlier run for the report's comparison")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("import", help="a LoRA adapter trained elsewhere (TRL, Axolotl, a PEFT folder) measured by "
                                      "tunelab, then eval → analyze → report as for `run`; resumable")
    _recipe_args(s)
    s.add_argument("source", help="a PEFT adapter folder, a Trainer output_dir (its checkpoint-N/ folders at epoch "
                                  "ends are scored as epochs: save_strategy='epoch'), or a Hub repo id of either")
    s.add_argument("--run-dir", help="where to write the run (default runs/<recipe name>-imported)")
    s.add_argument("--baseline", help="an earlier run for the report's comparison")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("sweep", help="one run per combination of recipe values, then their comparison; "
                                     "resumable run by run")
    _recipe_args(s)
    s.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="a recipe key and the values to try, e.g. --vary train.lr=3e-4,1e-3 (repeatable: every "
                        "combination runs)")
    s.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train every combination N times, train.seed = the recipe's, +1, ... (the comparison then "
                        "gives each recipe's spread over seeds and tests recipes against it)")
    s.add_argument("--run-dir", help="the sweep's folder, one run folder per combination inside "
                                     "(default runs/<recipe name>-sweep)")
    s.set_defaults(func=cmd_sweep)

    _generate_command(sub)

    s = sub.add_parser("export", help="write the merged model (or --adapter-only) of a run")
    s.add_argument("run_dir")
    s.add_argument("out_dir")
    s.add_argument("--adapter-only", action="store_true", help="copy the PEFT adapter instead of merging")
    s.add_argument("--format", choices=["hf", "gguf"], default="hf",
                   help="hf: safetensors + tokenizer; gguf: one file for llama.cpp / Ollama (Llama, Mistral, Qwen2)")
    s.add_argument("--quant", choices=["f16", "q8_0"], default="f16", help="GGUF weight type (norms stay f32)")
    s.add_argument("--epoch", help="export epoch N's adapter (adapters/epoch-N); best: the best epoch by answer "
                                   "accuracy (after tunelab eval); best-loss: the validation pass with the lowest "
                                   "loss (its epoch's adapter, or adapters/best-loss); step-N: "
                                   "train.keep_step_adapters' adapter at step N; default the final adapter")
    s.set_defaults(func=cmd_export)


def _generate_command(sub) -> None:
    """`tunelab generate`: answers to prompts from a run's adapter (or a recipe's base model)."""
    s = sub.add_parser("generate", help="the tuned model's answers to your prompts (--base: the base model's too)")
    s.add_argument("target", help="a run directory (its adapter answers) or a recipe (its base model alone)")
    s.add_argument("text", nargs="*", help="prompts, each filling the template's one field (e.g. {question}); none "
                                           "and no --file: one prompt per line from stdin, answered as typed")
    s.add_argument("--file", help="rows with the template's fields (jsonl/json/csv/parquet), one prompt each; rows "
                                  "with the target's fields show it as the reference")
    s.add_argument("--raw", action="store_true", help="send each text as the whole prompt (no template)")
    s.add_argument("--tools", help="a JSON file of function schemas (a list, or {tools: [...]}) handed to the chat "
                                   "template with each prompt of a conversation run (rows of --file that have their "
                                   "own keep them)")
    s.add_argument("--base", action="store_true", help="the base model's answers too, side by side")
    s.add_argument("--epoch", help="answer with epoch N's adapter, best (by answer accuracy), best-loss or step-N "
                                   "(train.keep_step_adapters'); default the final adapter")
    s.add_argument("--until", choices=list(UNTIL), default="eos",
                   help="eos: until end-of-sequence (as a server); answer / line / pattern: also after a '#### N' "
                        "line / the first line / the line holding a match of eval.answer_pattern (numeric / exact / "
                        "regex scoring's rule), read after the thinking where the chat template writes a thinking "
                        "block, and in an adapter's replies where the run's eval read them after one (targets that "
                        "are reasoning traces) or eval.think_end is set; every rule ends at eval.max_new_tokens")
    s.add_argument("--json", action="store_true", help="one JSON line per prompt: fields, prompt, answers, tokens")
    s.add_argument("--sample", action="store_true", help="draw each answer (eval.temperature, eval.top_p, "
                   "eval.sample_seed: the draws eval.pass_at_k makes) instead of the most likely tokens")
    s.add_argument("--temperature", action=_SampleAt, const="eval.temperature", metavar="T",
                   help="draw each answer at temperature T (--sample with --set eval.temperature=T)")
    _shorthand(s, "--max-new-tokens", "eval.max_new_tokens", "most tokens generated per answer")
    _set_arg(s, "override an eval.* key for this command (eval.batch_size, eval.max_new_tokens)")
    s.set_defaults(func=cmd_generate)


def _recipe_args(s: argparse.ArgumentParser, optional: bool = False, default: str | None = "quickstart") -> None:
    s.add_argument("recipe", nargs="?" if optional else None, default=default if optional else None,
                   help="built-in recipe name or path to a recipe YAML")
    _set_arg(s, "override a recipe key, e.g. --set train.epochs=2 (repeatable)")


def _set_arg(s: argparse.ArgumentParser, help: str) -> None:
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


class _Override(argparse.Action):
    """A stage flag that is shorthand for one recipe key: `--limit 200` appends `eval.limit=200` to --set,
    so it is typed and validated (and its errors named) like any recipe key."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.overrides = [*(namespace.overrides or []), f"{self.const}={value}"]


class _SampleAt(_Override):
    """`generate --temperature T`: eval.temperature=T, and the answers drawn (as --sample)."""

    def __call__(self, parser, namespace, value, option_string=None):
        super().__call__(parser, namespace, value, option_string)
        namespace.sample = True


def _shorthand(s: argparse.ArgumentParser, flag: str, key: str, help: str) -> None:
    s.add_argument(flag, action=_Override, const=key, dest="shorthand_" + key.replace(".", "_"), metavar="VALUE",
                   help=f"{help} (same as --set {key}=VALUE)")


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
    from tunelab.train import train
    if args.resume:
        if args.recipe or args.overrides:
            raise UserError("--resume: the run's own config.yaml is used; give no recipe or --set")
        run, cfg = open_run(args.resume)
    elif args.recipe:
        cfg = load_recipe(args.recipe, args.overrides)
        run = RunDir(args.run_dir or default_run_dir(cfg.name))
        if run.summary.exists() or run.checkpoints.exists():
            raise UserError(f"{run.path}: already holds a run; use --resume {run.path} or a new --run-dir")
    else:
        raise UserError("train: give a recipe, or --resume RUN_DIR")
    with locked(run, "train"):
        result = train(cfg, run, resume=bool(args.resume))
    if is_main_process():
        _print_epochs(result.epochs, result.summary, run)
    return 0


def _run_or_recipe(target: str, overrides: list[str]):
    """(run directory, its recipe) when `target` is one, else (None, the recipe `target` names), for the commands
    that take either (eval, generate).

    Raises:
        UserError: a folder that is not a run directory, or a name that is neither a run directory nor a recipe.
    """
    from tunelab.config import builtin_recipes, load_recipe
    if Path(target, "config.yaml").is_file():
        return open_run(target, overrides, sections=("eval",))
    if Path(target).is_dir():
        raise UserError(f"{target}: not a run directory (no config.yaml); give a run directory or a recipe")
    if not Path(target).exists() and target not in builtin_recipes():
        raise UserError(f"{target}: no such run directory or recipe file; built-in recipes are: "
                        f"{', '.join(builtin_recipes())}")
    return None, load_recipe(target, overrides)


def cmd_eval(args) -> int:
    from tunelab.data import load_splits
    from tunelab.evaluate.stage import (by_loss, check_models, evaluate, evaluate_extra, generates_replies,
                                        held_out_loss, replies, unscoreable)
    from tunelab.rundir import RunDir
    found, cfg = _run_or_recipe(args.target, args.overrides)
    is_run = found is not None
    run = found if is_run else RunDir(args.run_dir or default_run_dir(cfg.name, "base"))
    splits = load_splits(cfg.data, cfg.eval)
    reason = unscoreable(cfg, splits)
    if reason and not by_loss(cfg, splits):
        raise UserError(reason)
    check_models(cfg, splits)
    with locked(run, "eval"):
        summary = (held_out_loss(cfg, run, splits, reason, only=args.only, adapter=is_run) if reason else
                   evaluate(cfg, run, only=args.only, adapter=is_run, splits=splits).summary)
        if reason and is_run and args.only != "base" and generates_replies(cfg, splits):  # and the replies, by overlap
            replies(cfg, run, splits)
        extra = evaluate_extra(cfg, run, only=args.only, adapter=is_run)
    if is_main_process():
        _print_eval(summary, run)
        from tunelab.report import replies as generated
        if reason and is_run and (said := generated.run_line(run)):
            print(said)
        for name, other in extra:
            _print_eval(other.summary, run, name)
            if said := generated.run_line(run, name):  # its replies, when generated
                print(said)
    return 0


def cmd_analyze(args) -> int:
    from tunelab.analysis import analyze
    from tunelab.config import load_recipe
    from tunelab.rundir import RunDir
    if args.recipe:
        cfg = load_recipe(args.recipe, args.overrides)
        run = RunDir(args.out_dir or default_run_dir(cfg.name, "insights"))
        run.create()
        if not run.config.exists():
            from tunelab.config import to_yaml
            run.write_text(run.config, to_yaml(cfg))
    elif args.run_dir:
        run, cfg = open_run(args.run_dir, args.overrides, sections=("analysis", "checks", "eval"))
    else:
        raise UserError("analyze: give a run directory, or --recipe NAME --run-dir DIR")
    with locked(run, "analyze"):
        summary = analyze(cfg, run)
    _print_analysis(summary, run)
    return 0


def _print_analysis(summary: dict, run) -> None:
    from rich.console import Console
    from rich.table import Table
    clusters = run.read_json(run.clusters)
    table = Table("cluster", "name", "size", "mean loss", "accuracy (tuned)", title=f"{run.path} analysis")
    for c in clusters:
        acc = c.get("tuned_accuracy")
        table.add_row(str(c["cluster"]), c["name"], str(c["size"]),
                      "—" if c["mean_loss"] is None else f"{c['mean_loss']:.3f}",
                      "—" if acc is None else f"{100 * acc:.0f} %")
    console = Console()
    console.print(table)
    line = f"k={summary['k']} (silhouette {summary['silhouette']}), {summary['outliers']} outliers"
    if "adjusted_rand_index" in summary:
        line += (f", ARI {summary['adjusted_rand_index']:.3f}, purity {summary['purity']:.3f}, rare label "
                 f"{summary['rarest_label']!r}: {summary['rarest_label_in_outliers']}/{summary['rarest_label_rows']} "
                 f"among outliers")
    console.print(line + f"; {summary['seconds_total']:.0f} s; see {run.analysis_dir}")


def cmd_report(args) -> int:
    from tunelab.report import load_run, write_report
    run = load_run(args.run_dir)
    baseline = load_run(args.baseline) if args.baseline else None
    path = write_report(run, baseline)
    print(f"wrote {run.report_md}, {path} and {run.report_json}")
    watch = run.read_watch()
    for text in watch:
        print(f"watch: {text}")
    if args.strict and watch:
        print(f"--strict: {len(watch)} observation{'s' * (len(watch) != 1)} to watch", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from tunelab.report import compare, load_run
    from tunelab.report.compare import recipe_differences
    from tunelab.sweep import finished_runs
    sweeps = [Path(p) for p in args.run_dirs if (Path(p) / "sweep.json").is_file()]
    runs = [load_run(r) for p in args.run_dirs
            for r in (finished_runs(Path(p)) if Path(p) in sweeps else [p])]  # a sweep's folder: its finished runs
    if not runs:
        raise UserError(f"compare: {', '.join(map(str, sweeps))}: no finished run in the sweep yet")
    only_sweep = sweeps[0] if len(args.run_dirs) == 1 and sweeps else None
    if len(runs) < 2 and not only_sweep:
        raise UserError(f"compare: {runs[0].path}: one run; give two run folders or more, or a sweep's folder")
    out = Path(args.out or only_sweep or default_run_dir("", "compare"))
    rows, picture = compare(runs, out)
    table = Table("figure", *[r.path.name for r in runs], "Δ last − first")
    for row in rows:
        table.add_row(*[("—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row])
    Console().print(table)
    differences = recipe_differences(runs)
    if differences:
        keys = Table("recipe key", *[r.path.name for r in runs])
        for key, *values in differences:
            keys.add_row(key, *[repr(v) for v in values])
        Console().print(keys)
    from tunelab.report.seeds import findings
    for line in findings(runs, [r.path.name for r in runs]):
        print(line)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.html'} and {picture}")
    return 0


def cmd_check(args) -> int:
    import json
    from tunelab import cost
    from tunelab.config import load_recipe
    from tunelab.data import checks, load_splits
    from tunelab.models import continued_adapter, load_tokenizer
    from tunelab.rundir import RunDir
    cfg = load_recipe(args.recipe, args.overrides)
    device = args.device or _this_device()
    if args.device:
        cost.estimate({"flops": 0.0}, device)  # an unknown device is refused before any data is read
    continued = continued_adapter(cfg.model, cfg.lora)  # lora.continue_from's, fitting the recipe (else exit 2)
    splits, tok = load_splits(cfg.data, cfg.eval), load_tokenizer(cfg.model)
    work = cost.splits_work(cfg, splits, tok, _gpus(args))  # before the checks: a weight that draws no row stops here
    from tunelab.evaluate.stage import check_models
    check_models(cfg, splits)  # eval.models: each loads, and the set is scored by answers
    result, totals = checks.run_checks(cfg, splits, tok, embed_texts=checks.minilm)
    result["estimate"] = cost.estimate_or_unpriced(work, device)
    result["verdict"] = checks.verdict(result)
    if continued:
        result["continue_from"] = str(continued)
    if args.show:
        from tunelab.evaluate.stage import preview
        result["examples"] = checks.preview(cfg, checks.first_of_each_source(cfg, splits.train, args.show), tok)
        result["eval_examples"] = preview(cfg, tok, args.show, splits)
    if args.run_dir:
        run = RunDir(args.run_dir)
        with locked(run, "check"):
            checks.write(run, result, totals)
    if args.json:
        print(json.dumps(result))
    else:
        _print_checks(result)
    overlapping = sum(result["overlap_counts"]["test"].values()) + sum(
        sum(extra["overlap_counts"].values()) for extra in result.get("extra_sets", {}).values())
    return 1 if args.strict and (overlapping or not checks.fits(result)) else 0


def _this_device() -> str:
    import torch
    if not torch.cuda.is_available():
        return "cpu"
    from tunelab.environment import device_name
    return device_name(torch.device("cuda"))


def _print_eval_examples(console, sets: dict) -> None:
    """`tunelab check --show`: each test set's first questions as the eval asks them (or why it is not scored), and
    the prompts its baselines send the base model."""
    from rich.text import Text
    for name, shown in sets.items():
        if "skipped" in shown:
            console.print(f"{name} ({shown['source']}, {shown['split']} split): not scored ({shown['skipped']})"
                          + ("; its target loss is measured instead" if shown.get("by_loss") else "")
                          + (", and its generated replies' chrF and ROUGE-L against the references"
                             if shown.get("by_loss") and shown.get("overlap") else ""))
        for q in shown.get("rows", []):
            console.rule(f"{name}: {q['id']}, as the eval asks it")
            console.print(Text(q["prompt"], "dim"))
            if "contexts" in q:  # options filling a blank: the rest of the question scored after each
                console.print("options, each filling the blank: " + ", ".join(map(repr, q["options"]))
                              + f"; scored after each: {q['scored']!r}")
            elif "options" in q:  # multiple choice: each option as written after the prompt
                console.print("options, each scored after the prompt: " + ", ".join(map(repr, q["options"])))
            right = f"{q['options'][q['right']]!r}, whose text is " if "options" in q else ""
            if "true" in q:  # labelled options: right is any true one
                right = (f"the options labelled true, {', '.join(repr(q['options'][k]) for k in q['true'])} (mc2: "
                         "their share of the probability); the first, whose text is ")
            console.print(f"→ {shown['scoring']} scoring against {right}{q['reference']!r} ({shown['source']}, "
                          f"{shown['split']} split)")
        for key, baseline in (("fewshot_prompt", "the few-shot baseline"),
                              ("chat_baseline_prompt", "the chat baseline"),
                              ("chat_fewshot_prompt", "the few-shot chat baseline"),
                              ("prompt_baseline_prompt", "the prompt baseline (eval.prompt_baseline)")):
            if key in shown:
                console.rule(f"{name}: {shown['rows'][0]['id']}, as {baseline} asks the base model")
                console.print(Text(shown[key], "dim"))
        for model, prompt in shown.get("model_prompts", {}).items():
            console.rule(f"{name}: {shown['rows'][0]['id']}, as {model} is asked (eval.models)")
            console.print(Text(prompt, "dim"))


def _print_checks(result: dict) -> None:
    from rich.console import Console
    from tunelab.data.checks import targets_line
    from rich.text import Text
    console = Console(width=150)
    _print_overlap(console, result)
    d, ln, tg = result["train_duplicates"], result["lengths"], result["targets"]
    console.print(f"train duplicates: {d['exact_rows']} exact rows in {d['exact_groups']} groups, {d['near_pairs']} "
                  f"near pairs; data.dedup dropped {result['rows']['deduplicated']}")
    console.print(f"tokens per row: p50 {ln['total']['p50']}, p99 {ln['total']['p99']}, max {ln['total']['max']}; "
                  f"{ln['truncated']} over train.max_length={ln['max_length']}"
                  + (f" (and {ln['windowed']} plain texts over it, trained in windows: data.chunk)"
                     if ln.get("windowed") else "") + "; padding "
                  f"{100 * ln['padding_share']:.1f} % of the batch plan; {ln['recommendation']}")
    console.print("; ".join(": ".join(targets_line(k, v)) for k, v in tg.items()))
    skipped = result["eval_skipped"]
    thinking = (f" read after the thinking's last {result['eval_think_end']} (eval.think_end), within "
                f"eval.max_new_tokens={result['eval_max_new_tokens']} tokens, the thinking included"
                if "eval_think_end" in result else "")
    console.print(f"eval: scores answers{thinking}" if not skipped else f"eval: answers not scored ({skipped})"
                  + (f"; the held-out {'texts' if result.get('eval_texts') else 'replies'}' target loss is measured "
                     "instead" if result.get("eval_by_loss") else "")
                  + (", and the generated replies' chrF and ROUGE-L against them" if result.get("eval_by_overlap")
                     else ""))
    if (b := result["boundary"])["rows"]:
        ex = b["example"]
        console.print(f"prompt/answer boundary: on {b['rows']} of {b['of']} training rows the prompt's last token "
                      f"merges with the answer's first when the two are tokenized together ({ex['id']}: "
                      f"{ex['prompt_end']!r} + the answer → {ex['together']!r}). tunelab trains them apart, as a "
                      "prompt is given at inference; a trainer that tokenizes them together (TRL's prompt-completion "
                      "rows) trains a token the bare prompt never ends with. A template that does not end in a "
                      "space avoids it.")
    for ex in result.get("examples", []):
        console.rule(f"{ex['id']}: {ex['tokens']} tokens, {ex['supervised_tokens']} with loss (marked ⟦…⟧)")
        console.print(Text.assemble(*((f"⟦{seg['text']}⟧", "bold green") if seg["loss"] else (seg["text"], "dim")
                                      for seg in ex["segments"])))
    _print_eval_examples(console, result.get("eval_examples", {}))
    e = result["estimate"]
    if e.get("hours") is not None:
        from tunelab import cost
        from tunelab.memory import describe
        memory = f"; peak GPU memory {describe(e['gpu_memory'], e['memory_gib'])}" if "gpu_memory" in e else ""
        where = f"{e['gpus']} × {e['device']} ({cost.duration(e['hours'])} of device time, linear scaling assumed)" \
            if e.get("gpus") else e["device"]
        console.print(f"estimate on {where}: {cost.duration(e.get('wall_hours', e['hours']))}, "
                      f"{cost.dollars(e['cost_usd'])} ({e['basis']})" + memory)
    if "continue_from" in result:
        console.print(f"continues the adapter in {result['continue_from']}: its r, alpha, targets and weights fit the "
                      "recipe's lora.*")
    console.print(f"verdict: {result['verdict']}", markup=False)  # it may quote a list: [embed_tokens, lm_head]


def _print_overlap(console, result: dict) -> None:
    """`tunelab check`'s overlap table (each split, each eval.also set, against train), its first overlaps and the
    per-source counts."""
    from rich.table import Table
    from tunelab.data.checks import source_note
    table = Table("overlap with train", "exact", f"{result['settings']['ngram']}-gram",
                  f"near (cosine ≥ {result['settings']['near_threshold']})")
    for split, counts in result["overlap_counts"].items():
        table.add_row(f"{split} ({result['rows'][split]} rows)", *(str(counts[k]) for k in ("exact", "ngram", "near")))
    for name, extra in result.get("extra_sets", {}).items():
        table.add_row(f"eval.also {name} ({extra['rows']} rows)",
                      *(str(extra["overlap_counts"][k]) for k in ("exact", "ngram", "near")))
    console.print(table)
    for o in result["overlap"][:5]:
        console.print(f"  {o['split']} {o['row_id']} ~ {o['train_id']} ({o['kind']}, score {o['score']})")
    if sources := result["rows"].get("sources"):
        console.print("sources: " + "; ".join(f"{name} {c['train']} train{source_note(c)} / "
                                               f"{c['validation']} validation rows"
                                               + (f", {c['test_overlap']} test rows overlap it" if c["test_overlap"]
                                                  else "") for name, c in sources.items()))


def cmd_estimate(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from tunelab import cost
    from tunelab.config import load_recipe
    from tunelab.data import load_splits
    from tunelab.memory import describe
    from tunelab.models import load_tokenizer
    cfg = load_recipe(args.recipe, args.overrides)
    if args.device:
        cost.estimate({"flops": 0.0}, args.device)  # an unknown device is refused before any data is read
    gpus = _gpus(args)
    if gpus > 1 and args.device == "cpu":
        raise UserError(f"--gpus {gpus} with --device cpu: several GPUs need a GPU device (processes on one CPU "
                        "share its cores)")
    work = cost.splits_work(cfg, load_splits(cfg.data), load_tokenizer(cfg.model), gpus)
    devices = [args.device] if args.device else [*cost.GPUS] + ["cpu"] * (gpus == 1)  # N GPUs: no CPU row
    table = Table("device", "time" + (f" on {gpus} GPUs" if gpus > 1 else ""), "USD",
                  "peak GPU memory" + (" (each)" if gpus > 1 else ""), "basis", title=(
        f"{cfg.name}: {work['n_params'] / 1e9:.2f} B params, {work['train_tokens_per_epoch']:,} train tokens × "
        + (f"{cfg.train.epochs} epochs" if cfg.train.max_steps is None else
           f"{work['steps'] / work['steps_per_epoch']:.2f} epochs (train.max_steps {work['steps']} at "
           f"{work['steps_per_epoch']} an epoch)")
        + f" + {work['val_tokens']:,} validation tokens × {work['val_passes']} passes = "
        f"{work['flops'] / 1e15:.2f} PFLOP (training and validation; model loading and evaluation excluded)"))
    for device in devices:
        e = cost.estimate(work, device)
        table.add_row(e["device"], cost.duration(e.get("wall_hours", e["hours"])), cost.dollars(e["cost_usd"]),
                      describe(e["gpu_memory"], e["memory_gib"]) if "gpu_memory" in e else "—",
                      e["basis"].replace(f" ({cost.TABLE_SOURCE})", ""))  # said once, under the table
    table.caption = f"GPU prices: {cost.TABLE_SOURCE}" + (
        f". On {gpus} GPUs: the time assumes linear scaling (not measured); the USD counts every GPU's hours"
        if gpus > 1 else "")
    Console(width=160).print(table)
    return 0


def _gpus(args) -> int:
    """--gpus, checked: 1 or more."""
    if args.gpus < 1:
        raise UserError(f"--gpus: {args.gpus}: give 1 or more")
    return args.gpus


def cmd_run(args) -> int:
    from tunelab.pipeline import run_all
    run_all(args.recipe, args.overrides, args.run_dir, args.baseline)
    return 0


def cmd_import(args) -> int:
    from tunelab.config import load_recipe
    from tunelab.pipeline import run_all
    from tunelab.rundir import default_run_dir
    run_dir = args.run_dir or str(default_run_dir(load_recipe(args.recipe, args.overrides).name, "imported"))
    run_all(args.recipe, args.overrides, run_dir, args.baseline, source=args.source)
    return 0


def cmd_sweep(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from tunelab import status
    from tunelab.evaluate.scoring import naming
    from tunelab.rundir import RunDir
    from tunelab.sweep import finished_runs, sweep
    folder, record = sweep(args.recipe, args.overrides, args.vary, args.run_dir, args.seeds)
    done = [RunDir(path) for path in finished_runs(folder)]
    names = naming(done[0].read_eval_summary() if done else None)
    table = Table("run", "state", "epochs", "final val loss", f"tuned {names.flexible}", "tuned − base (95 % CI)",
                  "cost", title=f"sweep {folder}")
    for entry in record["runs"]:
        if entry["state"] != "done":
            table.add_row(entry["name"], entry["state"], "", "", "", "", "")
            continue
        d = status.describe(RunDir(folder / entry["name"]))
        train = d["train"]
        stopped = (f" of {train['epochs_planned']}" + (f", step {train['step']}" if train["counts_passes"] else "")
                   if train["stopped_early"] else "")
        table.add_row(entry["name"], "done", f"{train['epochs']}{stopped}", *_figure_cells(d))
    Console(width=160).print(table)
    if (folder / "compare.md").exists():
        from tunelab.report.seeds import findings
        print("\n".join(findings(done, [r.path.name for r in done])))
        print(f"wrote {folder / 'compare.md'} and {folder / 'compare.html'} (paired tests against the first run)")
    return 0 if all(e["state"] == "done" for e in record["runs"]) else 1


def cmd_ls(args) -> int:
    import json
    from rich.console import Console
    from rich.table import Table
    from tunelab import status
    runs = [status.describe(run) for run in status.find(args.folders)]
    if args.json:
        for d in runs:
            print(json.dumps(d))
        return 0
    if not runs:
        print(f"no run directory under {', '.join(args.folders)}")
        return 0
    table = Table("run", "state", "final val loss", "tuned accuracy", "tuned − base (95 % CI)", "cost", "updated")
    for d in runs:
        table.add_row(d["run"], d["state"], *_figure_cells(d), d["updated"])
    Console(width=200).print(table)
    for d in runs:
        if d["next"]:
            print(f"{d['run']}: {d['next']}")
    return 0


def cmd_convert(args) -> int:
    from tunelab.convert import convert, to_text
    from tunelab.rundir import write_atomic
    if args.out and Path(args.out).exists():
        raise UserError(f"-o {args.out}: already exists; choose a new file")
    raw, notes = convert(args.config)
    for note in notes:
        print(f"not carried over exactly: {note}", file=sys.stderr)
    text = to_text(raw, notes)
    if not args.out:
        sys.stdout.write(text)
        return 0
    write_atomic(Path(args.out), text.encode())
    print(f"wrote {args.out}; see its rows as the model will: tunelab check {args.out} --show 3; then tunelab run "
          f"{args.out}, or measure the run that config trained: tunelab import {args.out} OUTPUT_DIR", file=sys.stderr)
    return 0


def _figure_cells(d: dict) -> list[str]:
    """A `status.describe` record's headline figures as table cells: the last validation loss, the tuned
    accuracy (or why none; the held-out replies' target loss and their generated replies' chrF when they are measured
    instead; and mc2, for labelled options), its paired gain over the base model, the cost (train, + eval)."""
    acc = d["accuracy"] or {}
    accuracy = (f"{100 * acc['tuned']:.1f} %" if "tuned" in acc else "not scored" if "skipped" in acc else "—")
    low, high = acc.get("ci95_pts", (0, 0))
    gain = f"{acc['delta_pts']:+.1f} pts ({low:+.1f}..{high:+.1f})" if "delta_pts" in acc else "—"
    if "loss_delta" in acc:  # answers no scoring mode suits: the held-out replies' target loss instead
        low, high = acc["loss_ci95"]
        accuracy, gain = f"loss {acc['loss'][1]:.3f}", f"loss {acc['loss_delta']:+.3f} ({low:+.3f}..{high:+.3f})"
    if "chrf_delta" in acc:  # and their generated replies' chrF against the references
        low, high = acc["chrf_ci95"]
        accuracy += f", chrF {acc['chrf'][1]:.3f}"
        gain += f", chrF {acc['chrf_delta']:+.3f} ({low:+.3f}..{high:+.3f})"
    if "mc2_delta_pts" in acc:  # labelled options: the probability on the true ones too
        low, high = acc["mc2_ci95_pts"]
        accuracy += f", mc2 {100 * acc['mc2'][1]:.1f} %"
        gain += f", mc2 {acc['mc2_delta_pts']:+.1f} pts ({low:+.1f}..{high:+.1f})"
    train, scored = d["cost_usd"]["train"], d["cost_usd"]["eval"]
    cost = ("—" if train is None else f"${train:.4f}") + (f" + ${scored:.4f} eval" if scored is not None else "")
    return [f"{d['val_loss'][1]:.4f}" if d["val_loss"] else "—", accuracy, gain, cost]


def cmd_export(args) -> int:
    from tunelab.export import chosen_epoch, export, next_commands
    run, _ = open_run(args.run_dir)
    epoch = chosen_epoch(run, args.epoch)
    out = export(run, Path(args.out_dir), args.adapter_only, args.format, args.quant, epoch)
    print(f"wrote {out}" + (f" ({run.kept_adapter_name(epoch)})" if epoch else ""))
    for what, command in next_commands(run, out, args.format, args.adapter_only, epoch):
        print(f"\n# {what}\n{command}")
    return 0


def cmd_generate(args) -> int:
    from tunelab.evaluate import inference
    from tunelab.models import load_tokenizer, pick_device
    from tunelab.train.runtime import tune_for
    run, cfg = _run_or_recipe(args.target, args.overrides)
    if run is not None:
        models = inference.run_models(run, args.epoch, args.base)
    else:
        if args.epoch:
            raise UserError("--epoch: a recipe has no adapters; give a run directory")
        models = [inference.Model("base", None, "base")]
    if args.file and (args.text or args.raw):
        raise UserError("--file: rows come from the file; give no texts and no --raw with it")
    if args.tools and args.raw:
        raise UserError("--tools: a --raw text is the whole prompt; no chat template writes the tools into it")
    tools = inference.tools_file(cfg, args.tools) if args.tools else None
    typed = not args.file and not args.text
    if args.file:
        examples = inference.from_file(cfg, args.file, tools)
    elif args.text:
        examples = inference.from_texts(cfg, args.text, args.raw, tools)
    elif not args.raw:
        inference.text_field(cfg)  # a template a line cannot fill is refused before any model loads
    tok = load_tokenizer(cfg.model)
    device = pick_device(cfg.train.device)
    tune_for(device)
    if typed and sys.stdin.isatty():
        return _generate_typed(args, run, cfg, tok, models, device, tools)
    if typed:
        examples = inference.from_texts(cfg, [line for line in sys.stdin.read().splitlines() if line.strip()],
                                        args.raw, tools)
    texts = inference.prompts(cfg, tok, examples, args.raw)
    think = {m.name: inference.thinks(cfg, tok, args.raw, m, run) for m in models}
    answers = inference.answer_all(cfg, tok, models, texts, args.until, cfg.eval.max_new_tokens, device,
                                   args.sample, think)
    for i, (example, text) in enumerate(zip(examples, texts)):
        _print_answer(args, i + 1, example, text, {m.name: answers[m.name][i] for m in models}, models)
    return 0


def _generate_typed(args, run, cfg, tok, models, device, tools: list | None) -> int:
    """`tunelab generate` at a terminal: the models load once, then each typed line is answered (Ctrl-D ends)."""
    from tunelab.evaluate import inference
    loaded = {m.name: inference.load(cfg, m, device) for m in models}
    think = {m.name: inference.thinks(cfg, tok, args.raw, m, run) for m in models}
    print("type a prompt and press Enter; Ctrl-D ends", file=sys.stderr)
    number = 0
    while True:
        try:
            line = input("> ")
        except EOFError:
            return 0
        if not line.strip():
            continue
        number += 1
        examples = inference.from_texts(cfg, [line], args.raw, tools)
        texts = inference.prompts(cfg, tok, examples, args.raw)
        answers = {m.name: inference.answer(cfg, tok, loaded[m.name], m.name, texts, args.until,
                                            cfg.eval.max_new_tokens, args.sample, think[m.name])[0] for m in models}
        _print_answer(args, number, examples[0], texts[0], answers, models)


def _print_answer(args, number: int, example, text: str, answers: dict, models) -> None:
    import json
    from tunelab.evaluate import inference
    if args.json:
        print(json.dumps(inference.record(example, text, answers), ensure_ascii=False), flush=True)
    else:
        print(inference.show(number, example, answers, models), flush=True)


def _print_eval(summary: dict, run, extra: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from tunelab.evaluate.summary import pass_names
    from tunelab.report import eval_lines
    from tunelab.evaluate.scoring import naming
    if summary.get("scoring") == "loss":  # a set no scoring mode suits: measured by loss
        _print_losses(summary, run, extra)
        return
    names = naming(summary)
    labelled = any("mc2" in summary[name] for name in pass_names(summary))  # eval.choice_labels: mc2 per pass
    table = Table("model", "n", names.strict, names.flexible, *(["mc2"] if labelled else []), "at budget", "tokens/s",
                  "seconds", title=f"{run.path} eval: {names.accuracy}" + (f" on {extra} ({summary['source']}, "
                                                                           "eval.also)" if extra else ""))
    for name in pass_names(summary):
        s = summary[name]
        table.add_row(name, str(s["n"]), f"{100 * s['strict_accuracy']:.1f} %", f"{100 * s['flexible_accuracy']:.1f} %",
                      *([f"{100 * s['mc2']:.1f} %" if "mc2" in s else "—"] if labelled else []),
                      str(s.get("at_budget", "—")), f"{s['tokens_per_second']:.0f}",
                      f"{s['seconds']:.1f}" + (" (cached)" if s.get("cached") else ""))
    console = Console()
    console.print(table)
    for metric in ("strict", "flexible"):
        d = summary.get(f"{metric}_difference")
        if d:
            lo, hi = d["ci95_pts"]
            console.print(f"{getattr(names, metric)}: tuned - base = {d['delta_pts']:+.1f} pts (95 % CI "
                          f"{lo:+.1f}..{hi:+.1f}, McNemar p = {d['mcnemar_p']:.3g}, {d['gained']} gained / "
                          f"{d['lost']} lost)")
    for line in eval_lines(summary):
        console.print(line)


def _print_losses(summary: dict, run, name: str | None) -> None:
    """A set measured by loss: an eval.also set (`name`), or the run's own held-out rows (None)."""
    from rich.console import Console
    from rich.table import Table
    from tunelab.report import extra
    which = f"{name} ({summary['source']}, eval.also), {summary['n']} rows" if name else \
        f"{summary['n']} {summary['split']} rows"
    table = Table("model", "target loss", "token accuracy", "seconds",
                  title=f"{run.path} eval: {which} measured by loss ({summary['reason']})")
    for model, s in summary["losses"].items():
        table.add_row(model, f"{s['loss']:.4f}", f"{100 * s['token_accuracy']:.1f} %", f"{s['seconds']:.1f}")
    console = Console()
    console.print(table)
    said = extra.line(name, summary) if name else extra.held_out_line(summary)
    if said:
        console.print(said)


def _print_epochs(epochs: list[dict], summary: dict, run) -> None:
    from rich.console import Console
    from rich.table import Table
    from tunelab.report import best_loss_line, early_stopping_line, train_loss_change

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
    console.print(f"{train_loss_change(summary)}, val loss improvement {summary['val_loss_improvement_pct']:.1f} %, "
                  f"{summary['train_tokens_per_second']:.0f} tokens/s, peak RSS {summary['peak_rss_mib']:.0f} MiB")
    for line in (early_stopping_line(summary), best_loss_line(summary, run.read_validation())):
        if line:
            console.print(line)


if __name__ == "__main__":
    sys.exit(main())
