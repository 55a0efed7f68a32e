"""eval.pass_at_k: k sampled answers per question from the base model and the final adapter — pass@1, pass@k, maj@k,
tuned − base paired over questions — and the seeded sampled decoding under it."""

import shutil

import pytest

from conftest import one_epoch_run
from tunelab.config import validate
from tunelab.errors import UserError
from tunelab.evaluate.generate import Sampling, generate
from tunelab.evaluate.stage import evaluate
from tunelab.evaluate.summary import sampled_comparison
from tunelab.rundir import RunDir

PROMPTS = [f"Question {i}: what is {i} plus {i}?\nAnswer:" for i in range(6)]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


def _said(model, tok, slots: int = 4, sampling: Sampling | None = None, prompts=PROMPTS) -> list[str]:
    return [g.completion for g in generate(model, tok, prompts, 12, slots=slots, sampling=sampling)[0]]


def test_sampling_draws_each_row_from_its_own_seeded_generator(tiny):
    """A seed draws the same answers whatever the rows are batched with; another seed draws others; a nucleus that
    keeps one token, or a temperature near 0, is greedy decoding."""
    model, tok = tiny
    greedy = _said(model, tok)
    assert _said(model, tok, sampling=Sampling(1.0, top_p=1e-9)) == greedy
    assert _said(model, tok, sampling=Sampling(1e-3)) == greedy
    drawn = _said(model, tok, sampling=Sampling(1.0, seed=1))
    assert drawn != greedy
    assert _said(model, tok, slots=1, sampling=Sampling(1.0, seed=1)) == drawn  # one row at a time: the same draws
    assert _said(model, tok, sampling=Sampling(1.0, seed=2)) != drawn
    again = _said(model, tok, sampling=Sampling(1.0, seed=1), prompts=PROMPTS[:1] * 3)  # same prompt, own draws
    assert again[0] == drawn[0] and len(set(again)) == 3
    rest = _said(model, tok, sampling=Sampling(1.0, seed=1, numbers=(4, 5)), prompts=PROMPTS[4:])  # a resumed pass
    assert rest == drawn[4:]


def _rows(model: str, flags: list[list[bool]], answers: list[list[str | None]]) -> list[dict]:
    return [{"id": f"q{i}", "model": model, "flexible_correct": c, "flexible_answer": a}
            for i, (cs, as_) in enumerate(zip(flags, answers)) for c, a in zip(cs, as_)]


def test_pass_at_1_pass_at_k_and_majority_vote_are_read_from_the_samples():
    """Per question: the share right (pass@1), any right (pass@k), the most frequent readable answer right (maj@k;
    answers counted alike once normalised, a tie goes to the answer drawn first, unreadable answers do not vote)."""
    base = _rows("base", [[False, False, True], [False, False, False], [True, False, False]],
                 [["1", "1", "2"], [None, "5", "6"], ["3", None, None]])
    tuned = _rows("tuned", [[False, True, True], [False, True, False], [True, True, True]],
                  [["9", "2", "2."], ["8", "7", "9"], ["3", "3", "3"]])  # q0: "2." is 2, two votes against one
    s = sampled_comparison({"base": base, "tuned": tuned}, ["q0", "q1", "q2"], 3)
    assert s["models"]["base"] == {"pass@1": pytest.approx(2 / 9, abs=1e-6), "pass@k": pytest.approx(2 / 3, abs=1e-6),
                                   "maj@k": pytest.approx(1 / 3, abs=1e-6)}  # q0 votes 1 (wrong); q1: 5, drawn first
    assert s["models"]["tuned"] == {"pass@1": pytest.approx(6 / 9, abs=1e-6), "pass@k": 1.0,
                                    "maj@k": pytest.approx(2 / 3, abs=1e-6)}  # q1: 8, 7, 9 tie: 8, wrong
    d = s["differences"]
    assert d["pass@1"]["delta"] == pytest.approx(4 / 9, abs=1e-6)  # figures are rounded as the summary stores them
    assert d["pass@k"]["delta_pts"] == pytest.approx(100 / 3, abs=1e-3)
    assert d["maj@k"]["n"] == 3 and d["maj@k"]["delta_pts"] == pytest.approx(100 / 3, abs=1e-3)
    assert "differences" not in sampled_comparison({"base": base}, ["q0", "q1", "q2"], 3)


def test_pass_at_k_of_one_is_refused(tiny_recipe):
    with pytest.raises(UserError, match="eval.pass_at_k: 1 samples one answer per question"):
        validate({**tiny_recipe, "eval": {"pass_at_k": 1}}, "tiny")


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    raw, run = one_epoch_run(tiny_model, tmp_path_factory.mktemp("pass-at-k"), "tiny-k", pass_at_k=3,
                             temperature=1.0, top_p=0.9)
    return validate(raw, "tiny-k"), run


@pytest.mark.slow
def test_the_eval_samples_k_answers_from_base_and_tuned_and_pairs_their_figures(trained, tmp_path, monkeypatch):
    """Each question answered k times by each model, the greedy pass's prompt drawn anew per answer (the answers a
    direct sampled generate gives); the figures are the samples'; the report and the console give them; a second
    eval takes the base model's from the cache and --only base keeps the tuned adapter's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.report import eval_lines, write_report
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, source = trained
    run = RunDir(tmp_path / "run")
    shutil.copytree(source.path, run.path, ignore=shutil.ignore_patterns("eval"))
    s = evaluate(cfg, run).summary["sampled"]
    rows = run.read_jsonl(run.eval_sampled)
    assert [(r["model"], r["sample"]) for r in rows[:4]] == [("base", 0), ("base", 1), ("base", 2), ("base", 0)]
    assert len(rows) == 2 * 3 * 4 and s["settings"] == {"k": 3, "temperature": 1.0, "top_p": 0.9, "seed": 0}
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    prompts = [f"Instruction: {r['question']}\nResponse: " for r in rows if r["model"] == "base"]
    drawn = generate(base, tok, prompts, 8, sampling=Sampling(1.0, 0.9, 0))[0]  # batched as eval batches them
    assert [g.completion for g in drawn] == [r["completion"] for r in rows if r["model"] == "base"]
    ids = [r["id"] for r in rows if r["model"] == "base"][::3]
    by_model = {m: [r for r in rows if r["model"] == m] for m in ("base", "tuned")}
    assert s["models"] == sampled_comparison(by_model, ids, 3)["models"]
    assert s["passes"]["tuned"]["n"] == 12 and s["passes"]["base"]["flexible_accuracy"] == s["models"]["base"]["pass@1"]
    write_report(run)
    md = run.report_md.read_text()
    k = s["differences"]["pass@k"]
    assert f"| pass@3, sampled | {100 * s['models']['base']['pass@k']:.1f} % → " \
           f"{100 * s['models']['tuned']['pass@k']:.1f} % | {k['delta_pts']:+.1f} pts, 95 % CI" in md
    assert "3 sampled answers per question (temperature 1, top-p 0.9), each right by flexible-extract" in md
    assert any(line.startswith("sampled (3 sampled answers per question") for line in eval_lines(
        run.read_eval_summary()))
    assert "Sampled: (3 sampled answers per question (temperature 1, top-p 0.9), each right by flexible-extract): " \
        f"pass@1 {100 * s['models']['base']['pass@1']:.1f} % → " in (run.adapter / "README.md").read_text()
    again = evaluate(cfg, run, only="base").summary["sampled"]
    assert again["passes"]["base"]["cached"] and again["passes"]["tuned"] == s["passes"]["tuned"]
    assert run.read_jsonl(run.eval_sampled) == rows
    other = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"sample_seed": 5})})
    moved = evaluate(other, run, only="base").summary["sampled"]  # drawn otherwise: the tuned answers are not kept
    assert list(moved["passes"]) == ["base"] and "differences" not in moved


def test_eval_also_sets_are_not_sampled(tiny_recipe):
    from tunelab.config import also_recipe
    cfg = validate({**tiny_recipe, "eval": {"pass_at_k": 4, "also": [{"source": "synthetic:arith"}]}}, "tiny")
    assert cfg.eval.pass_at_k == 4 and also_recipe(cfg, cfg.eval.also[0]).eval.pass_at_k == 0


def test_compare_sets_the_sampled_figures_of_two_runs_side_by_side(trained, tmp_path, monkeypatch):
    """`tunelab compare` rows carry each run's pass@1, pass@k and maj@k (k named), base and tuned."""
    from tunelab.report.compare import comparison_rows, headline
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, source = trained
    run = RunDir(tmp_path / "run")
    shutil.copytree(source.path, run.path, ignore=shutil.ignore_patterns("eval"))
    s = evaluate(cfg, run).summary["sampled"]["models"]
    rows = {k: values for k, *values in comparison_rows([headline(run), headline(source)])}
    assert rows["eval.tuned_pass@3"][0] == s["tuned"]["pass@k"] and rows["eval.base_maj@3"][0] == s["base"]["maj@k"]
    assert rows["eval.tuned_pass@1"][0] == s["tuned"]["pass@1"] and rows["eval.tuned_pass@3"][1] is None


@pytest.mark.slow
def test_a_sampled_pass_killed_midway_draws_the_rest_as_an_uninterrupted_one(trained, tmp_path, monkeypatch):
    """The sampled answers are journaled as they finish; a resumed eval draws only the rest, each from its own
    number's generator, and ends with what an uninterrupted eval drew."""
    from tunelab.evaluate import journal

    class Killed(Exception):
        pass

    cfg, source = trained
    killed, whole = RunDir(tmp_path / "killed"), RunDir(tmp_path / "whole")
    for run in (killed, whole):
        shutil.copytree(source.path, run.path, ignore=shutil.ignore_patterns("eval"))
    real, n = journal.Journal.append, [0]

    def append(self, *a):
        real(self, *a)
        n[0] += 1
        if n[0] == 4 + 4 + 5:  # the greedy base and tuned passes, then 5 of the base model's 12 sampled answers
            raise Killed

    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(journal.Journal, "append", append)
    with pytest.raises(Killed):
        evaluate(cfg, killed)
    monkeypatch.setattr(journal.Journal, "append", real)
    resumed = evaluate(cfg, killed).summary["sampled"]
    assert resumed["passes"]["base"]["resumed_answers"] == 5
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache-whole")
    assert evaluate(cfg, whole).summary["sampled"]["models"] == resumed["models"]
    assert killed.read_jsonl(killed.eval_sampled) == whole.read_jsonl(whole.eval_sampled)


@pytest.mark.parametrize(("pass_k", "pass_1", "kind", "said"), [
    ((-20.0, -35.0, -5.0), (0.0, -0.1, 0.1), "watch", "The fine-tune reached fewer questions in 8 tries than the base"),
    ((20.0, 5.0, 35.0), (0.1, 0.02, 0.2), "good", "The fine-tune reached more questions in 8 tries, beyond noise"),
    ((2.0, -5.0, 9.0), (0.1, 0.02, 0.2), "info", "in 8 tries beyond noise, though its single answers are right more "
                                                 "often beyond noise"),
])
def test_the_verdict_reads_pass_at_k_and_says_when_single_answers_improved(pass_k, pass_1, kind, said):
    from tunelab.report.sampled import verdict
    delta, lo, hi = pass_k
    share = {"delta": pass_1[0], "ci95": [pass_1[1], pass_1[2]], "means": [0.2, 0.2 + pass_1[0]], "n": 50}
    accuracy = {"delta_pts": delta, "ci95_pts": [lo, hi], "n": 50}
    evaluation = {"scoring": "numeric", "sampled": {
        "settings": {"k": 8, "temperature": 0.6, "top_p": 0.95, "seed": 0},
        "models": {m: {"pass@1": 0.2, "pass@k": 0.5, "maj@k": 0.3} for m in ("base", "tuned")},
        "differences": {"pass@1": share, "pass@k": accuracy, "maj@k": accuracy}}}
    o = verdict(evaluation)
    assert o.kind == kind and said in o.text and f"pass@8 50.0 % → 50.0 % ({delta:+.1f} pts" in o.text
    assert verdict({"scoring": "numeric"}) is None
