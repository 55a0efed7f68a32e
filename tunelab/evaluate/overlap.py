"""How close generated replies come to the references, for held-out rows no answer check suits (prose, chat
replies): chrF and ROUGE-L F1 of each reply against its reference, 0..1, and the tuned adapter − each other model
(base, prompting baselines, earlier epochs) paired over rows.

chrF:    sacrebleu's sentence chrF (character 1..6-grams, spaces removed, β = 2: recall weighs twice precision),
         the metric lm-eval's translation tasks report; / 100.
ROUGE-L: F1 of the longest common subsequence of the two word sequences (words: runs of letters and digits,
         lower-cased), Google's rouge-score `rougeL` without stemming — whose tokenizer keeps a–z and 0–9 only,
         so it would score any non-English reply 0; this one keeps every letter.

Neither says a reply is right: a correct answer worded otherwise scores low, a fluent wrong one can score high.
They say whether the fine-tune moved the replies towards what the references say and how they say it.

Run as: tunelab run my-prose.yaml      (the eval stage of a run whose answers no scoring mode suits)
"""

from __future__ import annotations

import re

from tunelab.rundir import START
from tunelab.stats import paired_loss_difference

METRICS = {"chrf": "chrF", "rouge_l": "ROUGE-L"}  # row key -> what the report calls it
WORD = re.compile(r"[^\W_]+")  # a run of letters and digits


def score(reply: str, reference: str) -> dict[str, float]:
    """Each metric of one reply against its reference (0..1; a blank reply scores 0)."""
    from sacrebleu.metrics import CHRF
    return {"chrf": round(CHRF().sentence_score(reply, [reference]).score / 100, 6),
            "rouge_l": round(rouge_l(reply, reference), 6)}


def rouge_l(reply: str, reference: str) -> float:
    """F1 of the longest common subsequence of the reply's and the reference's words (0 when either has none)."""
    a, b = WORD.findall(reply.lower()), WORD.findall(reference.lower())
    common = _lcs(a, b)
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence: one row of the dynamic-programming table at a time, O(len(b))."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # table[i-1][j-1]
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def comparisons(rows: list[dict], names: list[str]) -> dict:
    """The paired comparisons of the replies of passes `names` (in eval's order: base, prompting baselines, epochs,
    tuned): `overlap`, tuned − base; `versus`, tuned − each other pass; `epochs`, each epoch's adapter and the tuned
    one against the model before it (the first epoch against base, or the adapter the run continued), when epochs
    were generated or the run continued one. Each per metric."""
    out: dict = {"overlap": compare(rows), "versus": {name: compare(rows, name) for name in names
                                                      if name != "tuned"}}
    chain = [START if START in names else "base", *(name for name in names if name.startswith("epoch-")), "tuned"]
    if len(chain) > 2 or chain[0] == START:
        out["epochs"] = [{"model": after, "previous": before, **compare(rows, before, after)}
                         for before, after in zip(chain, chain[1:])]
    return out


def answers(rows: list[dict], names: list[str], split: str) -> dict | None:
    """Under tool scoring, the replies that should call no tool, by their words (the rows `stage._worded` scored by
    chrF and ROUGE-L): `comparisons` over those rows, with the split they are from; None when there are none."""
    worded = [r for r in rows if "chrf" in r]
    return {"split": split, **comparisons(worded, names)} if worded else None


def compare(rows: list[dict], before: str = "base", after: str = "tuned") -> dict[str, dict]:
    """Per metric, the mean of model `after`'s replies minus model `before`'s over the rows both answered, with a
    paired bootstrap 95 % interval over rows and the two means (`stats.paired_loss_difference`, every row weighing
    the same). `rows`: prediction rows with `id`, `model` and the metrics."""
    out = {}
    for metric in METRICS:
        by_model = {name: {r["id"]: (r[metric], 1) for r in rows if r["model"] == name} for name in (before, after)}
        out[metric] = paired_loss_difference(by_model[before], by_model[after])
    return out


def by_category(rows: list[dict], labels: dict[str, str | None], labelled: str | None) -> dict | None:
    """Per category of row (its label; `labelled`: where from): the mean chrF of the base model's and the tuned
    adapter's replies to its rows, paired, the interval widened for the categories judged (`losses.by_category`,
    every row weighing the same); None without labels, or with fewer than two categories."""
    from tunelab.evaluate.losses import by_category as paired
    kept = {name: {"rows": {r["id"]: (r["chrf"], 1) for r in rows if r["model"] == name}} for name in ("base", "tuned")}
    return paired(kept, labels, labelled, "chrf", "mean sentence chrF of the replies")
