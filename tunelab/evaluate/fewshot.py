"""The prompting baseline: the base model asked N-shot the way lm-evaluation-harness's `gsm8k` task asks.

lm-eval (tasks/gsm8k/gsm8k.yaml, version 3): doc_to_text "Question: {question}\\nAnswer:", doc_to_target
"{answer}", target delimiter " ", few-shot delimiter "\\n\\n", shots from the train split, generation
until "Question:", "</s>" or "<|im_end|>", greedy. Shots here are the first N train rows by default, the same for
every question (one shared prefix, computed once); lm-eval's gsm8k draws N at random for each question (its default
sampler), which `eval.fewshot_sampler: random` does (tunelab/evaluate/stage.py `_drawn_shots`).

    prompt = fewshot_prompt(shots, question)     # "Question: q1\\nAnswer: a1\\n\\n...Question: q\\nAnswer:"

With `data.chat_template` the shots are earlier chat turns instead (`exchanges`, tunelab/data/chat.py).

Run as: tunelab eval runs/smoke --set eval.fewshot=5
"""

from __future__ import annotations

from tunelab.data import Example, question_text

STOP = ["Question:", "</s>", "<|im_end|>"]  # lm-eval's `until` for gsm8k
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


def answer_text(example: Example) -> str:
    """The worked answer of a shot: its `answer` field when it has one, else its rendered target."""
    a = example.fields.get("answer")
    return a if isinstance(a, str) and a.strip() else example.target


def exchanges(shots: list[Example]) -> list[tuple[str, str]]:
    """(question text, worked answer) of each shot: the turns of the chat form (lm-eval's --fewshot_as_multiturn)."""
    return [(ask(s), answer_text(s)) for s in shots]


def ask(question: Example) -> str:
    """lm-eval's doc_to_text: "Question: {question}\nAnswer:"."""
    return f"Question: {question_text(question)}\nAnswer:"


def ask_turn(question: Example) -> str:
    """`ask` as the last user turn of a chat prompt: a conversation row's own last user text only, its earlier turns
    being written as turns before it."""
    from tunelab.data.chat import HISTORY
    return f"Question: {question.prompt.strip()}\nAnswer:" if question.fields.get(HISTORY) else ask(question)


def fewshot_context(shots: list[Example]) -> str:
    """What every few-shot prompt starts with: each shot as text + delimiter + target + few-shot delimiter."""
    return "".join(f"{q}{TARGET_DELIMITER}{a}{FEWSHOT_DELIMITER}" for q, a in exchanges(shots))


def fewshot_prompt(shots: list[Example], question: Example) -> str:
    """lm-eval's few-shot prompt for `question`: the shots' context, then the question."""
    return fewshot_context(shots) + ask(question)
