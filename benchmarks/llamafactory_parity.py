"""Does a recipe from `tunelab convert` train on the same tokens as the LLaMA-Factory config it came from?

Writes a dataset_info.json with an alpaca dataset (half its rows without an input), a sharegpt one (system
turns, one or two replies) and a sharegpt one of tool calls (function_call and observation turns, a tools column;
through template qwen), converts a LLaMA-Factory sft LoRA config for each (no `template`: LLaMA-Factory then
parses the tokenizer's chat template), tokenizes the rows with tunelab and with LLaMA-Factory's own converter,
template and supervised processor under SmolLM2's tokenizer, and counts the rows whose input ids and labels are
identical, those that differ only in labels LLaMA-Factory gives tokens tunelab leaves untrained, and those of the
same text however tokenized and trained.
LLaMA-Factory is not a tunelab dependency: give the folder of its unpacked wheel. Its audio support imports
torchaudio, which no step here uses: when it is not installed an empty package stands in for it.

Run as:
    pip download llamafactory==0.9.5 --no-deps -d /tmp/lf && (cd /tmp/lf && unzip -q -o llamafactory-*.whl)
    .venv/bin/python benchmarks/llamafactory_parity.py --llamafactory /tmp/lf
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import WEATHER, alpaca_rows, converted_rows, sharegpt_rows, write_jsonl  # noqa: E402
from tunelab.convert.llamafactory import NAMED_TEMPLATES  # noqa: E402

IGNORE = -100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llamafactory", required=True, help="folder holding the llamafactory package")
    args = ap.parse_args()
    sys.path.insert(0, args.llamafactory)
    out = Path(tempfile.mkdtemp(prefix="llamafactory-parity-"))
    if importlib.util.find_spec("torchaudio") is None:  # audio only, unused here: an empty package stands in
        (out / "stub" / "torchaudio").mkdir(parents=True)
        (out / "stub" / "torchaudio" / "__init__.py").write_text("")
        sys.path.append(str(out / "stub"))
    rows = _datasets(out)
    results = {name: compare(out, name, rows[name]) for name in rows if name != "calls"}
    results["calls, template: qwen"] = compare(out, "calls", rows["calls"], "qwen")  # a template that has tools
    for template in NAMED_TEMPLATES:  # the conversations again, through each template tunelab converts by name
        results[f"chats, template: {template}"] = compare(out, "chats", rows["chats"], template,
                                                          _thinking_tokenizer(out) if "qwen3" == template else None)
    for name, r in results.items():
        print(f"{name}: {r['identical']}/{r['rows']} rows identical in input ids and labels; {r['more_labels']} "
              f"the same tokens trained the same but for {r['extra_labels']} that only LLaMA-Factory trains: "
              f"{r['extra_tokens']}; {r['other_tokens_same_text']} other tokens for the same text and trained text; "
              f"{r['same_text']} of the same text, trailing whitespace aside")
    print(json.dumps(results))


def _datasets(out: Path) -> dict[str, list[dict]]:
    """dataset_info.json and its three files; returns each dataset's rows."""
    alpaca, chats, calls = alpaca_rows(), sharegpt_rows(), _call_rows()
    (out / "data").mkdir()
    for file, rows in (("alpaca.jsonl", alpaca), ("chats.jsonl", chats), ("calls.jsonl", calls)):
        write_jsonl(out / "data" / file, rows)
    (out / "data" / "dataset_info.json").write_text(json.dumps({
        "alpaca": {"file_name": "alpaca.jsonl"}, "chats": {"file_name": "chats.jsonl", "formatting": "sharegpt"},
        "calls": {"file_name": "calls.jsonl", "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "tools": "tools"}}}))
    return {"alpaca": alpaca, "chats": chats, "calls": calls}


def _call_rows() -> list[dict]:
    """30 tool-calling conversations in LLaMA-Factory's ShareGPT form: the question, the `function_call` turn (the
    call's JSON), the `observation` turn (the result) and the answer, the function schemas as JSON text in `tools`."""
    return [{"conversations": [
        {"from": "human", "value": f"How warm is it in City{i} today?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": f"City{i}"}})},
        {"from": "observation", "value": json.dumps({"temp_c": i})},
        {"from": "gpt", "value": f"It is {i} °C in City{i}."}], "tools": json.dumps([WEATHER])} for i in range(30)]


def compare(out: Path, dataset: str, rows: list[dict], template: str | None = None, model: str | None = None) -> dict:
    """Convert an sft LoRA config for `dataset` (with `template`, or the tokenizer's own), tokenize its rows both
    ways, each side adding its own tokens to a fresh tokenizer (SmolLM2's, or the one in the `model` folder); count
    identical rows, and rows that are the same tokens (LLaMA-Factory's perhaps one longer) trained the same, but for
    tokens only LLaMA-Factory trains (which, decoded)."""
    from transformers import AutoTokenizer

    from tunelab.models import resolve
    model = model or resolve("smollm2-135m-instruct")
    config = {"model_name_or_path": "smollm2-135m-instruct", "stage": "sft", "finetuning_type": "lora",
              "dataset": dataset, "dataset_dir": str(out / "data"), "cutoff_len": 2048, "val_size": 0.1,
              **({"template": template} if template else {})}
    file = out / f"{dataset}-{template or 'own'}.yaml"
    file.write_text(yaml.safe_dump(config))
    tok, items = converted_rows(file, model)
    encode = _theirs(AutoTokenizer.from_pretrained(model), out, dataset, template)
    identical = aligned = same_text = text = 0
    extra: dict[str, int] = {}
    for index, item in items:
        ids, labels = encode(rows[index])
        k = len(item.input_ids)
        text += tok.decode(ids).rstrip() == tok.decode(item.input_ids).rstrip()
        if ids == item.input_ids and labels == item.labels:
            identical += 1
            continue
        same_text += (tok.decode(ids) == tok.decode(item.input_ids)
                      and _trained(tok, ids, labels) == _trained(tok, item.input_ids, item.labels))
        ours = item.labels + [IGNORE] * (len(ids) - k)
        if ids[:k] != item.input_ids or len(ids) - k > 1 or any(b not in (IGNORE, a) for a, b in zip(labels, ours)):
            continue  # other tokens, or a token tunelab trains and LLaMA-Factory does not
        aligned += 1
        for token, a, b in zip(ids, labels, ours):
            if a != b:
                extra[repr(tok.decode([token]))] = extra.get(repr(tok.decode([token])), 0) + 1
    return {"rows": len(items), "identical": identical, "more_labels": aligned,
            "extra_labels": sum(extra.values()), "extra_tokens": extra, "other_tokens_same_text": same_text,
            "same_text": text}


def _thinking_tokenizer(out: Path) -> str:
    """A folder with SmolLM2's tokenizer (and config) given <think> and </think> as tokens of their own, as Qwen3's
    has them (a reasoning template's markers split into pieces would tokenize apart otherwise than together)."""
    from transformers import AutoTokenizer

    from tunelab.models import resolve
    folder = out / "thinking-tokenizer"
    if not folder.exists():
        smollm2 = Path(resolve("smollm2-135m-instruct"))
        tok = AutoTokenizer.from_pretrained(smollm2)
        tok.add_tokens(["<think>", "</think>"])
        tok.save_pretrained(folder)
        (folder / "config.json").write_text((smollm2 / "config.json").read_text())  # a model folder, to tunelab
    return str(folder)


def _trained(tok, ids: list[int], labels: list[int]) -> str:
    """The text of the tokens a row trains."""
    return tok.decode([t for t, label in zip(ids, labels) if label != IGNORE])


def _theirs(tok, out: Path, dataset: str, template: str | None):
    """LLaMA-Factory's encoding of one raw row: its converter, its template (by name, or parsed from the
    tokenizer), its supervised processor."""
    from llamafactory.data.converter import AlpacaDatasetConverter, SharegptDatasetConverter
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    data_args = DataArguments(dataset=dataset, dataset_dir=str(out / "data"), cutoff_len=2048, template=template)
    attr = get_dataset_list([dataset], str(out / "data"))[0]
    converter = (SharegptDatasetConverter if attr.formatting == "sharegpt" else AlpacaDatasetConverter)(attr,
                                                                                                         data_args)
    template = get_template_and_fix_tokenizer(tok, data_args)
    processor = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=None, data_args=data_args)

    def encode(row: dict) -> tuple[list[int], list[int]]:
        c = converter(row)
        return processor._encode_data_example(c["_prompt"], c["_response"], c["_system"], c["_tools"], [], [], [])
    return encode


if __name__ == "__main__":
    main()
