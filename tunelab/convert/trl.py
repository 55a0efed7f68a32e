"""A TRL `trl sft --config` YAML (ModelConfig, ScriptArguments and SFTConfig keys, use_peft) as a tunelab recipe:
its model, its dataset by the format TRL sees in its rows (conversational `messages`, `prompt` / `completion` as
texts or as conversational turns, or text), the loss TRL takes on that format, LoRA and training keys. TRL's
defaults that differ from tunelab's are written out (lr 2e-5, linear schedule, no warmup, max_length 1024, seed 42,
gradient checkpointing on; LoRA r 16, alpha 32, dropout 0.05 on PEFT's default modules for the architecture).

Run as: tunelab convert sft_config.yaml -o recipe.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.convert import leftovers, name, training_arguments
from tunelab.errors import UserError

NOT_NEEDED = {
    "output_dir": "a run directory is tunelab's --run-dir", "logging_steps": "every step is logged",
    "save_strategy": "checkpoints: train.checkpoint_every; every epoch's adapter is kept",
    "save_steps": "checkpoints: train.checkpoint_every", "save_total_limit": "train.keep_checkpoints",
    "eval_strategy": "validation after every epoch (train.val_every for more)", "eval_steps": "train.val_every",
    "per_device_eval_batch_size": "eval.batch_size", "report_to": "train.report_to", "run_name": "the run "
    "directory's name", "push_to_hub": "tunelab export prints the Hub upload command", "hub_model_id": "tunelab "
    "export prints the Hub upload command", "dataset_test_split": "tunelab scores the source's test split",
    "dataset_num_proc": "tokenizing is not the slow part", "lora_task_type": "CAUSAL_LM is what tunelab trains",
    "bf16": "model.dtype: auto is bf16 on a GPU", "tf32": "a GPU matmul setting", "logging_strategy": "every "
    "step is logged", "overwrite_output_dir": "a run directory is tunelab's --run-dir",
    "gradient_checkpointing_kwargs": "tunelab's checkpointing is non-reentrant", "ddp_timeout": "torchrun's "
    "defaults", "dataloader_num_workers": "one process reads", "padding_free": "same loss (train.packing)",
}


def convert(path: str, config: dict) -> tuple[dict, list[str]]:
    """The raw tunelab recipe equivalent to the TRL `config` read from `path`, and the notes.

    Raises:
        UserError: use_peft off (full fine-tuning), a dataset whose rows TRL reads as a format tunelab does not
            write the same way, whole-run settings tunelab has no equal for (another tokenizer's chat template,
            streaming) — naming the key.
    """
    left, notes = dict(config), []
    if not left.pop("use_peft", False):
        raise UserError(f"{path}: use_peft: not set: tunelab trains LoRA adapters (use_peft: true); without it TRL "
                        "fine-tunes every weight")
    for key in ("dataset_streaming", "streaming"):
        if left.get(key) not in (None, -1, False, [], ""):
            raise UserError(f"{path}: {key}: {left[key]!r}: not converted (tunelab reads its sources' train "
                            "splits whole)")
        left.pop(key, None)
    template = left.pop("chat_template_path", None)
    if template and not Path(template).expanduser().is_file():
        raise UserError(f"{path}: chat_template_path: {template!r}: not converted: tunelab takes a Jinja template "
                        "file (model.chat_template), not another tokenizer's")
    model = {"name": left.pop("model_name_or_path"), **({"chat_template": template} if template else {})}
    for key, to in (("model_revision", "revision"), ("trust_remote_code", "trust_remote_code"),
                    ("attn_implementation", "attn_implementation"), ("load_in_4bit", "load_in_4bit")):
        if left.get(key) not in (None, "main", False):
            model[to] = left[key]
        left.pop(key, None)
    dtype = left.pop("dtype", None)
    if dtype in ("bfloat16", "float16"):
        model["dtype"] = dtype
    elif dtype != "auto":  # auto: the checkpoint's dtype, as model.dtype: auto loads it
        notes.append(f"dtype: {dtype or 'float32'!r}: differs: TRL keeps these weights and trains under bf16 autocast "
                     "(bf16: true); tunelab trains bf16 weights on a GPU (model.dtype: auto), fp32 on a CPU")
    if left.pop("load_in_8bit", False):
        notes.append("load_in_8bit: True: differs: tunelab loads the base in bf16, or 4-bit NF4 (model.load_in_4bit)")
    data = _mixture(path, left, notes) if left.get("datasets") else _data(path, left)
    lora = _lora(path, left, model["name"], notes)
    train = _train(path, left, data, notes)
    notes.append("val: differs: TRL trained on every train row; tunelab holds out data.val_fraction (0.1) for "
                 "validation, with data.seed")
    notes += leftovers(left, NOT_NEEDED)
    return {"name": name(path, config.get("output_dir")), "model": model, "data": data, "lora": lora,
            "train": train}, notes


def _data(path: str, left: dict) -> dict:
    """data.*: the dataset and its format, read from its first train rows as TRL reads them."""
    source = left.pop("dataset_name", None)
    if not source:
        raise UserError(f"{path}: dataset_name: missing (the dataset to train on)")
    config = left.pop("dataset_config", None)
    split = left.pop("dataset_train_split", "train")
    if split != "train":
        raise UserError(f"{path}: dataset_train_split: {split!r}: tunelab trains on a source's train split")
    return _format(path, "dataset_name", source, config, None, left.pop("dataset_text_field", "text"))


MIXTURE_KEYS = {"path", "name", "data_dir", "data_files", "split", "columns"}  # TRL's DatasetConfig


def _mixture(path: str, left: dict, notes: list[str]) -> dict:
    """data.* from `datasets:` (TRL's DatasetMixtureConfig: each {path, name, data_files, split, columns}), which
    `trl sft` trains on instead of dataset_name: the first as data.source, the others as data.mix entries. TRL
    concatenates them (each row once, as data.mix trains them), so their rows share one format."""
    mixture, text = left.pop("datasets"), left.pop("dataset_text_field", "text")
    for key in ("dataset_name", "dataset_config"):
        if left.get(key):
            notes.append(f"{key}: {left[key]!r}: not used: TRL trains on `datasets` when both are set")
        left.pop(key, None)
    left.pop("dataset_train_split", None)
    sources = []
    for i, d in enumerate(mixture):
        where = f"datasets.{i}"
        if not isinstance(d, dict) or "path" not in d or set(d) - MIXTURE_KEYS:
            raise UserError(f"{path}: {where}: {d!r}: a dataset is {{path, and optionally name, data_files, split, "
                            "columns}")
        if d.get("split", "train") != "train" or d.get("data_dir"):
            raise UserError(f"{path}: {where}: split / data_dir: tunelab trains on a source's whole train split")
        source, files = d["path"], d.get("data_files")
        if files is not None:  # TRL's way to a local file: path json (or csv, parquet) with its data_files
            if d["path"] not in ("json", "csv", "parquet") or not isinstance(files, str):
                raise UserError(f"{path}: {where}.data_files: {files!r}: converted as one json, csv or parquet file "
                                "(path: json)")
            source = files
        sources.append(_format(path, f"{where}.path", source, d.get("name"), d.get("columns"), text))
    formats = [{k: v for k, v in s.items() if k not in ("source", "config")} for s in sources]
    if any(f != formats[0] for f in formats):
        raise UserError(f"{path}: datasets: their rows have different formats ({formats}); TRL concatenates "
                        "datasets whose rows share their columns")
    mix = [{k: s[k] for k in ("source", "config") if k in s} for s in sources[1:]]
    size = left.pop("test_split_size", None)
    if size:
        notes.append(f"test_split_size: {size}: differs: TRL holds out that share of the combined rows for "
                     f"evaluation; tunelab holds out data.val_fraction ({size} here) of each source's")
    return {**sources[0], **({"mix": mix} if mix else {}), **({"val_fraction": size} if size else {})}


TRL_FORMATS = ("messages", "prompt + completion", "conversational prompt + completion", "text")  # SFTTrainer's


def _format(path: str, key: str, source: str, config: str | None, columns: list[str] | None, text: str) -> dict:
    """A dataset as data.* keys: its source and its rows' format, read from its first train row (its `columns`
    alone, when TRL selects them) as TRL reads it."""
    from tunelab.data.formats import read_format
    from tunelab.data.sources import read_source
    rows, _ = read_source(source, config, 0, 0, 0)
    fields = rows["train"][0].fields if rows.get("train") else {}
    if columns is not None:
        fields = {k: v for k, v in fields.items() if k in columns}
    out: dict[str, Any] = {"source": source, **({"config": config} if config else {})}
    found = read_format(fields, text, TRL_FORMATS)
    if found is None:
        raise UserError(f"{path}: {key}: {source}: its rows have {sorted(fields)}; TRL reads `messages`, "
                        f"`prompt` + `completion`, or the text field {text!r}")
    return {**out, **found[1], **({"chat_template": True} if "messages" in found[1] else {})}


def _lora(path: str, left: dict, model: str, notes: list[str]) -> dict:
    """lora.*: TRL's defaults written out (r 16, alpha 32, dropout 0.05); targets as given, else PEFT's default
    for the architecture; the modules trained whole (lora_modules_to_save)."""
    lora = {"r": left.pop("lora_r", 16), "alpha": left.pop("lora_alpha", 32),
            "dropout": left.pop("lora_dropout", 0.05)}
    if whole := left.pop("lora_modules_to_save", None):
        lora["modules_to_save"] = [whole] if isinstance(whole, str) else list(whole)
    for key in ("use_dora", "use_rslora"):
        if left.get(key):
            lora[key] = True
        left.pop(key, None)
    targets = left.pop("lora_target_modules", None)
    if targets:
        lora["target_modules"] = "all-linear" if targets in ("all-linear", ["all-linear"]) else \
            [targets] if isinstance(targets, str) else list(targets)
        return lora
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    kind = _model_type(model)
    if kind not in PEFT_DEFAULTS:
        raise UserError(f"{path}: lora_target_modules: not set, and PEFT's default for {model} "
                        f"({kind or 'its model type could not be read'}) is not known; set it")
    lora["target_modules"] = list(PEFT_DEFAULTS[kind])  # what LoraConfig(target_modules=None) picks
    notes.append(f"lora_target_modules: not set: PEFT's default for {kind}, {lora['target_modules']}")
    return lora


def _model_type(model: str) -> str | None:
    """The model's `model_type` from its config (a local folder, an alias tunelab knows, or the Hub)."""
    try:
        from transformers import AutoConfig

        from tunelab.models import resolve
        return AutoConfig.from_pretrained(resolve(model)).model_type
    except (OSError, ValueError, UserError):
        return None


def _train(path: str, left: dict, data: dict, notes: list[str]) -> dict:
    """train.*: SFTConfig's defaults where the config leaves a key out (lr 2e-5, max_length 1024, checkpointing
    on); the loss TRL takes on the data's format."""
    train = {**training_arguments(path, left, notes, lr=2e-5), "max_length": left.pop("max_length", 1024),
             "gradient_checkpointing": left.pop("gradient_checkpointing", True),
             "packing": bool(left.pop("packing", False))}
    data["seed"] = train["seed"]
    completion_only, assistant_only = left.pop("completion_only_loss", None), left.pop("assistant_only_loss", False)
    if data.get("messages") == "prompt+completion":  # the completion's turns, unless completion_only_loss: false
        train["completion_only"] = completion_only is not False or bool(assistant_only)
        notes.append("chat template: differs: TRL also trains what the template writes after the completion "
                     "(ChatML's newline after <|im_end|>); tunelab ends the row at the end-of-turn marker; a "
                     "completion of several turns is trained on its last assistant turn only")
    elif data.get("messages"):  # TRL trains every token of a conversation unless assistant_only_loss
        train["completion_only"] = bool(assistant_only)
        if not assistant_only:
            notes.append("chat template: differs: TRL also trains what the template writes after the last reply "
                         "(ChatML's newline after <|im_end|>); tunelab ends the row at the end-of-turn marker")
    elif data["template"]:  # prompt-completion: the completion, unless completion_only_loss: false
        train["completion_only"] = completion_only is not False
    if left.pop("truncation_mode", "keep_start") != "keep_start":
        notes.append("truncation_mode: keep_end: differs: tunelab keeps a long row's start")
    return train
