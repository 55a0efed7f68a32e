"""Report rendering from a fixture run dir (no torch), compare, estimate, and `tunelab run` resumption."""

import json
import shutil
import subprocess
import sys

import pytest

from fixture_run import make_run
from tunelab import card
from tunelab.cli import main
from tunelab.report import compare, write_report
from tunelab.rundir import RunDir

SECTIONS = ["Overview", "Key metrics", "Learning curves", "Observations from training logs",
            "Insights from model analysis", "What worked / what to watch", "Definitions"]


def test_report_from_a_fixture_run_dir(tmp_path):
    run = RunDir(make_run(tmp_path / "run3"))
    html_path = write_report(run)
    md = run.report_md.read_text()
    for section in SECTIONS:
        assert f"## {section}" in md
    assert "Validation loss fell in every epoch (2.310 → 1.620 → 1.550): no sign of overfitting." in md
    assert "rose beyond noise (5.0 % → 15.0 %, +10.0 pts, 95 % CI +4.0..+16.0" in md
    assert "| Train loss improvement | 26.3 % |" in md
    assert "![" in md and (run.path / "report_files" / "learning_curves.png").exists()
    assert "1 outliers (rare problems: the rows most isolated" in md and "the top" not in md  # all shown: said so
    outliers = [{"id": f"train-{i}", "score": 0.9, "why": "isolated", "text": f"row {i}"} for i in range(12)]
    run.outliers.write_text(json.dumps(outliers))
    write_report(run)
    md = run.report_md.read_text()
    assert "12 outliers (rare" in md and "analysis.outlier_share of the rows); the top 10:" in md
    assert "| train-9 |" in md and "| train-10 |" not in md
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 4  # curves, word cloud, UMAP, data map: all inlined
    assert 'src="http' not in html and "<link" not in html  # self-contained
    assert 'name="viewport"' in html and "@media print" in html


def test_report_with_baseline_and_compare(tmp_path):
    a = RunDir(make_run(tmp_path / "gsm8k-2ep", val=(2.31, 1.70), train=(1.9,), epochs_n=1))
    b = RunDir(make_run(tmp_path / "gsm8k-3ep"))
    write_report(b, baseline=a)
    md = b.report_md.read_text()
    assert "## Comparison with the baseline run" in md
    assert "Final validation loss of gsm8k-3ep is lower (better) than gsm8k-2ep: 1.550 vs 1.700 (-8.8 %)" in md
    rows, picture = compare([a, b], tmp_path / "cmp")
    by = {r[0]: r for r in rows}
    assert by["final_val_loss"][1:] == (1.70, 1.55, pytest.approx(-0.15))
    assert by["eval.tuned_flexible_accuracy"][1:3] == (0.15, 0.15)
    assert picture.exists() and (tmp_path / "cmp" / "compare.html").exists()


def test_compare_names_the_recipe_keys_that_differ_and_flags_format_changes(tmp_path, capsys):
    import yaml
    a = RunDir(make_run(tmp_path / "two", val=(2.31, 1.70), train=(1.9,), epochs_n=1))
    b = RunDir(make_run(tmp_path / "three"))
    compare([a, b], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| train.epochs | 1 | 2 |" in md and "differently formatted" not in md  # epochs do not change the text
    raw = yaml.safe_load(b.config.read_text())
    raw["data"].update(chat_template=True, template="{question}")
    b.config.write_text(yaml.safe_dump(raw))
    write_report(b, baseline=a)
    md = b.report_md.read_text()
    assert "| data.chat_template | False | True |" in md
    assert "The runs differ in data.template, data.chat_template: they train and validate on differently " in md
    assert "Final validation loss of three is lower than two: 1.550 vs 1.700" in md  # stated, without a verdict
    assert "so the losses score different text: no verdict" in md and "lower (better)" not in md
    assert main(["compare", str(a.path), str(b.path), "--out", str(tmp_path / "cmp2")]) == 0
    out = capsys.readouterr().out
    assert "recipe key" in out and "data.chat_template" in out and "train.epochs" in out
    assert main(["compare", str(a.path), "--out", str(tmp_path / "cmp3")]) == 2  # one run: nothing to compare
    assert "one run; give two run folders or more" in capsys.readouterr().err
    assert not (tmp_path / "cmp3").exists()
    raw = yaml.safe_load(a.config.read_text())  # a dict key differs by its entries: Alpaca's no-input prompt
    raw["data"]["template_if_empty"] = {"question": "Answer:"}
    a.config.write_text(yaml.safe_dump(raw))
    compare([a, b], tmp_path / "cmp3")
    assert "The runs differ in data.template, data.chat_template, data.template_if_empty.question:" in \
        (tmp_path / "cmp3" / "compare.md").read_text()


def test_report_says_whether_the_base_model_found_the_test_rows_more_familiar(tmp_path):
    run = RunDir(make_run(tmp_path / "run"))
    rows = [{"id": f"val-{i}", "split": "val", "epoch": 0, "loss": 2.0 + 0.02 * (i % 5), "tokens": 12}
            for i in range(40)]
    rows += [{"id": f"test-{i}", "split": "test", "epoch": 0, "loss": 1.1 + 0.02 * (i % 5), "tokens": 12}
             for i in range(40)]
    rows += [{"id": f"val-{i}", "split": "val", "epoch": 1, "loss": 0.5, "tokens": 12} for i in range(40)]
    (run.path / "metrics" / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(run)
    md = run.report_md.read_text()
    assert ("Before training, the base model's loss was lower on the test rows than on the validation rows beyond "
            "noise (1.140 on 40 test rows vs 2.040 on 40 validation rows") in md
    evaluation = json.loads(run.eval_summary.read_text())  # scored on another source afterwards: not those rows
    run.eval_summary.write_text(json.dumps({**evaluation, "source": "bench.jsonl"}))
    write_report(run)
    assert "Before training, the base model's loss" not in run.report_md.read_text()


@pytest.mark.slow
def test_report_and_compare_do_not_import_torch(tmp_path):
    run = make_run(tmp_path / "r")
    code = ("import sys; from tunelab.cli import main; "
            f"assert main(['report', {str(run)!r}]) == 0; "
            f"assert main(['compare', {str(run)!r}, {str(run)!r}, '--out', {str(tmp_path / 'c')!r}]) == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_noisy_accuracy_reads_as_noise_and_overfit_run_is_flagged(tmp_path):
    run = RunDir(make_run(tmp_path / "r", val=(2.31, 1.55, 1.61), train=(1.4, 1.1), eval_ci=(-1.2, 2.8)))
    write_report(run)
    md = run.report_md.read_text()
    assert "did not change beyond noise" in md
    assert "likely overfitting; the epoch-1 checkpoint had the lowest validation loss" in md
    watch = md.split("What to watch:")[1]
    assert "likely overfitting" in watch


def test_report_json_lists_the_observations_and_strict_fails_on_one_to_watch(tmp_path, capsys):
    healthy = make_run(tmp_path / "healthy")
    assert main(["report", str(healthy), "--strict"]) == 0
    found = json.loads((healthy / "report.json").read_text())["observations"]
    assert {o["kind"] for o in found} <= {"good", "info"} and all(o["text"] and o["rule"] for o in found)
    assert any(o["kind"] == "good" and "rose beyond noise" in o["text"] for o in found)
    capsys.readouterr()
    overfit = make_run(tmp_path / "overfit", val=(2.31, 1.55, 1.61), train=(1.4, 1.1))
    assert main(["report", str(overfit)]) == 0  # watches are printed; only --strict turns them into an exit status
    assert "watch: " in capsys.readouterr().out
    assert main(["report", str(overfit), "--strict"]) == 1
    out, err = capsys.readouterr()
    watched = [o for o in json.loads((overfit / "report.json").read_text())["observations"] if o["kind"] == "watch"]
    assert watched and all(f"watch: {o['text']}" in out for o in watched)
    assert f"--strict: {len(watched)} observation" in err and "likely overfitting" in out


def test_report_cli_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_estimate_counts_exact_tokens_and_prices_devices(capsys, tiny_model):
    assert main(["estimate", "quickstart", "--set", f"model.name={tiny_model}", "--device", "A100-80GB"]) == 0
    out = capsys.readouterr().out
    # the train tokens of one epoch, recounted here: prompt + target + EOS per train row, capped at max_length
    from transformers import AutoTokenizer
    from tunelab.config import load_recipe
    from tunelab.data import load_splits
    cfg = load_recipe("quickstart", [f"model.name={tiny_model}"])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tokens = sum(min(cfg.train.max_length, len(tok(e.prompt)["input_ids"]) +
                     len(tok(e.target, add_special_tokens=False)["input_ids"]) + 1)
                 for e in load_splits(cfg.data).train)
    assert f"{tokens:,} train tokens" in " ".join(out.split())
    assert "A100-80GB" in out and "$" in out and "peak GPU memory" in out and " of 80 GiB" in out
    assert main(["estimate", "quickstart", "--device", "Z9000"]) == 2
    per_epoch = -(-len(load_splits(cfg.data).train) // cfg.train.batch_size)
    assert main(["estimate", "quickstart", "--set", f"model.name={tiny_model}", "--set", "train.max_steps=9",
                 "--device", "A100-80GB"]) == 0  # the steps, not train.epochs' 2 epochs
    assert f"× {9 / per_epoch:.2f} epochs (train.max_steps 9 at {per_epoch} an epoch)" in " ".join(
        capsys.readouterr().out.split())
    assert main(["estimate", "quickstart", "--set", f"model.name={tiny_model}", "--device", "A100-80GB",
                 "--gpus", "2"]) == 0  # two processes: half the steps an epoch, the time shared
    out = " ".join(capsys.readouterr().out.split())
    assert "time on 2 GPUs" in out and "the time assumes linear scaling (not measured)" in out
    assert main(["estimate", "quickstart", "--gpus", "0"]) == 2
    assert main(["estimate", "quickstart", "--gpus", "2", "--device", "cpu"]) == 2  # processes share one CPU
    assert "several GPUs need a GPU device" in capsys.readouterr().err
    from tunelab import cost
    work = cost.splits_work(cfg, load_splits(cfg.data), tok, processes=2)
    e = cost.estimate(work, "A100-80GB")
    assert work["steps_per_epoch"] == -(-per_epoch // 2) and e["gpus"] == 2
    assert e["wall_hours"] == pytest.approx(e["hours"] / 2, abs=1e-6)  # `hours`: device-hours, as the cost counts


def test_flops_and_estimate_arithmetic():
    from tunelab import cost
    work = cost.flops([10, 20], [10], epochs=2, n_params=1000, n_layers=2, d_model=4, gradient_checkpointing=False)
    attn_train = 2 * 2 * 4 * (100 + 400)
    attn_val = 2 * 2 * 4 * 100
    assert work["flops"] == 2 * 2 * (2 * 1000 * 30 + attn_train) + 3 * (2 * 1000 * 10 + attn_val)
    assert cost.flops([10], [10], 1, 1000, 2, 4, True)["flops_per_train_token"] == 6 * 1000
    # DoRA with dropout: PEFT recomputes each base matmul on the dropped-out input (measured on CPU: 2.06x the
    # step time of LoRA, SmolLM2-135M, dropout 0.05)
    assert cost.flops([10], [10], 1, 1000, 2, 4, False, base_twice=True)["flops_per_train_token"] == 8 * 1000
    assert [cost.duration(h) for h in (40 / 3600, 0.115, 3.236)] == ["40 s", "6.9 min", "3.24 h"]
    assert [cost.dollars(usd) for usd in (2.075, 0.41, 0.00571, 0.0000952, 1234.5)] == [
        "$2.08", "$0.41", "$0.0057", "$0.000095", "$1,234.50"]
    e = cost.estimate({"flops": 312e12 * 0.35 * 3600}, "A100-80GB")  # not measured there: the assumed 35 %
    assert e["hours"] == pytest.approx(1.0) and e["cost_usd"] == pytest.approx(cost.GPUS["A100-80GB"][0])
    assert "assumed" in e["basis"]
    h = cost.estimate({"flops": 989e12 * 0.19 * 3600}, "NVIDIA H200")  # measured on an H200: 19 %
    assert h["device"] == "H200" and h["hours"] == pytest.approx(1.0) and "measured" in h["basis"]
    assert cost.gpu_key("NVIDIA A100-SXM4-40GB", 40) == "A100-40GB" and cost.gpu_key("NVIDIA H100 80GB HBM3") == "H100-80GB"


def test_each_gpu_process_counts_its_hours_and_cpu_processes_share_the_machine():
    import torch
    from tunelab import cost
    one = cost.actual(1800, torch.device("cpu"), 2.0, processes=2)  # two processes on one CPU: one machine's price
    assert (one["device_hours"], one["cost_usd"]) == (0.5, 1.0)
    four = cost.actual(1800, torch.device("cuda"), 2.0, processes=4)  # four GPUs for half an hour: two GPU-hours
    assert (four["device_hours"], four["cost_usd"]) == (2.0, 4.0) and four["price_source"].endswith("; 4 GPUs")


def test_overview_counts_the_test_rows_of_the_source_they_came_from(tmp_path):
    """The Overview's test count is taken at train time; when eval.source is set on a finished run, the count
    still names its own source and the scored questions are stated beside it, not silently swapped."""
    run = RunDir(make_run(tmp_path / "run"))
    write_report(run)
    assert "; 100 test rows kept for evaluation |" in run.report_md.read_text()

    summary = json.loads(run.summary.read_text())
    run.summary.write_text(json.dumps({**summary, "test_source": "bench.jsonl"}))
    config = run.path / "config.yaml"
    config.write_text(config.read_text().replace("  source: null", "  source: bench.jsonl", 1))
    evaluation = json.loads(run.eval_summary.read_text())
    run.eval_summary.write_text(json.dumps({**evaluation, "source": "bench.jsonl"}))
    write_report(run)
    assert "; 100 test rows of bench.jsonl (eval.source) for evaluation |" in run.report_md.read_text()

    run.summary.write_text(json.dumps(summary))  # trained without eval.source; scored on bench.jsonl afterwards
    write_report(run)
    assert ("; 100 test rows kept for evaluation; the eval scored 100 questions of bench.jsonl instead "
            "(eval.source set after training) |") in run.report_md.read_text()


def test_runs_scored_with_different_eval_limits_are_paired_on_the_questions_both_answered(tmp_path):
    """eval.limit 20 against eval.limit 40: the first 20 questions are the same, so compare pairs the tuned answers
    there and states both accuracies on those 20, not the runs' own accuracies over different question sets."""
    from fixture_run import add_eval
    from tunelab.report.compare import paired
    runs = [RunDir(make_run(tmp_path / name)) for name in ("short", "long")]
    add_eval(runs[0].path, {"base": [False] * 20, "tuned": [i < 5 for i in range(20)]})  # 25 % on 20
    add_eval(runs[1].path, {"base": [False] * 40, "tuned": [i < 15 or i >= 30 for i in range(40)]})  # 15/20, 25/40
    _, accuracy = paired(runs[1], runs[0])
    assert (accuracy["n"], accuracy["delta_pts"], accuracy["gained"], accuracy["lost"]) == (20, 50.0, 10, 0)
    assert accuracy["accuracies"] == [0.25, 0.75] and accuracy["scored"] == [20, 40]
    compare(runs, tmp_path / "out")
    md = (tmp_path / "out" / "compare.md").read_text()
    assert ("(flexible-extract, long vs short, on the 20 questions both scored (short 20, long 40)) rose beyond noise "
            "(25.0 % → 75.0 %, +50.0 pts") in md


def test_runs_that_scored_other_questions_under_the_same_ids_are_not_paired(tmp_path):
    """Two eval sources both number their rows test-0..: a run scored on another source's questions shares the
    ids but not the references, so compare states the accuracies without a paired interval instead of pairing
    answers to different questions."""
    from fixture_run import add_eval
    from tunelab.report.compare import paired
    runs = [RunDir(make_run(tmp_path / name)) for name in ("own", "other")]
    for run, right in zip(runs, (10, 30)):
        add_eval(run.path, {"base": [i < 4 for i in range(40)], "tuned": [i < right for i in range(40)]})
    assert paired(runs[1], runs[0])[1]["delta_pts"] == 50.0  # same questions: paired
    rows = runs[1].read_predictions()
    runs[1].predictions.write_text("".join(json.dumps({**r, "reference": f"other {r['reference']}"}) + "\n"
                                           for r in rows))
    assert paired(runs[1], runs[0])[1] is None
    compare(runs, tmp_path / "out")
    assert "the runs scored different questions, so no paired interval" in (tmp_path / "out" / "compare.md").read_text()


def test_a_mixed_run_judges_each_source_on_its_own_rows_and_familiarity_on_data_sources(tmp_path):
    import yaml
    run = RunDir(make_run(tmp_path / "mixed"))
    raw = yaml.safe_load(run.config.read_text())
    raw["data"]["mix"] = [{"source": "extra/alpaca.jsonl", "name": "alpaca", "limit": 30},
                          {"source": "openai/gsm8k", "config": "main"}]
    run.config.write_text(yaml.safe_dump(raw))
    losses = {"val": {0: 2.0, 1: 1.2, 2: 1.0}, "alpaca:val": {0: 1.5, 1: 0.6, 2: 1.4}}  # alpaca: overfits
    rows = [{"id": f"{prefix}-{i}", "split": "val", "epoch": epoch, "loss": loss + 0.01 * (i % 3), "tokens": 10}
            for prefix, by_epoch in losses.items() for epoch, loss in by_epoch.items() for i in range(30)]
    rows += [{"id": f"{prefix}-{i}", "split": "train", "epoch": epoch, "loss": 1.0 / epoch, "tokens": tokens}
             for prefix, tokens in (("train", 10), ("alpaca:train", 30)) for epoch in (1, 2) for i in range(60)]
    rows += [{"id": f"test-{i}", "split": "test", "epoch": 0, "loss": 1.5 + 0.01 * (i % 3), "tokens": 10}
             for i in range(30)]  # lower than data.source's validation rows (2.0), as high as alpaca's (1.5)
    (run.path / "metrics" / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(run)
    md = run.report_md.read_text()
    assert "## Data mix" in md and "extra/alpaca.jsonl as alpaca (first 30 rows)" in md
    assert "| synthetic-arith | 60 | 25 % | 30 | 2.010 → 1.210 → 1.010 | +49.8 % | 0.500 |" in md
    assert "| alpaca | 60 | 75 % | 30 | 1.510 → 0.610 → 1.410 | +6.6 % | 0.500 |" in md  # 3x the loss tokens
    assert "synthetic-arith rows: Validation loss fell in every epoch" in md
    assert "alpaca rows: Validation loss rose after epoch 1 (0.610 → 1.410) while train loss fell" in md
    assert "(1.510 on 30 test rows vs 2.010 on 30 validation rows" in md  # data.source's validation rows alone
    text = card.render(run)
    assert "datasets:\n- openai/gsm8k\n" in text  # the hub sources (a local file is not one)
    assert "360 training rows of `synthetic:arith` and `extra/alpaca.jsonl` and `openai/gsm8k` (40 held out" in text


@pytest.mark.parametrize("imported", [False, True])
def test_the_data_mix_table_states_weights_and_an_imported_run_weighs_its_measured_rows(imported):
    from tunelab.config import validate
    from tunelab.report import mix
    cfg = validate({"name": "w", "model": {"name": "m"}, "data": {
        "source": "main.jsonl", "template": "{q}", "target": "{a}",
        "mix": [{"source": "extra.jsonl", "weight": 3}]}}, "w")
    visits = 1 if imported else 3  # trained here: each extra row is logged 3 times an epoch
    rows = [{"id": i, "split": "train", "epoch": 1, "loss": 0.5, "tokens": 10}
            for i in [f"train-{k}" for k in range(20)] + [f"extra:train-{k}" for k in range(10)] * visits]
    rows += [{"id": i, "split": "val", "epoch": e, "loss": 1.0, "tokens": 10} for e in (0, 1)
             for i in ("val-0", "extra:val-0")]
    blocks = mix.section(rows, cfg, imported)[0]
    assert ("its train rows were measured once each" in blocks[0][1]) == imported
    (table,) = [b for b in blocks if b[0] == "table"]
    assert table[1][:4] == ["source", "weight", "train rows", "share of the loss tokens"]
    assert [r[:4] for r in table[2]] == [("main", "1", 20, "40 %"), ("extra", "3", 10 * visits, "60 %")]


def test_with_source_weights_the_gap_rule_weighs_validation_rows_as_training_does():
    from tunelab.config import validate
    from tunelab.report import mix
    from tunelab.report import observations as rules
    raw = {"name": "w", "model": {"name": "m"}, "data": {"source": "main.jsonl", "template": "{q}", "target": "{a}",
                                                         "mix": [{"source": "extra.jsonl", "weight": 0.25}]}}
    rows = [{"id": i, "split": "val", "epoch": epoch, "loss": loss if epoch else 2.0, "tokens": tokens}
            for epoch in (0, 1) for i, loss, tokens in (("val-0", 0.1, 10), ("extra:val-0", 1.0, 30))]
    weighted = mix.weighted_val_loss(rows, validate(raw, "w"))  # the extra rows count a quarter, as in training
    assert weighted == pytest.approx((0.1 * 10 + 0.25 * 30 * 1.0) / (10 + 0.25 * 30))
    epochs = [{"epoch": 0, "val_loss": 2.0, "train_loss": None},
              {"epoch": 1, "val_loss": (0.1 * 10 + 1.0 * 30) / 40, "train_loss": 0.5}]
    assert rules.generalisation_gap(epochs).text.startswith("Final validation loss is 35 % above")  # the mix differs
    assert rules.generalisation_gap(epochs, weighted) is None  # like with like: 0.486 vs 0.5
    raw["data"]["mix"][0]["weight"] = 1
    assert mix.weighted_val_loss(rows, validate(raw, "w")) is None


def test_a_run_with_more_validation_rows_is_compared_on_the_rows_both_have(tmp_path):
    import yaml
    from fixture_run import add_val_rows
    a, b = make_run(tmp_path / "plain"), make_run(tmp_path / "mixed")
    add_val_rows(a, {0: [2.0] * 20, 2: [1.0 + 0.01 * (i % 4) for i in range(20)]})
    add_val_rows(b, {0: [2.0] * 20, 2: [0.8 + 0.01 * (i % 4) for i in range(20)]})
    with (b / "metrics" / "examples.jsonl").open("a") as f:  # the mixed source's rows: another 10, at loss 3
        f.write("".join(json.dumps({"id": f"alpaca:val-{i}", "split": "val", "epoch": epoch, "loss": 3.0,
                                    "tokens": 20}) + "\n" for epoch in (0, 2) for i in range(10)))
    raw = yaml.safe_load((b / "config.yaml").read_text())
    raw["data"]["mix"] = [{"source": "alpaca.jsonl", "limit": 100}]
    (b / "config.yaml").write_text(yaml.safe_dump(raw))
    compare([RunDir(a), RunDir(b)], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| data.mix.0.source | — | 'alpaca.jsonl' |" in md and "| data.mix.0.limit | — | 100 |" in md
    assert "| data.mix |" not in md  # the entries differ, not an empty list
    assert ("Final validation loss of mixed is lower (better) than plain: 0.815 vs 1.015 (-19.7 %; paired difference "
            "-0.200, 95 % CI -0.200..-0.200 over the 20 validation rows both runs have (plain 20, mixed 30))") in md
    assert "| synthetic-arith | 1.015 (weight 1) | 0.815 (weight 1): -0.200 (-0.200..-0.200) |" in md  # Data mix
    assert "| alpaca | – | 3.000 (weight 1) |" in md
    c = tmp_path / "weighted"  # the same mix with alpaca at weight 2: its rows' loss 2.5
    shutil.copytree(b, c)
    raw["data"]["mix"][0]["weight"] = 2
    (c / "config.yaml").write_text(yaml.safe_dump(raw))
    rows = [json.loads(line) for line in (c / "metrics" / "examples.jsonl").read_text().splitlines()]
    (c / "metrics" / "examples.jsonl").write_text("".join(json.dumps({**r, "loss": 2.5} if r["id"].startswith(
        "alpaca:") and r["epoch"] == 2 else r) + "\n" for r in rows))
    compare([RunDir(b), RunDir(c)], tmp_path / "cmp2")
    md = (tmp_path / "cmp2" / "compare.md").read_text()
    assert "| alpaca | 3.000 (weight 1) | 2.500 (weight 2): -0.500 (-0.500..-0.500) |" in md
    assert "alpaca rows: validation loss of weighted is lower than mixed's beyond noise (2.500 vs 3.000" in md
    assert "| synthetic-arith | 0.815 (weight 1) | 0.815 (weight 1): +0.000 (+0.000..+0.000) |" in md


def test_compare_pairs_runs_on_each_extra_test_set_both_scored(tmp_path):
    def scored(path, right: int, n: int = 12):
        rows = [{"id": f"test-{i}", "model": model, "question": f"Q{i}", "reference": str(i), "completion": "",
                 "flexible_answer": None, "strict_correct": ok, "flexible_correct": ok, "tokens": 1}
                for model in ("base", "tuned") for i in range(n) for ok in [model == "tuned" and i < right]]
        folder = path / "eval" / "also" / "bench"
        folder.mkdir(parents=True)
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "summary.json").write_text(json.dumps({"scoring": "numeric", "source": "bench.jsonl"}))
    a, b, c = make_run(tmp_path / "a"), make_run(tmp_path / "b"), make_run(tmp_path / "c")
    scored(c, 0)
    rows = (c / "eval" / "also" / "bench" / "predictions.jsonl").read_text().splitlines()
    (c / "eval" / "also" / "bench" / "predictions.jsonl").write_text("\n".join(r for r in rows if '"base"' in r))
    compare([RunDir(c), RunDir(a)], tmp_path / "base-only")  # a set the first run's base model alone answered
    assert "## Other test sets" not in (tmp_path / "base-only" / "compare.md").read_text()
    scored(a, 1)
    scored(b, 11)
    shutil.rmtree(c / "eval" / "also")
    compare([RunDir(a), RunDir(b), RunDir(c)], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    section = md.split("## Other test sets")[1]
    row = next(line for line in section.splitlines() if line.startswith("| bench |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:2] == ["bench", "8.3 % (n = 12)"] and cells[2].startswith("91.7 % (+83.3 pts, 95 % CI ")
    assert cells[3] == "—"  # c scored no such set
    assert "GSM8K-style accuracy on bench, b vs a (flexible) rose beyond noise (8.3 % → 91.7 %" in section


def test_an_extra_test_set_that_overlaps_the_training_rows_is_flagged(tmp_path):
    from tunelab.report import extra
    from fixture_run import add_eval
    run = make_run(tmp_path / "r")
    add_eval(run, {"base": [False] * 10, "base-5shot": [True] * 2 + [False] * 8, "base-chat": [True] * 3 + [False] * 7,
                   "tuned": [True] * 6 + [False] * 4}, fewshot=5)
    (run / "eval" / "also").mkdir()
    shutil.copytree(run / "eval", run / "eval" / "also" / "bench", ignore=shutil.ignore_patterns("also"))
    blocks, found = extra.section(RunDir(run))
    assert [o.kind for o in found] == ["good"] and blocks[1][2][0][:4] == ("bench", None, "the run's", 10)  # 0 % → 60 %
    assert blocks[1][2][0][4:7] == ("GSM8K acc (flexible-extract)", "0.0 %",  # its accuracy, named
                                    "base 5-shot 20.0 %; base via chat template 30.0 %")  # and its baselines
    (run / "analysis" / "data_checks.json").write_text(json.dumps(
        {"extra_sets": {"bench": {"rows": 10, "overlap_counts": {"exact": 2, "ngram": 1, "near": 0}}}}))
    _, found = extra.section(RunDir(run))
    assert found[0].kind == "watch" and found[0].text.startswith(
        "3 of 10 rows of bench overlap the training rows (2 exact, 1 ngram)")


def test_other_test_sets_come_in_the_recipes_eval_also_order(tmp_path):
    """Report, card and console list the eval.also sets in the order the recipe lists them, not by name; a set
    scored once but no longer listed comes after them."""
    from fixture_run import add_eval
    from tunelab.config import load_recipe, to_yaml
    run = make_run(tmp_path / "r")
    cfg = load_recipe(str(run / "config.yaml"), ["eval.also=[{source: z.jsonl, name: zeta}, {source: a.jsonl}]"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    add_eval(run, {"base": [False] * 10, "tuned": [True] * 6 + [False] * 4})
    for name in ("a", "old", "zeta"):
        shutil.copytree(run / "eval", run / "eval" / "also" / name, ignore=shutil.ignore_patterns("also"))
    assert [view.name for view in RunDir(run).extra_sets()] == ["zeta", "a", "old"]
    write_report(RunDir(run))
    md = RunDir(run).report_md.read_text()
    assert md.index("| zeta |") < md.index("| a |") < md.index("| old |")


def test_the_loss_per_step_panel_stars_the_lowest_validation_pass(monkeypatch, tmp_path):
    """With validation passes inside epochs, the step panel marks the lowest one: what --epoch best-loss takes."""
    from tunelab.report import curves
    drawn = []
    monkeypatch.setattr(curves, "_save", lambda fig, out: drawn.append(fig) or out)
    epochs = [{"epoch": 0, "train_loss": None, "train_token_accuracy": None, "val_loss": 2.0,
               "val_token_accuracy": 0.5},
              {"epoch": 1, "train_loss": 1.5, "train_token_accuracy": 0.6, "val_loss": 1.4, "val_token_accuracy": 0.6}]
    passes = [{"step": s, "val_loss": loss} for s, loss in ((0, 2.0), (3, 1.3), (6, 1.2), (9, 1.4))]
    curves.learning_curves(epochs, [{"step": s, "loss": 1.5} for s in range(1, 10)], tmp_path / "c.png", passes)
    panel = drawn[0].axes[2]
    assert [t.get_text() for t in panel.get_legend().get_texts()] == \
        ["train (step)", "validation", "lowest validation loss (step 6)"]
    star = panel.get_lines()[-1]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([6], [1.2])


def test_the_accuracy_picture_stars_the_lowest_validation_pass_adapter_at_its_step(monkeypatch, tmp_path):
    """When eval scored adapters/best-loss, the accuracy-per-epoch picture puts its accuracy at the fraction of
    training it was saved at (step / steps per epoch)."""
    from fixture_run import add_eval
    from tunelab.report import curves
    drawn, save = [], curves._save
    monkeypatch.setattr(curves, "_save", lambda fig, out: drawn.append(fig) or save(fig, out))
    run = make_run(tmp_path / "r")
    summary = json.loads((run / "summary.json").read_text())
    summary.update(best_val_step=15, steps=20, steps_planned=20, best_loss_adapter=True)
    (run / "summary.json").write_text(json.dumps(summary))
    add_eval(run, {"base": [False] * 10, "epoch-1": [True] * 3 + [False] * 7, "best-loss": [True] * 5 + [False] * 5,
                   "tuned": [True] * 4 + [False] * 6})
    write_report(RunDir(run))
    panel = next(f for f in drawn if f.axes[0].get_title().endswith("per epoch (epoch 0 = base model)")).axes[0]
    star = panel.get_lines()[-1]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([15 * summary["epochs"] / 20], [50.0])
    assert "the star: the lowest validation pass's adapter" in RunDir(run).report_md.read_text()


@pytest.mark.parametrize("shift, kind, verdict", [
    (0.3, "watch", "The fine-tune made the replies in chat less likely beyond noise: target loss 1.500 → 1.800 "
                   "(+0.300, +20.0 %"),
    (-0.3, "good", "The fine-tune made the replies in chat more likely beyond noise: target loss 1.500 → 1.200 "
                   "(-0.300"),
    (0.0, "info", "The fine-tune did not change how likely the replies in chat are beyond noise: target loss "
                  "1.500 → 1.500"),
])
def test_a_set_measured_by_loss_is_judged_by_its_paired_interval(shift, kind, verdict, tmp_path):
    from tunelab.report import extra
    from tunelab.stats import paired_loss_difference
    run = make_run(tmp_path / "r")
    wobble = [0.1 * ((i % 3) - 1) for i in range(30)]  # per-row noise the shift is measured against
    base = {f"test-{i}": (1.5 + w, 10) for i, w in enumerate(wobble)}
    tuned = {i: (loss + shift + (0.05 * (k % 2) - 0.025 if not shift else 0), n)
             for k, (i, (loss, n)) in enumerate(base.items())}
    folder = run / "eval" / "also" / "chat"
    folder.mkdir(parents=True)
    summary = {"scoring": "loss", "reason": "no scoring mode suits", "split": "test", "source": "chats.jsonl", "n": 30,
               "losses": {"base": {"loss": 1.5}, "tuned": {"loss": 1.5 + shift}},
               "loss_difference": paired_loss_difference(base, tuned), "epochs": [{"epoch": 2, "model": "tuned",
                                                                                   "loss": 1.5 + shift}]}
    (folder / "summary.json").write_text(json.dumps(summary))
    blocks, found = extra.section(RunDir(run))
    assert [o.kind for o in found] == [kind] and found[0].text.startswith(verdict)
    d = summary["loss_difference"]
    assert blocks[-1][2] == [("chat", "chats.jsonl", "the run's", 30, "1.500", f"{1.5 + shift:.3f}",
                              f"{1.5 + shift:.3f}",
                              f"{d['delta']:+.3f} ({d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f})")]
    assert extra.line("chat", summary).startswith("on chat (chats.jsonl, eval.also, measured by loss): target loss "
                                                  "1.500")


def test_the_rows_whose_replies_moved_most_are_listed_each_way_largest_first(tmp_path):
    from tunelab.report import extra
    from tunelab.rundir import HeldOutLossDir
    view = HeldOutLossDir(make_run(tmp_path / "r"))
    change = {"a": 0.5, "b": -0.2, "c": 0.1, "d": 0.0, "e": -0.9, "f": 0.3, "g": 0.2}
    view.write_jsonl(view.losses, [{"id": i, "model": model, "loss": 2.0 + (d if model == "tuned" else 0),
                                    "tokens": 5, "question": f"Tell me about   {i}\n" + "x" * 200}
                                   for model in ("base", "tuned") for i, d in change.items()])
    (p, text), (t, headers, rows) = extra.movers(view)
    assert [(r[0], r[1], r[5]) for r in rows] == [
        ("less likely", "a", "+0.500"), ("less likely", "f", "+0.300"), ("less likely", "g", "+0.200"),
        ("more likely", "e", "-0.900"), ("more likely", "b", "-0.200")]  # no rise or fall: not listed
    assert rows[0][2].startswith("Tell me about a xxx") and len(rows[0][2]) == 90 and rows[0][3:5] == ("2.000", "2.500")
    view.write_jsonl(view.losses, [{"id": "a", "model": "base", "loss": 1.0, "tokens": 5}])
    assert extra.movers(view) == []  # the tuned adapter not measured yet


def test_compare_pairs_runs_on_a_set_measured_by_loss_over_the_rows_both_measured(tmp_path):
    def measured(path, shift: float, source: str = "chats.jsonl", n: int = 20):
        folder = path / "eval" / "also" / "chat"
        folder.mkdir(parents=True)
        rows = [{"id": f"test-{i}", "model": model, "loss": 1.0 + 0.1 * (i % 3) + (shift if model == "tuned" else 0),
                 "tokens": 10} for model in ("base", "tuned") for i in range(n)]
        (folder / "losses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "summary.json").write_text(json.dumps({"scoring": "loss", "source": source, "n": n}))
        replied = RepliesDir(path, "chat")  # and its replies, generated and scored (eval.overlap)
        replied.eval_dir.mkdir()
        replied.write_json(replied.eval_summary, {"split": "test", "overlap": {"chrf": {}}})
        replied.write_jsonl(replied.predictions, [{"id": f"test-{i}", "model": "tuned", "reference": f"reply {i}",
                                                   "chrf": 0.3 + 0.1 * (i % 2) + shift, "rouge_l": 0.2}
                                                  for i in range(n)])
    from tunelab.rundir import RepliesDir
    a, b, c, e = (make_run(tmp_path / k) for k in "abce")
    measured(a, 0.0)
    measured(b, 0.2, n=10)
    measured(c, 0.0, source="other.jsonl")  # another set under the same name: not compared
    measured(e, 0.0)
    compare([RunDir(a), RunDir(b), RunDir(c), RunDir(e)], tmp_path / "cmp")
    section = (tmp_path / "cmp" / "compare.md").read_text().split("## Other test sets")[1]
    row = next(line for line in section.splitlines() if line.startswith("| chat |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "loss 1.095 (n = 20)"
    assert cells[2].startswith("loss 1.290 (+0.200, 95 % CI +0.200..+0.200, on 10)")  # on the rows both measured
    assert cells[3] == "—" and cells[4].startswith("loss 1.095 (+0.000")
    assert "Target loss on chat, b vs a: 1.090 → 1.290 (+0.200, 95 % CI +0.200..+0.200, 10 rows): higher (its replies " \
           "less likely)." in section
    assert "Target loss on chat, e vs a: 1.095 → 1.095 (+0.000" in section and "no different beyond noise" in section
    row = next(line for line in section.splitlines() if line.startswith("| chat (reply chrF) |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "0.350" and cells[2].startswith("0.550 (+0.200, CI +0.200..+0.200, on 10)")
    assert cells[4].startswith("0.350 (+0.000")
    assert "b's generated replies to chat are closer to the references than a's beyond noise: chrF 0.350 → 0.550" \
        in section


def test_compare_pairs_the_held_out_loss_of_each_category_across_runs(tmp_path):
    """Two runs measured by loss with data.label_field: compare gives each category's tuned loss per run and the
    later run's change, paired over the category's rows at the first run's Bonferroni level; a small one unjudged."""
    import random
    from tunelab.evaluate.losses import by_category
    from tunelab.rundir import HeldOutLossDir
    from tunelab.stats import paired_loss_difference
    rng = random.Random(1)
    labels = {f"test-{i}": "recipes" if i < 12 else "poems" if i < 24 else "jokes" for i in range(27)}
    base = {i: (2.0 + rng.random(), 10) for i in labels}
    tuned = {"a": {i: (loss - 0.5, n) for i, (loss, n) in base.items()}}
    tuned["b"] = {i: (loss - (0.3 if labels[i] == "recipes" else 0) + 0.2 * (rng.random() - 0.5), n)
                  for i, (loss, n) in tuned["a"].items()}  # b: recipes lower by 0.3, the rest as a
    runs = []
    for name, rows in tuned.items():
        run = RunDir(make_run(tmp_path / name))
        view = HeldOutLossDir(run.path)
        view.eval_dir.mkdir(parents=True)
        kept = {"base": {"rows": base}, "tuned": {"rows": rows}}
        view.write_json(view.eval_summary, {"scoring": "loss", "reason": "prose", "split": "test", "n": 27,
                                            "losses": {"base": {"loss": 2.5}, "tuned": {"loss": 2.0}},
                                            "loss_difference": paired_loss_difference(base, rows),
                                            "by_category": by_category(kept, labels, "data.label_field (topic)")})
        view.write_jsonl(view.losses, [{"id": i, "model": m, "loss": r[i][0], "tokens": 10, "label": labels[i]}
                                       for m, r in (("base", base), ("tuned", rows)) for i in labels])
        runs.append(run)
    compare(runs, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    recipes = [i for i in labels if labels[i] == "recipes"]
    d = paired_loss_difference({i: tuned["a"][i] for i in recipes}, tuned["b"], level=0.975)
    assert f"| recipes | 12 | {d['means'][0]:.3f} | {d['means'][1]:.3f} ({d['delta']:+.3f}, CI {d['ci95'][0]:+.3f}.." \
           f"{d['ci95'][1]:+.3f}) |" in md and d["ci95"][1] < 0
    assert "| jokes | 3 | " in md and ", not judged) |" in md.split("| jokes | 3 | ")[1].split("\n")[0]
    assert f"Held-out target loss of recipes rows, b vs a: {d['means'][0]:.3f} → {d['means'][1]:.3f} " \
           f"({d['delta']:+.3f}, 12 rows): lower beyond noise." in md
    assert "poems rows, b vs a" not in md  # within noise: no verdict
