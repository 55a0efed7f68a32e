"""Replies scored by overlap with their references: ROUGE-L's longest common subsequence, chrF, the paired
comparison, and the report's verdict on it."""

import pytest

from tunelab.evaluate.overlap import _lcs, compare, rouge_l, score
from tunelab.report.replies import change, key_rows, line


def test_rouge_l_is_the_f1_of_the_longest_common_word_subsequence():
    # reply 6 words, reference 6 words, common subsequence "the cat sat on mat" (5): P = R = 5/6
    assert rouge_l("The cat sat on the mat.", "the cat sat on a MAT") == pytest.approx(5 / 6)
    # order matters: "c b a" against "a b c" shares one word in order, P = R = 1/3
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
    # P = 2/2, R = 2/4: F1 = 2 * 1 * 0.5 / 1.5
    assert rouge_l("red blue", "red green blue gold") == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == rouge_l("no shared words", "at all here") == 0.0
    assert rouge_l("Ça coûte 3 €, déjà payé", "ça coûte 3 déjà payé") == 1.0  # letters beyond a–z: words
    assert _lcs(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook pair: BCBA


def test_chrf_and_rouge_l_score_a_reply_from_0_to_1_and_identical_text_1():
    same = score("The colour you asked for is red.", "The colour you asked for is red.")
    assert same == {"chrf": 1.0, "rouge_l": 1.0}
    near, far = score("The colour is red.", "The colour you asked for is red."), score("42", "The colour is red.")
    assert 0 < near["chrf"] < 1 and 0 < near["rouge_l"] < 1 and far == {"chrf": 0.0, "rouge_l": 0.0}
    assert score("", "The colour is red.") == {"chrf": 0.0, "rouge_l": 0.0}


def test_compare_pairs_rows_by_id_and_its_interval_follows_the_change():
    rows = [{"id": f"r{i}", "model": m, "chrf": c, "rouge_l": c / 2}
            for i in range(20) for m, c in (("base", 0.2 + 0.01 * i), ("tuned", 0.5 + 0.01 * i))]
    rows.append({"id": "only-base", "model": "base", "chrf": 0.9, "rouge_l": 0.9})  # not paired: left out
    d = compare(rows)
    assert d["chrf"]["n"] == 20 and d["chrf"]["delta"] == pytest.approx(0.3)
    assert d["chrf"]["means"] == pytest.approx([0.295, 0.595]) and d["chrf"]["ci95"] == pytest.approx([0.3, 0.3])
    assert d["rouge_l"]["delta"] == pytest.approx(0.15)
    mixed = compare([{"id": f"r{i}", "model": m, "chrf": c, "rouge_l": c}
                     for i in range(20) for m, c in (("base", 0.5), ("tuned", 0.5 + (0.1 if i % 2 else -0.1)))])
    lo, hi = mixed["chrf"]["ci95"]
    assert lo < 0 < hi  # half the rows up, half down: no change beyond noise


def _summary(delta: float, spread: float) -> dict:
    d = {"n": 30, "delta": delta, "ci95": [delta - spread, delta + spread], "means": [0.3, 0.3 + delta]}
    return {"split": "test", "overlap": {"chrf": d, "rouge_l": {**d, "delta": delta / 2}},
            "base": {"max_new_tokens": 64, "at_budget": 0}, "tuned": {"max_new_tokens": 64, "at_budget": 2}}


@pytest.mark.parametrize("delta, spread, kind, said", [(0.12, 0.05, "good", "closer to the references"),
                                                       (-0.12, 0.05, "watch", "further from the references"),
                                                       (0.02, 0.05, "info", "no closer to the references")])
def test_the_verdict_reads_chrf_s_paired_interval(delta, spread, kind, said):
    s = _summary(delta, spread)
    found = change(s)
    assert found.kind == kind and said in found.text
    assert f"chrF 0.300 → {0.3 + delta:.3f} ({delta:+.3f}, 95 % CI {delta - spread:+.3f}..{delta + spread:+.3f})" \
        in found.text and "30 test rows" in found.text and "ROUGE-L" in found.text
    assert f"chrF 0.300 → {0.3 + delta:.3f}" in line(s)
    assert [r[0] for r in key_rows(s)] == ["Reply chrF vs reference", "Reply ROUGE-L vs reference"]
    assert line(None) is None and key_rows(None) == []


def test_compare_pairs_two_runs_tuned_replies_on_the_rows_both_answered(tmp_path):
    from tunelab.report.replies import compare_blocks
    from tunelab.rundir import RepliesDir

    def run_with(name: str, chrf: list[float], rows: int = 30) -> RepliesDir:
        view = RepliesDir(tmp_path / name)
        view.eval_dir.mkdir(parents=True)
        view.write_json(view.eval_summary, {"split": "test", "overlap": {"chrf": {}}})
        view.write_jsonl(view.predictions, [{"id": f"r{i}", "model": m, "reference": f"reply {i}", "chrf": c,
                                             "rouge_l": c / 2} for i in range(rows) for m, c in
                                            (("base", 0.1), ("tuned", chrf[i % len(chrf)]))])
        return view
    first, better, same = run_with("a", [0.3, 0.4]), run_with("b", [0.5, 0.6], rows=20), run_with("c", [0.4, 0.3])
    blocks = compare_blocks([first, better, same], ["a", "b", "c"])
    table = dict((row[0], row[1:]) for row in blocks[1][2])
    assert table["chrF"][0] == "0.350" and table["chrF"][1].startswith("0.550 (+0.200, CI +0.200..+0.200, on 20)")
    assert table["chrF"][2].startswith("0.350 (+0.000") and table["ROUGE-L"][1].startswith("0.275 (+0.100")
    found = blocks[2][1]  # only b moved beyond noise (c's rows are a's values swapped in pairs: no change)
    assert len(found) == 1 and found[0].kind == "good" and found[0].text.startswith(
        "b's generated replies are closer to the references than a's beyond noise: chrF 0.350 → 0.550")
    assert compare_blocks([RepliesDir(tmp_path / "none"), first], ["none", "a"]) == []  # first run not scored


def test_compare_pairs_two_tool_runs_replies_that_should_call_no_tool_by_their_words(tmp_path):
    """Under tool scoring, the rows whose reference calls nothing carry chrF and ROUGE-L: compare pairs the tuned
    adapters' on the rows both answered; the call rows (no chrF) are not among them."""
    from tunelab.evaluate.scoring import NO_CALL
    from tunelab.report.replies import answers_compare
    from tunelab.rundir import RunDir

    def run_with(name: str, chrf: list[float] | None) -> RunDir:
        run = RunDir(tmp_path / name)
        run.eval_dir.mkdir(parents=True)
        run.write_json(run.eval_summary, {"scoring": "tool", **({"answers": {"split": "test"}} if chrf else {})})
        run.write_jsonl(run.predictions, [
            {"id": f"r{i}", "model": m, "question": f"q{i}", "reference": NO_CALL if i % 2 else "get_time({})",
             **({"chrf": c, "rouge_l": c} if i % 2 and chrf else {})}
            for i in range(24) for m, c in (("base", 0.1), ("tuned", (chrf or [0, 0])[i % 4 // 2]))])
        return run
    first, better = run_with("a", [0.2, 0.3]), run_with("b", [0.6, 0.7])
    blocks = answers_compare([first, better], ["a", "b"])
    table = dict((row[0], row[1:]) for row in blocks[1][2])
    assert table["chrF"][0] == "0.250" and table["chrF"][1].startswith("0.650 (+0.400, CI +0.400..+0.400)")
    assert ", on " not in table["chrF"][1]  # the 12 answer rows both runs scored; the 12 call rows not counted
    assert [o.text.split(":")[0] for o in blocks[2][1]] == [
        "b's replies that should call no tool are closer to the references than a's beyond noise"]
    assert answers_compare([run_with("c", None), first], ["c", "a"]) == []  # the first run scored none
    other = run_with("d", [0.6, 0.7])
    other.write_jsonl(other.predictions, [{**r, "question": "another " + r["question"]}
                                          for r in other.read_predictions()])
    assert dict((row[0], row[1:]) for row in answers_compare([first, other], ["a", "d"])[1][2])["chrF"] == (
        "0.250", None)  # other questions under the same ids: nothing paired


def test_the_rows_whose_reply_moved_most_are_the_largest_falls_then_rises_with_their_replies(tmp_path):
    from tunelab.report.replies import MOVERS, movers
    from tunelab.rundir import RepliesDir
    view = RepliesDir(tmp_path)
    view.eval_dir.mkdir(parents=True)
    change = [-0.4, -0.1, 0.0, 0.2, 0.5, 0.3, -0.2, 0.1]  # row i's tuned chrF − base chrF
    view.write_jsonl(view.predictions, [{"id": f"r{i}", "model": m, "question": f"question {i}",
                                         "reference": f"reference {i}", "completion": f"{m} reply {i}",
                                         "chrf": 0.5 + (d if m == "tuned" else 0), "rouge_l": 0.5}
                                        for i, d in enumerate(change) for m in ("base", "tuned")])
    blocks = movers(view)
    shown = [b[1].split(":")[0] for b in blocks[1:]]
    assert MOVERS == 3 and shown == ["r0", "r6", "r1", "r4", "r5", "r3"]  # falls, largest first; then rises
    assert blocks[1][1].startswith("r0: chrF 0.500 → 0.100 (-0.400), question 0")
    assert blocks[1][2] == [("question", "question 0"), ("reference", "reference 0"), ("base", "base reply 0"),
                            ("tuned", "tuned reply 0")]
    view.write_jsonl(view.predictions, [{"id": "r0", "model": m, "question": "q", "reference": "r", "completion": "c",
                                         "chrf": 0.5, "rouge_l": 0.5} for m in ("base", "tuned")])
    assert movers(view) == []  # nothing moved: nothing shown


def test_comparisons_pair_tuned_with_every_other_model_and_each_epoch_with_the_one_before():
    from tunelab.evaluate.overlap import comparisons
    from tunelab.report.replies import _chain, baseline_changes, epoch_changes
    level = {"base": 0.1, "base-2shot": 0.3, "epoch-1": 0.4, "tuned": 0.5}
    rows = [{"id": f"r{i}", "model": m, "chrf": c + 0.01 * (i % 3), "rouge_l": c} for i in range(12)
            for m, c in level.items()]
    d = comparisons(rows, list(level))
    assert d["overlap"]["chrf"]["delta"] == pytest.approx(0.4)
    assert {name: v["chrf"]["delta"] for name, v in d["versus"].items()} == pytest.approx(
        {"base": 0.4, "base-2shot": 0.2, "epoch-1": 0.1})
    assert [(e["previous"], e["model"], round(e["chrf"]["delta"], 6)) for e in d["epochs"]] == [
        ("base", "epoch-1", 0.3), ("epoch-1", "tuned", 0.1)]
    assert "epochs" not in comparisons(rows, ["base", "tuned"])  # no epoch generated: no chain
    s = {"split": "test", **d}
    found = baseline_changes(s)
    assert len(found) == 1 and found[0].kind == "good" and found[0].text.startswith(
        "The tuned adapter's generated replies are closer to the references than those of the base model prompted "
        "2-shot, beyond noise: chrF 0.310 → 0.510 tuned (+0.200")
    level["base-chat"] = 0.5  # as close as tuned: the strongest baseline, not beaten: one to watch
    rows = [{"id": f"r{i}", "model": m, "chrf": c + 0.01 * ((i + (m == "base-chat")) % 3), "rouge_l": c}
            for i in range(12) for m, c in level.items()]  # base-chat's rows shifted: tuned − it = −1, −1, +2 (× 0.01)
    found = baseline_changes({"split": "test", **comparisons(rows, list(level))})
    assert [(o.kind, o.text.split(":")[0]) for o in found] == [
        ("good", "The tuned adapter's generated replies are closer to the references than those of the base model "
                 "prompted 2-shot, beyond noise"),
        ("watch", "The tuned adapter's generated replies and those of the base model asked through its chat template "
                  "are about as close to the references (no difference beyond noise)")]
    steps = epoch_changes(s, 2)  # epoch 1 against base is the main verdict's; epoch 2 against epoch 1 here
    assert len(steps) == 1 and steps[0].kind == "good" and steps[0].text.startswith(
        "Epoch 2 vs epoch 1, generated replies: chrF 0.410 → 0.510 (+0.100")
    assert _chain(s, 2).startswith("base 0.110 → epoch 1 0.410 (+0.300, CI +0.300..+0.300) → epoch 2 0.510 (+0.100")


def test_compare_pairs_each_categorys_reply_chrf_across_runs_at_the_first_runs_level(tmp_path):
    """data.label_field: compare gives each category's tuned reply chrF per run and each later run's change, paired
    over the category's rows both answered at the first run's Bonferroni level; a rise is good, a fall one to watch,
    a category of a handful of rows listed, not judged."""
    import random
    from tunelab.evaluate.overlap import by_category
    from tunelab.report.replies import compare_blocks
    from tunelab.rundir import RepliesDir
    from tunelab.stats import paired_loss_difference
    rng = random.Random(2)
    labels = {f"r{i}": "summaries" if i < 12 else "open_qa" if i < 24 else "poems" for i in range(27)}
    base = {i: 0.2 + 0.1 * rng.random() for i in labels}
    runs = {"a": {i: v + 0.3 for i, v in base.items()}}
    runs["b"] = {i: v + {"summaries": 0.2, "open_qa": -0.2}.get(labels[i], 0) + 0.02 * rng.random()
                 for i, v in runs["a"].items()}  # b: summaries closer, open_qa further, the 3 poems as a
    views = []
    for name, tuned in runs.items():
        view = RepliesDir(tmp_path / name)
        view.eval_dir.mkdir(parents=True)
        rows = [{"id": i, "model": m, "reference": f"reply {i}", "chrf": s[i], "rouge_l": 0.1, "label": labels[i]}
                for m, s in (("base", base), ("tuned", tuned)) for i in labels]
        view.write_jsonl(view.predictions, rows)
        view.write_json(view.eval_summary, {"split": "test", "overlap": {"chrf": {}},
                                            "by_category": by_category(rows, labels, "data.label_field (task)")})
        views.append(view)
    blocks = compare_blocks(views, ["a", "b"])
    (table,) = [b for b in blocks if b[0] == "table" and b[1][0] == "category"]
    rows = {row[0]: row for row in table[2]}
    summaries = [i for i in labels if labels[i] == "summaries"]
    d = paired_loss_difference({i: (runs["a"][i], 1) for i in summaries}, {i: (runs["b"][i], 1) for i in summaries},
                               level=0.975)
    assert rows["summaries"][1:] == (12, f"{d['means'][0]:.3f}", f"{d['means'][1]:.3f} ({d['delta']:+.3f}, CI "
                                          f"{d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})")
    assert rows["poems"][3].endswith(", not judged)")
    found = {o.text.split(" rows,")[0]: o.kind for o in blocks[-1][1]}
    assert found == {"Generated replies' chrF of summaries": "good", "Generated replies' chrF of open_qa": "watch"}


@pytest.mark.parametrize("best, kind, said", [(0.6, "watch", "closer to the references beyond noise"),
                                              (0.4, "info", "further from the references beyond noise"),
                                              (0.5, "info", "no different beyond noise")])
def test_the_best_loss_adapter_is_flagged_only_when_its_replies_beat_the_final_adapters(best, kind, said):
    from tunelab.evaluate.overlap import comparisons
    from tunelab.report.replies import best_loss_change
    level = {"base": 0.1, "best-loss": best, "tuned": 0.5}
    rows = [{"id": f"r{i}", "model": m, "chrf": c + 0.01 * ((i + (m == "tuned")) % 3), "rouge_l": c}
            for i in range(12) for m, c in level.items()]
    found = best_loss_change(comparisons(rows, list(level)), 40)
    assert found.kind == kind and found.text.startswith(f"The replies of the adapter of the lowest validation loss "
                                                        f"(step 40, adapters/best-loss) are {said} than the final")
    assert ("--epoch best-loss` exports it." in found.text) == (kind == "watch")
    assert best_loss_change(comparisons(rows, ["base", "tuned"]), 40) is None  # no best-loss adapter
