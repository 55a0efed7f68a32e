"""Accuracy per epoch, best epoch, few-shot baseline, flips, paired cross-run comparison and the rules that
read them — on constructed prediction rows and fixture run directories (no model)."""

import json
import random

import pytest

from fixture_run import add_eval, add_val_rows, make_run
from tunelab.card import render
from tunelab.evaluate.scoring import flips
from tunelab.evaluate.summary import by_category, comparisons
from tunelab.report import compare, eval_lines, write_report
from tunelab.report.observations import cluster_separation, imitation_without_solving, overfitting
from tunelab.rundir import RunDir


def flags(n: int, right: set[int]) -> list[bool]:
    return [i in right for i in range(n)]


def test_flips_are_the_questions_that_changed_and_nothing_else():
    before = {i: {"flexible_correct": ok} for i, ok in zip("abcd", [True, False, True, False])}
    after = {i: {"flexible_correct": ok} for i, ok in zip("abcd", [True, True, False, False])}
    assert flips(before, after, list("abcd")) == {"gained": ["b"], "lost": ["c"]}


def test_epochs_best_epoch_prompting_baselines_and_flips_from_prediction_rows(tmp_path):
    n = 40
    run = make_run(tmp_path / "r", epochs_n=3, val=(2.3, 1.6, 1.5, 1.45), train=(1.9, 1.4, 1.3))
    s = add_eval(run, {"base": flags(n, set(range(4))), "base-5shot": flags(n, set(range(10))),
                       "base-chat": flags(n, set(range(1, 21))), "base-chat-5shot": flags(n, set(range(5, 20))),
                       "epoch-1": flags(n, set(range(12))),
                       "epoch-2": flags(n, set(range(20))),
                       "tuned": flags(n, set(range(2, 21)))}, final_epoch=3, fewshot=5)
    assert [(e["epoch"], e["model"], e["flexible_accuracy"]) for e in s["epochs"]] == \
        [(1, "epoch-1", 0.3), (2, "epoch-2", 0.5), (3, "tuned", 19 / 40)]
    assert s["epochs"][0]["vs_previous"] is None and s["epochs"][1]["vs_previous"]["flexible"]["delta_pts"] == 20.0
    assert s["epochs"][2]["vs_base"]["flexible"]["gained"] == 17 and s["epochs"][2]["vs_base"]["flexible"]["lost"] == 2
    assert s["best_epoch"]["epoch"] == 2
    assert s["fewshot"]["tuned_vs_fewshot"]["flexible"]["delta_pts"] == pytest.approx(100 * (19 - 10) / 40)
    chat = s["chat_baseline"]["tuned_vs_chat"]["flexible"]  # tuned right on 2..20, asked via chat on 1..20
    assert (chat["delta_pts"], chat["gained"], chat["lost"]) == (pytest.approx(-2.5), 0, 1)
    pairs = {(f["from"], f["to"]): f for f in s["flips"]}
    assert set(pairs) == {("base", "tuned"), ("epoch-1", "epoch-2"), ("epoch-2", "tuned")}
    assert pairs[("epoch-2", "tuned")]["gained"] == ["test-20"]
    assert pairs[("epoch-2", "tuned")]["lost"] == ["test-0", "test-1"]

    r = RunDir(run)
    price = {"device": "cpu", "usd_per_hour": 0.085, "price_source": "table"}
    r.write_json(r.eval_summary, {**s, "cost": {**price, "device_hours": 0.05, "cost_usd": 0.00425}})
    (run / "eval" / "also" / "bench").mkdir(parents=True)  # an eval.also set's passes count too
    r.write_json(run / "eval" / "also" / "bench" / "summary.json", {"cost": {**price, "device_hours": 0.01,
                                                                             "cost_usd": 0.00085}})
    write_report(r)
    md, html = r.report_md.read_text(), r.report_html.read_text()
    assert "| Eval cost | $0.0051 measured (3.6 device-min of answer passes × $0.085/h;" in md
    assert "| Best epoch by accuracy | epoch 2 |" in md
    assert (r.report_files / "accuracy_per_epoch.png").exists() and html.count("data:image/png;base64,") == 5
    assert "Epoch 3 vs epoch 2 (flexible-extract): 50.0 % → 47.5 %, -2.5 pts, 95 % CI" in md
    assert "n = 40 — no gain beyond noise." in md and "Epoch 2 vs epoch 1 (flexible-extract)" in md
    assert "The fine-tune did not beat prompting beyond noise: 47.5 % vs 50.0 % for the base model asked through " \
           "its chat template (zero-shot, the prompt as the user turn, lm-eval's --apply_chat_template), -2.5 pts" in md
    assert "The other prompting baselines: base 5-shot 25.0 % (+22.5 pts, 95 % CI" in md  # judged by the strongest
    assert "; base 5-shot via chat template 37.5 % (+10.0 pts, 95 % CI" in md and "The fine-tune beat prompting" not in md
    assert "| vs the base model asked through its chat template (flexible-extract) | 50.0 % → 47.5 % | -2.5 pts" in md
    assert "| vs the base model prompted 5-shot through its chat template (flexible-extract) | 37.5 % → 47.5 % | " \
           "+10.0 pts" in md and "--fewshot_as_multiturn; shots: the first 5 training rows |" in md
    assert "vs base via chat template (50.0 %): -2.5 pts" in "\n".join(eval_lines(s))
    text = render(r)  # the model card names what each baseline row is
    assert "| base-chat | 40 | 50.0 % | 50.0 % |" in text and "`base-5shot` is the base model prompted 5-shot (lm-eval's " \
        "GSM8K format, shots: the first 5 training rows); `base-chat` is the base model asked through its chat " \
        "template (zero-shot" in text
    assert "## Questions gained and lost" in md and "epoch-2 → tuned: 1 gained, 2 lost (net -1)." in md
    assert "<details><summary>lost test-0" in html and "epoch-2 says 0" in html and "tuned says 1" in html


def test_tied_epochs_go_to_the_earlier_one():
    rows, stats = [], {}
    for model in ("base", "epoch-1", "tuned"):
        rows += [{"id": f"q{i}", "model": model, "strict_correct": i < 2, "flexible_correct": i < 2} for i in range(4)]
        stats[model] = {"n": 4, "strict_accuracy": 0.5, "flexible_accuracy": 0.5}
    s = comparisons(rows, stats, [f"q{i}" for i in range(4)], final_epoch=2, fewshot=0)
    assert s["best_epoch"]["epoch"] == 1 and "fewshot" not in s


def test_imitation_rule_fires_only_when_loss_improves_and_accuracy_does_not():
    epochs = [{"epoch": 0, "val_loss": 1.0, "val_token_accuracy": 0.60},
              {"epoch": 1, "val_loss": 0.58, "val_token_accuracy": 0.68}]
    noise = {"flexible_difference": {"n": 180, "delta_pts": 1.0, "ci95_pts": [-3.0, 5.0]},
             "base": {"flexible_accuracy": 0.02}, "tuned": {"flexible_accuracy": 0.03}}
    o = imitation_without_solving(epochs, noise)
    assert o.kind == "watch" and "fell 42 %" in o.text and "rose 8.0 pts" in o.text
    assert "imitates the answer text better; it does not answer more questions right" in o.text
    real = {**noise, "flexible_difference": {"n": 180, "delta_pts": 9.0, "ci95_pts": [4.0, 14.0]}}
    assert imitation_without_solving(epochs, real) is None
    flat = [epochs[0], {"epoch": 1, "val_loss": 0.999, "val_token_accuracy": 0.68}]
    assert imitation_without_solving(flat, noise) is None


@pytest.mark.parametrize("silhouette, phrase", [(0.048, "named themes, not distinct problem types"),
                                                (0.3, "weak structure"), (0.6, "reasonable structure"),
                                                (0.8, "strong structure")])
def test_cluster_separation_is_stated_by_a_silhouette_rule(silhouette, phrase):
    text = cluster_separation(silhouette, 4)
    assert phrase in text and f"silhouette {silhouette:.3f} at k = 4" in text


def test_validation_loss_changes_are_judged_by_a_paired_interval():
    rng = random.Random(0)
    before = [1.0 + rng.gauss(0, 0.3) for _ in range(20)]
    noisy = [b + rng.gauss(0, 0.3) for b in before]  # no systematic change, 20 rows
    shifted = [b - 0.2 for b in before]  # every row improved
    epochs = [{"epoch": 0, "val_loss": 1.0, "train_loss": None}, {"epoch": 1, "val_loss": 0.95, "train_loss": 0.9}]
    rows = {0: {f"v{i}": (x, 10) for i, x in enumerate(before)}}
    tolerance = overfitting(epochs)  # a 5 % drop passes the 1 % tolerance
    assert tolerance.kind == "good" and "1 %" in tolerance.rule
    judged = overfitting(epochs, {**rows, 1: {f"v{i}": (x, 10) for i, x in enumerate(noisy)}})
    assert "did not change beyond" in judged.text and "paired 95 % bootstrap" in judged.rule
    assert overfitting(epochs, {**rows, 1: {f"v{i}": (x, 10) for i, x in enumerate(shifted)}}).kind == "good"


@pytest.mark.slow
def test_runs_on_the_same_questions_and_rows_are_compared_paired(tmp_path):
    n = 60
    a = make_run(tmp_path / "gsm8k-2ep", val=(2.31, 1.70), train=(1.9,), epochs_n=1)
    b = make_run(tmp_path / "gsm8k-3ep")
    add_eval(a, {"base": flags(n, set(range(5))), "tuned": flags(n, set(range(20)))}, final_epoch=1)
    add_eval(b, {"base": flags(n, set(range(5))), "tuned": flags(n, set(range(22)))})
    rng = random.Random(1)
    losses = [0.8 + rng.gauss(0, 0.2) for _ in range(20)]
    add_val_rows(a, {0: [x + 1 for x in losses], 1: losses})
    add_val_rows(b, {0: [x + 1 for x in losses], 2: [x + rng.gauss(0, 0.2) for x in losses]})
    write_report(RunDir(b), baseline=RunDir(a))
    md = RunDir(b).report_md.read_text()
    assert "over 20 validation rows" in md and "paired difference" in md
    assert "GSM8K-style accuracy (flexible-extract, gsm8k-3ep vs gsm8k-2ep) did not change beyond noise" in md
    assert "unpaired" not in md and "no paired interval" not in md
    compare([RunDir(a), RunDir(b)], tmp_path / "cmp")
    assert "over 20 validation rows" in (tmp_path / "cmp" / "compare.md").read_text()
    add_eval(a, {"base": flags(n - 1, set()), "tuned": flags(n - 1, set(range(20)))}, final_epoch=1)
    write_report(RunDir(b), baseline=RunDir(a))  # a shorter eval.limit: paired on the questions both scored
    assert ("(flexible-extract, gsm8k-3ep vs gsm8k-2ep, on the 59 questions both scored (gsm8k-2ep 59, gsm8k-3ep "
            "60)) did not change beyond noise") in RunDir(b).report_md.read_text()


def test_report_data_section_states_overlap_and_accuracy_on_it(tmp_path):
    run = make_run(tmp_path / "r")
    add_eval(run, {"base": flags(40, set()), "tuned": flags(40, {0, 1, 2, 10, 11})})
    overlap = [{"split": "test", "row_id": f"test-{i}", "train_id": f"train-{7 + i}", "kind": "exact", "score": 1.0,
                "row_text": f"Question {i}", "train_text": f"Question {i}"} for i in range(3)]
    checks = {"settings": {"ngram": 13, "near_threshold": 0.95, "near": True, "embedder": "minilm"},
              "rows": {"train": 360, "validation": 40, "test": 40, "deduplicated": 0},
              "overlap_counts": {"test": {"exact": 3, "ngram": 0, "near": 0},
                                 "validation": {"exact": 0, "ngram": 0, "near": 0}},
              "overlap": overlap, "train_duplicates": {"exact_groups": 1, "exact_rows": 2, "exact": [], "near_pairs": 0,
                                                       "near": []},
              "lengths": {"rows": 400, "max_length": 256, "truncated": 0, "padding_share": 0.02,
                          "total": {"p50": 80, "p99": 150, "max": 160}, "recommendation": "fine"},
              "targets": {"train": {"rows": 400, "scoreable": 400}, "test": {"rows": 40, "scoreable": 40}},
              "verdict": "test overlap found: 3 exact"}
    (run / "analysis" / "data_checks.json").write_text(json.dumps(checks))
    r = RunDir(run)
    write_report(r)
    md = r.report_md.read_text()
    assert "## Data" in md and "| test | 40 | 3 | 0 | 0 |" in md
    assert ("3 test questions overlap training rows (3 exact); tuned accuracy on them 100.0 % vs 5.4 % on the "
            "rest (n = 3 vs 37") in md
    assert "2 exact duplicates" in md
    (run / "analysis" / "data_checks.json").write_text(json.dumps({**checks, "overlap": [], "overlap_counts": {
        "test": {"exact": 0, "ngram": 0, "near": 0}, "validation": {"exact": 0, "ngram": 0, "near": 0}}}))
    write_report(r)
    assert "No test row overlaps the training rows by any of the checks (exact, 13-gram and near-duplicate" in \
        r.report_md.read_text()


def test_accuracy_by_label_is_paired_per_category_and_judged_with_a_bonferroni_bound(tmp_path):
    """data.label_field categories: base → tuned per category with McNemar's p against 0.05 / categories."""
    labels = ["add"] * 30 + ["sub"] * 30 + ["mul"] * 10
    base = flags(70, set(range(30, 45)) | {60, 61})
    tuned = flags(70, set(range(0, 25)) | set(range(30, 46)) | {60})  # add: 0 → 25 of 30; sub +1; mul −1
    run = make_run(tmp_path / "r", epochs_n=2, val=(2.0, 1.5, 1.4), train=(1.8, 1.3))
    s = add_eval(run, {"base": base, "tuned": tuned}, labels=labels)
    cat = s["by_category"]
    assert cat["source"] == "data.label_field (family)" and cat["alpha"] == pytest.approx(0.05 / 3, abs=1e-6)
    rows = {r["category"]: r for r in cat["rows"]}
    assert [r["category"] for r in cat["rows"]] == ["add", "sub", "mul"]  # most questions first
    assert (rows["add"]["n"], rows["add"]["base_accuracy"]) == (30, 0.0)
    assert rows["add"]["tuned_accuracy"] == pytest.approx(25 / 30, abs=1e-6)
    assert rows["add"]["difference"]["gained"] == 25 and rows["add"]["difference"]["mcnemar_p"] < 1e-6
    assert rows["sub"]["difference"]["delta_pts"] == pytest.approx(100 / 30, abs=1e-3)
    assert rows["mul"]["difference"]["lost"] == 1
    write_report(RunDir(run))
    md = (run / "report.md").read_text()
    assert "## Accuracy by category" in md and "| add | 30 | 0 % | 83 % | +83.3 (+" in md
    assert "GSM8K-style accuracy (flexible-extract) rose beyond noise in 1 of 3 categories: add 0 % → 83 % " \
        "(n = 30, p = " in md
    assert "fell beyond noise" not in md  # mul's −10 pts on 10 questions is within noise
    card = render(RunDir(run))
    assert ("Base → tuned by category (data.label_field (family); flexible-extract; beyond noise = McNemar "
            "p < 0.017") in card
    assert "| add | 30 | 0 % | 83 % | +83.3 (+" in card and card.count("| yes |") == 1


def test_held_out_loss_by_label_is_paired_per_category_with_a_bonferroni_interval_and_small_ones_unjudged():
    from tunelab.evaluate.losses import MIN_CATEGORY_ROWS, by_category
    from tunelab.report.categories import LOSS, blocks, line, verdict
    from tunelab.stats import paired_loss_difference
    rng = random.Random(0)
    labels = {f"r{i}": "recipes" if i < 12 else "poems" if i < 24 else "jokes" for i in range(27)}
    base = {i: (2.0 + rng.random(), 10 + k) for k, i in enumerate(labels)}
    tuned = {i: (loss - 1.0 + 0.05 * rng.random() if labels[i] == "recipes" else loss + rng.uniform(-0.5, 0.5), n)
             for i, (loss, n) in base.items()}  # recipes fell by about 1, poems moved at random, 3 jokes
    by = by_category({"base": {"rows": base}, "tuned": {"rows": tuned}}, labels, "data.label_field (topic)")
    assert [r["category"] for r in by["rows"]] == ["poems", "recipes", "jokes"]  # the most rows first
    assert by["judged"] == 2 and by["level"] == 0.975 and MIN_CATEGORY_ROWS > 3
    rows = {r["category"]: r for r in by["rows"]}
    recipes = [i for i in labels if labels[i] == "recipes"]
    wide = paired_loss_difference({i: base[i] for i in recipes}, {i: tuned[i] for i in recipes})
    ci = rows["recipes"]["difference"]["ci"]
    assert ci[0] <= wide["ci95"][0] and ci[1] >= wide["ci95"][1] and ci[1] < 0  # wider than 95 %, still below 0
    assert rows["recipes"]["tuned_loss"] == pytest.approx(wide["means"][1], abs=1e-6)
    assert rows["jokes"]["difference"]["ci"] is None and rows["jokes"]["n"] == 3  # too few rows to judge
    said = verdict(by, LOSS)
    assert said.kind == "good" and said.text.startswith(
        f"The held-out target loss fell beyond noise in 1 of 2 categories judged: recipes "
        f"{rows['recipes']['base_loss']:.3f} → {rows['recipes']['tuned_loss']:.3f} (n = 12).")
    (table,) = [b for b in blocks(by, LOSS) if b[0] == "table"]
    assert table[2][2][4].endswith(" (not judged)") and "1 with fewer than 10 rows are listed without one" in \
        blocks(by, LOSS)[0][1]
    assert line(by, LOSS) == ("target loss per category (data.label_field (topic)): lower beyond noise in 1 "
                              "(recipes) of 2 judged, higher beyond noise in 0")
    assert by_category({"base": {"rows": base}, "tuned": {"rows": tuned}}, {**labels, "r0": None},
                       "data.label_field (topic)") is None


@pytest.mark.slow
def test_compare_and_the_baseline_report_pair_each_category_across_runs(tmp_path):
    """Runs on the same labelled questions: per category, each later run's tuned accuracy against the first's,
    paired, with the same Bonferroni bound; a run that scored some of them is paired on those, one that scored
    other questions is named and left out."""
    labels = ["add"] * 30 + ["sub"] * 30 + ["mul"] * 10
    first, second = make_run(tmp_path / "two-ep"), make_run(tmp_path / "three-ep")
    base = flags(70, set())
    add_eval(first, {"base": base, "tuned": flags(70, set(range(0, 5)) | set(range(30, 50)))}, labels=labels)
    add_eval(second, {"base": base, "tuned": flags(70, set(range(0, 28)) | set(range(30, 48)))}, labels=labels)
    fewer = make_run(tmp_path / "fewer")  # eval.limit 40: all of add, 10 of sub, none of mul
    add_eval(fewer, {"base": flags(40, set()), "tuned": flags(40, {1})}, labels=labels[:40])
    elsewhere = make_run(tmp_path / "elsewhere")  # the same ids, other questions (another eval.source)
    add_eval(elsewhere, {"base": flags(70, set()), "tuned": flags(70, set())}, labels=labels)
    predictions = elsewhere / "eval" / "predictions.jsonl"
    predictions.write_text(predictions.read_text().replace("apples", "pears"))
    compare([RunDir(first), RunDir(second), RunDir(fewer), RunDir(elsewhere)], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## Accuracy by category" in md
    assert "| category | n | two-ep | three-ep | fewer |" in md
    assert "| add | 30 | 17 % | 93 % (+76.7 pts, p " in md  # 5 → 28 of 30
    assert "| sub | 30 | 67 % | 60 % (-6.7 pts, p 0.5) | 0 % (-100.0 pts, p 0.002, on 10) |" in md  # 10 → 0 of 10
    assert "| mul | 10 | 0 % | 0 % (+0.0 pts, p 1) | — |" in md  # fewer scored none of mul
    assert "Not compared by category: elsewhere" in md
    assert ("Tuned accuracy of three-ep against two-ep rose beyond noise in 1 of 3 categories: add 17 % → 93 % "
            "(n = 30, p = ") in md
    write_report(RunDir(second), baseline=RunDir(first))
    report = (second / "report.md").read_text()
    assert "| add | 30 | 17 % | 93 % (+76.7 pts, p " in report and "fell beyond noise" not in report


def test_reference_classes_give_per_class_accuracy_and_a_confusion_table():
    """Exact scoring with few distinct references (a classification set): the reference is the category, case and
    end punctuation ignored, and each model's answers are counted by the class their line names."""
    refs = ["Positive", "negative", "positive.", "Negative", "neutral", "neutral"]
    base_lines = ["positive", "positive", "positive", "I think positive or negative", None, "meh"]
    tuned_lines = ["positive", "negative", "positive", "negative", "neutral", "positive"]
    rows = []
    for model, lines in (("base", base_lines), ("tuned", tuned_lines)):
        for i, (ref, line) in enumerate(zip(refs, lines)):
            ok = line is not None and ref.lower().strip(".") in line.split()
            rows.append({"id": str(i), "model": model, "reference": ref, "flexible_answer": line,
                         "flexible_correct": ok and len(line.split()) == 1})
    ids = [str(i) for i in range(6)]
    cat = by_category(rows, ids, None, "exact")
    assert cat["source"] == "reference answer (class)"
    assert {r["category"]: r["n"] for r in cat["rows"]} == {"positive": 2, "negative": 2, "neutral": 2}
    assert cat["confusion"]["base"] == {"positive": {"positive": 2}, "negative": {"positive": 1, "several": 1},
                                        "neutral": {"other": 2}}
    assert cat["confusion"]["tuned"] == {"positive": {"positive": 2}, "negative": {"negative": 2},
                                         "neutral": {"neutral": 1, "positive": 1}}
    assert by_category(rows, ids, None, "numeric") is None  # no label field, not classes
    single = [dict(r, reference="unique" if r["id"] == "5" else r["reference"]) for r in rows]
    assert by_category(single, ids, None, "exact") is None  # a class asked once is no class
    assert by_category([r for r in rows if r["model"] == "base"], ids, None, "exact") is None  # tuned not scored


def test_the_lowest_validation_pass_adapter_is_compared_with_the_final_one_on_the_same_questions(tmp_path):
    """eval scores adapters/best-loss as the `best-loss` pass; the summary pairs it with the final adapter, and the
    report, the console and the card say what picking by validation loss gave, judged by the interval."""
    n = 40
    run = make_run(tmp_path / "r", epochs_n=2)
    summary_path = run / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "best_val_step": 7, "steps": 10,
                                        "steps_planned": 10, "best_loss_adapter": True}))
    s = add_eval(run, {"base": flags(n, set(range(4))), "epoch-1": flags(n, set(range(10))),
                       "best-loss": flags(n, set(range(30))), "tuned": flags(n, set(range(12)))})
    d = s["best_loss"]["vs_tuned"]["flexible"]
    assert (s["best_loss"]["model"], d["delta_pts"], d["gained"], d["lost"]) == ("best-loss", 45.0, 18, 0)
    assert [e["model"] for e in s["epochs"]] == ["epoch-1", "tuned"]  # not an epoch: no row of its own there
    onward = next(f for f in s["flips"] if (f["from"], f["to"]) == ("best-loss", "tuned"))
    assert (len(onward["gained"]), len(onward["lost"])) == (0, 18)  # training past the lowest pass lost 18
    r = RunDir(run)
    write_report(r)
    md = r.report_md.read_text()
    assert (f"The adapter of the lowest validation loss (step 7, adapters/best-loss) scored 75.0 % flexible-extract "
            f"against the final adapter's 30.0 %: +45.0 pts, 95 % CI +{d['ci95_pts'][0]:.1f}..+{d['ci95_pts'][1]:.1f}, "
            f"n = 40 — better beyond noise; `tunelab export RUN OUT --epoch best-loss` exports it.") in md
    from tunelab.report import eval_lines
    assert any(line.startswith("best-loss adapter 75.0 % vs final 30.0 %: +45.0 pts") for line in eval_lines(s))
    assert "| best-loss | 40 | 75.0 % | 75.0 % |" in render(r)

    same = add_eval(run, {"base": flags(n, set(range(4))), "best-loss": flags(n, set(range(13))),
                          "tuned": flags(n, set(range(12)))})
    write_report(r)
    assert same["best_loss"]["vs_tuned"]["flexible"]["delta_pts"] == 2.5
    assert "against the final adapter's 30.0 %: +2.5 pts" in r.report_md.read_text()
    assert "— no different beyond noise." in r.report_md.read_text()


def test_reply_chrf_by_label_is_paired_per_category_and_a_fall_is_one_to_watch():
    """The generated replies' chrF per category (data.label_field), as the held-out loss's: each category's mean
    chrF base → tuned, paired at the Bonferroni level; a rise is the gain, a fall one to watch."""
    from tunelab.evaluate.overlap import by_category
    from tunelab.report.categories import CHRF, blocks, line, verdict
    rng = random.Random(1)
    labels = {f"r{i}": "summaries" if i < 15 else "open_qa" if i < 30 else "poems" for i in range(33)}
    shift = {"summaries": 0.3, "open_qa": -0.2, "poems": 0.0}  # summaries closer, open_qa further, 3 poems
    rows = [{"id": i, "model": model, "chrf": 0.3 + 0.1 * rng.random() + (shift[label] if model == "tuned" else 0)}
            for i, label in labels.items() for model in ("base", "tuned")]
    by = by_category(rows, labels, "data.label_field (task)")
    got = {r["category"]: r for r in by["rows"]}
    mine = [r["chrf"] for r in rows if r["model"] == "tuned" and labels[r["id"]] == "summaries"]
    assert got["summaries"]["tuned_chrf"] == pytest.approx(sum(mine) / 15, abs=1e-6) and by["judged"] == 2
    assert got["poems"]["difference"]["ci"] is None and "chrF" in by["rule"]
    said = verdict(by, CHRF)
    assert said.kind == "watch" and said.text.startswith(
        "The generated replies' chrF rose beyond noise in 1 of 2 categories judged: summaries ")
    assert "; and fell beyond noise in 1 of 2 categories judged: open_qa " in said.text
    assert line(by, CHRF) == ("reply chrF per category (data.label_field (task)): higher beyond noise in 1 "
                              "(summaries) of 2 judged, lower beyond noise in 1 (open_qa)")
    assert blocks(by, CHRF)[1][1][2:] == ["base chrF", "tuned chrF", "Δ chrF (97.50 % CI)"]
    assert by_category(rows, {**labels, "r0": None}, "data.label_field (task)") is None
    assert by_category(rows, labels, None) is None
