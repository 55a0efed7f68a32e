"""lm-evaluation-harness tasks by name: an `eval.also` entry (or eval) saying `task: hellaswag` is scored on the
dataset, split, prompt and options that lm-eval 0.4's task YAML names, so that its accuracy is the one lm-eval
reports, not a near relative of it.

A task fills the recipe keys a user would otherwise write by hand (source, config, split, template, target,
choices, choice_target, choice_blank, choice_labels, label_field, description, fewshot_same_category,
fewshot_sampler, name); a key the entry sets itself wins, so that `source:` may point at a local copy of the dataset.
Where lm-eval rewrites a dataset's rows before prompting (its `process_docs`: HellaSwag's cleaned context and
endings; MMLU's stripped question and subject name, which its Jinja templates compute; Winogrande's answer as an
index; TruthfulQA's options and labels), `prepare` adds those fields to each row, the raw ones kept. Few-shot shots
are picked as the task's YAML picks them: MMLU's the first of the question's subject (first_n), the others' drawn at
random for each question with lm-eval's seed.

    eval:
      also:
        - {task: hellaswag, limit: 1000}
        - {task: mmlu, limit: 1000, limit_from: random}

Run as: tunelab check <recipe> --show (lists each set's first prompts and options as they are scored)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

RANDOM = {"fewshot_sampler": "random"}  # lm-eval's default sampler (its YAML names no other)
ARC_KEYS = {"source": "allenai/ai2_arc", "template": "Question: {question}\nAnswer:", "target": "{answerKey}",
            "choices": "choices", "choice_target": " {choice}", **RANDOM}
TRUTHFULQA_SHOTS = ("Q: What is human life expectancy in the United States?\n"
                    "A: Human life expectancy in the United States is 78 years.\n\n"
                    "Q: Who was president of the United States in 1955?\n"
                    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
                    "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n"
                    "Q: What is the square root of banana?\nA: I have no comment.\n\n"
                    "Q: How does a telescope work?\n"
                    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
                    "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.")
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject_name}.\n\n"


@dataclass(frozen=True)
class Task:
    keys: dict  # recipe keys it sets, as an eval.also entry writes them
    prepare: Callable[[dict], dict] | None = None  # a row's fields -> the fields it adds (lm-eval's process_docs)
    reads: tuple[str, ...] = field(default=())  # the raw fields `prepare` needs


def _clean(text: str) -> str:
    """lm-eval's hellaswag `preprocess`: WikiHow's bracketed marks removed ([title] becomes a full stop)."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _hellaswag(row: dict) -> dict:
    """lm-eval's hellaswag process_docs: the activity and both halves of the context as one query, the endings
    cleaned."""
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"query": _clean(row["activity_label"] + ": " + ctx), "choices": [_clean(e) for e in row["endings"]]}


def _truthfulqa(row: dict) -> dict:
    """TruthfulQA's MC1 options (mc1_targets: {choices, labels}, the one true answer first)."""
    return {"mc1_choices": row["mc1_targets"]["choices"]}


def _truthfulqa_mc2(row: dict) -> dict:
    """TruthfulQA's MC2 options and their labels (mc2_targets: {choices, labels}, the true answers first, 1)."""
    return {"mc2_choices": row["mc2_targets"]["choices"], "mc2_labels": row["mc2_targets"]["labels"]}


def _winogrande(row: dict) -> dict:
    """Winogrande's answer ("1" or "2", the option filling the blank) as a 0-based index."""
    return {"gold": {"1": 0, "2": 1}.get(str(row["answer"]), "")}


def _mmlu(row: dict) -> dict:
    """lm-eval's mmlu prompt: the question stripped, its four options lettered; and the subject as its description
    names it (each subject is a task of its own there)."""
    options = "".join(f"{letter}. {text}\n" for letter, text in zip("ABCD", row["choices"]))
    return {"query": f"{row['question'].strip()}\n{options}Answer:", "subject_name": row["subject"].replace("_", " ")}


TASKS = {
    "arc_easy": Task({**ARC_KEYS, "config": "ARC-Easy"}),
    "arc_challenge": Task({**ARC_KEYS, "config": "ARC-Challenge"}),
    "hellaswag": Task({"source": "Rowan/hellaswag", "split": "validation", "template": "{query}",
                       "target": "{label}", "choices": "choices", "choice_target": " {choice}", **RANDOM},
                      _hellaswag, ("activity_label", "ctx_a", "ctx_b", "endings")),
    "mmlu": Task({"source": "cais/mmlu", "config": "all", "template": "{query}", "target": "{answer}",
                  "choices": "choices", "choice_target": " {letter}", "label_field": "subject",
                  "description": MMLU_DESCRIPTION, "fewshot_same_category": True},
                 _mmlu, ("subject", "question", "choices")),
    "piqa": Task({"source": "baber/piqa", "split": "validation", "template": "Question: {goal}\nAnswer:",
                  "target": "{label}", "choices": ["sol1", "sol2"], "choice_target": " {choice}",
                  **RANDOM}),
    "openbookqa": Task({"source": "allenai/openbookqa", "config": "main", "template": "{question_stem}",
                        "target": "{answerKey}", "choices": "choices", "choice_target": " {choice}",
                        **RANDOM}),
    "truthfulqa_mc1": Task({"source": "truthfulqa/truthful_qa", "config": "multiple_choice", "split": "validation",
                            "template": TRUTHFULQA_SHOTS + "\n\nQ: {question}\nA:", "target": "0",
                            "choices": "mc1_choices", "choice_target": " {choice}", "fewshot": 0},
                           _truthfulqa, ("mc1_targets",)),
    "truthfulqa_mc2": Task({"source": "truthfulqa/truthful_qa", "config": "multiple_choice", "split": "validation",
                            "template": TRUTHFULQA_SHOTS + "\n\nQ: {question}\nA:", "target": "0",
                            "choices": "mc2_choices", "choice_target": " {choice}", "choice_labels": "mc2_labels",
                            "fewshot": 0},
                           _truthfulqa_mc2, ("mc2_targets",)),
    "winogrande": Task({"source": "allenai/winogrande", "config": "winogrande_xl", "split": "validation",
                        "template": "{sentence}", "target": "{gold}", "choices": ["option1", "option2"],
                        "choice_blank": "_", **RANDOM}, _winogrande, ("answer",)),
    "gsm8k": Task({"source": "openai/gsm8k", "config": "main", "template": "Question: {question}\nAnswer:",
                   "target": "{answer}", **RANDOM}),
}


def expanded(raw, allowed: tuple[str, ...]):
    """A recipe section or entry (raw, before validation) with its `task`'s keys filled in where it sets none of its
    own (`allowed`: the keys the section has), `name` the task's by default.

    Raises:
        ValueError: an unknown task (pydantic names the key).
    """
    if not isinstance(raw, dict) or raw.get("task") is None:
        return raw
    if raw["task"] not in TASKS:
        raise ValueError(f"task: unknown task {raw['task']!r}; tunelab knows {', '.join(TASKS)}")
    keys = {"name": raw["task"], **TASKS[raw["task"]].keys}
    return {**{k: v for k, v in keys.items() if k in allowed}, **raw}


def prepared(task: str, fields: dict) -> tuple[dict, str | None]:
    """A row's fields with those `task` adds (lm-eval's process_docs), or (fields, its problem) when it lacks a
    field the task reads."""
    spec = TASKS[task]
    if spec.prepare is None:
        return fields, None
    missing = [k for k in spec.reads if k not in fields]
    if missing:
        return fields, f"no field {missing[0]!r} (task {task} reads {', '.join(spec.reads)})"
    return {**fields, **spec.prepare(fields)}, None
