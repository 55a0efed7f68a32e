"""GSM8K answer extraction and scoring (lm-eval gsm8k: strict-match and flexible-extract)."""

import json

import pytest

from tunelab.evaluate.scoring import extract_flexible, extract_strict, normalize, reference_answer, score
from tunelab.stats import paired_difference


def test_reference_is_the_number_after_hashes_on_real_gsm8k(gsm8k):
    rows = [json.loads(line) for line in (gsm8k / "test.jsonl").read_text().splitlines()]
    refs = [reference_answer(r["answer"]) for r in rows]
    assert len(refs) == 1319 and all(refs)
    assert all(r.lstrip("-").replace(".", "", 1).isdigit() for r in refs)  # commas removed, numbers only
    for r in rows[:200]:  # a dataset answer scores itself as correct under both extractions
        s = score(r["answer"], reference_answer(r["answer"]))
        assert s["strict_correct"] and s["flexible_correct"], r["answer"]


@pytest.mark.parametrize("completion, ref, strict, flexible", [
    ("She has 5 + 3 = 8 apples.\n#### 8", "8", True, True),
    ("The loss is 12 dollars.\n#### -12", "-12", True, True),
    ("Half of 7 is 3.5\n#### 3.5", "3.5", True, True),
    ("Total: 1,000 + 250 = 1,250\n#### 1,250", "1250", True, True),
    ("It costs $5.", "5", False, True),
    ("#### $5", "5", False, True),  # strict needs a digit right after '#### '
    ("The answer is 42. Then 7 more.", "42", False, False),  # flexible takes the last number
    ("I don't know.", "3", False, False),
    ("#### 10\n#### 12", "10", True, False),  # strict: first match; flexible: last
    ("18 eggs\n#### 18.", "18", True, True),  # trailing period ignored
])
def test_tricky_completions(completion, ref, strict, flexible):
    s = score(completion, ref)
    assert (s["strict_correct"], s["flexible_correct"]) == (strict, flexible)


def test_extractors_return_the_raw_match():
    assert extract_strict("x\n#### 1,234.") == "1,234."
    assert normalize("1,234.") == "1234"
    assert extract_flexible("a 12 b $3.50 c") == "$3.50"
    assert extract_flexible("no digits") is None and extract_strict("no digits") is None
    assert reference_answer("5 + 5 = 10 so ten") == "10"  # no '####': last number


def test_paired_difference_interval_and_mcnemar():
    same = paired_difference([True, False] * 50, [True, False] * 50)
    assert same["delta_pts"] == 0 and same["ci95_pts"] == [0.0, 0.0] and same["mcnemar_p"] == 1.0
    better = paired_difference([False] * 100, [True] * 30 + [False] * 70)
    assert better["delta_pts"] == 30.0 and better["ci95_pts"][0] > 15 and better["mcnemar_p"] < 1e-6
    noisy = paired_difference([True] * 5 + [False] * 95, [False] * 5 + [True] * 6 + [False] * 89)
    lo, hi = noisy["ci95_pts"]
    assert lo < 0 < hi and noisy["mcnemar_p"] > 0.5 and (noisy["gained"], noisy["lost"]) == (6, 5)
