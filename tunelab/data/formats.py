"""The row formats tunelab reads from a dataset's fields, as TRL's SFTTrainer and Axolotl's `type: alpaca` do:
a recipe that leaves data.template and data.target unset gets its data.* format keys from the first train row.

Run as: tunelab run my-recipe.yaml   (data: {source: rows.jsonl}, no template: `messages` rows are conversations)
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# Axolotl's `type: alpaca` prompts (axolotl.prompters.AlpacaPrompter, instruct style)
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA = {"template": ALPACA_INPUT, "target": "{output}", "template_if_empty": {"input": ALPACA_NO_INPUT}}
QUESTION_ANSWER = "Instruction: {question}\nResponse: "  # the flagship recipe's prompt (gsm8k-mistral-7b)

# what each format is called, and the fields that make it, in the order they are tried
FORMATS = {"messages": "a conversation (OpenAI's {role, content} turns): data.messages",
           "conversations": "a ShareGPT conversation ({from, value} turns): data.messages",
           "prompt + completion": "TRL's prompt-completion rows: {prompt} then {completion}",
           "conversational prompt + completion": "TRL's prompt and completion turns: data.messages prompt+completion",
           "alpaca": "instruction, input (may be empty), output: Axolotl's alpaca prompt",
           "question + answer": "GSM8K's fields: the flagship recipe's 'Instruction: {question}\\nResponse: '",
           "text": "plain text, every token trained (TRL's language modeling)"}
READ = ("messages or conversations, a conversation; prompt + completion, texts or turns; instruction + output, and "
        "maybe input; question + answer; text")  # FORMATS by their fields, for a message


def read_format(fields: dict[str, Any], text: str = "text", kinds: tuple[str, ...] = tuple(FORMATS)
                ) -> tuple[str, dict[str, Any]] | None:
    """The format of a row with these `fields`, as (its name in FORMATS, the data.* keys that render it), or None
    when it is none of `kinds`. `text`: the plain-text field's name (TRL's dataset_text_field)."""
    for kind in kinds:
        keys = _keys(kind, fields, text)
        if keys is not None:
            return kind, keys
    return None


def _keys(kind: str, fields: dict[str, Any], text: str) -> dict[str, Any] | None:
    """The data.* keys of one format, or None when `fields` are not in it."""
    strings = {k for k, v in fields.items() if isinstance(v, str)}
    lists = {k for k, v in fields.items() if isinstance(v, list)}
    if kind in ("messages", "conversations"):
        return {"messages": kind} if kind in lists else None
    if kind == "prompt + completion":
        return {"template": "{prompt}", "target": "{completion}"} if {"prompt", "completion"} <= strings else None
    if kind == "conversational prompt + completion":
        return ({"messages": "prompt+completion", "history_loss": False} if {"prompt", "completion"} <= lists
                else None)
    if kind == "alpaca":
        return dict(ALPACA) if {"instruction", "output"} <= strings else None  # input: missing or empty = none
    if kind == "question + answer":
        return {"template": QUESTION_ANSWER, "target": "{answer}"} if {"question", "answer"} <= strings else None
    return {"template": "", "target": "{" + text + "}"} if text in strings else None


def fill(data: Any) -> None:
    """A recipe's raw `data` section with the format keys of its source's rows, when it sets none of
    data.template, data.target and data.messages (null counts as unset); each data.mix entry that sets no format
    of its own then gets its rows' too. Logged, and written into the run's config.yaml.

    Raises:
        UserError: the rows are in no format of FORMATS (naming the source and its fields).
    """
    if not isinstance(data, dict) or not isinstance(data.get("source"), str) or any(
            data.get(k) is not None for k in ("template", "target", "messages")):
        return
    for key in ("template", "target", "messages"):
        data.pop(key, None)
    data.update(_format_of(data["source"], data.get("config"), "data"))
    for i, entry in enumerate(data.get("mix") or []):
        if isinstance(entry, dict) and isinstance(entry.get("source"), str) and all(
                entry.get(k) is None for k in ("template", "target", "messages")):
            entry.update(_format_of(entry["source"], entry.get("config"), f"data.mix.{i}"))


def _format_of(source: str, config: str | None, section: str) -> dict[str, Any]:
    """The format keys of `source`'s first train row (`section`: where the recipe names it, data or a data.mix
    entry)."""
    from tunelab.data.sources import read_source
    from tunelab.errors import UserError
    try:
        rows, _ = read_source(source, config, 2, 0, 0)
    except UserError as err:
        raise UserError(str(err).replace("data.source:", f"{section}.source:", 1)) from None
    first = rows["train"][0] if rows.get("train") else None
    found = read_format(first.fields) if first else None
    if found is None:
        fields = ", ".join(sorted(first.fields)) if first else "none (no rows)"
        raise UserError(f"{section}.source: {source}: {section}.template and {section}.target are unset, and its "
                        f"rows (fields: {fields}) are in no format tunelab reads by itself ({READ}); set "
                        f"{section}.template and {section}.target ({{field}} placeholders)")
    log.info("%s.source: %s rows (%s): %s", section, found[0], FORMATS[found[0]],
             ", ".join(f"{section}.{k}={v!r}" for k, v in found[1].items()))
    return found[1]
