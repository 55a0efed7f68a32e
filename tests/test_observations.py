"""Observation rules: synthetic metric histories flip the verdicts as they should."""

import pytest

from tunelab.report.observations import (accuracy_change, answer_budget, cost_accuracy, familiarity,
                                         generalisation_gap, memory_accuracy, overfitting, token_accuracy,
                                         unfinished_thinking, versus_baseline)


def history(val, train=None, acc=None):
    train = train or [None] + [v * 0.95 for v in val[1:]]
    acc = acc or [0.5 + 0.01 * i for i in range(len(val))]
    return [{"epoch": i, "val_loss": v, "train_loss": t, "val_token_accuracy": a, "train_token_accuracy": a}
            for i, (v, t, a) in enumerate(zip(val, train, acc))]


def test_falling_validation_loss_is_no_sign_of_overfitting():
    o = overfitting(history([2.31, 1.62, 1.55]))
    assert o.kind == "good"
    assert o.text == "Validation loss fell in every epoch (2.310 → 1.620 → 1.550): no sign of overfitting."


def test_rising_validation_with_falling_train_is_overfitting_and_names_the_best_epoch():
    o = overfitting(history([2.31, 1.62, 1.55, 1.61], train=[None, 1.9, 1.4, 1.1]))
    assert o.kind == "watch"
    assert "rose after epoch 2 (1.550 → 1.610) while train loss fell (1.400 → 1.100): likely overfitting" in o.text
    assert "epoch-2 checkpoint had the lowest validation loss" in o.text


def test_rising_validation_without_falling_train_is_not_called_overfitting():
    o = overfitting(history([2.0, 1.5, 1.6], train=[None, 1.2, 1.25]))
    assert "likely overfitting" not in o.text and "noisy" in o.text


def test_flat_validation_loss_means_no_measurable_learning():
    o = overfitting(history([1.500, 1.499, 1.497]))
    assert o.kind == "watch" and "did not change beyond 1 %" in o.text


def test_noisy_validation_loss_is_noisy_not_overfitting():
    o = overfitting(history([2.0, 1.7, 1.8, 1.6]))
    assert o.kind == "info" and "noisy" in o.text and "likely overfitting" not in o.text


def test_plateau_and_overall_rise():
    assert "flattened" in overfitting(history([2.0, 1.6, 1.599])).text
    o = overfitting(history([1.0, 1.2, 1.3], train=[None, 0.9, 0.95]))
    assert o.kind == "watch" and "rose overall" in o.text


@pytest.mark.parametrize("ci, kind, phrase", [
    ([4.0, 16.0], "good", "rose beyond noise"),
    ([-1.2, 2.8], "info", "did not change beyond noise"),
    ([-9.0, -1.0], "watch", "fell beyond noise"),
])
def test_accuracy_verdict_follows_the_interval(ci, kind, phrase):
    d = {"delta_pts": sum(ci) / 2, "ci95_pts": ci, "n": 200}
    o = accuracy_change(d, "flexible-extract", 0.10, 0.10 + sum(ci) / 200)
    assert o.kind == kind and phrase in o.text and f"95 % CI {ci[0]:+.1f}..{ci[1]:+.1f}" in o.text


def test_token_accuracy_gap_cost_and_baseline_rules():
    assert token_accuracy(history([2, 1.5], acc=[0.60, 0.70])).kind == "good"
    assert token_accuracy(history([2, 1.5], acc=[0.60, 0.602])).kind == "info"
    assert generalisation_gap(history([2.0, 1.0], train=[None, 0.5])).kind == "watch"
    assert generalisation_gap(history([2.0, 1.0], train=[None, 0.95])) is None
    assert generalisation_gap(history([2.0, 0.065], train=[None, 0.057])) is None  # 13 % of almost nothing
    slow = cost_accuracy({"hours": 0.1, "cost_usd": 0.01}, {"device_hours": 0.35, "cost_usd": 0.03})
    assert slow.kind == "watch" and "3.50×" in slow.text
    assert cost_accuracy({"hours": 0.1, "cost_usd": 0.01}, {"device_hours": 0.12, "cost_usd": 0.012}).kind == "info"
    estimate = {"device": "L4", "memory_gib": 24, "gpu_memory": {"allocated_gib": 20.0}}
    over = memory_accuracy(estimate, {"peak_gpu_memory_mib": 31.0 * 1024})
    assert over.kind == "watch" and "31.0 GiB, 1.55× the 20.0 GiB estimated" in over.text
    assert memory_accuracy(estimate, {"peak_gpu_memory_mib": 18.0 * 1024}).kind == "info"
    assert memory_accuracy(estimate, {"peak_rss_mib": 900}) is None  # a CPU run
    assert memory_accuracy({"device": "cpu"}, {"peak_gpu_memory_mib": 900}) is None
    better = versus_baseline({"final_val_loss": 1.0, "epochs": 3, "wall_seconds": 60},
                             {"final_val_loss": 1.2, "epochs": 2, "wall_seconds": 40}, "3ep", "2ep")
    assert better[0].kind == "good" and "lower (better)" in better[0].text and "-16.7 %" in better[0].text
    assert better[-1].text == "Wall time 1.0 min vs 0.7 min (3 vs 2 epochs)."
    steps = versus_baseline({"final_val_loss": 1.0, "epochs": 2, "wall_seconds": 60, "steps": 50, "max_steps": 50},
                            {"final_val_loss": 1.2, "epochs": 2, "wall_seconds": 40, "steps": 40}, "a", "b")
    assert steps[-1].text == "Wall time 1.0 min vs 0.7 min (2 vs 2 epochs, 50 vs 40 steps)."
    tagged = {"scoring": "regex", "answer_pattern": "<answer>(.*?)</answer>", "tuned_flexible_accuracy": 0.5}
    worded = {**tagged, "answer_pattern": "Answer: (\\w+)", "tuned_flexible_accuracy": 0.2}
    runs = [{"final_val_loss": 1.0, "epochs": 2, "wall_seconds": 60, "eval": ev} for ev in (worded, tagged)]
    said = [o.text for o in versus_baseline(*runs, "a", "b")]  # one mode, two patterns: not compared
    assert "The runs scored answers differently (regex 'Answer: (\\\\w+)' vs regex '<answer>(.*?)</answer>'): " \
           "their accuracies are not compared." in said


def _rows(losses, tokens=10):
    return [(loss, tokens) for loss in losses]


def test_a_test_set_the_base_model_finds_more_familiar_than_the_train_split_is_flagged():
    """Skywork's check: before training, test rows with a lower loss than held-out train-split rows beyond noise
    are a sign of contamination; the same loss is no sign; a higher one says the test rows are harder."""
    val = _rows([2.0 + 0.01 * (i % 7) for i in range(40)])
    seen = familiarity(_rows([1.2 + 0.01 * (i % 5) for i in range(30)]), val)
    assert seen.kind == "watch" and "may have been in its pretraining data" in seen.text
    assert "1.220 on 30 test rows vs 2.029 on 40 validation rows, -0.809, 95 % CI -0.817..-0.801" in seen.text
    same = familiarity(_rows([2.0 + 0.01 * (i % 7) for i in range(3, 33)]), val)
    assert same.kind == "info" and "no sign of heavy exposure to the test set" in same.text  # a weak pass
    harder = familiarity(_rows([2.9 + 0.01 * (i % 3) for i in range(30)]), val)
    assert harder.kind == "info" and "less familiar" in harder.text
    # token-weighted: one long row with a low loss pulls the test mean down
    weighted = familiarity([(1.0, 100), *_rows([3.0] * 9)], _rows([3.0] * 10))
    assert "1.947 on 10 test rows" in weighted.text  # (100 * 1.0 + 90 * 3.0) / 190
    assert familiarity([], val) is None and "Skywork" in seen.rule


def test_passes_whose_answers_reach_the_token_budget_are_named_from_a_tenth_of_their_answers():
    def stats(at_budget):
        return {"n": 100, "strict_accuracy": 0.1, "flexible_accuracy": 0.1, "tokens_per_second": 9.0,
                "max_new_tokens": 96, **({"at_budget": at_budget} if at_budget is not None else {})}
    evaluation = {"base": stats(9), "base-chat": stats(44), "tuned": stats(None)}  # tuned: an eval before the count
    o = answer_budget(evaluation)
    assert o.kind == "watch" and "base-chat 44 of 100 (budget 96 tokens)." in o.text and "base " not in o.text
    evaluation["base"]["at_budget"] = 10
    assert "base 10 of 100 (budget 96 tokens); base-chat 44 of 100" in answer_budget(evaluation).text
    assert answer_budget({"base": stats(9), "tuned": stats(0)}) is None


def test_passes_whose_replies_often_never_end_their_thinking_are_named():
    def stats(without=None):
        return {"n": 40, "strict_accuracy": 0.1, "flexible_accuracy": 0.1, "tokens_per_second": 9.0,
                "max_new_tokens": 512,
                **({"think_end": "</think>", "without_think_end": without} if without is not None else {})}
    o = unfinished_thinking({"base": stats(), "base-chat": stats(37), "tuned": stats(3)})
    assert o.kind == "watch" and "hold no </think>: base-chat 37 of 40 (budget 512 tokens)." in o.text
    assert "tuned" not in o.text and "10 %" in o.rule  # 3 of 40 is under a tenth
    assert unfinished_thinking({"base": stats(), "tuned": stats(0)}) is None


def test_overlapping_rows_measured_by_loss_are_set_against_the_rest_by_how_far_their_loss_fell():
    from tunelab.report.observations import contamination
    checks = {"settings": {"ngram": 13, "near": False, "near_threshold": 0.9}, "rows": {"test": 6},
              "overlap": [{"split": "test", "row_id": "test-1", "kind": "exact"},
                          {"split": "test", "row_id": "test-2", "kind": "13-gram"}],
              "overlap_counts": {"test": {"exact": 1, "13-gram": 1, "near": 0}}}
    fall = {"test-1": -1.5, "test-2": -1.3, "test-3": -0.4, "test-4": -0.5, "test-5": -0.3, "test-6": -0.6}
    losses = {i: {"base": (2.0, 10), "tuned": (2.0 + d, 10)} for i, d in fall.items()}  # seen rows fell further
    o = contamination(checks, [], "src", "src", losses)
    assert o.kind == "watch" and o.text.startswith("2 test questions overlap training rows (1 exact, 1 13-gram); "
                                                   "the fine-tune moved their target loss by -1.400 vs -0.450 on the "
                                                   "rest (n = 2 vs 4 rows, difference -0.950, 95 % CI -")
    assert "per-row change of target loss" in o.rule
    assert "moved their target loss" not in contamination(checks, [], "src", "src", {}).text  # nothing measured


def test_passes_the_scoring_read_no_answer_from_are_named_a_note_for_the_base_a_watch_for_the_fine_tune():
    from tunelab.report.observations import unread_answers

    def stats(no_answer):
        return {"n": 50, "strict_accuracy": 0.1, "flexible_accuracy": 0.1, "tokens_per_second": 9.0,
                **({"no_answer": no_answer} if no_answer is not None else {})}
    evaluation = {"scoring": "regex", "base": stats(50), "base-chat": stats(4), "tuned": stats(None)}
    o = unread_answers(evaluation)  # base-chat under a tenth; tuned from an eval before the count
    assert o.kind == "info" and "(no match of the answer pattern): base 50 of 50. Those passes'" in o.text
    assert "a prompting baseline (eval.fewshot, eval.chat_baseline, eval.prompt_baseline: the answer's form asked " \
        "for in words) asks the base model in other ways" in o.text
    evaluation["tuned"]["no_answer"] = 5
    o = unread_answers({**evaluation, "scoring": "numeric"})
    assert o.kind == "watch" and "(no number at all): base 50 of 50; tuned 5 of 50. " in o.text
    assert "prompting baseline" not in o.text and "from which the numeric scoring read no answer" in o.rule
    assert unread_answers({"scoring": "exact", "base": stats(4), "tuned": stats(0)}) is None
