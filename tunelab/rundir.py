"""The run directory: the one contract between stages. This module owns its layout, its readers and atomic writes.

Every file a stage reads or writes is declared in LAYOUT (the README's run-directory table is generated from
it and checked by a test) and reached through a `RunDir` attribute: no stage joins file names by hand.
Each stage writes its own files and never rewrites another stage's. Report and compare read the folder
without importing torch.

Run as: tunelab report runs/smoke        (any stage takes a run directory)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.distributed import is_main_process
from tunelab.errors import UserError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")  # a PEFT adapter's
BEST_LOSS = "best-loss"  # `--epoch best-loss`: the adapter of the lowest validation loss
START = "start"  # the adapter a run continued training (lora.continue_from): adapters/start/, eval's pass of it

# relative path -> (RunDir attribute, what it holds). Order = the README table's order. Families of files
# (epoch-N, journal-R) have methods instead: epoch_adapter(k), journal(rank), journals().
LAYOUT = {
    "config.yaml": ("config", "the resolved recipe, every default spelled out"),
    "environment.json": ("environment", "python, torch, transformers, peft, accelerate versions; device name; "
                                        "CPU/GPU count"),
    "estimate.json": ("estimate", "the cost estimate made before the first step (exact token counts); on a GPU "
                                  "also its peak memory there (`gpu_memory`, from the `memory` workload)"),
    "metrics/steps.jsonl": ("steps", "per optimizer step: loss, lr, grad norm, tokens, tokens/s (an imported "
                                             "run: the other trainer's logged steps, `logged_by` trainer); this "
                                             "file, epochs.jsonl and validation.jsonl are rewritten at every "
                                             "checkpoint, so a run can be watched while it trains"),
    "metrics/epochs.jsonl": ("epochs", "per epoch: `epoch`, `train_loss`, `train_token_accuracy`, `val_loss`, "
                                       "`val_token_accuracy`, `seconds`, `tokens`, `val_seconds`, `val_tokens`; "
                                       "epoch 0 is validation before the first step; an imported run's train "
                                       "loss is measured after the epoch, its `seconds` and `tokens` are null"),
    "metrics/validation.jsonl": ("validation", "every validation pass: `step` (optimizer steps taken), `epoch`, "
                                               "`epoch_end` (false for the extra passes of `train.val_every`), "
                                               "`val_loss`, `val_token_accuracy`, `val_seconds`"),
    "metrics/examples.jsonl": ("examples", "every train and validation example's loss and supervised tokens per "
                                          "epoch; the base model's on the scored test rows at epoch 0"),
    "checkpoints/step-N/": ("checkpoints", "adapter weights, optimizer, scheduler, RNG states, data position, "
                                           "metrics so far (last `train.keep_checkpoints`)"),
    "adapter/": ("adapter", "the LoRA adapter in PEFT format (`PeftModel.from_pretrained`); its README.md is the "
                            "model card (Hub metadata, measured results)"),
    "adapters/epoch-N/": (None, "each epoch's adapter, PEFT format (unless `train.keep_epoch_adapters: "
                                            "false`); the last equals `adapter/`; imported: the checkpoints "
                                            "saved at epoch ends"),
    "adapters/step-N/": (None, "with `train.keep_step_adapters`: the adapter at each `train.val_every` validation "
                               "pass inside an epoch, PEFT format, scored by eval as `step-N`"),
    "adapters/best-loss/": ("best_loss_adapter", "the adapter of the validation pass with the lowest loss when no "
                                                 "other folder holds it (a `train.val_every` pass inside an epoch, or "
                                                 "an epoch's end with `train.keep_epoch_adapters: false`), PEFT "
                                                 "format: TRL's load_best_model_at_end checkpoint; "
                                                 "`--epoch best-loss` picks it"),
    "adapters/start/": ("start_adapter", "with `lora.continue_from`: a copy of the adapter the run continued "
                                         "training (PEFT format), scored by eval as `start` beside the base model"),
    "tensorboard/": ("tensorboard", "TensorBoard event files, with `train.report_to: [tensorboard]`"),
    "wandb/": ("wandb", "Weights & Biases' local run files and the W&B run id, with `train.report_to: [wandb]`"),
    "summary.json": ("summary", "the train stage's headline figures (see Definitions); `epochs` is the epochs "
                                "trained, `epochs_planned` the recipe's (fewer trained when early stopping ended "
                                "the run; with `max_steps`, those the steps reach into, the last cut short), "
                                "`steps` / `steps_planned` the optimizer steps (fewer when early stopping on "
                                "validation passes ended an epoch early), `steps_per_epoch` a whole epoch's, "
                                "`train_windows` the sequences trained when plain-text rows over train.max_length "
                                "were split into windows (data.chunk), "
                                "`train_rows_per_epoch` "
                                "the rows an epoch trains (with source weights), `warmup_steps` the schedule's "
                                "linear warmup, `best_val_step` the step "
                                "of the lowest validation loss (with `train.val_every`), `best_loss_adapter` "
                                "true when adapters/best-loss/ holds that pass; `imported` (source, "
                                "adapters, the train-loss rule, the other trainer's train_runtime) for a run made "
                                "by `tunelab import`"),
    "cost.json": ("cost", "device-hours × price → `cost_usd`, with the price's source"),
    "eval/predictions.jsonl": ("predictions", "per question and model (base / tuned): completion, extracted "
                                              "answers, correct flags, tokens (multiple choice: the options picked by "
                                              "acc and acc_norm, and each option's `logliks`)"),
    "eval/summary.json": ("eval_summary", "`scoring` (and regex scoring's `answer_pattern`; multiple choice's "
                                          "`choices` and `choice_target`), `split` (and "
                                          "`source` when eval.source set the questions, `format` when its rows "
                                          "were not written with data's templates), "
                                          "`prompts` (a digest of the prompts asked: passes kept from an earlier "
                                          "eval were asked the same), `turns: all` when every reply of each "
                                          "conversation was asked (eval.turns); "
                                          "per model (base, base-Nshot, base-chat, base-prompt, epoch-K, best-loss, "
                                          "tuned): n, "
                                          "strict and flexible accuracy (acc and acc_norm under multiple choice), "
                                          "tokens/s, seconds, `at_budget` (answers "
                                          "that reached `max_new_tokens`), for a pass read after a reasoning "
                                          "template's thinking `think_end`, `without_think_end` (replies "
                                          "without it, read whole) and `think_tokens` (whether the tokenizer "
                                          "has `<think>` and `</think>` as tokens), `no_answer` (completions the "
                                          "scoring "
                                          "read no answer from; neither under multiple choice, which generates "
                                          "nothing: `scored_tokens`); base → tuned paired difference "
                                          "with 95 % CI and McNemar p; `epochs` (accuracy per epoch, vs base and vs "
                                          "the previous epoch), `best_epoch`, with train.keep_step_adapters `steps` "
                                          "(every scored point of training, vs the point before) and `best_step` "
                                          "(the best of them, vs tuned), `best_loss` (best-loss vs tuned), "
                                          "`fewshot` (tuned vs the N-shot base, `shots_from`), "
                                          "`chat_baseline` (tuned vs base-chat), `prompt_baseline` (tuned vs "
                                          "base-prompt, with the `template` asked), `flips`, `cost` (the passes "
                                          "answered for this run, priced as cost.json); `by_category`: base → tuned "
                                          "per `data.label_field` value (or per reference class under exact or regex "
                                          "scoring, with confusion tables; per tool called under tool scoring), "
                                          "paired; under tool scoring `tool_outcomes` (per model, its replies right, "
                                          "with no call, a call not due, the wrong tool, the wrong arguments) and "
                                          "`answers` (the replies due no call: chrF and ROUGE-L, `overlap` / "
                                          "`versus` / `epochs` as eval/replies/'s; each such prediction row carries "
                                          "its `chrf` and `rouge_l`)"),
    "eval/skipped.json": ("eval_skipped", "why `tunelab run` skipped the eval stage: `reason` (eval.scoring, or "
                                          "held-out targets no scoring mode suits); `by_loss`: whether the held-out "
                                          "rows are measured by loss instead (eval/loss/)"),
    "eval/sampled.jsonl": ("eval_sampled", "with `eval.pass_at_k: K`: per question and model (base, tuned) its K "
                                           "sampled answers (`sample` 0..K-1), each scored as the greedy ones"),
    "eval/samples.jsonl": ("eval_samples", "when eval was skipped for its data: the first `eval.samples` held-out "
                                           "prompts with the reference and the base and tuned answers (greedy), "
                                           "shown in the report"),
    "eval/replies/": (None, "when no scoring mode suits the held-out answers: the greedy replies of the base model, "
                            "its prompting baselines, each kept epoch's adapter, adapters/best-loss when kept and the "
                            "tuned adapter to the "
                            "`eval.limit` held-out rows eval scores (eval.overlap; else base and tuned on the first "
                            "`eval.samples`) with each reply's chrF and ROUGE-L against its reference "
                            "(predictions.jsonl), and a summary: per model the mean of each, tokens/s, `at_budget`; "
                            "per metric, paired over rows: `overlap` (tuned − base), `versus` (tuned − each model), "
                            "`epochs` (each epoch − the one before); with data.label_field `by_category`, each "
                            "category's chrF paired apart; its journals while unfinished"),
    "eval/loss/": (None, "when no scoring mode suits the held-out answers: the base model's, each kept epoch's and the "
                         "final adapter's target loss on the `eval.limit` held-out rows eval scores, as an eval.also "
                         "set measured by loss (losses.jsonl, and a summary with `loss_difference`, tuned − base "
                         "paired over rows, `epochs`, each measured epoch's loss paired with the one before, and with "
                         "data.label_field `by_category`, each category's loss paired apart; `texts`: true for "
                         "plain-text rows, which ask nothing)"),
    "eval/journal-R.jsonl": (None, "answers of an unfinished eval, one file per process (deleted when the "
                                        "stage ends); what a resumed eval skips"),
    "eval/also/NAME/": (None, "each `eval.also` test set's predictions.jsonl and summary.json (its source under "
                              "`source`), as eval/'s; a set whose answers no scoring mode suits: losses.jsonl (per "
                              "row and model: target loss, tokens, the row's prompt) and a summary with `scoring: "
                              "loss`, `losses` (per model), `loss_difference` (tuned − base, paired over rows), "
                              "`epochs`, `cost`; and its replies/, generated and scored as eval/replies/ "
                              "(eval.overlap)"),
    "analysis/data_checks.json": ("data_checks", "test / validation overlap with train (exact, n-gram, near), "
                                                 "train duplicates, length profile, scoreable targets, estimate; with "
                                                 "data.mix each source's rows, weight and share of the loss "
                                                 "tokens"),
    "analysis/lengths.png": ("lengths_png", "histogram of tokens per row, train.max_length marked"),
    "analysis/summary.json": ("analysis_summary", "rows, embedder, k and silhouettes, outliers, label agreement, "
                                                  "data-map regions, seconds per part"),
    "analysis/terms.json": ("terms", "top terms of the training questions (and of the tuned completions)"),
    "analysis/wordcloud.png": ("wordcloud", "word cloud of the training questions"),
    "analysis/wordcloud_completions.png": ("wordcloud_completions", "word cloud of the tuned model's completions"),
    "analysis/umap.png": ("umap", "UMAP of the embeddings coloured by KMeans cluster, outliers circled"),
    "analysis/map.html": ("map_html", "the same map, interactive and offline (hover shows the question)"),
    "analysis/clusters.json": ("clusters", "per cluster: c-TF-IDF name, size, examples (most typical first), "
                                           "mean loss, base/tuned accuracy (or, answers measured by loss, its "
                                           "held-out rows and their base/tuned target loss, and their "
                                           "replies' mean chrF when generated)"),
    "analysis/outliers.json": ("outliers", "the most isolated / highest-loss rows, with why"),
    "analysis/eval_clusters.json": ("eval_clusters", "each scored question's (or held-out row's, measured by "
                                                     "loss) cluster (nearest centroid), for per-cluster accuracy "
                                                     "(or loss) and flips"),
    "analysis/cartography.png": ("cartography_png", "data map: confidence vs variability of training examples"),
    "analysis/cartography.json": ("cartography", "data-map points, regions and the hardest examples"),
    "report.md": ("report_md", "the detailed analysis report (Markdown, pictures beside it)"),
    "report.html": ("report_html", "the same report as one self-contained HTML file (images inlined)"),
    "report.json": ("report_json", "the report's observations, machine-readable: each one's `kind` (good, watch, "
                                   "info), `text` (the finding with its numbers) and `rule`; what `tunelab report "
                                   "--strict` gates on"),
    "report_files/": ("report_files", "the report's pictures (learning curves, accuracy or held-out target loss "
                                       "per epoch, baseline comparison)"),
}



def merge_rows(rows: list[dict]) -> list[dict]:
    """Per-row loss records ({id, split, epoch, loss, tokens, ...}) with the windows of one row (a plain-text row
    longer than train.max_length, trained in windows: data.chunk) merged into one: their token-weighted mean loss
    and summed tokens, in first-seen order."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["id"], r.get("split"), r.get("epoch"), r.get("step"))
        if key not in out:
            out[key] = dict(r)
            continue
        kept = out[key]
        tokens = kept["tokens"] + r["tokens"]
        kept["loss"] = round((kept["loss"] * kept["tokens"] + r["loss"] * r["tokens"]) / max(tokens, 1), 5)
        kept["tokens"] = tokens
    return list(out.values())

class RunDir:
    """A run directory. Attributes named in LAYOUT are its paths; `read_*` are its typed readers."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __getattr__(self, name: str) -> Path:
        rel = _ATTRIBUTES.get(name)
        if rel is None:
            raise AttributeError(name)
        return self.path / rel.rstrip("/").replace("/step-N", "")

    # paths that are not single files of the layout ------------------------------------------------
    metrics = property(lambda self: self.path / "metrics")
    eval_dir = property(lambda self: self.path / "eval")
    analysis_dir = property(lambda self: self.path / "analysis")
    lock_file = property(lambda self: self.path / ".lock")
    adapter_config = property(lambda self: self.path / "adapter" / "adapter_config.json")
    adapter_weights = property(lambda self: self.path / "adapter" / "adapter_model.safetensors")

    def epoch_adapter(self, epoch: int) -> Path:
        return self.path / "adapters" / f"epoch-{epoch}"

    def step_adapter(self, step: int) -> Path:
        return self.path / "adapters" / f"step-{step}"

    def step_adapters(self) -> dict[int, Path]:
        """`train.keep_step_adapters`' adapters by step, in order."""
        found = {int(p.name.split("-")[1]): p for p in (self.path / "adapters").glob("step-*")
                 if p.name.split("-")[1].isdigit() and (p / "adapter_config.json").is_file()}
        return dict(sorted(found.items()))

    def epoch_end_steps(self) -> dict[int, int]:
        """The optimizer step each epoch ended at (epoch 0: step 0), from the validation log."""
        return {r["epoch"]: r["step"] for r in self.read_validation() if r.get("epoch_end") and r["step"] is not None}

    def keep_start_adapter(self, folder: Path) -> None:
        """Copy the adapter files of `folder` (lora.continue_from's) to adapters/start/, replacing an earlier copy."""
        with atomic_folder(self.start_adapter) as tmp:
            for name in ADAPTER_FILES:
                if (folder / name).is_file():
                    shutil.copy2(folder / name, tmp / name)

    def kept_adapter(self, which: int | str | None) -> Path:
        """An adapter the run keeps: None = the final one (adapter/), N = epoch N's, "best-loss" = the lowest
        validation pass's (adapters/best-loss/), "step-N" = train.keep_step_adapters' at step N."""
        if isinstance(which, str) and which.startswith("step-"):
            return self.step_adapter(int(which.removeprefix("step-")))
        return self.adapter if which is None else self.best_loss_adapter if which == BEST_LOSS else \
            self.epoch_adapter(which)

    def kept_adapter_name(self, which: int | str | None) -> str:
        """`kept_adapter(which)` in words: "the final adapter", "epoch 2's adapter", "step 54's adapter, the lowest
        validation loss"."""
        if which == BEST_LOSS:
            return f"step {lowest_pass(self.read_validation())['step']}'s adapter, the lowest validation loss"
        if isinstance(which, str) and which.startswith("step-"):
            return f"step {which.removeprefix('step-')}'s adapter"
        return "the final adapter" if which is None else f"epoch {which}'s adapter"

    def eval_cost(self) -> dict | None:
        """The eval stage's cost: the passes answered for this run, on its own test set (or its loss passes and its
        generated replies, when no scoring mode suits the answers) and each eval.also set (its replies too; base
        passes reused from the cache not counted), summed: {device_hours, cost_usd, usd_per_hour, price_source};
        None before an eval that recorded it."""
        sets = [self, HeldOutLossDir(self.path), RepliesDir(self.path),
                *(view for extra in self.extra_sets() for view in (extra, RepliesDir(self.path, extra.name)))]
        costs = [s["cost"] for s in (v.read_eval_summary() for v in sets) if s and "cost" in s]
        if not costs:
            return None
        return {"device_hours": sum(c["device_hours"] for c in costs), "cost_usd": sum(c["cost_usd"] for c in costs),
                "usd_per_hour": costs[0]["usd_per_hour"], "price_source": costs[0]["price_source"]}

    def lowest_adapter(self) -> tuple[dict, int | str | None]:
        """The validation pass with the lowest loss and the adapter holding its weights (what `--epoch best-loss`
        takes): its epoch's number when it ended an epoch whose adapter is kept (the last one's is the final
        adapter), "best-loss" for adapters/best-loss/, None when none holds them (the pass before training)."""
        lowest = lowest_pass(self.read_validation())
        if lowest["epoch"] == 0:
            return lowest, None
        trained = (self.read_summary() or {}).get("epochs")
        if lowest["epoch_end"] and (lowest["epoch"] == trained or self.epoch_adapter(lowest["epoch"]).is_dir()):
            return lowest, lowest["epoch"]
        return lowest, BEST_LOSS if self.best_loss_adapter.is_dir() else None

    def journal(self, rank: int) -> Path:
        return self.eval_dir / f"journal-{rank}.jsonl"

    def journals(self) -> list[Path]:
        return sorted(self.eval_dir.glob("journal-*.jsonl"))

    def has_adapter(self) -> bool:
        return self.adapter_config.exists()

    def extra_sets(self) -> list["ExtraSetDir"]:
        """The run seen through each `eval.also` test set scored so far (eval/also/<name>/summary.json), in the
        recipe's eval.also order (sets it no longer lists after them, by name)."""
        from tunelab.config import also_names
        listed = also_names(self.read_recipe().eval) if self.config.exists() else []
        found = sorted(p.parent.name for p in (self.eval_dir / "also").glob("*/summary.json"))
        found.sort(key=lambda name: listed.index(name) if name in listed else len(listed))
        return [ExtraSetDir(self.path, name) for name in found]

    def create(self, folder: Path | None = None) -> "RunDir":
        """Make the run directory (and `folder` in it: metrics/ by default), or say why it cannot be made."""
        try:
            (folder or self.metrics).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--run-dir {self.path}: cannot create it ({err.strerror})") from None
        if not os.access(self.path, os.W_OK):
            raise UserError(f"--run-dir {self.path}: not writable")
        return self

    @contextmanager
    def lock(self, command: str):
        """Hold an exclusive kernel lock (flock) on `<run>/.lock` for the duration.

        The kernel releases it when its holder dies, so a lock left by a killed process is no lock. The
        holder's pid and command are written into the file only for the refusal message.

        Raises:
            UserError: another live process holds the run directory.
        """
        self.create(self.path)
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_lock(self.lock_file) or {}
                raise UserError(f"{self.path}: in use by tunelab process {holder.get('pid', '?')} "
                                f"({holder.get('command', '?')}); wait for it or stop it") from None
            try:  # the releasing holder may have unlinked the file between our open and flock: lock the new one
                if os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command, "host": socket.gethostname()}).encode())
        try:
            yield self
        finally:
            self.lock_file.unlink(missing_ok=True)  # while still holding it
            os.close(fd)

    def require(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise UserError(f"{self.path}: no {what} ({path.relative_to(self.path)} is missing)")
        return path

    # reading ------------------------------------------------------------------------------------
    def read_json(self, path: Path) -> Any:
        return json.loads(path.read_text())

    def read_jsonl(self, path: Path) -> list[dict]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def read_optional(self, path: Path, default: Any = None) -> Any:
        """A JSON file's content, or `default` when the stage that writes it has not run."""
        return self.read_json(path) if path.exists() else default

    def read_recipe(self, overrides: list[str] | None = None):
        """The run's resolved recipe, typed and validated like any recipe (with `--set` overrides applied)."""
        from tunelab.config import load_recipe
        return load_recipe(str(self.config), overrides)

    def read_epochs(self) -> list[dict]:
        return self.read_jsonl(self.epochs)

    def read_steps(self) -> list[dict]:
        return self.read_jsonl(self.steps)

    def read_examples(self) -> list[dict]:
        return self.read_jsonl(self.examples)

    def read_validation(self) -> list[dict]:
        """Every validation pass (metrics/validation.jsonl); runs without that file: the epoch ends'."""
        if self.validation.exists():
            return self.read_jsonl(self.validation)
        return [{**e, "step": None, "epoch_end": True} for e in self.read_epochs()]

    def read_summary(self) -> dict | None:
        return self.read_optional(self.summary)

    def trained_epochs(self, cfg) -> int:
        """Epochs the train stage ran: fewer than `train.epochs` when early stopping ended it; before training
        (an adapter evaluated on its own), the recipe's."""
        return (self.read_summary() or {}).get("epochs", cfg.train.epochs)

    def read_eval_summary(self) -> dict | None:
        return self.read_optional(self.eval_summary)

    def read_predictions(self) -> list[dict]:
        return self.read_jsonl(self.predictions)

    def read_watch(self) -> list[str]:
        """The report's observations to watch (report.json), in its order; [] before a report."""
        return [o["text"] for o in self.read_optional(self.report_json, {}).get("observations", [])
                if o["kind"] == "watch"]

    def read_analysis_summary(self) -> dict | None:
        return self.read_optional(self.analysis_summary)

    # writing (atomic: a reader never sees half a file) -------------------------------------------
    def write_text(self, path: Path, text: str) -> None:
        write_atomic(path, text.encode())

    def write_json(self, path: Path, obj: Any) -> None:
        write_atomic(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())

    def write_jsonl(self, path: Path, rows: list[dict]) -> None:
        write_atomic(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows).encode())


_ATTRIBUTES = {attr: rel for rel, (attr, _) in LAYOUT.items() if attr}


class ExtraSetDir(RunDir):
    """A run seen through one of its `eval.also` test sets: the eval stage's files (predictions, summary, journals)
    are in eval/also/<name>/; every other path (adapters, config, summary) is the run's."""

    def __init__(self, path: str | Path, name: str):
        super().__init__(path)
        self.name = name

    eval_dir = property(lambda self: self.path / "eval" / "also" / self.name)
    losses = property(lambda self: self.eval_dir / "losses.jsonl")  # a set measured by loss: per row and model
    label = property(lambda self: f"eval.also {self.name}")  # what progress bars and logs call it

    def __getattr__(self, name: str) -> Path:
        rel = _ATTRIBUTES.get(name)
        if rel is not None and rel.startswith("eval/"):
            return self.eval_dir / rel.removeprefix("eval/")
        return super().__getattr__(name)

    def at(self, path: str | Path) -> "ExtraSetDir":
        """The same test set in another run directory (`compare`)."""
        return ExtraSetDir(path, self.name)

    def read_losses(self) -> dict[str, dict[str, tuple[float, int]]]:
        """A set measured by loss: row id -> {model: (mean target loss, supervised tokens)}; {} before any pass."""
        out: dict[str, dict] = {}
        for r in self.read_jsonl(self.losses):
            out.setdefault(r["id"], {})[r["model"]] = (r["loss"], r["tokens"])
        return out


class HeldOutLossDir(ExtraSetDir):
    """A run's own held-out rows measured by loss, when no scoring mode suits their answers: files as an eval.also
    set's measured by loss, in eval/loss/."""

    def __init__(self, path: str | Path):
        super().__init__(path, "the held-out rows")

    eval_dir = property(lambda self: self.path / "eval" / "loss")
    label = property(lambda self: "eval (by loss)")

    def at(self, path: str | Path) -> "HeldOutLossDir":
        return HeldOutLossDir(path)


class RepliesDir(ExtraSetDir):
    """Held-out rows answered by generation and scored by overlap with the references, when no scoring mode suits
    their answers: an eval stage's files (predictions, summary, journals) in eval/replies/ for the run's own rows, in
    eval/also/<name>/replies/ for the eval.also set `also` (measured by loss in eval/also/<name>/)."""

    def __init__(self, path: str | Path, also: str | None = None):
        super().__init__(path, also or "the held-out replies")
        self.also = also

    eval_dir = property(lambda self: self.path / "eval" / ("replies" if self.also is None else
                                                             Path("also", self.also, "replies")))
    label = property(lambda self: "eval (replies)" if self.also is None else f"eval.also {self.also} (replies)")

    def at(self, path: str | Path) -> "RepliesDir":
        return RepliesDir(path, self.also)


def stopped_early(summary: dict | None) -> bool:
    """Early stopping ended the train stage before its last planned step (or epoch, in summaries that count no
    steps)."""
    if not summary:
        return False
    if "steps_planned" in summary:
        return summary["steps"] < summary["steps_planned"]
    trained, planned = trained_and_planned(summary)
    return trained < planned


def steps_per_epoch(summary: dict) -> int:
    """Optimizer steps in one whole epoch of a train summary with steps (older summaries: planned steps / epochs,
    all whole then)."""
    return summary.get("steps_per_epoch") or summary["steps_planned"] // trained_and_planned(summary)[1]


def cut_short(summary: dict | None) -> tuple[int, int] | None:
    """(steps trained in the last epoch, steps in a whole one) when train.max_steps ended the run inside its last
    epoch; None otherwise (whole epochs, or early stopping ended it)."""
    if not summary or not summary.get("max_steps") or stopped_early(summary):
        return None
    per_epoch = steps_per_epoch(summary)
    last = summary["steps"] - (summary["epochs"] - 1) * per_epoch
    return (last, per_epoch) if last < per_epoch else None


def counts_passes(summary: dict | None) -> bool:
    """The run's early stopping counted validation passes (train.early_stopping_on=validation), not epochs: it may
    have stopped inside an epoch, at a step."""
    return bool(summary) and summary.get("early_stopping_on") == "validation"


def lowest_pass(passes: list[dict]) -> dict:
    """The validation pass with the lowest loss, the first one on a tie (what `best_val_step` and
    adapters/best-loss/ name)."""
    return min(passes, key=lambda p: p["val_loss"])


def trained_and_planned(summary: dict | None) -> tuple[int, int]:
    """(epochs trained, epochs planned) of a train summary; summaries written before early stopping existed have
    no `epochs_planned`: every planned epoch ran."""
    if not summary:
        return 1, 1
    return summary["epochs"], summary.get("epochs_planned", summary["epochs"])


def last_improvement(val_losses: list[float], threshold: float = 0.0) -> int:
    """The epoch early stopping measures from: the last whose validation loss ended more than `threshold` below
    the reference before it (epoch 0, before training, is the first reference; a tie is no improvement). With
    threshold 0 that is the epoch of the lowest loss; above 0, smaller gains leave the reference where it was
    (Keras' min_delta)."""
    reference = 0
    for epoch, loss in enumerate(val_losses):
        if loss < val_losses[reference] - threshold:
            reference = epoch
    return reference


def layout_table() -> str:
    """The README's run-directory table, generated from LAYOUT."""
    rows = [f"| `{rel}` | {what} |" for rel, (_, what) in LAYOUT.items()]
    return "| file | what |\n|---|---|\n" + "\n".join(rows) + "\n"


def default_run_dir(recipe_name: str, kind: str = "") -> Path:
    """Where a command writes when no --run-dir is given: runs/<recipe>[-<kind>] (base, insights, compare)."""
    return Path("runs") / (f"{recipe_name}-{kind}" if kind and recipe_name else recipe_name or kind)


def open_run(path: str | Path, overrides: list[str] | None = None, need: str | None = None,
             sections: tuple[str, ...] = ()):
    """An existing run directory and its typed recipe.

    Args:
        overrides: `--set` overrides for this command only (the run's config.yaml is not rewritten).
        need: "summary" to require a finished train stage.
        sections: the recipe sections those overrides may touch (a run's training is fixed).

    Raises:
        UserError: not a run directory (no config.yaml), the train stage has not finished, or an override
            outside `sections`.
    """
    run = RunDir(path)
    if not run.config.is_file():
        raise UserError(f"{path}: not a run directory (no config.yaml)")
    outside = [o.partition("=")[0] for o in overrides or [] if o.partition(".")[0] not in sections]
    if outside:
        raise UserError(f"--set {', '.join(outside)}: on a run directory only {' / '.join(f'{s}.*' for s in sections)} "
                        f"keys can be overridden (the run was trained with its config.yaml)")
    if need == "summary":
        run.require(run.summary, "training summary: train first (tunelab train)")
    return run, run.read_recipe(overrides)


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def locked(run: RunDir, command: str):
    """Hold the run directory's lock; if this command created the folder and wrote no file, remove it again."""
    if not is_main_process():  # other ranks of a multi-process run: rank 0 holds the lock
        yield run
        return
    existed = run.path.exists()
    try:
        with run.lock(command):
            yield run
    except BaseException:
        if not existed and run.path.exists() and not any(p.is_file() for p in run.path.rglob("*")):
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, rename over `path`.

    Raises:
        UserError: disk full or unwritable directory; `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_UMASK)  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({err.strerror}); the previous version is kept") from None


@contextmanager
def atomic_folder(path: Path):
    """Yield an empty temp folder beside `path`; on success it replaces `path` in one rename.

    Raises:
        UserError: disk full or unwritable directory while filling it; `path` is left as it was.
    """
    tmp = path.parent / f".{path.name}.tmp"
    old = path.parent / f".{path.name}.old"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        if isinstance(err, RuntimeError) and "write" not in str(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise UserError(f"{path}: cannot write ({reason}); the previous version is kept") from None
    shutil.rmtree(old, ignore_errors=True)


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
