"""GSM8K scoring as in lm-evaluation-harness's gsm8k task: strict-match and flexible-extract exact match.

strict-match:     first `#### (\\-?[0-9\\.\\,]+)` in the completion
flexible-extract: last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` in the completion
Both are compared with the reference after removing `,`, `$` and a trailing `.` (and, as lm-eval's
`(?s).*#### ` ignore-regex does, anything up to `#### `). The reference is the number after `####`
in the dataset answer (or its last number when a dataset has no `####`).

Run as: tunelab eval runs/gsm8k-3ep --limit 200
"""

from __future__ import annotations

import re

import numpy as np

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def normalize(text: str | None) -> str | None:
    if text is None:
        return None
    for pattern in IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


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


def paired_difference(base: list[bool], tuned: list[bool], seed: int = 0, resamples: int = 10_000) -> dict:
    """Accuracy delta (tuned - base, points) on the same questions, with a 95 % paired bootstrap CI
    and McNemar's exact two-sided p-value over the discordant pairs."""
    n = len(base)
    assert n == len(tuned) and n > 0
    diffs = np.array(tuned, dtype=np.int8) - np.array(base, dtype=np.int8)  # (n,) in {-1, 0, 1}
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    lo, hi = np.percentile(diffs[idx].mean(axis=1), [2.5, 97.5])
    gained, lost = int((diffs == 1).sum()), int((diffs == -1).sum())
    return {"n": n, "delta_pts": round(100 * float(diffs.mean()), 3),
            "ci95_pts": [round(100 * float(lo), 3), round(100 * float(hi), 3)],
            "gained": gained, "lost": lost, "mcnemar_p": _mcnemar_exact(gained, lost)}


def _mcnemar_exact(b: int, c: int) -> float:
    """Exact binomial McNemar test: two-sided p for b vs c discordant pairs (scipy's binomial test)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest
    return float(binomtest(b, b + c, 0.5).pvalue)
