"""Recipes from other trainers' configs (`tunelab convert`): an Axolotl, LLaMA-Factory or TRL (`trl sft --config`)
YAML as the tunelab recipe that trains the same thing, so such a run can be re-run here or imported (`tunelab
import`) and measured.

Every key of the config is accounted for: carried over, carried with a stated difference, not needed here (logging,
output folders, the Hub), or without a tunelab equivalent. What would change the trained tokens in a way tunelab
cannot write (full fine-tuning, a dataset format it does not read the same way, rows' own system texts) is
refused, naming the key. benchmarks/axolotl_parity.py and llamafactory_parity.py, and tests/test_convert.py for TRL,
tokenize converted rows against the trainers' own code.

Any command that takes a recipe takes such a config too (`tunelab import axolotl.yml outputs/lora-out`,
`tunelab check llama3_lora_sft.yaml --show 3`): it is translated the same way, its notes logged.

Run as: tunelab convert axolotl.yml -o recipe.yaml
        tunelab convert llama3_lora_sft.yaml -o recipe.yaml
        tunelab convert sft_config.yaml -o recipe.yaml        # trl sft --config sft_config.yaml
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.errors import UserError

TRAINERS = {"axolotl": "Axolotl", "llamafactory": "LLaMA-Factory", "trl": "TRL"}


def convert(path: str) -> tuple[dict, list[str]]:
    """The tunelab recipe (a raw dict, validated) equivalent to the trainer config at `path`, and the notes: one
    line per key not carried over exactly (`key: value: why`).

    Raises:
        UserError: not a readable YAML mapping of a known trainer, a key refused (see the trainer's module), or a
            recipe that does not validate — naming the key.
    """
    raw, notes = translate(path, _read(path))
    from tunelab.config import validate
    validate(raw, f"{path} (converted)")
    return raw, notes


def translate(path: str, config: dict) -> tuple[dict, list[str]]:
    """`convert` of a config already read (a mapping), not yet validated: the raw recipe and the notes. A recipe
    argument of any command may be such a config (`load_recipe` translates it)."""
    trainer = which(path, config)
    if trainer == "axolotl":
        from tunelab.convert import axolotl as module
    elif trainer == "trl":
        from tunelab.convert import trl as module
    else:
        from tunelab.convert import llamafactory as module
    raw, notes = module.convert(path, config)
    return {"name": raw.pop("name"), "description": f"converted from {path} ({TRAINERS[trainer]}) by tunelab "
            "convert", **raw}, notes


def is_trainer_config(raw: dict) -> bool:
    """Whether a YAML mapping is another trainer's config rather than a tunelab recipe (which has model and data
    sections, and never base_model or model_name_or_path)."""
    return not {"model", "data"} & set(raw) and bool({"base_model", "model_name_or_path"} & set(raw))


def which(path: str, config: dict) -> str:
    """The trainer a config is for: Axolotl (base_model), TRL's `trl sft --config` (model_name_or_path with
    dataset_name) or LLaMA-Factory (model_name_or_path with dataset).

    Raises:
        UserError: none of them.
    """
    if "base_model" in config:
        return "axolotl"
    if "model_name_or_path" in config and "dataset_name" in config:
        return "trl"
    if "model_name_or_path" in config:
        return "llamafactory"
    raise UserError(f"{path}: not an Axolotl config (base_model, datasets), a TRL one (model_name_or_path, "
                    "dataset_name) or a LLaMA-Factory one (model_name_or_path, dataset)")


def _read(path: str) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: a trainer config is a mapping of keys, got {type(config).__name__}")
    return config


def leftovers(left: dict, not_needed: dict[str, str]) -> list[str]:
    """Notes for the keys no converter step read: not needed here (with why), or not carried over; empty and false
    values need no word."""
    notes = []
    for key, value in left.items():
        if key in not_needed:
            if value not in (None, "", [], False):
                notes.append(f"{key}: {value!r}: not needed here ({not_needed[key]})")
        elif value not in (None, "", [], {}, False):
            notes.append(f"{key}: {value!r}: not carried over (no tunelab equivalent)")
    return notes


def training_arguments(path: str, left: dict, notes: list[str], lr: float) -> dict:
    """train.* from transformers' TrainingArguments keys (TRL's and LLaMA-Factory's configs use them), its
    defaults written out where the config leaves a key out (`lr`: the trainer's own default learning rate): epochs,
    batch, accumulation, schedule, warmup (ratio or steps), weight decay, clipping, seed, NEFTune; other optimizers
    noted; max_steps (which overrides the epochs) as train.max_steps; the validation and checkpoint
    cadence (`cadence`)."""
    epochs, max_steps = float(left.pop("num_train_epochs", 3.0)), left.pop("max_steps", -1) or -1
    if not epochs.is_integer() and max_steps <= 0:
        raise UserError(f"{path}: num_train_epochs: {epochs}: tunelab trains whole epochs, or a number of steps "
                        "(max_steps; train.max_steps)")
    train = {"epochs": max(int(epochs), 1), **({"max_steps": max_steps} if max_steps > 0 else {}),
             "batch_size": left.pop("per_device_train_batch_size", 8),
             "grad_accum": left.pop("gradient_accumulation_steps", 1), "lr": float(left.pop("learning_rate", lr)),
             "warmup_ratio": left.pop("warmup_ratio", 0.0), "weight_decay": left.pop("weight_decay", 0.0),
             "max_grad_norm": left.pop("max_grad_norm", 1.0), "seed": left.pop("seed", 42)}
    scheduler = left.pop("lr_scheduler_type", "linear")
    if scheduler in ("cosine", "linear", "constant"):
        train["scheduler"] = scheduler
    else:
        notes.append(f"lr_scheduler_type: {scheduler!r}: differs: tunelab has cosine, linear and constant "
                     "(cosine here)")
    if left.get("neftune_noise_alpha") is not None:
        train["neftune_alpha"] = left["neftune_noise_alpha"]
    left.pop("neftune_noise_alpha", None)
    warmup = left.pop("warmup_steps", 0) or 0  # transformers 5: a whole number of steps, or below 1 a ratio
    if warmup >= 1:
        train["warmup_steps"] = int(warmup)
    elif warmup > 0:
        train["warmup_ratio"] = warmup
    optimizer = left.pop("optim", None)
    if optimizer and optimizer not in ("adamw_torch", "adamw_torch_fused"):
        notes.append(f"optim: {optimizer!r}: differs: tunelab uses torch's AdamW (32-bit states)")
    cadence(left, train)
    return train


def cadence(left: dict, train: dict, eval_strategy: str = "no") -> None:
    """Trainer's validation and checkpoint cadence where tunelab's means the same: eval_steps (under eval_strategy
    steps; `eval_strategy`, the trainer's default) as train.val_every, save_steps (under save_strategy steps) as
    train.checkpoint_every, save_total_limit as train.keep_checkpoints. Whole numbers only: a share of the run
    (eval_steps: 0.1) and the other strategies stay with the notes (tunelab validates every epoch anyway)."""
    def whole(key: str) -> bool:
        return isinstance(left.get(key), int) and not isinstance(left[key], bool) and left[key] >= 1
    strategy = left.get("eval_strategy", left.get("evaluation_strategy", eval_strategy))
    if strategy == "steps" and whole("eval_steps"):
        train["val_every"] = left.pop("eval_steps")
    if left.get("save_strategy", "steps") == "steps" and whole("save_steps"):
        train["checkpoint_every"] = left.pop("save_steps")
    if whole("save_total_limit"):
        train["keep_checkpoints"] = left.pop("save_total_limit")


def name(path: str, output_dir: str | None) -> str:
    """The recipe's name: the config's output folder's name, else the config file's."""
    out = str(output_dir or "").rstrip("/")
    return (Path(out).name if out else Path(path).stem).replace("/", "-") or "converted"


def to_text(raw: dict, notes: list[str]) -> str:
    """The recipe as YAML (a text with line breaks double-quoted, each break a \\n), the notes as comments above
    it."""
    header = [f"# tunelab recipe {raw['description']}",
              "# keys not carried over exactly:" if notes else "# every key carried over"]
    header += [f"#   {n}" for n in notes]
    return "\n".join(header) + "\n" + yaml.dump(raw, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None))


def tokenizer_of(model: dict):
    """The converted recipe's model's tokenizer (a local folder or the hub's cache).

    Raises:
        UserError: not loadable, naming model.name.
    """
    from tunelab.config import ModelConfig
    from tunelab.models import load_tokenizer
    return load_tokenizer(ModelConfig(**{k: v for k, v in model.items() if k in ("name", "revision",
                                                                                 "trust_remote_code")}))


def local_model(model: dict) -> bool:
    """Whether the converted recipe's model is on this machine (a folder or an alias): its tokenizer is read without
    the hub."""
    from tunelab.handoff import ALIASES
    return Path(model["name"]).is_dir() or model["name"] in ALIASES


def word_start_note(model: dict, how: str, where: str) -> list[str]:
    """A note when the trainer tokenizes replies apart (`how`) for a local model whose tokenizer has a dummy prefix
    (`batching.word_start_prefix`: Llama 2's, Mistral-7B-v0.1's): each then starts with a word-start piece the text
    does not have (`where`: after what); tunelab tokenizes a reply as it continues its prompt. A hub model is not read
    here: the README says which tokenizers differ."""
    from tunelab.train.batching import word_start_prefix
    if not local_model(model) or not word_start_prefix(tokenizer_of(model)):
        return []
    return [f"datasets: differs: {how}, and this tokenizer starts a text with a word-start piece (▁The {where}, "
            "where the text reads The); tunelab tokenizes a reply as it continues its prompt, as the text reads and "
            "generation sees it"]


def new_tokens(model: dict, tokens: list[str]):
    """The trainer's added tokens as model.added_tokens: of `tokens` (in the order the trainer adds them), those the
    model's tokenizer does not hold yet, each once; and that tokenizer (its roles decide which special tokens
    change)."""
    tok = tokenizer_of(model)
    vocab, out = tok.get_vocab(), []
    for token in tokens:
        if token not in vocab and token not in out:
            out.append(token)
    return out, tok
