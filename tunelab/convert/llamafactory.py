"""A LLaMA-Factory config (`llamafactory-cli train x.yaml`, stage sft, LoRA) as a tunelab recipe: its model, the
datasets it names in dataset_dir/dataset_info.json (alpaca or sharegpt formatting, their columns and tags), the chat
template, LoRA and training keys. LLaMA-Factory's defaults that differ from tunelab's are written out (LoRA r 8,
alpha 2r, dropout 0; lr 5e-5, linear schedule, no warmup; cutoff 2048; gradient checkpointing on).

Run as: tunelab convert llama3_lora_sft.yaml -o recipe.yaml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.convert import leftovers, local_model, name, new_tokens, training_arguments, word_start_note
from tunelab.errors import UserError

NOT_NEEDED = {
    "do_train": "tunelab run trains", "output_dir": "a run directory is tunelab's --run-dir",
    "overwrite_output_dir": "a run directory is tunelab's --run-dir", "overwrite_cache": "nothing is cached",
    "preprocessing_num_workers": "tokenizing is not the slow part", "dataloader_num_workers": "one process reads",
    "logging_steps": "every step is logged (metrics/steps.jsonl)", "plot_loss": "the report draws every curve",
    "save_steps": "checkpoints: train.checkpoint_every; every epoch's adapter is kept",
    "save_strategy": "checkpoints: train.checkpoint_every", "save_only_model": "checkpoints hold what resuming needs",
    "save_total_limit": "train.keep_checkpoints", "report_to": "train.report_to",
    "ddp_timeout": "torchrun's defaults", "resume_from_checkpoint": "tunelab train --resume RUN_DIR",
    "per_device_eval_batch_size": "eval.batch_size", "eval_strategy": "validation after every epoch",
    "eval_steps": "train.val_every", "evaluation_strategy": "validation after every epoch",
    "deepspeed": "train.sharding: fsdp",
    "run_name": "the run directory's name", "push_to_hub": "tunelab export prints the Hub upload command",
}
# LLaMA-Factory's templates that write the same text as a template tunelab ships, system turn or not
# (benchmarks/llamafactory_parity.py): its name, then LLaMA-Factory's stop words (replace_eos: the first becomes the
# eos_token, the others special tokens) and what it writes after a reply's end-of-turn marker
NAMED_TEMPLATES = {"chatml": ("chatml", ["<|im_end|>", "<|im_start|>"], "\n"),
                   "qwen": ("qwen_25", ["<|im_end|>"], "\n"),
                   "qwen3": ("qwen3", ["<|im_end|>"], "\n"),
                   "qwen3_nothink": ("chatml", ["<|im_end|>"], "\n"),
                   "llama3": ("llama3", ["<|eot_id|>", "<|eom_id|>"], "")}


def convert(path: str, config: dict) -> tuple[dict, list[str]]:
    """The raw tunelab recipe equivalent to the LLaMA-Factory `config` read from `path`, and the notes.

    Raises:
        UserError: not an sft LoRA config, a dataset not in dataset_info.json, a formatting or column tunelab does
            not read the same way — naming the key.
    """
    left, notes = dict(config), []
    stage, method = left.pop("stage", "sft"), left.pop("finetuning_type", "lora")
    if stage != "sft" or method != "lora":
        raise UserError(f"{path}: stage: {stage}, finetuning_type: {method}: tunelab converts supervised LoRA "
                        "fine-tuning (stage: sft, finetuning_type: lora)")
    model = {"name": left.pop("model_name_or_path")}
    for key, to in (("model_revision", "revision"), ("trust_remote_code", "trust_remote_code")):
        if left.get(key) not in (None, "main"):
            model[to] = left[key]
        left.pop(key, None)
    _precision(left, model, notes)
    data = _data(path, left, notes)
    stops = _template(left, model, notes)
    notes += word_start_note(model, "LLaMA-Factory tokenizes each turn alone", "after the assistant header")
    lora = _lora(path, left)
    _tokens(left, model, lora, notes, stops)
    train = _train(path, left, data, notes)
    notes += leftovers(left, NOT_NEEDED)
    return {"name": name(path, config.get("output_dir")), "model": model, "data": data, "lora": lora,
            "train": train}, notes


def _precision(left: dict, model: dict, notes: list[str]) -> None:
    """model.dtype, load_in_4bit and attention from bf16 / fp16 / quantization_bit / flash_attn."""
    bits = left.pop("quantization_bit", None)
    if bits == 4:
        model["load_in_4bit"] = True
    elif bits:
        notes.append(f"quantization_bit: {bits}: differs: tunelab loads the base in bf16, or 4-bit NF4 "
                     "(model.load_in_4bit)")
    if left.pop("fp16", False):
        model["dtype"] = "float16"
    elif "bf16" in left and not left.pop("bf16"):
        model["dtype"] = "float32"
    left.pop("bf16", None)
    kernel = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager"}.get(left.pop("flash_attn", "auto"))
    if kernel:
        model["attn_implementation"] = kernel


def _data(path: str, left: dict, notes: list[str]) -> dict:
    """data.*: each dataset named in `dataset`, read from dataset_info.json — the first as data.source, the others
    as data.mix entries — written through the tokenizer's chat template (LLaMA-Factory's own when `template` is
    left out)."""
    names = [n.strip() for n in str(left.pop("dataset", "") or "").split(",") if n.strip()]
    if not names:
        raise UserError(f"{path}: dataset: missing (the dataset_info.json names to train on)")
    info_dir = _dataset_dir(path, left.pop("dataset_dir", "data"))
    try:
        info = json.loads((info_dir / "dataset_info.json").read_text())
    except ValueError as err:
        raise UserError(f"{info_dir / 'dataset_info.json'}: not valid JSON ({err})") from None
    entries = []
    for n in names:
        if n not in info:
            raise UserError(f"{path}: dataset: {n!r} is not in {info_dir / 'dataset_info.json'}")
        entries.append(_dataset(f"{info_dir / 'dataset_info.json'}: {n}", info[n], info_dir))
    data = {**entries[0], "chat_template": True}
    if len(entries) > 1:
        data["mix"] = entries[1:]
    if left.get("default_system"):
        data["system_prompt"] = left.pop("default_system")
    if left.get("max_samples"):  # LLaMA-Factory cuts each dataset to its first max_samples rows
        data["limit"] = left["max_samples"]
        for entry in data.get("mix", []):
            entry["limit"] = left["max_samples"]
    left.pop("max_samples", None)
    _interleave(path, left, [data, *data.get("mix", [])], notes)
    size = left.pop("val_size", 0) or 0
    if 0 < size < 1:
        data["val_fraction"] = size
        notes.append(f"val_size: {size}: differs: tunelab holds out its own {size:.0%} of the rows (data.seed); the "
                     "same share, not the same rows")
    else:
        notes.append(f"val_size: {size}: differs: tunelab holds out a share of the rows for validation "
                     "(data.val_fraction: 0.1 here); LLaMA-Factory trained on "
                     + ("all of them" if not size else f"all but {size}"))
    data["history_loss"] = not left.pop("mask_history", False)
    return data


def _template(left: dict, model: dict, notes: list[str]) -> list[str]:
    """model.chat_template from `template`: a name in NAMED_TEMPLATES as tunelab's template of the same text, its
    end-of-turn marker as the eos_token, as LLaMA-Factory replaces it; none, the tokenizer's own (what LLaMA-Factory
    parses from it then); another name, noted. Returns LLaMA-Factory's stop words for that template ([] for none)."""
    template = left.pop("template", None)
    shipped, stops, after = NAMED_TEMPLATES.get(template, (None, [], "\n"))
    if after:
        notes.append("chat template: differs: LLaMA-Factory also trains what the template writes after each reply's "
                     "end-of-turn marker (ChatML's newline after <|im_end|>); tunelab trains up to the marker "
                     "(benchmarks/llamafactory_parity.py: the only difference in its rows)")
    if shipped:
        model["chat_template"] = shipped
        if template == "qwen3":
            notes.append(_thought_note(left.pop("enable_thinking", True)))
    elif template is not None:
        notes.append(f"template: {template!r}: differs: tunelab writes turns with the tokenizer's own chat template "
                     "(what LLaMA-Factory parses from the tokenizer when `template` is left out); a named template "
                     "may write another system turn or markers: compare with tunelab check --show 3, or set "
                     f"model.chat_template (LLaMA-Factory's {', '.join(NAMED_TEMPLATES)} convert to tunelab's)")
    return stops


def _thought_note(thinking: bool) -> str:
    """How LLaMA-Factory's reasoning template qwen3 writes a reply without thinking, against tunelab's qwen3 (whose
    generation prompt ends by opening the think block)."""
    if thinking:
        return ("template: qwen3: differs: both write a reply without thinking after an empty think block "
                "(<think>\\n\\n</think>\\n\\n); LLaMA-Factory trains all of it, tunelab's qwen3 writes "
                "<think>\\n\\n at the end of its generation prompt and trains the rest; LLaMA-Factory also writes "
                "the block in a conversation's earlier replies, which Qwen3's template writes without it "
                "(benchmarks/llamafactory_parity.py)")
    return ("enable_thinking: false: differs: LLaMA-Factory writes the empty think block in the prompt and trains "
            "none of it; tunelab's qwen3 trains its </think>\\n\\n")


def _interleave(path: str, left: dict, sources: list[dict], notes: list[str]) -> None:
    """mix_strategy interleave_under / interleave_over (with interleave_probs) as source weights: LLaMA-Factory
    merges its datasets once with `datasets.interleave_datasets`, drawing dataset i with probability p_i (uniform
    when unset) until the first (under) or the last (over) of them is used up — T = min (max) of n_i / p_i draws —
    so dataset j gives about p_j × T rows, weight p_j × T / n_j. Counting rows needs each dataset's file."""
    strategy, probs = left.pop("mix_strategy", "concat"), left.pop("interleave_probs", None)
    if len(sources) == 1 or strategy == "concat":
        why = "one dataset" if len(sources) == 1 else "mix_strategy concat: each row once, as tunelab trains them"
        notes += [f"{key}: {value!r}: not needed here ({why})" for key, value in
                  (("mix_strategy", strategy), ("interleave_probs", probs)) if value not in (None, "concat")]
        return
    if strategy not in ("interleave_under", "interleave_over"):
        raise UserError(f"{path}: mix_strategy: {strategy!r}: LLaMA-Factory knows concat, interleave_under and "
                        "interleave_over")
    p = [float(x) for x in (probs.split(",") if isinstance(probs, str) else probs)] if probs is not None else \
        [1 / len(sources)] * len(sources)
    if len(p) != len(sources) or min(p) <= 0 or abs(sum(p) - 1) > 1e-6:
        raise UserError(f"{path}: interleave_probs: {probs!r}: one probability above 0 per dataset "
                        f"({len(sources)}), summing to 1")
    counts = [_rows(s) for s in sources]
    if None in counts or 0 in counts:
        notes.append(f"mix_strategy: {strategy!r}: not carried over (a hub or empty dataset's rows are not counted "
                     "here); set data.weight and each data.mix entry's weight to the share it draws")
        return
    draws = (min if strategy == "interleave_under" else max)(n / q for n, q in zip(counts, p))
    for source, n, q in zip(sources, counts, p):
        source["weight"] = round(q * draws / n, 4)
    weights = ", ".join(f"{s['weight']:g}" for s in sources)
    notes.append(f"mix_strategy: {strategy!r}, interleave_probs: {probs!r}: differs: carried over as the weights "
                 f"{weights} (data.weight, then data.mix's): the share of the {draws:.0f} draws each dataset gives "
                 f"over its rows ({' / '.join(str(n) for n in counts)}); LLaMA-Factory "
                 "draws its merged set once, tunelab draws a weight's share afresh each epoch (the same share, not "
                 "the same rows)")


def _rows(source: dict) -> int | None:
    """The rows LLaMA-Factory takes from a dataset file or folder (its first `limit`), or None for a hub dataset."""
    from tunelab.data.sources import read_source
    if not Path(source["source"]).exists():
        return None
    raw, bad = read_source(source["source"], None, 0, 0, 0)
    n = sum(len(rows) for rows in raw.values()) + len(bad)
    return min(n, source.get("limit") or n)


def _dataset_dir(path: str, folder: str) -> Path:
    """dataset_dir as LLaMA-Factory reads it (from the working folder), else beside the config."""
    for base in (Path.cwd(), Path(path).resolve().parent):
        if (base / folder / "dataset_info.json").is_file():
            return base / folder
    raise UserError(f"{path}: dataset_dir: {folder}/dataset_info.json not found here or beside the config (set "
                    "dataset_dir to the folder that holds it)")


def _dataset(where: str, attr: dict, info_dir: Path) -> dict:
    """One dataset_info.json entry as a source with its format keys."""
    if "file_name" in attr:
        source = str(info_dir / attr["file_name"])
    elif "hf_hub_url" in attr:
        source = attr["hf_hub_url"]
    else:
        raise UserError(f"{where}: only file_name and hf_hub_url sources are converted")
    out: dict[str, Any] = {"source": source, **({"config": attr["subset"]} if attr.get("subset") else {})}
    if attr.get("split", "train") != "train" or attr.get("ranking") or attr.get("num_samples"):
        raise UserError(f"{where}: split, ranking and num_samples are not converted")
    columns, tags = attr.get("columns", {}), attr.get("tags", {})
    if columns.get("system") or columns.get("tools", "tools") != "tools" or columns.get("history"):
        raise UserError(f"{where}: columns system / history, or tools other than 'tools' (the field tunelab hands "
                        "the chat template): rows' own system texts, Alpaca histories and such tools are not converted")
    if attr.get("formatting", "alpaca") == "alpaca":
        prompt, query = columns.get("prompt", "instruction"), columns.get("query", "input")
        return {**out, "template": "{" + prompt + "}\n{" + query + "}", "optional_fields": [query],
                "target": "{" + columns.get("response", "output") + "}"}
    if attr["formatting"] != "sharegpt":
        raise UserError(f"{where}: formatting: {attr['formatting']!r}: tunelab converts alpaca and sharegpt")
    roles = (tags.get("role_tag", "from"), tags.get("content_tag", "value"), tags.get("user_tag", "human"),
             tags.get("assistant_tag", "gpt"), tags.get("system_tag", "system"))
    calls = (tags.get("function_tag", "function_call"), tags.get("observation_tag", "observation"))
    if roles not in (("from", "value", "human", "gpt", "system"), ("role", "content", "user", "assistant", "system")) \
            or calls != ("function_call", "observation"):
        raise UserError(f"{where}: tags {roles + calls}: tunelab reads turns as {{role, content}} (user / assistant / "
                        "system / tool) or ShareGPT's {from, value} (human / gpt / system / function_call / "
                        "observation)")
    return {**out, "messages": columns.get("messages", "conversations")}


def _tokens(left: dict, model: dict, lora: dict, notes: list[str], stops: list[str]) -> None:
    """model.added_tokens from add_tokens, add_special_tokens, then the template's stop words where a local model's
    tokenizer lacks them (LLaMA-Factory's order: the same ids); the special ones also
    model.special_tokens.additional_special_tokens, the first stop word its eos_token; a vocabulary that grows is
    rounded up to 64 rows and trains its embeddings whole (LLaMA-Factory's resize_vocab: embed_tokens and lm_head,
    unless additional_target names modules). A hub model's tokenizer is not read for the stop words: loading it
    says which are missing."""
    plain, special = ([t.strip() for t in str(left.pop(key, None) or "").split(",") if t.strip()]
                      for key in ("add_tokens", "add_special_tokens"))
    resize = left.pop("resize_vocab", False)
    local = local_model(model)
    wanted = plain + special + (stops if local else [])
    added = new_tokens(model, wanted)[0] if wanted else []
    if added:
        model["added_tokens"] = added
        notes.append(f"{'add_tokens' if plain or special else 'template'}: {added}: differs: each new embedding row "
                     "starts at the mean of the trained rows; LLaMA-Factory's at that mean plus noise")
    if stops and not local:
        notes.append(f"template: {', '.join(stops)}: LLaMA-Factory adds these stop words to the tokenizer where it "
                     f"lacks them; if {model['name']}'s does, loading it says so: add them to model.added_tokens")
    special += [t for t in stops[1:] if t not in special]
    roles = {"eos_token": stops[0]} if stops else {}
    if special or roles:
        model["special_tokens"] = {**roles, **({"additional_special_tokens": special} if special else {})}
    if added or resize:  # LLaMA-Factory resizes whenever a token is new
        model["vocab_multiple_of"] = 64
        lora.setdefault("modules_to_save", ["embed_tokens", "lm_head"])  # its input and output embeddings' names


def _lora(path: str, left: dict) -> dict:
    """lora.*: LLaMA-Factory's defaults written out (r 8, alpha 2r, dropout 0, all linear layers), the modules
    trained whole (additional_target), and the adapter to keep training (adapter_name_or_path: one, without
    create_new_adapter).

    Raises:
        UserError: several adapters, or a new one over them (LLaMA-Factory merges them into the base weights first).
    """
    adapters = [a.strip() for a in str(left.pop("adapter_name_or_path", None) or "").split(",") if a.strip()]
    if len(adapters) > 1 or (adapters and left.get("create_new_adapter")):
        raise UserError(f"{path}: adapter_name_or_path: {', '.join(adapters)}"
                        + (" with create_new_adapter" if left.get("create_new_adapter") else "")
                        + ": LLaMA-Factory merges these into the base weights and trains on; tunelab continues one "
                        "adapter as it is (lora.continue_from): merge them first (tunelab export, llamafactory-cli "
                        "export) and train on the merged model")
    left.pop("create_new_adapter", None)
    whole = [m.strip() for m in str(left.pop("additional_target", None) or "").split(",") if m.strip()]
    r = left.pop("lora_rank", 8)
    target = str(left.pop("lora_target", "all"))
    lora = {"r": r, "alpha": left.pop("lora_alpha", None) or 2 * r, "dropout": left.pop("lora_dropout", 0.0),
            "target_modules": "all-linear" if target == "all" else [t.strip() for t in target.split(",")],
            **({"modules_to_save": whole} if whole else {})}  # additional_target: trained whole, PEFT's way
    for key in ("use_dora", "use_rslora"):
        if left.get(key) is not None:
            lora[key] = left[key]
        left.pop(key, None)
    if adapters:
        lora["continue_from"] = adapters[0]
    return lora


def _train(path: str, left: dict, data: dict, notes: list[str]) -> dict:
    """train.*: transformers' TrainingArguments defaults where the config leaves a key out (lr 5e-5, a linear
    schedule without warmup, batch 8, 3 epochs, seed 42), LLaMA-Factory's (cutoff 2048, checkpointing on)."""
    train = {**training_arguments(path, left, notes, lr=5e-5), "max_length": left.pop("cutoff_len", 2048),
             "completion_only": not left.pop("train_on_prompt", False),
             "gradient_checkpointing": not left.pop("disable_gradient_checkpointing", False)}
    data["seed"] = train["seed"]
    if left.get("loraplus_lr_ratio") is not None:
        train["loraplus_lr_ratio"] = left["loraplus_lr_ratio"]
    left.pop("loraplus_lr_ratio", None)
    if left.pop("packing", None) or left.pop("neat_packing", None):
        train["packing"] = True
    notes.append(f"cutoff_len: {train['max_length']}: differs: a row longer than it is cut by both, LLaMA-Factory "
                 "from its prompt and its reply in proportion, tunelab from its end (tunelab check counts them)")
    return train
