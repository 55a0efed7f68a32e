"""An Axolotl config as a tunelab recipe: its model, datasets and their prompt formats (alpaca, the user-defined
format, chat_template, completion), LoRA and training keys. See tunelab/convert/__init__.py for the contract.

Run as: tunelab convert axolotl.yml -o recipe.yaml
"""

from __future__ import annotations

import string
from typing import Any

from tunelab.config import SPECIAL_ROLES, ModelConfig, TrainConfig, template_names
from tunelab.convert import cadence, leftovers, local_model, name, new_tokens, tokenizer_of, word_start_note
from tunelab.data.chat import THINKING_KEYS
from tunelab.data.formats import ALPACA
from tunelab.errors import UserError

# keys that do not change what is trained, and why tunelab needs none
NOT_NEEDED = {
    "output_dir": "a run directory is tunelab's --run-dir",
    "dataset_prepared_path": "tunelab tokenizes as it reads",
    "hub_model_id": "tunelab export prints the Hub upload command",
    "hub_strategy": "tunelab export prints the Hub upload command",
    "logging_steps": "every step is logged (metrics/steps.jsonl)",
    "saves_per_epoch": "checkpoints: train.checkpoint_every; every epoch's adapter is kept",
    "save_steps": "checkpoints: train.checkpoint_every",
    "save_strategy": "checkpoints: train.checkpoint_every; every epoch's adapter is kept",
    "save_total_limit": "train.keep_checkpoints",
    "resume_from_checkpoint": "tunelab train --resume RUN_DIR",
    "auto_resume_from_checkpoints": "tunelab run resumes a run directory",
    "evals_per_epoch": "validation after every epoch (train.val_every for more)",
    "eval_steps": "validation after every epoch (train.val_every for more)",
    "eval_sample_packing": "validation loss does not depend on packing",
    "model_type": "read from the model's config",
    "tokenizer_type": "the model's own tokenizer is loaded",
    "tf32": "a GPU matmul setting",
    "strict": "an Axolotl config check",
    "debug": "an Axolotl logging setting",
    "pad_to_sequence_len": "padding does not change the loss",
    "group_by_length": "tunelab batches by length (train.group_by_length)",
    "xformers_attention": "attention kernels: model.attn_implementation",
    "loss_watchdog_threshold": "a NaN or infinite loss stops the run naming the step",
    "loss_watchdog_patience": "a NaN or infinite loss stops the run naming the step",
    "deepspeed": "several GPUs: torchrun / accelerate with train.sharding",
    "fsdp": "several GPUs: torchrun / accelerate with train.sharding: fsdp",
    "fsdp_config": "several GPUs: torchrun / accelerate with train.sharding: fsdp",
    "local_rank": "set by torchrun",
    "wandb_entity": "W&B's environment variables",
    "wandb_watch": "W&B's environment variables",
    "wandb_name": "the run directory's name",
    "wandb_log_model": "adapters stay in the run directory",
    "lora_fan_in_fan_out": "read from the model (false for Llama/Mistral/Qwen2)",
}


def convert(path: str, config: dict) -> tuple[dict, list[str]]:
    """The raw tunelab recipe equivalent to the Axolotl `config` read from `path`, and the notes (`key: value:
    why`, one per key not carried over exactly).

    Raises:
        UserError: not a LoRA / QLoRA config, a dataset type or chat template tunelab does not write the same way —
            naming the key.
    """
    left = dict(config)
    take = left.pop
    notes: list[str] = []
    adapter = take("adapter", None)
    if adapter not in ("lora", "qlora"):
        raise UserError(f"{path}: adapter: {adapter!r}: tunelab trains LoRA adapters (adapter: lora or qlora)")
    if "base_model" not in config:
        raise UserError(f"{path}: base_model: missing (the model to fine-tune)")
    model = {"name": take("base_model")}
    _model_keys(config, left, model, notes)
    _token_keys(path, left, model, notes)
    data = _data(path, config, take("datasets", None), notes)
    _chat_template(path, config, model, notes)
    if any(e.get("template") and not e.get("messages") for e in [data, *data.get("mix", [])]):  # instructions
        notes += word_start_note(model, "Axolotl tokenizes each response alone", "after \"### Response:\\n\"")
    for key in ("chat_template", "chat_template_jinja", "eot_tokens", "default_system_message", "val_set_size"):
        left.pop(key, None)  # read with the datasets
    train: dict[str, Any] = {}
    lora: dict[str, Any] = {}
    _train_keys(path, config, left, train, data, notes)
    _lora_keys(config, left, lora, train)
    notes += leftovers(left, NOT_NEEDED)
    return {"name": name(path, config.get("output_dir")), "model": model, "data": data, "lora": lora,
            "train": train}, notes


def _model_keys(config: dict, left: dict, model: dict, notes: list[str]) -> None:
    """model.*: revision, remote code, 4-bit base weights, dtype, attention kernels."""
    for key, to in (("revision_of_model", "revision"), ("trust_remote_code", "trust_remote_code"),
                    ("load_in_4bit", "load_in_4bit")):
        if left.get(key) is not None:
            model[to] = left.pop(key)
        left.pop(key, None)
    if left.pop("load_in_8bit", None):
        notes.append("load_in_8bit: True: differs: tunelab keeps the base weights in bf16 on a GPU "
                     "(model.load_in_4bit for 4-bit NF4); no 8-bit loading")
    bf16, fp16 = left.pop("bf16", None), left.pop("fp16", None)
    if fp16:
        model["dtype"] = "float16"
    elif bf16 == "full":
        model["dtype"] = "bfloat16"
    elif bf16 is False:
        model["dtype"] = "float32"  # true and auto: tunelab's auto, bf16 on a GPU (fp32 on CPU, where bf16 is slow)
    flash, sdp, attention = (left.pop(k, None) for k in ("flash_attention", "sdp_attention", "attention"))
    kernel = {"flash": "flash_attention_2", "sdpa": "sdpa", "sdp": "sdpa", "eager": "eager"}.get(attention) \
        or ("flash_attention_2" if flash else "sdpa" if sdp else None)
    if kernel:
        model["attn_implementation"] = kernel


def _token_keys(path: str, left: dict, model: dict, notes: list[str]) -> None:
    """model.added_tokens and special_tokens from special_tokens and tokens, in the order Axolotl adds them (the
    special roles, `tokens`, then additional_special_tokens), so the new tokens get the same ids; model.vocab_multiple_of
    from resize_token_embeddings_to_32x.

    Raises:
        UserError: a role tunelab does not set, or added_tokens_overrides (renaming reserved tokens).
    """
    special, tokens = dict(left.pop("special_tokens", None) or {}), list(left.pop("tokens", None) or [])
    if left.pop("added_tokens_overrides", None):
        raise UserError(f"{path}: added_tokens_overrides: tunelab adds new tokens (model.added_tokens); it does not "
                        "rename a tokenizer's reserved ones")
    if left.pop("resize_token_embeddings_to_32x", None):
        model["vocab_multiple_of"] = 32
    mean = left.pop("mean_resizing_embeddings", None)
    extra = list(special.pop("additional_special_tokens", None) or [])
    odd = sorted(set(special) - set(SPECIAL_ROLES))
    if odd:
        raise UserError(f"{path}: special_tokens.{odd[0]}: tunelab sets {', '.join(SPECIAL_ROLES)} and "
                        "additional_special_tokens")
    if not (special or tokens or extra):
        return
    added, tok = new_tokens(model, [v for v in special.values() if v is not None] + tokens + extra)
    roles = {k: v for k, v in special.items() if v is not None and getattr(tok, k) != v}  # the ones that change
    if added:
        model["added_tokens"] = added
        notes.append(f"tokens: {added}: differs: each new embedding row starts at the mean of the trained rows; "
                     + ("Axolotl's draws it from the model's initializer (mean_resizing_embeddings: false)"
                        if mean is False else "Axolotl's is drawn around that mean (transformers' mean_resizing)"))
    if roles or extra:
        model["special_tokens"] = {**roles, **({"additional_special_tokens": extra} if extra else {})}


def _data(path: str, config: dict, datasets: Any, notes: list[str]) -> dict:
    """data.*: the first dataset as data.source, the others as data.mix entries, each with its prompt format."""
    if not isinstance(datasets, list) or not datasets:
        raise UserError(f"{path}: datasets: a list of at least one dataset is needed")
    entries = [_dataset(path, config, i, d, notes) for i, d in enumerate(datasets)]
    notes += [f"datasets.{i}.{key}: {value!r}: not carried over (no tunelab equivalent)"
              for i, d in enumerate(datasets) for key, value in d.items()
              if key not in DATASET_KEYS and value not in (None, "", [], {}, False)]
    chat = {bool(e.get("messages")) for e in entries}
    if len(chat) > 1:
        raise UserError(f"{path}: datasets: mixes conversation (chat_template) and instruction datasets; tunelab "
                        "writes every source of a run with or without the chat template, not both")
    data = dict(entries[0])
    if len(entries) > 1:
        data["mix"] = entries[1:]
    if chat == {True}:
        data["chat_template"] = True
        if config.get("default_system_message"):
            data["system_prompt"] = config["default_system_message"]
    size = config.get("val_set_size")
    if size is not None and 0 < size < 1:
        data["val_fraction"] = size
        notes.append(f"val_set_size: {size}: differs: tunelab holds out its own {size:.0%} of the rows (data.seed); "
                     "the same share, not the same rows as Axolotl's split")
    elif size:
        notes.append(f"val_set_size: {size}: differs: tunelab holds out a share of the rows (data.val_fraction, "
                     "0.1 here), not a count")
    return data


# the keys of a `datasets` entry that _dataset reads (the others are noted as not carried over)
DATASET_KEYS = {"path", "type", "name", "data_files", "ds_type", "split", "field", "field_messages",
                "message_property_mappings", "message_field_role", "message_field_content", "roles_to_train",
                "chat_template", "chat_template_jinja", "field_thinking", "template_thinking_key", "field_tools"}


def _dataset(path: str, config: dict, i: int, d: Any, notes: list[str]) -> dict:
    """One `datasets` entry as tunelab's source + format keys (what the conversion should say, into `notes`)."""
    where = f"{path}: datasets.{i}"
    if not isinstance(d, dict) or "path" not in d:
        raise UserError(f"{where}: each dataset needs a path")
    if d.get("split", "train") != "train":
        raise UserError(f"{where}.split: {d['split']!r}: tunelab trains on a source's train split")
    files = d.get("data_files")
    if isinstance(files, list) and len(files) > 1:
        raise UserError(f"{where}.data_files: {len(files)} files; tunelab reads one file, or a folder of train / "
                        "test files, per source (give each its own datasets entry: they become data.mix sources)")
    source = files if isinstance(files, str) else files[0] if isinstance(files, list) and len(files) == 1 \
        else d["path"]
    out: dict[str, Any] = {"source": source, **({"config": d["name"]} if d.get("name") else {})}
    kind = d.get("type")
    if kind == "alpaca":
        return {**out, **ALPACA}
    if isinstance(kind, dict):
        return {**out, **_user_defined(where, kind, source, notes)}
    if kind == "chat_template":
        return {**out, **_conversations(where, config, d)}
    if kind == "completion":  # raw text, every token trained
        notes.append(f"{where.rsplit(': ', 1)[1]}.type: completion: differs: Axolotl cuts a text longer than "
                     "sequence_len into several rows; tunelab truncates it (tunelab check counts them)")
        return {**out, "template": "", "target": "{" + d.get("field", "text") + "}"}
    raise UserError(f"{where}.type: {kind!r}: tunelab converts alpaca, chat_template, completion and the "
                    "user-defined format ({field_instruction, field_input, field_output, format, "
                    "no_input_format}); write data.template and data.target for this one by hand (tunelab check "
                    "--show 3 prints rows as the model sees them)")


# Axolotl's user-defined format and its defaults (axolotl.prompt_strategies.user_defined.UserDefinedDatasetConfig)
USER_DEFINED = {"system_prompt": "", "field_system": "system", "field_instruction": "instruction",
                "field_input": "input", "field_output": "output", "format": "{instruction} {input} ",
                "no_input_format": "{instruction} ", "system_format": "{system}"}


def _user_defined(where: str, kind: dict, source: str, notes: list[str]) -> dict:
    """Axolotl's user-defined prompt format (`type: {field_instruction: …, format: …}`, its defaults filled in) as
    template / target: its {instruction} and {input} become the fields they name, no_input_format the prompt of rows
    without input, a system_prompt a literal prefix (through system_format). A local source's rows are read to see
    which fields they have (a row's own system field, an input its template would not show)."""
    unknown = sorted(set(kind) - set(USER_DEFINED))
    if unknown:
        raise UserError(f"{where}.type.{unknown[0]}: not a key of Axolotl's user-defined format "
                        f"({', '.join(USER_DEFINED)})")
    given = {k: v for k, v in kind.items() if v is not None}
    kind = {**USER_DEFINED, **given}
    present = _fields(source)
    if kind["field_system"] in present:
        raise UserError(f"{where}.type.field_system: the rows have a {kind['field_system']!r} field, which Axolotl "
                        "writes before each prompt; rows' own system texts are not converted (write data.template "
                        "by hand)")
    fields = {"instruction": kind["field_instruction"], "input": kind["field_input"]}
    system = _literal(kind["system_format"].format(system=kind["system_prompt"])) if kind["system_prompt"] else ""
    target = "{" + kind["field_output"] + "}"
    no_input = system + _renamed(where, kind["no_input_format"], fields)
    if "{input}" in kind["format"]:
        return {"template": system + _renamed(where, kind["format"], fields),
                "template_if_empty": {kind["field_input"]: no_input}, "target": target}
    if kind["field_input"] in present:
        raise UserError(f"{where}.type.format: has no {{input}}, yet the rows have a {kind['field_input']!r} field: "
                        "Axolotl writes rows with an input by format and the others by no_input_format; write "
                        "data.template by hand")
    if "format" in given and "no_input_format" not in given:
        notes.append(f"{where.rsplit(': ', 1)[1]}.type.format: {given['format']!r}: not used: Axolotl writes rows "
                     f"without an input by no_input_format ({kind['no_input_format']!r}, its default), as this "
                     "recipe does; set no_input_format in Axolotl to have format used")
    return {"template": no_input, "target": target}  # Axolotl writes rows without an input by no_input_format


def _fields(source: str) -> set[str]:
    """The fields of a local source's train rows (a Hub dataset is not downloaded to look: none)."""
    from tunelab.data.sources import read_source
    from tunelab.handoff import is_local
    if not is_local(source):
        return set()
    rows, _ = read_source(source, None, 0, 0, 0)
    return {k for r in rows.get("train", []) for k in r.fields}


def _renamed(where: str, fmt: str, fields: dict[str, str | None]) -> str:
    """An Axolotl format string with {instruction} / {input} replaced by the dataset fields they name (literal
    braces kept escaped)."""
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(fmt):
        out.append(_literal(literal))
        if name is None:
            continue
        if not fields.get(name) or spec or conversion:
            raise UserError(f"{where}.type.format: {{{name}}}: Axolotl fills {{instruction}} and {{input}} only"
                            + (" (this dataset has no field_input)" if name == "input" else ""))
        out.append("{" + fields[name] + "}")
    return "".join(out)


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _conversations(where: str, config: dict, d: dict) -> dict:
    """`type: chat_template`: data.messages, written with the chat template (`_chat_template`)."""
    roles = d.get("roles_to_train")
    if roles not in (None, ["assistant"]):
        raise UserError(f"{where}.roles_to_train: {roles!r}: tunelab trains the assistant turns only")
    mapping = dict(d.get("message_property_mappings") or {
        k: v for k, v in (("role", d.get("message_field_role")), ("content", d.get("message_field_content"))) if v})
    if d.get("field_tools", "tools") != "tools":  # Axolotl's default, and TRL's column
        raise UserError(f"{where}.field_tools: {d['field_tools']!r}: tunelab hands a row's 'tools' field to the chat "
                        "template; rename the column to tools")
    thinking = mapping.pop(d.get("template_thinking_key") or "reasoning_content", None) or \
        d.get("field_thinking") or "reasoning_content"  # the turns' field Axolotl hands the template as thinking
    if thinking not in THINKING_KEYS:
        raise UserError(f"{where}: a turn's thinking in {thinking!r}: tunelab reads it from "
                        f"{', '.join(THINKING_KEYS)} (rename the field in the data)")
    if mapping not in ({}, {"role": "role", "content": "content"}, {"role": "from", "content": "value"}):
        raise UserError(f"{where}.message_property_mappings: {mapping!r}: tunelab reads turns as {{role, content}} "
                        "or ShareGPT's {from, value}")
    return {"messages": d.get("field_messages", "messages")}


def _chat_template(path: str, config: dict, model: dict, notes: list[str]) -> None:
    """model.chat_template from chat_template (the config's, or its chat_template datasets' own, as Axolotl reads
    them): tokenizer_default leaves the tokenizer's; jinja takes chat_template_jinja's text; a named template, the
    text tunelab ships under that name (Axolotl's); tokenizer_default_fallback_<name>, that one where the tokenizer
    has none. Notes what Axolotl would leave untrained around a reply (`_reply_notes`).

    Raises:
        UserError: datasets naming different templates, jinja without its text, a template tunelab does not ship.
    """
    wanted = [(f"datasets.{i}", d.get("chat_template"), d.get("chat_template_jinja"))
              for i, d in enumerate(config.get("datasets") or [])
              if isinstance(d, dict) and d.get("type") == "chat_template" and d.get("chat_template")]
    if config.get("chat_template") or not wanted:
        wanted.insert(0, ("chat_template", config.get("chat_template") or "tokenizer_default", None))
    choices = []
    for where, choice, text in wanted:
        if choice == "jinja":
            text = text or config.get("chat_template_jinja")
            if not text:
                raise UserError(f"{path}: {where}: jinja: chat_template_jinja (the template) is not set")
        elif choice.startswith(FALLBACK):
            text = None if _has_template(path, where, choice, model) else _named(path, where, choice[len(FALLBACK):])
        elif choice != "tokenizer_default":
            text = _named(path, where, choice)
        if (choice, text) not in choices:
            choices.append((choice, text))
    if len(choices) > 1:
        raise UserError(f"{path}: {wanted[-1][0]}: {wanted[-1][1]}: differs from {wanted[0][0]}'s "
                        f"{wanted[0][1]}; tunelab writes every source of a run with one chat template")
    template = choices[0][1]
    if template:
        model["chat_template"] = template  # the text, a file holding it, or the name of a shipped one
        notes += _reply_notes(wanted[0][0], config, model, template)


FALLBACK = "tokenizer_default_fallback_"  # Axolotl: the tokenizer's template, else the named one


def _named(path: str, where: str, name: str) -> str:
    if name not in template_names():
        raise UserError(f"{path}: {where}: {name!r}: tunelab converts Axolotl's chat templates "
                        f"{', '.join(template_names())}, tokenizer_default and jinja (chat_template_jinja)")
    return name


def _has_template(path: str, where: str, choice: str, model: dict) -> bool:
    try:
        return bool(tokenizer_of(model).chat_template)
    except UserError as err:
        raise UserError(f"{path}: {where}: {choice}: reading the tokenizer, to see whether it has a chat template: "
                        f"{err}") from None


def _reply_notes(where: str, config: dict, model: dict, template: str) -> list[str]:
    """A note when a reply does not end with the eos_token in the template (special_tokens' eos_token or, for a
    local model, its tokenizer's): tunelab then trains the template's end-of-turn marker and the eos_token after the
    last reply; Axolotl trains the marker only when eot_tokens names it, and no eos_token. And one when the template
    writes text between the generation prompt and the last reply (Qwen3's `</think>\n\n`): tunelab trains it, as
    generation writes it; Axolotl does not."""
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template
    try:
        text = ModelConfig(name="x", chat_template=template).chat_template
    except ValueError:
        return []  # a broken template: validating the converted recipe says why
    eos = (config.get("special_tokens") or {}).get("eos_token")
    if eos is None and local_model(model):
        eos = tokenizer_of(model).eos_token
    turns = [{"role": "user", "content": "QUESTION"}, {"role": "assistant", "content": "REPLY"}]
    try:
        (head,), _ = render_jinja_template([turns[:1]], chat_template=text, add_generation_prompt=True,
                                           bos_token="", eos_token=eos or "</s>")
        (whole,), _ = render_jinja_template([turns], chat_template=text, bos_token="", eos_token=eos or "</s>")
    except jinja2.TemplateError:
        return []  # a template that refuses one user turn and one reply: nothing to compare
    lead, _, marker = whole[len(head):].partition("REPLY") if whole.startswith(head) else ("", "", "")
    marker = marker.strip()
    choice = f"{where}: {config.get('chat_template') or 'chat_template'}: differs"
    notes = [f"{choice}: the template writes {lead!r} between the generation prompt and the last reply; tunelab "
             "trains it, as generation writes it, Axolotl does not"] if lead.strip() else []
    if (eos and marker.endswith(eos)) or (eos is None and "eos_token" in text):  # or the template writes it
        return notes
    if not marker:
        return notes + [f"{choice}: the template writes nothing after a reply; tunelab trains the eos_token after the "
                        "last one (where generation stops), Axolotl does not"]
    named = [t for t in config.get("eot_tokens") or [] if t in marker]
    unless = "" if eos else f" (unless {marker} is {model['name']}'s eos_token)"
    return notes + [f"{choice}{unless}: tunelab trains the template's end-of-turn marker ({marker}) and, after the "
                    f"last reply, the eos_token; Axolotl trains "
                    f"{f'the marker up to {named[0]} (eot_tokens)' if named else 'neither'}. special_tokens: "
                    f"{{eos_token: {marker}}} makes the two one"]


def _train_keys(path: str, config: dict, left: dict, train: dict, data: dict, notes: list[str]) -> None:
    """train.*: batch, steps, schedule, lengths, loss and the rest; seed also as data.seed."""
    simple = {"num_epochs": "epochs", "micro_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
              "learning_rate": "lr", "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay",
              "max_grad_norm": "max_grad_norm", "sequence_len": "max_length", "neftune_noise_alpha": "neftune_alpha",
              "torch_compile": "compile", "early_stopping_patience": "early_stopping_patience",
              "loraplus_lr_ratio": "loraplus_lr_ratio", "max_steps": "max_steps", "warmup_steps": "warmup_steps"}
    for key, to in simple.items():
        if left.get(key) is not None:
            train[to] = left[key]
        left.pop(key, None)
    excess = left.pop("excess_length_strategy", None) or "drop"
    if "max_length" in train and excess != "truncate":
        notes.append(f"sequence_len: {train['max_length']}: differs: Axolotl's excess_length_strategy {excess} "
                     f"{'drops' if excess == 'drop' else 'refuses'} longer rows; tunelab truncates them and counts "
                     "them (tunelab check says how many)")
    if isinstance(train.get("epochs"), float):
        if not train["epochs"].is_integer() and not train.get("max_steps"):
            raise UserError(f"{path}: num_epochs: {train['epochs']}: tunelab trains whole epochs, or a number of "
                            "steps (max_steps; train.max_steps)")
        train["epochs"] = max(int(train["epochs"]), 1)
    if isinstance(train.get("lr"), str):
        train["lr"] = float(train["lr"])
    rate, scale = left.pop("embedding_lr", None), left.pop("embedding_lr_scale", None)
    if scale or rate:  # the rate of the modules trained whole; Axolotl reads the scale first
        lr = train.get("lr", TrainConfig.model_fields["lr"].default)
        train["embedding_lr"] = float(scale) * lr if scale else float(rate)
    total = left.pop("batch_size", None)
    if total and "grad_accum" not in train:
        train["grad_accum"] = max(total // train.get("batch_size", 1), 1)
    if left.get("seed") is not None:
        train["seed"] = data["seed"] = left.pop("seed")
    if left.get("train_on_inputs") is not None:
        train["completion_only"] = not left.pop("train_on_inputs")
    for key, to in (("gradient_checkpointing", "gradient_checkpointing"), ("sample_packing", "packing")):
        if left.get(key) is not None:
            train[to] = bool(left.pop(key))
    scheduler = left.pop("lr_scheduler", None)
    if scheduler in ("cosine", "linear", "constant"):
        train["scheduler"] = scheduler
    elif scheduler:
        notes.append(f"lr_scheduler: {scheduler!r}: differs: tunelab has cosine, linear and constant (cosine here)")
    if left.get("wandb_project"):
        train["report_to"] = ["wandb"]
        notes.append(f"wandb_project: {left.pop('wandb_project')!r}: carried as train.report_to: [wandb]; W&B reads "
                     "the project from WANDB_PROJECT in the environment")
    optimizer = left.pop("optimizer", None)
    if optimizer and optimizer not in ("adamw_torch", "adamw_torch_fused", "adamw_hf"):
        notes.append(f"optimizer: {optimizer!r}: differs: tunelab uses torch's AdamW (32-bit states)")
    cadence(left, train, eval_strategy="steps")  # Axolotl validates every eval_steps when it is set
    if "early_stopping_patience" in train and "val_every" in train:
        train["early_stopping_on"] = "validation"  # Axolotl's patience counts its validation passes too
    elif "early_stopping_patience" in train:
        notes.append(f"early_stopping_patience: {train['early_stopping_patience']}: differs: tunelab counts epochs "
                     "without a lower validation loss (train.early_stopping_on: validation with train.val_every "
                     "counts passes, as Axolotl does)")


def _lora_keys(config: dict, left: dict, lora: dict, train: dict) -> None:
    """lora.*: rank, alpha, dropout, targets, DoRA, rsLoRA, the adapter to continue (lora_model_dir), the modules
    trained whole (lora_modules_to_save)."""
    for key, to in (("lora_r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                    ("peft_use_dora", "use_dora"), ("peft_use_rslora", "use_rslora"),
                    ("lora_model_dir", "continue_from"), ("lora_modules_to_save", "modules_to_save")):
        if left.get(key) is not None:
            lora[to] = left[key]
        left.pop(key, None)
    linear, modules = left.pop("lora_target_linear", None), left.pop("lora_target_modules", None)
    if linear:
        lora["target_modules"] = "all-linear"
    elif modules:
        lora["target_modules"] = modules
