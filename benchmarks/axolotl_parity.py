"""Does a recipe from `tunelab convert` train on the same tokens as the Axolotl config it came from?

Converts Axolotl configs (type alpaca, under SmolLM2's tokenizer and under Mistral-7B-v0.1's SentencePiece
one; the user-defined format on GSM8K, with a system prompt and with a
format Axolotl never uses; type chat_template on ShareGPT turns with system turns and several replies, through the
tokenizer's template, through a template of markers added as tokens, and through Axolotl's named chatml, llama3 and
gemma3 (their markers added as tokens), qwen3 (also on turns whose replies carry reasoning_content) and qwen_25 (on
tool-calling conversations with their tools), Axolotl's
side then with the tokenizer its own loader builds; type completion),
tokenizes their rows with tunelab and with Axolotl's own tokenizing strategies (under SmolLM2's tokenizer but where
named), and counts the rows whose input ids and labels are identical, and of the others those with the same text and
trained text, and those that differ in their reply's first piece only. Axolotl is not a tunelab dependency: give the folder of an unpacked
Axolotl wheel with its two small imports (colorama, addict) beside it.

Run as:
    pip download axolotl==0.19.0 --no-deps -d /tmp/ax && (cd /tmp/ax && unzip -q -o axolotl-*.whl)
    pip install --no-deps --target /tmp/ax colorama addict
    .venv/bin/python benchmarks/axolotl_parity.py --axolotl /tmp/ax
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import WEATHER, alpaca_rows, converted_rows, sharegpt_rows, write_jsonl  # noqa: E402

GSM8K = Path(os.environ.get("TUNELAB_GSM8K", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gsm8k"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--axolotl", required=True, help="folder holding the axolotl package, colorama and addict")
    args = ap.parse_args()
    sys.path[:0] = [args.axolotl]
    os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    sys.modules.setdefault("posthog", types.ModuleType("posthog"))  # Axolotl's telemetry, imported by its loader
    out = Path(tempfile.mkdtemp(prefix="axolotl-parity-"))
    results = {name: compare(out, name, *case(out)) for name, case in CASES.items()}
    for name, r in results.items():
        print(f"{name}: {r['identical']}/{r['rows']} rows identical in input ids and labels"
              + (f" ({r['trailing']} of them once Axolotl's untrained token after the last turn is set aside)"
                 if r["trailing"] else "")
              + (f"; {r['same_text']} others with the same text and trained text, cut into other tokens"
                 if r["same_text"] else "")
              + (f"; {r['first_piece']} others differing in their reply's first piece only" if r["first_piece"]
                 else "")
              + "".join(f"; {n} others with the same text, trained the same but for {text!r}, which tunelab also trains"
                        for text, n in r["more_trained"].items())
              + "".join(f"; {n} others training the same text, tunelab's untrained text with {text!r} more"
                        for text, n in r["more_untrained"].items()))
    print(json.dumps(results))


def compare(out: Path, name: str, config: str, rows: list[dict], strategy,
            model: str = "smollm2-135m-instruct") -> dict:
    """Convert `config`, tokenize its rows both ways under `model`'s tokenizer; count identical rows (`trailing`:
    identical but for tokens Axolotl appends after the last trained one, with no label: they change no loss;
    `same_text`: the others whose text and trained text are the same, cut into tokens elsewhere; `first_piece`: the
    others that differ in one place only, the reply's first piece; `more_trained`: the others whose text is the
    same and whose trained text is Axolotl's with one stretch more, by that stretch; `more_untrained`: the others
    that train the same text, tunelab's whole text being Axolotl's with one stretch more, by that stretch)."""
    (out / f"{name}.yml").write_text(config)
    tok, items = converted_rows(out / f"{name}.yml", model)
    theirs = strategy(tok)
    identical = trailing = same_text = first_piece = 0
    more: dict[str, int] = {}
    untrained: dict[str, int] = {}
    for index, item in items:
        ax = theirs.tokenize_prompt(rows[index])
        ids, labels, k = list(ax["input_ids"]), list(ax["labels"]), len(item.input_ids)
        if ids == item.input_ids and labels == item.labels:
            identical += 1
        elif ids[:k] == item.input_ids and labels[:k] == item.labels and all(x == -100 for x in labels[k:]):
            identical, trailing = identical + 1, trailing + 1
        elif tok.decode(ids).rstrip() == tok.decode(item.input_ids).rstrip() and (extra := _inserted(
                _trained(tok, ids, labels), _trained(tok, item.input_ids, item.labels))):
            more[extra] = more.get(extra, 0) + 1
        elif (tok.decode(ids).rstrip() == tok.decode(item.input_ids).rstrip()
              and _trained(tok, ids, labels) == _trained(tok, item.input_ids, item.labels)):
            same_text += 1
        elif _trained(tok, ids, labels) == _trained(tok, item.input_ids, item.labels) and (extra := _inserted(
                tok.decode(ids).rstrip(), tok.decode(item.input_ids).rstrip())):
            untrained[extra] = untrained.get(extra, 0) + 1
        else:
            first_piece += _differs_at_first_piece(ids, item.input_ids, item.labels)
    return {"rows": len(items), "identical": identical, "trailing": trailing, "same_text": same_text,
            "first_piece": first_piece, "more_trained": more, "more_untrained": untrained}


def _differs_at_first_piece(theirs: list[int], ours: list[int], labels: list[int]) -> bool:
    """Axolotl's ids differ from tunelab's in one place only, at the first trained token (its reply's first piece)."""
    import difflib
    ops = [op for op in difflib.SequenceMatcher(None, theirs, ours, autojunk=False).get_opcodes() if op[0] != "equal"]
    first = next(k for k, x in enumerate(labels) if x != -100)
    return len(ops) == 1 and ops[0][3] == first


def _inserted(theirs: str, ours: str) -> str | None:
    """The one stretch of text `ours` has where `theirs` has nothing, when that is their only difference."""
    import difflib
    ops = [op for op in difflib.SequenceMatcher(None, theirs, ours, autojunk=False).get_opcodes() if op[0] != "equal"]
    return ours[ops[0][3]:ops[0][4]] if len(ops) == 1 and ops[0][0] == "insert" else None


def _trained(tok, ids: list[int], labels: list[int]) -> str:
    return tok.decode([i for i, label in zip(ids, labels) if label != -100])


def _alpaca(out: Path):
    from axolotl.prompt_tokenizers import AlpacaPromptTokenizingStrategy
    from axolotl.prompters import AlpacaPrompter
    rows = alpaca_rows()
    path = write_jsonl(out / "alpaca.jsonl", rows)
    config = f"base_model: x\nadapter: lora\ndatasets:\n  - path: {path}\n    type: alpaca\n"
    return config, rows, lambda tok: AlpacaPromptTokenizingStrategy(AlpacaPrompter("instruct"), tok, False, 2048)


def _alpaca_sentencepiece(out: Path):
    """type: alpaca under Mistral-7B-v0.1's SentencePiece tokenizer (mistral-common's wheel, as make setup
    downloads it): Axolotl tokenizes each response alone, which starts it with a word-start piece."""
    from benchmarks.gpu_check import model_folder
    wheel = sorted((Path(__file__).resolve().parents[1] / ".venv" / "share").glob("mistral_common-*.whl"))[0]
    folder = model_folder(out, tiny=True, wheel=wheel)
    config, rows, strategy = _alpaca(out)
    return config, rows, strategy, str(folder)


def _user_defined(spec: dict):
    def case(out: Path):
        from types import SimpleNamespace

        from axolotl.prompt_strategies import user_defined
        rows = [json.loads(line) for line in (GSM8K / "train.jsonl").read_text().splitlines()[:60]]
        path = write_jsonl(out / "gsm8k.jsonl", rows)
        config = f"base_model: x\nadapter: lora\ndatasets:\n  - path: {path}\n    type: {json.dumps(spec)}\n"
        return config, rows, lambda tok: user_defined.load(tok, SimpleNamespace(train_on_inputs=False,
                                                                                 sequence_len=2048),
                                                           user_defined.UserDefinedDatasetConfig(**spec))
    return case


def _chat(out: Path):
    from axolotl.prompt_strategies.chat_template import load
    from axolotl.utils.dict import DictDefault
    rows = sharegpt_rows()
    dataset = {"field_messages": "conversations", "message_property_mappings": {"role": "from", "content": "value"}}
    config = yaml.safe_dump({"base_model": "x", "adapter": "lora", "datasets": [
        {"path": str(write_jsonl(out / "chats.jsonl", rows)), "type": "chat_template", **dataset}]})
    settings = DictDefault({"chat_template": "tokenizer_default", "train_on_inputs": False, "sequence_len": 2048})
    return config, rows, lambda tok: load(tok, settings, dataset)


MARKERS = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")  # markers SmolLM2's tokenizer splits


def _reasoning_rows() -> list[dict]:
    """`sharegpt_rows` as {role, content} turns, each reply carrying its thinking apart in reasoning_content (the
    field Axolotl hands the chat template by default)."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"messages": [{"role": roles[t["from"]], "content": t["value"],
                           **({"reasoning_content": f"Add, then check: {t['value']}"} if t["from"] == "gpt" else {})}
                          for t in r["conversations"]]} for r in sharegpt_rows()]


def _tool_rows() -> list[dict]:
    """30 tool-calling conversations: the function schemas in `tools` (JSON text in every third row, its parameters
    too), a user question, the assistant's call (OpenAI's JSON-text arguments in odd rows), the tool's result, and
    the answer; every tenth asks nothing a tool serves and is answered directly."""
    rows = []
    for i in range(30):
        city = f"City{i}"
        turns = [{"role": "user", "content": f"How warm is it in {city} today?"}]
        if i % 10 == 9:
            turns = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}]
        else:
            args = {"city": city}
            turns += [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                          "name": "get_weather", "arguments": json.dumps(args) if i % 2 else args}}]},
                      {"role": "tool", "name": "get_weather", "content": json.dumps({"temp_c": i})},
                      {"role": "assistant", "content": f"It is {i} °C in {city}."}]
        text = {**WEATHER, "function": {**WEATHER["function"],
                                        "parameters": json.dumps(WEATHER["function"]["parameters"])}}
        rows.append({"messages": turns, "tools": json.dumps([text]) if i % 3 == 0 else [WEATHER]})
    return rows


def _chat_own(chosen: dict, tokens: list[str] = (), eos: str | None = None, reasoning: bool = False,
              tools: bool = False):
    """type: chat_template through a template the config chooses (`chosen`: chat_template and its keys), markers
    SmolLM2 lacks added as tokens (`tokens`, `special_tokens`' eos_token): Axolotl's side tokenizes with the
    tokenizer its own loader builds from the config, not tunelab's. `reasoning`: {role, content} turns whose replies
    carry reasoning_content (`_reasoning_rows`) instead of ShareGPT's; `tools`: tool-calling rows (`_tool_rows`)."""
    def case(out: Path):
        from axolotl.loaders.tokenizer import load_tokenizer
        from axolotl.prompt_strategies.chat_template import load
        from axolotl.utils.dict import DictDefault

        from tunelab.models import resolve
        rows = _tool_rows() if tools else _reasoning_rows() if reasoning else sharegpt_rows()
        base = resolve("smollm2-135m-instruct")
        dataset = {"field_messages": "messages"} if reasoning or tools else {
            "field_messages": "conversations", "message_property_mappings": {"role": "from", "content": "value"}}
        config = {"base_model": base, "adapter": "lora", **chosen,
                  **({"lora_modules_to_save": ["embed_tokens", "lm_head"], "tokens": list(tokens)} if tokens else {}),
                  **({"special_tokens": {"eos_token": eos}} if eos else {}),
                  "datasets": [{"path": str(write_jsonl(out / "chats.jsonl", rows)), "type": "chat_template",
                                **dataset}]}
        theirs = load_tokenizer(DictDefault({**config, "base_model_config": base, "tokenizer_config": base}))
        settings = DictDefault({"chat_template": "tokenizer_default", "train_on_inputs": False, "sequence_len": 2048})
        return yaml.safe_dump(config), rows, lambda tok: load(theirs, settings, dataset)
    return case


def _completion(out: Path):
    from types import SimpleNamespace

    from axolotl.prompt_strategies import completion
    rows = [{"content": f"Once upon a time there were {i} bears in the wood."} for i in range(30)]
    config = (f"base_model: x\nadapter: lora\ndatasets:\n  - path: {write_jsonl(out / 'texts.jsonl', rows)}\n"
              "    type: completion\n    field: content\n")
    strategy = completion.load  # batched: one row in, its first chunk out (these texts are shorter than one)
    return config, rows, lambda tok: _first_chunk(strategy(tok, SimpleNamespace(train_on_inputs=False,
                                                                                 sequence_len=2048),
                                                           {"field": "content"}))


class _first_chunk:
    """Axolotl's batched completion strategy, one row at a time."""

    def __init__(self, strategy):
        self.strategy = strategy

    def tokenize_prompt(self, row: dict) -> dict:
        return {k: v[0] for k, v in self.strategy.tokenize_prompt({k: [v] for k, v in row.items()}).items()}


CASES = {
    "alpaca": _alpaca,
    "user-defined": _user_defined({"system_prompt": "Solve it.", "system_format": "<s>{system}\n",
                                   "field_instruction": "question", "field_output": "answer",
                                   "format": "[INST] {instruction} {input} [/INST]",
                                   "no_input_format": "[INST] {instruction} [/INST]"}),
    "user-defined, format unused": _user_defined({"field_instruction": "question", "field_output": "answer",
                                                  "format": "Q: {instruction}\nA: "}),
    "chat_template": _chat,
    "chat_template, added tokens": _chat_own({"chat_template": "jinja", "chat_template_jinja": MARKERS},
                                             ["<|system|>", "<|user|>", "<|assistant|>"], "<|end|>"),
    "chat_template: chatml": _chat_own({"chat_template": "chatml"}),
    "chat_template: llama3, added tokens": _chat_own({"chat_template": "llama3"},
                                                     ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                                                     "<|eot_id|>"),
    "chat_template: qwen3": _chat_own({"chat_template": "qwen3"}),
    "chat_template: qwen3, reasoning_content": _chat_own({"chat_template": "qwen3"}, reasoning=True),
    "chat_template: qwen_25, tool calls": _chat_own({"chat_template": "qwen_25"}, tools=True),
    "chat_template: gemma3, added tokens": _chat_own({"chat_template": "gemma3"},
                                                     ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
    "completion": _completion,
    "alpaca, Mistral-7B-v0.1's tokenizer": _alpaca_sentencepiece,
}

if __name__ == "__main__":
    main()
