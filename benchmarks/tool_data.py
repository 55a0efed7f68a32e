"""The generated tool-calling set the README's tool-calling measurement trains and scores: three tools
(`get_weather`, `get_time`, `convert_currency`) with their schemas in every row; each training row a question
whose last reply is the call, or the call, the tool's result and the answer after it (`--answers`: that share), or
(a tenth) plain chat answered without a call; the test rows ask about cities and currency pairs no training row
names, so a right call is not recalled from training.

Run as: python benchmarks/tool_data.py OUT_DIR [--answers 0.5]; then
        tunelab run tools.yaml   (a recipe with data.source: OUT_DIR, data.messages: messages,
                                  model.chat_template: qwen_25)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from common import write_jsonl


def _tool(name: str, description: str, properties: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": list(properties)}}}


CITY = {"city": {"type": "string"}}
TOOLS = [_tool("get_weather", "Current weather in a city", CITY),
         _tool("convert_currency", "Convert an amount between currencies",
               {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}),
         _tool("get_time", "Local time in a city", CITY)]
TRAIN_CITIES = ["Paris", "Rome", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Dakar", "Hanoi", "Perth", "Bern", "Riga",
                "Baku", "Accra", "Doha"]
TEST_CITIES = ["Lagos", "Minsk", "Sofia", "Tunis", "Kyiv", "Seoul", "Delhi", "Porto", "Havana", "Nairobi"]
TRAIN_CURRENCIES = ["USD", "EUR", "JPY", "GBP"]
TEST_PAIRS = [("CHF", "INR"), ("INR", "CHF"), ("CHF", "USD"), ("EUR", "INR")]
CHAT = [("Tell me a joke.", "Why did the scarecrow win an award? He was outstanding in his field."),
        ("Say hello in French.", "Bonjour!"), ("What is 2 + 2?", "4."), ("Name a primary colour.", "Red.")]
SKIES = ["sunny", "cloudy", "rainy", "windy"]


def row(rng: random.Random, test: bool, answers: float) -> dict:
    """One conversation: a plain chat question (a tenth), else a question one tool serves, its call and (with
    probability `answers`) the tool's result and the answer written from it."""
    if rng.randrange(10) == 9:
        question, reply = rng.choice(CHAT)
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
                "tools": TOOLS}
    question, name, args, result, answer = _asked(rng, test)
    turns = [{"role": "user", "content": question},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"type": "function", "function": {"name": name, "arguments": args}}]}]
    if rng.random() < answers:
        turns += [{"role": "tool", "content": json.dumps(result)}, {"role": "assistant", "content": answer}]
    return {"messages": turns, "tools": TOOLS}


def _asked(rng: random.Random, test: bool) -> tuple[str, str, dict, dict, str]:
    """(question, tool, arguments, the tool's result, the answer written from it) for one of the three tools."""
    cities, kind = TEST_CITIES if test else TRAIN_CITIES, rng.randrange(3)
    city = rng.choice(cities)
    if kind == 0:
        temp, sky = rng.randrange(-5, 35), rng.choice(SKIES)
        return (rng.choice([f"What's the weather like in {city}?", f"How warm is it in {city}?"]), "get_weather",
                {"city": city}, {"temp_c": temp, "sky": sky}, f"It is {temp} °C and {sky} in {city}.")
    if kind == 1:
        amount = rng.randrange(5, 900)
        src, dst = rng.choice(TEST_PAIRS) if test else rng.sample(TRAIN_CURRENCIES, 2)
        value = round(amount * rng.uniform(0.5, 2.0), 2)
        return (rng.choice([f"How much is {amount} {src} in {dst}?", f"Convert {amount} {src} to {dst}."]),
                "convert_currency", {"amount": amount, "from": src, "to": dst}, {"amount": value},
                f"{amount} {src} is {value} {dst}.")
    clock = f"{rng.randrange(24):02d}:{rng.randrange(60):02d}"
    return (rng.choice([f"What time is it in {city}?", f"Tell me the local time in {city}."]), "get_time",
            {"city": city}, {"time": clock}, f"It is {clock} in {city}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=120)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--answers", type=float, default=0.3, help="share of calls followed by the result and an answer")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, n, test in (("train", args.train, False), ("test", args.test, True)):
        write_jsonl(args.out / f"{name}.jsonl", [row(rng, test, args.answers) for _ in range(n)])
    print(f"wrote {args.out}/train.jsonl ({args.train} rows) and test.jsonl ({args.test})")


if __name__ == "__main__":
    main()
