"""Does a recipe from `tunelab convert` train on the same tokens as the Axolotl config it came from?

Converts three Axolotl configs (type alpaca; the user-defined format on GSM8K, with a system prompt and with a
format Axolotl never uses; type chat_template on ShareGPT turns with system turns and several replies), tokenizes
their rows with tunelab and with Axolotl's own tokenizing strategies under SmolLM2's tokenizer, and counts the rows
whose input ids and labels are identical. Axolotl is not a tunelab dependency: give the folder of an unpacked
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
from pathlib import Path

import yaml

GSM8K = Path(os.environ.get("TUNELAB_GSM8K", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gsm8k"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--axolotl", required=True, help="folder holding the axolotl package, colorama and addict")
    args = ap.parse_args()
    sys.path[:0] = [args.axolotl]
    out = Path(tempfile.mkdtemp(prefix="axolotl-parity-"))
    results = {name: compare(out, name, *case(out)) for name, case in CASES.items()}
    for name, r in results.items():
        print(f"{name}: {r['identical']}/{r['rows']} rows identical in input ids and labels"
              + (f" ({r['trailing']} of them once Axolotl's untrained token after the last turn is set aside)"
                 if r["trailing"] else ""))
    print(json.dumps(results))


def compare(out: Path, name: str, config: str, rows: list[dict], strategy) -> dict:
    """Convert `config`, tokenize its rows both ways; count identical rows (`trailing`: identical but for tokens
    Axolotl appends after the last trained one, with no label: they change no loss)."""
    from tunelab.config import load_recipe
    from tunelab.convert import convert
    from tunelab.data import load_splits
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize_with
    (out / f"{name}.yml").write_text(config)
    raw, _ = convert(str(out / f"{name}.yml"))
    raw["model"]["name"] = "smollm2-135m-instruct"  # the offline copy of the config's model
    (out / f"{name}.recipe.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_recipe(str(out / f"{name}.recipe.yaml"))
    tok = load_tokenizer(cfg.model)
    splits = load_splits(cfg.data)
    examples = splits.train + splits.val
    items, _ = tokenize_with(cfg, examples, tok)
    theirs = strategy(tok)
    identical = trailing = 0
    for example, item in zip(examples, items):
        ax = theirs.tokenize_prompt(rows[int(example.id.rsplit("-", 1)[1]) - 1])  # ids count file lines from 1
        ids, labels, k = list(ax["input_ids"]), list(ax["labels"]), len(item.input_ids)
        if ids == item.input_ids and labels == item.labels:
            identical += 1
        elif ids[:k] == item.input_ids and labels[:k] == item.labels and all(x == -100 for x in labels[k:]):
            identical, trailing = identical + 1, trailing + 1
    return {"rows": len(items), "identical": identical, "trailing": trailing}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _alpaca(out: Path):
    from axolotl.prompt_tokenizers import AlpacaPromptTokenizingStrategy
    from axolotl.prompters import AlpacaPrompter
    rows = [{"instruction": f"Add {i} and {i + 1}.", "input": "" if i % 2 else f"numbers {i}", "output": str(2 * i + 1)}
            for i in range(40)]
    path = _write(out / "alpaca.jsonl", rows)
    config = f"base_model: x\nadapter: lora\ndatasets:\n  - path: {path}\n    type: alpaca\n"
    return config, rows, lambda tok: AlpacaPromptTokenizingStrategy(AlpacaPrompter("instruct"), tok, False, 2048)


def _user_defined(spec: dict):
    def case(out: Path):
        from types import SimpleNamespace

        from axolotl.prompt_strategies import user_defined
        rows = [json.loads(line) for line in (GSM8K / "train.jsonl").read_text().splitlines()[:60]]
        path = _write(out / "gsm8k.jsonl", rows)
        config = f"base_model: x\nadapter: lora\ndatasets:\n  - path: {path}\n    type: {json.dumps(spec)}\n"
        return config, rows, lambda tok: user_defined.load(tok, SimpleNamespace(train_on_inputs=False,
                                                                                 sequence_len=2048),
                                                           user_defined.UserDefinedDatasetConfig(**spec))
    return case


def _chat(out: Path):
    from axolotl.prompt_strategies.chat_template import load
    from axolotl.utils.dict import DictDefault
    rows = []
    for i in range(30):
        turns = [{"from": "human", "value": f"What is {i} + {i}?"}, {"from": "gpt", "value": f"It is {2 * i}."}]
        if i % 3 == 0:
            turns += [{"from": "human", "value": "And doubled?"}, {"from": "gpt", "value": f"{4 * i}."}]
        rows.append({"conversations": ([{"from": "system", "value": "Be brief."}] if i % 5 == 0 else []) + turns})
    dataset = {"field_messages": "conversations", "message_property_mappings": {"role": "from", "content": "value"}}
    config = yaml.safe_dump({"base_model": "x", "adapter": "lora", "datasets": [
        {"path": str(_write(out / "chats.jsonl", rows)), "type": "chat_template", **dataset}]})
    settings = DictDefault({"chat_template": "tokenizer_default", "train_on_inputs": False, "sequence_len": 2048})
    return config, rows, lambda tok: load(tok, settings, dataset)


CASES = {
    "alpaca": _alpaca,
    "user-defined": _user_defined({"system_prompt": "Solve it.", "system_format": "<s>{system}\n",
                                   "field_instruction": "question", "field_output": "answer",
                                   "format": "[INST] {instruction} {input} [/INST]",
                                   "no_input_format": "[INST] {instruction} [/INST]"}),
    "user-defined, format unused": _user_defined({"field_instruction": "question", "field_output": "answer",
                                                  "format": "Q: {instruction}\nA: "}),
    "chat_template": _chat,
}

if __name__ == "__main__":
    main()
