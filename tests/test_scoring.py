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


@pytest.mark.parametrize("target, states", [
    ("She pays 3 * 4 = 12.\n#### 12", True),  # GSM8K
    ("So the total is 7 + 11 = 18.\nThe answer is: 18", True),  # MetaMathQA
    ("There are 15 trees.\nThe answer is 6.", True),  # lm-eval's chain-of-thought shots
    (" -3.5 ", True), ("$1,200", True),  # a bare number
    ("The sum is 74.", False), ("1. Eat\n2. Sleep", False), ("The answer is 7. But also 8.", False),
])
def test_a_target_states_a_final_answer_only_in_the_math_datasets_forms(target, states):
    from tunelab.evaluate.scoring import states_answer
    assert states_answer(target) is states


def recipe(**ev):
    from tunelab.config import validate
    return validate({"model": {"name": "x"}, "data": {"source": "s", "template": "{q}", "target": "{a}"},
                     "eval": ev}, "r")


def splits(targets: list[str]):
    """Held-out rows with these targets, as the test split."""
    from tunelab.data import Example, Splits
    return Splits([], [], [Example(f"test-{i}", "q", t, {}) for i, t in enumerate(targets)])


def test_eval_scoring_auto_picks_numeric_or_exact_or_skips_prose(caplog):
    from tunelab.evaluate.stage import _questions, scoring_mode
    prose = splits(["In 1969 people walked on the moon, and six crews followed them."] * 3
                   + ["Paris is the capital of France and its largest city by far."] * 7)  # 3 of 10: a number
    mode, reason = scoring_mode(recipe(), prose)
    assert mode is None and reason.startswith("data.target: of 10 test targets, 0 state a final number")
    assert ", 0 are short answers (one line, at most 8 words) and 0 match eval.answer_pattern (<answer>" in reason
    assert "eval.scoring=auto needs 90% of one of them" in reason
    assert _questions(recipe(scoring="numeric"), prose)[1] == prose.test[:3]  # only rows with a number
    assert scoring_mode(recipe(scoring="exact"), prose) == ("exact", None)  # forced: scored, with a warning
    assert "eval.scoring=exact: 0 of 10 test targets are short answers" in caplog.text
    assert scoring_mode(recipe(scoring="none"), splits(["#### 4"])) == (None, "eval.scoring: none")
    math = splits(["2 + 2 = 4\n#### 4"] * 9 + ["It is five and a half, all things considered."])
    mode, rows = _questions(recipe(), math)  # 90 % state an answer: numeric, the 10th (no number) left out
    assert mode == "numeric" and len(rows) == 9
    labels = splits(["positive", "negative", "Neutral.", "very positive"] * 2 + ["two\nlines", "x " * 9])
    assert scoring_mode(recipe(), labels) == (None, scoring_mode(recipe(), labels)[1])  # 8 of 10 short: not 90 %
    assert scoring_mode(recipe(), splits(["positive", "negative"] * 5)) == ("exact", None)
    assert scoring_mode(recipe(limit=5), splits(["#### 4"] * 5 + ["no"] * 5)) == ("numeric", None)  # the rows scored


@pytest.mark.parametrize("completion, reference, strict, flexible", [
    ("Positive.", "positive", True, True),
    ("\n  **Paris**\nIt is the capital.", "Paris", True, True),  # the first non-blank line, bold marks off
    ("New  York   City", "new york city", True, True),
    ("The sentiment is positive.", "positive", False, True),  # flexible: the reference as whole words
    ("non-positive", "positive", False, False), ("positively", "positive", False, False),
    ("negative\npositive", "positive", False, False),  # only the first line is the answer
    ("", "positive", False, False),
])
def test_exact_match_reads_the_first_line(completion, reference, strict, flexible):
    from tunelab.evaluate.scoring import score_exact
    got = score_exact(completion, reference)
    assert (got["strict_correct"], got["flexible_correct"]) == (strict, flexible)


@pytest.mark.parametrize("completion, reference, strict, flexible", [
    ("<think>2 is even</think>\n<answer>even</answer>", "even", True, True),
    ("<answer> 1000 </answer>", "1,000", True, True),  # numbers compared as GSM8K's: 1,000 = 1000
    ("<answer>**Paris**.</answer>", "paris", True, True),  # bold marks, end punctuation, case
    ("<answer>London</answer> No: <answer>It is Paris.</answer>", "Paris", False, True),  # first vs last match
    ("<answer>Paris</answer> or rather <answer>Lyon</answer>", "Paris", True, False),
    ("The answer is Paris.", "Paris", False, False),  # no match: no answer, however right the prose
    ("<answer>non-even</answer>", "even", False, False),  # whole words only
    ("<answer></answer>", "even", False, False),
])
def test_regex_scoring_reads_the_default_answer_tags(completion, reference, strict, flexible):
    from tunelab.evaluate.scoring import scorer
    _, score_regex = scorer("regex")
    got = score_regex(completion, reference)
    assert (got["strict_correct"], got["flexible_correct"]) == (strict, flexible)


def test_regex_reference_is_the_targets_last_match_or_the_whole_target():
    from tunelab.evaluate.scoring import regex_answer, scorer
    import re
    reference, _ = scorer("regex")
    assert reference("<think>3 + 4 = 7</think>\n<answer>\n7\n</answer>") == "7"  # \s* around the answer, DOTALL-free
    assert reference("<answer>a</answer> then <answer>b</answer>") == "b"  # the final answer
    assert reference("  positive ") == "positive" and reference(" \n") is None  # untagged: the whole target
    reference, score = scorer("regex", r"(?i)final answer: (yes|no)\b|verdict: (\w+)")
    assert reference("Reasoning.\nVerdict: maybe") == "maybe"  # the first non-empty group
    assert score("...\nFINAL ANSWER: Yes\n", "yes")["strict_correct"]
    assert regex_answer(re.search(r"\d+", "a 12 b")) == "12"  # no groups: the whole match


def test_eval_scoring_auto_picks_regex_for_tagged_targets_and_the_pattern_asked(caplog):
    from tunelab.evaluate.stage import _questions, scoring_mode
    tagged = splits(["<think>long reasoning, 3 + 4 = 7</think>\n<answer>7</answer>"] * 9 + ["7"])
    assert scoring_mode(recipe(), tagged) == ("regex", None)  # 9 of 10 tagged: before numeric (which 1 of 10 suits)
    assert scoring_mode(recipe(), splits(["<answer>7</answer>"] * 8 + ["x y"] * 2))[0] == "exact"  # 80 %: short
    verdicts = splits([f"Because {i}.\nVerdict: {'yes' if i % 2 else 'no'}" for i in range(10)])
    assert scoring_mode(recipe(), verdicts)[0] is None
    assert "0 match eval.answer_pattern (<answer>\\s*(.*?)\\s*</answer>)" in scoring_mode(recipe(), verdicts)[1]
    mode, rows = _questions(recipe(answer_pattern=r"Verdict: (\w+)"), verdicts)
    assert mode == "regex" and len(rows) == 10
    labels = splits(["yes", "no"] * 5)  # asked for: scored against the whole target, with a warning
    assert scoring_mode(recipe(scoring="regex", answer_pattern=r"Verdict: (\w+)"), labels) == ("regex", None)
    assert "eval.scoring=regex: 0 of 10 test targets match eval.answer_pattern (Verdict: (\\w+))" in caplog.text
    assert scoring_mode(recipe(scoring="regex"), splits([" "] * 3)) == (None, "data.target: every test target is blank")


@pytest.mark.parametrize("ev, problem", [
    ({"answer_pattern": "<answer>(.*?</answer>"}, "eval.answer_pattern: not a regular expression: missing ), "
                                                  "unterminated subpattern at position 8"),
    ({"answer_pattern": "(\\d*)"}, "eval.answer_pattern: matches the empty text, so it would find an answer in "
                                   "every completion"),
    ({"answer_pattern": "#### (\\d+)", "scoring": "numeric"}, "eval.answer_pattern: read only by eval.scoring regex "
                                                              "or auto (got eval.scoring numeric)"),
])
def test_a_bad_answer_pattern_is_refused_naming_the_key(ev, problem):
    from tunelab.errors import UserError
    with pytest.raises(UserError) as err:
        recipe(**ev)
    assert problem in str(err.value)
