"""`tunelab import`: a LoRA adapter trained elsewhere (TRL, Axolotl, LLaMA-Factory, Unsloth, a PEFT script) made
into a run directory and measured by tunelab's rules, so eval, analyze, report and compare work on it as on a run
tunelab trained — accuracy per epoch, flips, the prompting baseline and the contamination checks of your own run.

SOURCE is a folder here or a Hub repo id (its adapter files and checkpoints downloaded). From it tunelab takes:
  - the final adapter: SOURCE itself when it is a PEFT adapter folder, else the last checkpoint-N/ of a Trainer
    output_dir;
  - every checkpoint-N/ saved at an epoch's end (its trainer_state.json `epoch` whole) as adapters/epoch-K, so the
    eval stage scores each epoch (save_strategy="epoch" keeps one per epoch); a final adapter that the Trainer's
    max_steps ended inside an epoch is that epoch's, cut short;
  - trainer_state.json's log_history: the Trainer's logged step losses (metrics/steps.jsonl, `logged_by`
    "trainer") and its train_runtime, priced at the recipe's cost.usd_per_hour when one is set.
What it measures itself (forward passes only, no training): the base model's and each epoch adapter's loss and
token accuracy on the recipe's validation rows, each epoch adapter's on its train rows — after the epoch, not the
running mean over the epoch a training loop logs — and each row's loss (the data map, the paired tests), as
metrics/epochs.jsonl and metrics/examples.jsonl. The recipe must describe the data the adapter was trained on:
its validation rows are held out only if the other trainer held the same rows out.

Run as: tunelab import gsm8k-mistral-7b trl-output/ --run-dir runs/trl-3ep
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import Recipe, validate
from tunelab.errors import UserError
from tunelab.rundir import RunDir, atomic_folder

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
HUB_FILES = [*ADAPTER_FILES, "trainer_state.json",
             *(f"checkpoint-*/{name}" for name in (*ADAPTER_FILES, "trainer_state.json"))]
TRAIN_LOSS_RULE = ("measured by tunelab after each epoch over the train rows, with that epoch's adapter (the run "
                   "was trained elsewhere: not the mean over the epoch's steps)")


@dataclass
class Source:
    """What an adapter folder or Trainer output_dir holds."""
    name: str  # as the user named it: a Hub repo id, or the folder's absolute path
    path: Path
    adapters: dict[int, Path]  # epoch -> adapter folder; the highest is the final adapter
    state: dict  # trainer_state.json ({} when there is none)
    adapter_config: dict  # the final adapter's adapter_config.json

    @property
    def epochs(self) -> int:
        return max(self.adapters)

    @property
    def steps(self) -> dict:
        """For a run that its max_steps ended inside its last epoch, the summary's step figures (`max_steps`,
        `steps`, `steps_planned`, `steps_per_epoch`: what `rundir.cut_short` reads); else {}."""
        if not _ended_by_max_steps(self.state):
            return {}
        steps = self.state["global_step"]
        return {"max_steps": steps, "steps": steps, "steps_planned": steps,
                "steps_per_epoch": round(steps / self.state["epoch"])}  # the Trainer's epoch: steps / steps an epoch


def find(path: str | Path, epochs: int) -> Source:
    """The adapters and Trainer state in `path`; `epochs` (the recipe's train.epochs) is the final adapter's epoch
    when no trainer_state.json says it.

    Raises:
        UserError: no LoRA adapter there, a final adapter that stopped inside an epoch before the run's max_steps, or
            adapters that differ.
    """
    name, path = str(path), _local(str(path))
    if not path.is_dir():
        raise UserError(f"{path}: not a folder (give a PEFT adapter folder or a Trainer output_dir)")
    checkpoints = sorted((c for c in path.glob("checkpoint-*") if (c / "adapter_config.json").is_file()
                          and re.fullmatch(r"checkpoint-\d+", c.name)), key=lambda c: int(c.name.split("-")[1]))
    final = path if (path / "adapter_config.json").is_file() else (checkpoints[-1] if checkpoints else None)
    if final is None:
        raise UserError(f"{path}: no adapter_config.json in it or in a checkpoint-N/ folder (give a PEFT LoRA "
                        "adapter folder or a Trainer output_dir)")
    state_file = next((f for f in (path / "trainer_state.json", final / "trainer_state.json") if f.is_file()), None)
    state = _read_json(state_file) if state_file else {}
    adapters = {}
    for c in checkpoints:  # the later checkpoint of an epoch wins
        k = _whole_epoch(_read_json(c / "trainer_state.json").get("epoch")) if (c / "trainer_state.json").is_file() \
            else None
        if k:
            adapters[k] = c
    if state:
        last = _whole_epoch(state.get("epoch")) or (math.ceil(state["epoch"]) if _ended_by_max_steps(state) else None)
        if last is None:
            raise UserError(f"{state_file}: the adapter stopped at epoch {state.get('epoch')}, not at an epoch's end "
                            "nor at the run's max_steps; import the checkpoint-N/ folder of the last whole epoch "
                            "instead")
    else:
        last = epochs
        log.info("%s: no trainer_state.json; the adapter is taken as trained for train.epochs = %d", path, epochs)
    adapters = {k: c for k, c in adapters.items() if k < last} | {last: final}
    config = _adapter_config(final)
    for k, folder in adapters.items():
        other = _adapter_config(folder)
        if _lora_shape(other) != _lora_shape(config):
            raise UserError(f"{folder / 'adapter_config.json'}: r, alpha or target modules differ from the final "
                            f"adapter's ({final}); import one training run's folder")
    return Source(name if path != Path(name) else str(path.resolve()), path.resolve(), dict(sorted(adapters.items())),
                  state, config)


def _local(source: str) -> Path:
    """`source` as a folder here: itself, or a Hub repo id's adapter files and checkpoints, downloaded (cached)."""
    from tunelab.handoff import is_local
    if is_local(source) or source.count("/") != 1:
        return Path(source)
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(source, allow_patterns=HUB_FILES))
    except Exception as err:  # the hub client raises many kinds; all mean "could not fetch this id"
        raise UserError(f"{source}: not a folder here, and not a Hub repo this machine could download "
                        f"({type(err).__name__}: {err})") from None


def prepare(cfg: Recipe, source: Source) -> Recipe:
    """The recipe as the adapter was trained — its LoRA settings from adapter_config.json, its epochs from the
    Trainer — after checking that every adapter fits the recipe's model (on the model built on the meta device, no
    weights read), before anything is written.

    Raises:
        UserError: the adapter is not LoRA, or was trained on another model than the recipe's (naming the file,
            and the tensor and layer that do not fit).
    """
    from tunelab.models import continued_adapter, meta_model, row_ids
    ac, where = source.adapter_config, source.name
    if ac.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{where}: a {ac['peft_type']} adapter; tunelab imports LoRA adapters (LoRA, rsLoRA, DoRA)")
    _check_base(cfg, ac.get("base_model_name_or_path") or "", where)
    linears = {name: m for name, m in meta_model(cfg.model).named_modules() if hasattr(m, "in_features")}
    for folder in source.adapters.values():
        _check_fits(folder / "adapter_model.safetensors", linears, cfg.model.name)
    raw = cfg.model_dump(mode="json")
    raw["lora"].update(r=ac.get("r", cfg.lora.r), alpha=ac.get("lora_alpha", cfg.lora.alpha),
                       dropout=ac.get("lora_dropout", cfg.lora.dropout),
                       target_modules=_targets(ac.get("target_modules") or cfg.lora.target_modules, linears),
                       use_rslora=bool(ac.get("use_rslora")), use_dora=bool(ac.get("use_dora")),
                       modules_to_save=sorted(ac.get("modules_to_save") or []),
                       trainable_tokens=row_ids(ac.get("trainable_token_indices")))
    raw["train"]["epochs"] = source.epochs
    raw["train"]["early_stopping_patience"] = None
    prepared = validate(raw, f"{cfg.name} (imported from {where})")
    continued_adapter(prepared.model, prepared.lora)  # a run that continued an adapter: epoch 0 is that one
    return prepared


def _targets(saved, linears: dict) -> str | list[str]:
    """adapter_config.json's target_modules as a recipe writes them: "all-linear" when they are every linear layer
    but the LM head (PEFT saves "all-linear" as that list of paths), else the saved names."""
    if isinstance(saved, str):
        return saved
    every = {name for name in linears if name.split(".")[-1] != "lm_head"}
    return "all-linear" if set(saved) == every else sorted(saved)


def _check_fits(weights: Path, linears: dict, model_name: str) -> None:
    """Each LoRA A/B tensor in `weights` names a linear layer of the model and has its input / output size."""
    from safetensors import safe_open
    if not weights.is_file():  # adapter_model.bin: checked by PEFT when it loads
        return
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            found = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
            if not found:
                continue
            module, which = found.groups()
            rows, cols = f.get_slice(key).get_shape()
            layer = linears.get(module)
            if layer is None:
                raise UserError(f"{weights}: {key}: {model_name} (model.name) has no linear layer {module}; the "
                                "adapter was trained on another model")
            if (which == "A" and cols != layer.in_features) or (which == "B" and rows != layer.out_features):
                raise UserError(f"{weights}: {key} is {rows}×{cols}, but {module} of {model_name} (model.name) maps "
                                f"{layer.in_features} → {layer.out_features}; the adapter was trained on another "
                                "model")


def check_run_dir(run: RunDir, source: Source) -> None:
    """A run directory being resumed holds an import of this source (not a run trained here, nor another import).

    Raises:
        UserError: it holds something else.
    """
    summary = run.read_optional(run.summary)
    if summary is not None:
        held = (summary.get("imported") or {}).get("source")
        if held != source.name:
            raise UserError(f"{run.path}: holds {'an import of ' + held if held else 'a run trained by tunelab'}, "
                            f"not of {source.name}; use a new --run-dir")
    elif (run.adapter_weights.is_file() and (source.adapters[source.epochs] / "adapter_model.safetensors").is_file()
          and run.adapter_weights.read_bytes() != (source.adapters[source.epochs] / "adapter_model.safetensors")
          .read_bytes()):
        raise UserError(f"{run.path}: its adapter/ is not {source.name}'s final adapter; use a new --run-dir")


def done(run: RunDir) -> bool:
    return run.summary.exists() and run.has_adapter()


def import_run(cfg: Recipe, run: RunDir, source: Source) -> dict:
    """Copy the adapters into `run`, measure their losses, write config, metrics, summary (and cost when priced).

    Each epoch's measurements are kept as they finish (metrics/epochs.jsonl): an import killed part way resumes at
    the first epoch not measured. Returns the summary."""
    from tunelab.config import to_yaml
    run.create()
    run.write_text(run.config, to_yaml(cfg))
    _copy_adapter(source.adapters[source.epochs], run.adapter)
    for k, folder in source.adapters.items():
        _copy_adapter(folder, run.epoch_adapter(k))
    if cfg.lora.continue_from:  # the adapter the run continued, checked by prepare()
        from tunelab.models import start_adapter
        run.keep_start_adapter(start_adapter(cfg.lora.continue_from))
    run.write_jsonl(run.steps, trainer_steps(source.state))
    runtime = next((h["train_runtime"] for h in reversed(source.state.get("log_history", []))
                    if "train_runtime" in h), None)
    measured = _measure(cfg, run, source)
    merges = measured.pop("boundary_merges")
    logged = [s["loss"] for s in trainer_steps(source.state)
              if s["epoch"] is not None and source.epochs - 1 < s["epoch"] <= source.epochs]
    summary = {**measured, "epochs_planned": source.epochs, "early_stopping_patience": None, **source.steps,
               "imported": {"source": source.name,
                            "adapters": {str(k): str(p) for k, p in source.adapters.items()},
                            "train_loss_rule": TRAIN_LOSS_RULE, "train_runtime_seconds": runtime,
                            "logged_last_epoch_loss": round(sum(logged) / len(logged), 6) if logged else None,
                            "boundary_merges": merges}}
    if runtime and cfg.cost.usd_per_hour is not None:
        hours, price = runtime / 3600, cfg.cost.usd_per_hour
        run.write_json(run.cost, {"device": "the other trainer's", "device_hours": round(hours, 9),
                                  "usd_per_hour": price, "cost_usd": round(hours * price, 9),
                                  "price_source": "recipe cost.usd_per_hour × the other trainer's train_runtime"})
    run.write_json(run.summary, summary)
    from tunelab import card
    card.write(run)
    return summary


def trainer_steps(state: dict) -> list[dict]:
    """The Trainer's logged training steps (log_history entries with a loss) in the step log's names."""
    return [{"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"], "lr": h.get("learning_rate"),
             "grad_norm": h.get("grad_norm"), "logged_by": "trainer"}
            for h in state.get("log_history", []) if "loss" in h and "step" in h]


def _measure(cfg: Recipe, run: RunDir, source: Source) -> dict:
    """Loss passes of the base model (validation and the familiarity check's test rows; or of the adapter the run
    continued, adapters/start/, validation only) and of each epoch's adapter (validation and train rows); the epoch
    rows, the example log and the summary's data and loss figures."""
    import torch
    from peft import PeftModel
    from tunelab.data import load_splits
    from tunelab.models import load_model, load_tokenizer, pick_device
    from tunelab.progress import bar
    from tunelab.train.batching import boundary_merges, tokenize_splits, tokenize_with
    from tunelab.train.forward import SupervisedLM, loss_pass
    from tunelab.train.loop import data_figures, familiarity_rows, loss_figures
    from tunelab.train.runtime import micro_batch_tokens, tune_for

    device = pick_device(cfg.train.device)
    tune_for(device)
    splits = load_splits(cfg.data, cfg.eval)
    tok = load_tokenizer(cfg.model)
    train_items, val_items, truncated = tokenize_splits(cfg, splits, tok)
    merges = {"rows": 0, "of": 0} if cfg.data.chat_template else boundary_merges(splits.train, tok)
    test_rows = familiarity_rows(cfg, splits)
    test_items, _ = tokenize_with(cfg, test_rows, tok)
    epochs = [e for e in run.read_epochs() if e["epoch"] in (0, *source.adapters)]  # a resumed import keeps these
    examples = [x for x in run.read_examples() if x["epoch"] in {e["epoch"] for e in epochs}]
    todo = [k for k in (0, *source.adapters) if k not in {e["epoch"] for e in epochs}]
    base = load_model(cfg.model, device)
    micro = micro_batch_tokens(cfg.train.micro_batch_tokens, device, base.config)

    def passes(model, parts) -> dict:
        net = SupervisedLM(model).eval()
        out = {}
        for name, items, rows, epoch in parts:
            t0 = time.time()
            stats, logged = loss_pass(net, items, rows, name, epoch, cfg.train.batch_size, tok.pad_token_id, micro,
                                      device, advance=lambda n, at=epoch: progress.advance(n, epoch=at))
            examples.extend(logged)
            out[name] = (stats, time.time() - t0)
        return out

    rows = sum(len(val_items) + (len(test_items) if k == 0 else len(train_items)) for k in todo)
    with bar("import: loss passes", total=rows) as progress:  # rows, epoch by epoch
        for k in todo:
            adapter = run.epoch_adapter(k) if k else run.start_adapter if cfg.lora.continue_from else None
            model = PeftModel.from_pretrained(base, str(adapter)) if adapter else base  # fits: checked by prepare()
            got = passes(model, [("val", val_items, splits.val, k)]
                         + ([("test", test_items, test_rows, 0)] if test_items else []) if k == 0 else
                         [("val", val_items, splits.val, k), ("train", train_items, splits.train, k)])
            base = model.unload() if adapter else base  # the LoRA layers removed, nothing merged: the base model again
            epochs.append(_epoch_row(k, got.get("train", (None,))[0], *got["val"]))
            epochs.sort(key=lambda e: e["epoch"])
            run.write_jsonl(run.examples, examples)  # rows before their epoch row: a kill between the two redoes it
            run.write_jsonl(run.epochs, epochs)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    run.write_jsonl(run.validation, [{"step": None, "epoch": e["epoch"], "epoch_end": True,
                                      **{k: e[k] for k in ("val_loss", "val_token_accuracy", "val_seconds")}}
                                     for e in epochs])
    return {**data_figures(cfg, splits, train_items, val_items, truncated), **loss_figures(epochs),
            "boundary_merges": merges}


def _epoch_row(epoch: int, train, val, val_seconds: float) -> dict:
    """An imported run's metrics/epochs.jsonl row: the losses measured here (train: None at epoch 0); no training
    seconds or tokens, the training having run elsewhere."""
    return {"epoch": epoch,
            "train_loss": None if train is None else round(train.loss, 6),
            "train_token_accuracy": None if train is None else round(train.accuracy, 6),
            "val_loss": round(val.loss, 6), "val_token_accuracy": round(val.accuracy, 6),
            "seconds": None, "tokens": None, "val_seconds": round(val_seconds, 3), "val_tokens": val.real_tokens}


def _copy_adapter(folder: Path, out: Path) -> None:
    """The PEFT files of `folder` (config and weights, not the optimizer or tokenizer) into `out`, whole."""
    if (out / "adapter_config.json").is_file():
        return
    with atomic_folder(out) as tmp:
        for name in ADAPTER_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)


def _adapter_config(folder: Path) -> dict:
    return _read_json(folder / "adapter_config.json")


def _lora_shape(config: dict) -> tuple:
    targets = config.get("target_modules")
    return config.get("r"), config.get("lora_alpha"), targets if isinstance(targets, str) else sorted(targets or [])


def _check_base(cfg: Recipe, recorded: str, where: str) -> None:
    """Refuse an adapter whose recorded base model names another Hub model than the recipe's (a local path, or no
    record, cannot be compared: loading the weights checks their shapes)."""
    from tunelab.handoff import hub_id, is_local
    ours = hub_id(cfg.model) or cfg.model.name
    if not recorded or is_local(recorded) or is_local(ours):
        return
    if recorded.lower() != ours.lower():
        raise UserError(f"{where}: adapter_config.json's base_model_name_or_path is {recorded}, the recipe's model is "
                        f"{ours} (model.name); use a recipe of that model or --set model.name={recorded}")


def _ended_by_max_steps(state: dict) -> bool:
    """The Trainer ran to its planned steps (max_steps, or a fractional num_train_epochs) and they ended inside an
    epoch: its last epoch is cut short, as train.max_steps cuts one here."""
    epoch, steps = state.get("epoch"), state.get("global_step")
    return (isinstance(epoch, (int, float)) and epoch > 0 and _whole_epoch(epoch) is None
            and isinstance(steps, int) and steps > 0 and steps == state.get("max_steps"))


def _whole_epoch(epoch) -> int | None:
    """`epoch` as an int when the Trainer logged it at an epoch's end (a whole number ≥ 1), else None."""
    if not isinstance(epoch, (int, float)) or epoch < 1 or abs(epoch - round(epoch)) > 1e-6:
        return None
    return round(epoch)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from None
