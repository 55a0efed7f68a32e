"""Seed repeats: runs whose recipes differ only in train.seed / data.seed are one recipe; compare gives its spread
over seeds and tests recipes against each other by Welch's t-test, and `tunelab sweep --seeds N` makes them."""

import statistics
from pathlib import Path

import pytest
from scipy.stats import ttest_ind

from fixture_run import add_eval, make_run
from tunelab.cli import main
from tunelab.config import load_recipe, to_yaml
from tunelab.errors import UserError
from tunelab.report import compare
from tunelab.report.seeds import repeats
from tunelab.rundir import RunDir
from tunelab.sweep import sweep

N = 40


def seeded_run(path, lr: str, seed: int, right: int, val: float, first_right: int = 0, n: int = N) -> RunDir:
    """A fixture run of the quickstart recipe at this lr and train.seed: final validation loss `val`, the tuned
    adapter right on `right` of n questions (questions first_right.. first_right+right-1), the base on 4."""
    run = RunDir(make_run(path, val=(2.31, 1.62, val)))
    run.config.write_text(to_yaml(load_recipe("quickstart", ["train.epochs=2", f"train.lr={lr}",
                                                             f"train.seed={seed}"])))
    add_eval(run.path, {"base": [i < 4 for i in range(n)],
                        "tuned": [first_right <= i < first_right + right for i in range(n)]})
    return run


def section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_compare_gives_each_recipes_spread_over_seeds_and_tests_recipes_against_it(tmp_path):
    plan = [("1e-3", 0, 20, 1.50), ("1e-3", 1, 22, 1.48), ("1e-3", 2, 21, 1.53),
            ("3e-3", 0, 30, 1.40), ("3e-3", 1, 31, 1.41), ("3e-3", 2, 33, 1.37)]
    runs = [seeded_run(tmp_path / f"lr{lr}-s{seed}", lr, seed, right, val) for lr, seed, right, val in plan]
    assert repeats(runs) == [("train.lr=0.001", [0, 1, 2]), ("train.lr=0.003", [3, 4, 5])]
    compare(runs, tmp_path / "out")
    seeds = section((tmp_path / "out" / "compare.md").read_text(), "Seeds")

    acc = {lr: [100 * right / N for l, _, right, _ in plan if l == lr] for lr in ("1e-3", "3e-3")}
    loss = {lr: [v for l, _, _, v in plan if l == lr] for lr in ("1e-3", "3e-3")}
    a = acc["1e-3"]
    assert (f"| train.lr=0.001 | lr1e-3-s0, lr1e-3-s1, lr1e-3-s2 | {statistics.mean(loss['1e-3']):.4f} ± "
            f"{statistics.stdev(loss['1e-3']):.4f} ({min(loss['1e-3']):.4f}..{max(loss['1e-3']):.4f}, 3 seeds) | "
            f"{statistics.mean(a):.1f} ± {statistics.stdev(a):.1f} % ({min(a):.1f}..{max(a):.1f}, 3 seeds) |") in seeds
    t = ttest_ind(acc["3e-3"], a, equal_var=False)
    ci = t.confidence_interval(0.95)
    delta = statistics.mean(acc["3e-3"]) - statistics.mean(a)
    said = f"{delta:+.1f} pts (95 % CI {ci.low:+.1f}..{ci.high:+.1f}, p = {t.pvalue:.2g})"
    assert f"| train.lr=0.003 − train.lr=0.001 | tuned accuracy | {said} | 3 vs 3 |" in seeds
    assert ci.low > 0 and f"train.lr=0.003 beat train.lr=0.001 beyond seed noise: tuned accuracy {said}" in seeds
    # overlapping answers (questions 0..19, 0..21, 0..20): no pair of repeats differs beyond the paired interval
    assert "train.lr=0.001: none of the 3 pairs of repeats differs beyond the paired interval" in seeds


def test_runs_measured_by_loss_are_judged_over_seeds_by_their_held_out_target_loss(tmp_path):
    plan = [("1e-3", 0, 0.90), ("1e-3", 1, 0.92), ("1e-3", 2, 0.91), ("3e-3", 0, 0.80), ("3e-3", 1, 0.81),
            ("3e-3", 2, 0.79)]
    runs = []
    for lr, seed, held_out in plan:
        run = RunDir(make_run(tmp_path / f"lr{lr}-s{seed}", val=(2.31, 1.62, 1.5)))
        run.config.write_text(to_yaml(load_recipe("quickstart", ["train.epochs=2", f"train.lr={lr}",
                                                                 f"train.seed={seed}"])))
        run.eval_summary.unlink()  # answers no scoring mode suits: the replies measured by loss instead
        run.write_json(run.eval_skipped, {"reason": "data.target: prose", "by_loss": True})
        run.write_json(run.eval_dir / "loss" / "summary.json",
                       {"scoring": "loss", "losses": {"base": {"loss": 1.6}, "tuned": {"loss": held_out}}})
        runs.append(run)
    compare(runs, tmp_path / "out")
    seeds = section((tmp_path / "out" / "compare.md").read_text(), "Seeds")
    first, later = [v for lr, _, v in plan if lr == "1e-3"], [v for lr, _, v in plan if lr == "3e-3"]
    assert (f"| {statistics.mean(first):.4f} ± {statistics.stdev(first):.4f} ({min(first):.4f}..{max(first):.4f}, "
            "3 seeds) |") in seeds and "held-out target loss" in seeds
    t = ttest_ind(later, first, equal_var=False)
    assert t.confidence_interval(0.95).high < 0  # lower loss: better, beyond seed noise
    assert (f"train.lr=0.003 beat train.lr=0.001 beyond seed noise: held-out target loss "
            f"{statistics.mean(later) - statistics.mean(first):+.4f}") in seeds


def test_repeats_that_differ_beyond_the_paired_interval_are_flagged_as_training_noise(tmp_path, capsys):
    runs = [seeded_run(tmp_path / "s0", "1e-3", 0, 10, 1.5), seeded_run(tmp_path / "s1", "1e-3", 1, 30, 1.4),
            seeded_run(tmp_path / "other", "3e-3", 0, 25, 1.45)]  # a recipe run once: its spread has 1 seed
    assert main(["compare", *(str(r.path) for r in runs), "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out  # the console says it too
    assert "seeds: train.lr=0.001: 1 of 1 pairs of repeats differ beyond the paired interval" in said
    seeds = section((tmp_path / "out" / "compare.md").read_text(), "Seeds")
    assert "| train.lr=0.003 | other | 1.4500 (1 seed) | 62.5 % (1 seed) |" in seeds
    assert "train.lr=0.001: 1 of 1 pairs of repeats differ beyond the paired interval (s1 vs s0 +50.0 pts" in seeds
    assert "Each recipe against" not in seeds  # a recipe run once has no spread to test against


def test_accuracies_over_different_questions_are_not_averaged_as_repeats(tmp_path):
    runs = [seeded_run(tmp_path / "s0", "1e-3", 0, 20, 1.5), seeded_run(tmp_path / "s1", "1e-3", 1, 20, 1.4, n=30)]
    compare(runs, tmp_path / "out")
    seeds = section((tmp_path / "out" / "compare.md").read_text(), "Seeds")
    assert "| recipe | runs | final validation loss |\n" in seeds and "Tuned accuracy is left out" in seeds


def test_no_seeds_section_without_repeats(tmp_path):
    runs = [seeded_run(tmp_path / "a", "1e-3", 0, 20, 1.5), seeded_run(tmp_path / "b", "3e-3", 0, 25, 1.4)]
    compare(runs, tmp_path / "out")
    assert "## Seeds" not in (tmp_path / "out" / "compare.md").read_text()


def test_sweep_seeds_repeats_every_combination_with_consecutive_train_seeds(tmp_path, monkeypatch):
    ran = []

    def run_all(recipe, overrides, run_dir, baseline):  # a finished fixture run of that recipe
        ran.append((overrides, run_dir.rsplit("/", 1)[-1]))
        run = seeded_run(Path(run_dir), "1e-3", 0, 20 + 3 * len(ran), 1.5)
        run.config.write_text(to_yaml(load_recipe(recipe, overrides)))

    monkeypatch.setattr("tunelab.pipeline.run_all", run_all)
    monkeypatch.setattr("tunelab.report.compare", lambda runs, folder: None)
    folder, record = sweep("quickstart", ["train.seed=7"], ["lora.r=4,8"], str(tmp_path / "sw"), seeds=2)
    assert [name for _, name in ran] == ["r=4_seed=7", "r=4_seed=8", "r=8_seed=7", "r=8_seed=8"]
    assert ran[1][0] == ["train.seed=7", "lora.r=4", "train.seed=8"]  # the later --set wins
    assert record["vary"] == ["lora.r=4,8", "train.seed=7,8"]
    first = section((folder / "r=4_seed=7" / "report.md").read_text(), "Seeds")  # rewritten once both had run
    assert "| the recipe | r=4_seed=7, r=4_seed=8 |" in first and "r=8" not in first
    for args, message in [((["lora.r=4,8"], 0), "--seeds 0: must be at least 1"),
                          ((["train.seed=1,2"], 3), "--seeds: train.seed is already given by --vary"),
                          (([], 1), "sweep: nothing to vary")]:
        with pytest.raises(UserError, match=message):
            sweep("quickstart", [], args[0], str(tmp_path / "bad"), seeds=args[1])
    assert not (tmp_path / "bad").exists()


def test_compare_of_a_sweep_folder_compares_its_finished_runs_in_place(tmp_path, capsys):
    import json
    folder = tmp_path / "sweep"
    for name, seed, right in (("seed=0", 0, 20), ("seed=1", 1, 24)):
        seeded_run(folder / name, "1e-3", seed, right, 1.5)
    (folder / "sweep.json").write_text(json.dumps({"runs": [
        {"name": "seed=0", "state": "done"}, {"name": "seed=2", "state": "failed: diverged"},
        {"name": "seed=1", "state": "done"}]}))
    assert main(["compare", str(folder)]) == 0
    md = (folder / "compare.md").read_text()  # a lone sweep folder: written where the sweep writes it
    assert "| figure | seed=0 | seed=1 |" in md and "seed=2" not in md
    assert "| the recipe | seed=0, seed=1 |" in section(md, "Seeds")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sweep.json").write_text(json.dumps({"runs": [{"name": "a", "state": "to do"}]}))
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "no finished run in the sweep yet" in capsys.readouterr().err


def test_a_runs_report_gives_the_spread_of_its_recipes_repeats_beside_it(tmp_path):
    from tunelab.report import write_report
    sweep_dir = tmp_path / "quickstart-sweep"
    plan = [(0, 20, 1.50), (1, 30, 1.48), (2, 21, 1.53)]
    runs = [seeded_run(sweep_dir / f"lr=1e-3_seed={seed}", "1e-3", seed, right, val) for seed, right, val in plan]
    seeded_run(sweep_dir / "lr=3e-3_seed=0", "3e-3", 0, 33, 1.40)  # another recipe: not a repeat
    (sweep_dir / "notes").mkdir()  # not a run
    write_report(runs[0])
    seeds = section(runs[0].report_md.read_text(), "Seeds")
    acc = [100 * right / N for _, right, _ in plan]
    assert (f"| the recipe | lr=1e-3_seed=0, lr=1e-3_seed=1, lr=1e-3_seed=2 | {statistics.mean([1.50, 1.48, 1.53]):.4f}"
            in seeds and f"{statistics.mean(acc):.1f} ± {statistics.stdev(acc):.1f} %" in seeds)
    assert "lr=3e-3" not in seeds
    assert "the recipe: 2 of 3 pairs of repeats differ beyond the paired interval" in seeds  # 30 right vs 20, 21
    alone = seeded_run(tmp_path / "elsewhere" / "alone", "1e-3", 0, 20, 1.5)
    write_report(alone)
    md = alone.report_md.read_text()
    assert "## Seeds" not in md and "`tunelab sweep RECIPE --seeds 3` measures that spread" in md
