"""Shared by the benchmarks: run one measured workload in a fresh process (its own peak memory, nothing warm); the
parity checks' rows and tunelab's side of them (a converted config's rows as tunelab tokenizes them).

Run as: part of benchmarks/train_throughput.py, gpu_check.py, axolotl_parity.py, llamafactory_parity.py,
untrained_tokens.py and added_tokens.py.
"""

from __future__ import annotations

import multiprocessing as mp


def child(target, *args) -> dict:
    """`target(*args, queue)` in a spawned process; returns what it put on the queue. Stops the benchmark with the
    child's exit code when it dies before answering (its traceback is on stderr above)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: still running, or dead
            if not proc.is_alive():
                raise SystemExit(f"{target.__name__} failed (exit code {proc.exitcode}); see its traceback above")
    proc.join()
    return result


def alpaca_rows(n: int = 40) -> list[dict]:
    """Alpaca rows, every other one without an input (the parity checks of tunelab convert)."""
    return [{"instruction": f"Add {i} and {i + 1}.", "input": "" if i % 2 else f"numbers {i}",
             "output": str(2 * i + 1)} for i in range(n)]


def sharegpt_rows(n: int = 30) -> list[dict]:
    """ShareGPT conversations ({from, value} turns): every third with a second reply, every fifth with a system
    turn first (the parity checks of tunelab convert)."""
    rows = []
    for i in range(n):
        turns = [{"from": "human", "value": f"What is {i} + {i}?"}, {"from": "gpt", "value": f"It is {2 * i}."}]
        if i % 3 == 0:
            turns += [{"from": "human", "value": "And doubled?"}, {"from": "gpt", "value": f"{4 * i}."}]
        rows.append({"conversations": ([{"from": "system", "value": "Be brief."}] if i % 5 == 0 else []) + turns})
    return rows


def write_jsonl(path, rows: list[dict]):
    """`rows` as a JSON-lines file at `path` (a pathlib.Path); returns the path."""
    import json
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def converted_rows(config, model: str = "smollm2-135m-instruct"):
    """`tunelab convert` the trainer config at `config` (a pathlib.Path), with `model` (SmolLM2's offline copy,
    or a local folder) as its model, and tokenize its rows as tunelab trains them. Returns (tokenizer, [(row index in the source file,
    tunelab's Tokenized)])."""
    import yaml

    from tunelab.config import load_recipe
    from tunelab.convert import convert
    from tunelab.data import load_splits
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize_with
    raw, _ = convert(str(config))
    raw["model"]["name"] = model
    recipe = config.with_suffix(".recipe.yaml")
    recipe.write_text(yaml.safe_dump(raw))
    cfg = load_recipe(str(recipe))
    tok = load_tokenizer(cfg.model)
    splits = load_splits(cfg.data)
    examples = splits.train + splits.val
    items, _ = tokenize_with(cfg, examples, tok)
    return tok, [(int(e.id.rsplit("-", 1)[1]) - 1, item) for e, item in zip(examples, items)]  # ids: lines from 1


def tiny_llama(tokenizer_source, out):
    """A 2-layer random Llama (hidden 32, tied embeddings) with the tokenizer at `tokenizer_source`, saved to `out`
    (a pathlib.Path; the token benchmarks' --tiny runs). Returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def trained_and_scored(cfg, folder) -> tuple[dict, dict]:
    """Train recipe `cfg` into run directory `folder` and score its adapter on the held-out questions: the final
    validation loss, answer accuracy (flexible), the share of replies that never ended (they ran to
    eval.max_new_tokens), n, the real tokens per training row and the training seconds; and each question's
    flexible-correct flag by its id (for paired comparisons)."""
    import json

    from tunelab.evaluate.stage import evaluate
    from tunelab.rundir import RunDir
    from tunelab.train import train
    run = RunDir(folder)
    train(cfg, run)
    tuned = evaluate(cfg, run).summary["tuned"]
    summary = json.loads(run.summary.read_text())  # train_tokens: the real (non-pad) tokens of every epoch
    return {"final_val_loss": summary["final_val_loss"], "accuracy": tuned["flexible_accuracy"],
            "never_ended": tuned["at_budget"] / tuned["n"], "n": tuned["n"],
            "tokens_per_row": round(summary["train_tokens"] / (summary["train_examples"] * summary["epochs"]), 1),
            "train_seconds": summary["train_seconds"]}, {p["id"]: p["flexible_correct"]
                                                         for p in run.read_predictions() if p["model"] == "tuned"}


# one tool schema, for the parity scripts' tool-call rows
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Today's weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
