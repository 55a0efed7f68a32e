"""GSM8K scoring as in lm-evaluation-harness's gsm8k task: strict-match and flexible-extract exact match.

strict-match:     first `#### (\\-?[0-9\\.\\,]+)` in the completion
flexible-extract: last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` in the completion
Both are compared with the reference after removing `,`, `$` and a trailing `.` (and, as lm-eval's
`(?s).*#### ` ignore-regex does, anything up to `#### `). The reference is the number after `####`
in the dataset answer (or its last number when a dataset has no `####`).

Paired statistics over the scored questions live in tunelab/stats.py.

Run as: tunelab eval runs/gsm8k-3ep --limit 200
"""

from __future__ import annotations

import re

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
ANSWER_IS = re.compile(r"(?im)^.*the answer is:? *\$?-?[0-9][0-9.,]*\.?\s*\Z")
BARE = re.compile(r"\$?-?[0-9][0-9.,]*")
IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def normalize(text: str | None) -> str | None:
    if text is None:
        return None
    for pattern in IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def states_answer(target: str) -> bool:
    """The target ends in a final answer stated the way math datasets do: a `#### N` line (GSM8K), a last line
    `The answer is N` (MetaMathQA, lm-eval's chain-of-thought shots), or the whole target is one number."""
    return bool(STRICT.search(target) or ANSWER_IS.search(target) or BARE.fullmatch(target.strip()))


def extract_strict(completion: str) -> str | None:
    match = STRICT.search(completion)
    return match.group(1) if match else None


def extract_flexible(completion: str) -> str | None:
    matches = FLEXIBLE.findall(completion)
    if not matches:
        return None
    a, b = matches[-1]
    return a or b


def reference_answer(answer: str) -> str | None:
    """The gold number of a dataset answer: after `####`, else its last number."""
    if "####" in answer:
        return normalize(answer.split("####")[-1])
    return normalize(extract_flexible(answer))


def score(completion: str, reference: str) -> dict:
    """Extracted answers and exact-match flags for one completion."""
    strict, flexible = extract_strict(completion), extract_flexible(completion)
    gold = normalize(reference)
    return {"strict_answer": strict, "flexible_answer": flexible,
            "strict_correct": strict is not None and normalize(strict) == gold,
            "flexible_correct": flexible is not None and normalize(flexible) == gold}


def flips(before: dict[str, dict], after: dict[str, dict], ids: list[str], metric: str = "flexible") -> dict:
    """Questions `after` newly gets right (gained) and newly gets wrong (lost) compared with `before`,
    each a mapping of question id to its prediction row; ids in the given order."""
    key = f"{metric}_correct"
    return {"gained": [i for i in ids if after[i][key] and not before[i][key]],
            "lost": [i for i in ids if before[i][key] and not after[i][key]]}
