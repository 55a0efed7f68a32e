"""Multiple-choice scoring (eval.choices): each option's log-likelihood after the prompt, the most likely option the
answer (acc by the sum, acc_norm per character), as lm-evaluation-harness scores multiple_choice tasks."""

import re
import shutil

import pytest
import torch
import yaml

from conftest import copy_run, one_epoch_run, write_jsonl
from tunelab.config import also_recipe, validate
from tunelab.data import Example, load_splits
from tunelab.data.checks import targets, targets_line
from tunelab.errors import UserError
from tunelab.evaluate import choices
from tunelab.evaluate.stage import evaluate, evaluate_extra, preview
from tunelab.evaluate.summary import pass_names
from tunelab.report import extra

ASKED = "Q: {question}\nAnswer:"


def _rows(n: int, start: int = 0) -> list[dict]:
    """Sums with four options each; the right one's place moves from row to row."""
    out = []
    for k in range(start, start + n):
        a, b = k % 7 + 1, k % 5 + 2
        options = [str(a + b + d) for d in (3, -1, 1, 0)]
        right = k % 4
        options[right], options[3] = options[3], options[right]
        out.append({"question": f"What is {a} plus {b}?" + " Be quick." * (k % 3), "choices": options,
                    "answer": right})  # prompts of three lengths, options of one and two digits
    return out


@pytest.fixture(scope="module")
def mc_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mc") / "sums"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", _rows(6))
    write_jsonl(folder / "train.jsonl", _rows(4, start=20))
    return folder


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One epoch of the tiny model on synthetic arithmetic; tests copy its run directory."""
    return one_epoch_run(tiny_model, tmp_path_factory.mktemp("choices"), "tiny-mc")


def _on(mc_set, **more) -> dict:
    return {"source": str(mc_set), "template": ASKED, "target": "{answer}", "choices": "choices",
            "choice_target": " {choice}", "fewshot_from": "eval_source", "limit": 6, **more}


def _loglik(model, tok, prompt: str, option: str) -> float:
    """The summed log-probability of `option`'s tokens after `prompt`, computed directly from the logits."""
    head = tok(prompt, add_special_tokens=True)["input_ids"]
    tail = tok(option, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([head + tail])).logits[0].float()
    logp = logits[len(head) - 1:-1].log_softmax(-1)
    return float(logp.gather(1, torch.tensor(tail)[:, None]).sum())


def _cfg(choices_spec="choices", **evals):
    raw = {"name": "x", "model": {"name": "m"}, "data": {"source": "synthetic:arith", "template": "{question}",
                                                       "target": "{answer}"},
           "eval": {"choices": choices_spec, **evals}}
    return validate(raw, "x")


def test_the_answer_is_the_option_the_target_names_by_label_index_letter_or_text():
    cfg = _cfg()
    row = lambda target, opts: Example("r", "p", target, {"choices": opts})  # noqa: E731
    arc = {"text": ["sun", "moon", "star"], "label": ["1", "2", "3"]}
    assert choices.answer_of(cfg, row("2", arc)) == 1  # ARC's labels 1-4 read as labels, not as 0-based indexes
    assert choices.answer_of(cfg, row("2", ["a", "b", "c"])) == 2  # MMLU's 0-based index
    assert choices.answer_of(cfg, row("B", ["a", "b", "c"])) == 1  # a letter
    assert choices.answer_of(cfg, row("The Moon.", ["sun", "the moon"])) == 1  # an option's text
    assert choices.answer_of(cfg, row("9", ["a", "b"])) is None  # out of range, no option of that text
    assert choices.answer_of(cfg, row("a", ["a"])) is None  # one option is no choice
    assert choices.answer_of(cfg, row("0", ["a", " "])) is None  # a blank option: the row is not scored
    piqa = _cfg(["sol1", "sol2"])
    assert choices.options(piqa, {"sol1": "x", "sol2": "y"}) == ["x", "y"]
    assert choices.answer_of(piqa, Example("r", "p", "1", {"sol1": "x", "sol2": "y"})) == 1


def test_options_are_written_by_choice_target_with_their_text_and_letter():
    cfg = _cfg(choice_target=" {letter}")
    assert choices.written(cfg, Example("r", "p", "0", {"choices": ["x", "y"]})) == [" A", " B"]
    both = _cfg(choice_target="{letter}) {choice}")
    assert choices.written(both, Example("r", "p", "0", {"choices": ["x", "y"]})) == ["A) x", "B) y"]


@pytest.mark.parametrize("evals, said", [
    ({"choices": None, "scoring": "choice"}, "eval.scoring: choice needs eval.choices"),
    ({"scoring": "numeric"}, "eval.choices: read only by eval.scoring choice or auto"),
    ({"choice_target": " the option"}, "names neither {choice}"),
    ({"pass_at_k": 4}, "multiple-choice scoring (eval.choices) generates none"),
])
def test_multiple_choice_settings_that_cannot_work_are_refused(evals, said):
    spec = evals.pop("choices", "choices")
    with pytest.raises(UserError, match=said.replace("(", r"\(").replace(")", r"\)")):
        _cfg(spec, **evals)


def test_a_template_may_list_a_fields_items_and_a_row_short_of_one_is_malformed(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"q": "x", "o": ["a", "b"], "y": "0"}] * 3 + [{"q": "z", "o": ["a"],
                                                                                        "y": "0"}])
    raw = {"name": "x", "model": {"name": "m"},
           "data": {"source": str(tmp_path), "template": "{q}\nA. {o[0]}\nB. {o[1]}\nAnswer:", "target": "{y}"}}
    with pytest.raises(UserError, match=r"train.jsonl:4: a placeholder's item is not in the row \(IndexError"):
        load_splits(validate(raw, "x").data)
    raw["data"]["skip_bad_rows"] = True
    splits = load_splits(validate(raw, "x").data)
    assert (splits.train + splits.val)[0].prompt == "x\nA. a\nB. b\nAnswer:"


@pytest.mark.slow
def test_each_option_is_scored_by_its_log_likelihood_after_the_prompt(trained, tmp_path, mc_set, monkeypatch):
    """Every pass's option log-likelihoods equal the ones computed from the model's logits directly (the tuned
    pass's with the adapter merged); acc picks the highest sum, acc_norm the highest per character; nothing is
    generated; the summary pairs tuned with base like any scored set."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setattr("tunelab.evaluate.generate.generate", lambda *a, **k: pytest.fail("generated"))
    cfg, run = copy_run(trained, tmp_path, **_on(mc_set))
    result = evaluate(cfg, run)
    s = result.summary
    assert s["scoring"] == "choice" and s["choice_target"] == " {choice}" and pass_names(s) == ["base", "tuned"]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.model.name), str(run.adapter)).eval()
    rows = _rows(6)
    for p in result.predictions:
        row = rows[int(p["id"].split("-")[1]) - 1]
        prompt = ASKED.format(**row)
        model = base if p["model"] == "base" else tuned
        expected = [_loglik(model, tok, prompt, f" {o}") for o in row["choices"]]
        assert p["logliks"] == pytest.approx(expected, abs=2e-4)
        best = max(range(4), key=lambda k: expected[k])
        per_char = max(range(4), key=lambda k: expected[k] / len(row["choices"][k]))  # the option, not its space
        assert p["strict_answer"] == row["choices"][best] and p["flexible_answer"] == row["choices"][per_char]
        assert p["reference"] == row["choices"][row["answer"]]
        assert p["strict_correct"] == (best == row["answer"])
    for name in ("base", "tuned"):
        mine = [p for p in result.predictions if p["model"] == name]
        assert s[name]["strict_accuracy"] == pytest.approx(sum(p["strict_correct"] for p in mine) / 6)
        assert s[name]["n"] == 6 and "at_budget" not in s[name]
    assert s["flexible_difference"]["n"] == 6


def test_the_fewshot_baseline_writes_each_shot_as_the_questions_are_with_its_right_option(trained, tmp_path,
                                                                                          mc_set):
    from tunelab.models import load_tokenizer
    cfg, run = copy_run(trained, tmp_path, **_on(mc_set, fewshot=2))
    shown = preview(cfg, load_tokenizer(cfg.model), 1)["eval"]
    shots = _rows(2, start=20)
    context = "".join(ASKED.format(**r) + f" {r['choices'][r['answer']]}\n\n" for r in shots)
    assert shown["fewshot_prompt"] == context + ASKED.format(**_rows(1)[0])
    assert shown["rows"][0]["options"] == [f" {o}" for o in _rows(1)[0]["choices"]]
    result = evaluate(cfg, run, only="base")
    assert pass_names(result.summary) == ["base", "base-2shot"] and result.summary["base-2shot"]["n"] == 6
    from transformers import AutoModelForCausalLM, AutoTokenizer  # the shots' cache, run once and shared, is exact
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name).eval()
    for p in [p for p in result.predictions if p["model"] == "base-2shot"][:3]:
        row = _rows(6)[int(p["id"].split("-")[1]) - 1]
        expected = [_loglik(base, tok, context + ASKED.format(**row), f" {o}") for o in row["choices"]]
        assert p["logliks"] == pytest.approx(expected, abs=2e-4)


def test_after_a_chat_templates_assistant_header_the_options_are_written_without_their_space(trained, tmp_path,
                                                                                             mc_set):
    """As lm-eval drops its target delimiter under --apply_chat_template: the chat baseline scores "12", not " 12"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.models import load_tokenizer
    cfg, run = copy_run(trained, tmp_path, **_on(mc_set, limit=1, chat_baseline=True))
    asked = preview(cfg, load_tokenizer(cfg.model), 1)["eval"]["chat_baseline_prompt"]
    chatted = [p for p in evaluate(cfg, run, only="base").predictions if p["model"] == "base-chat"]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name).eval()
    expected = [_loglik(base, tok, asked, option) for option in _rows(1)[0]["choices"]]
    assert asked.endswith("assistant\n") and chatted[0]["logliks"] == pytest.approx(expected, abs=2e-4)


def test_a_killed_pass_resumes_with_the_questions_it_had_not_scored(trained, tmp_path, mc_set, monkeypatch):
    cfg, run = copy_run(trained, tmp_path, **_on(mc_set))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache-a"))  # the base pass scored anew, not from the cache
    whole = evaluate(cfg, run, only="base").predictions
    shutil.rmtree(run.path / "eval")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache-b"))
    monkeypatch.setattr(choices, "CHUNK", 2)
    real, scored = choices._likelihoods, []

    def dies_after_two_chunks(cfg, prompts, rows, *rest):
        if len(scored) == 2:
            raise KeyboardInterrupt
        scored.append([r.id for r in rows])
        return real(cfg, prompts, rows, *rest)

    monkeypatch.setattr(choices, "_likelihoods", dies_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, run, only="base")
    scored.clear()
    monkeypatch.setattr(choices, "_likelihoods", lambda *a: (scored.append([r.id for r in a[2]]), real(*a))[1])
    again = evaluate(cfg, run, only="base").predictions
    assert scored == [["test-5", "test-6"]]  # only the chunk the killed pass had not journaled
    assert [x for p in again for x in p["logliks"]] == pytest.approx([x for p in whole for x in p["logliks"]],
                                                                      abs=1e-5)


def test_an_eval_also_set_naming_its_options_is_scored_by_multiple_choice(trained, tmp_path, mc_set):
    """The run's own rows keep their numeric scoring; the eval.also set with choices is scored by log-likelihood,
    and a changed choice_target scores it again instead of keeping the earlier passes."""
    entry = {"source": str(mc_set), "name": "sums", "template": ASKED, "target": "{answer}", "choices": "choices",
             "fewshot": 0, "limit": 6}
    cfg, run = copy_run(trained, tmp_path, also=[entry])
    assert also_recipe(cfg, cfg.eval.also[0]).eval.scoring == "choice" and cfg.eval.scoring == "auto"
    scored = dict(evaluate_extra(cfg, run))["sums"]
    first = scored.summary
    assert first["scoring"] == "choice" and first["base"]["n"] == 6
    card = (run.adapter / "README.md").read_text()  # the model card names lm-eval's metrics for the set
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    assert [m["name"] for r in index if "sums" in r["dataset"]["name"] or str(mc_set) in r["dataset"]["name"]
            for m in r["metrics"]] == ["acc", "acc_norm"]
    assert "| sums | `" in card and "| 6 | choice acc (acc_norm) |" in card
    blocks, found = extra.section(run)
    assert blocks[1][2][0][4] == "choice acc (acc_norm)"
    assert found[-1].text.startswith("Multiple-choice accuracy on sums (acc_norm)")
    kept = dict(evaluate_extra(cfg, run, only="base"))["sums"].summary
    assert "tuned" in kept and kept["tuned"] == first["tuned"]  # the same options: the adapter's pass is kept
    raw = trained[0]
    equals = validate({**raw, "eval": {**raw["eval"], "also": [{**entry, "choice_target": " = {choice}"}]}}, "tiny-mc")
    again = dict(evaluate_extra(equals, run, only="base"))["sums"]
    assert again.summary["choice_target"] == " = {choice}" and "tuned" not in again.summary  # written anew: asked anew
    before = [p["logliks"] for p in scored.predictions if p["model"] == "base"]
    assert len(again.predictions) == 6 and [p["logliks"] for p in again.predictions] != before


def test_the_data_checks_count_the_rows_whose_target_names_one_of_their_options(tmp_path, mc_set):
    raw = {"name": "x", "model": {"name": "m"},
           "data": {"source": str(mc_set), "template": ASKED, "target": "{answer}"}, "eval": {"choices": "choices"}}
    cfg = validate(raw, "x")
    splits = load_splits(cfg.data, cfg.eval)
    splits.test[0].target = "7"  # names no option of four
    counted = targets(splits, "choice", cfg)
    assert counted["test"]["scoreable"] == 5 and counted["test"]["without_answer"] == [splits.test[0].id]
    assert targets_line("test", counted["test"]) == ("test targets naming one of the row's options (multiple-choice "
                                                     "scoring)", "5 / 6")
    labelled = validate({**raw, "eval": {"choices": "choices", "choice_labels": "labels"}}, "x")
    for row, labels in zip(splits.test, ([0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0])):  # none true; too few
        row.fields["labels"] = labels  # and the last two rows have none: two of six fit
    counted = targets(splits, "choice", labelled)
    assert counted["test"]["scoreable"] == 2 and targets_line("test", counted["test"]) == (
        "test rows whose labels mark a true option among their options (multiple choice, eval.choice_labels)", "2 / 6")


def test_a_group_holds_as_many_option_caches_as_generation_holds_rows(trained, tmp_path, mc_set, monkeypatch):
    """Each option continues its own copy of its prompt's cache, so a group takes the rows generation would hold
    over the options each question has (8 slots, 4 options: 2 questions at a time); the figures do not change."""
    cfg, run = copy_run(trained, tmp_path, **_on(mc_set))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache-a"))  # the base pass scored anew, not from the cache
    whole = evaluate(cfg, run, only="base").predictions
    shutil.rmtree(run.path / "eval")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache-b"))
    monkeypatch.setattr("tunelab.evaluate.generate.auto_slots", lambda model, device, tokens: 8)
    real, sizes = choices._group, []
    monkeypatch.setattr(choices, "_group", lambda model, heads, *rest: (sizes.append(len(heads)),
                                                                         real(model, heads, *rest))[1])
    grouped = evaluate(cfg, run, only="base").predictions
    assert sizes == [2, 2, 2]
    assert [x for p in grouped for x in p["logliks"]] == pytest.approx([x for p in whole for x in p["logliks"]],
                                                                        abs=1e-5)


def test_a_base_pass_asked_the_same_way_before_comes_from_the_cross_run_cache(trained, tmp_path, mc_set,
                                                                              monkeypatch):
    """Another run of the same model on the same questions, options and shots: its base passes' log-likelihoods come
    from the cache (nothing forwarded), the adapter's are measured; another choice_target asks anew."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cfg, run = copy_run(trained, tmp_path / "a", **_on(mc_set, fewshot=2))
    first = evaluate(cfg, run).summary
    other_cfg, other = copy_run(trained, tmp_path / "b", **_on(mc_set, fewshot=2))
    forwarded = []
    real = choices._likelihoods
    monkeypatch.setattr(choices, "_likelihoods", lambda *a: (forwarded.append(len(a[2])), real(*a))[1])
    again = evaluate(other_cfg, other)
    assert again.summary["base"]["cached"] and again.summary["base-2shot"]["cached"] and "cached" not in \
        again.summary["tuned"]
    assert forwarded == [6]  # the tuned pass alone
    for name in ("base", "base-2shot"):
        assert again.summary[name]["flexible_accuracy"] == first[name]["flexible_accuracy"]
    reworded = validate({**trained[0], "eval": {**trained[0]["eval"], **_on(mc_set, choice_target=" = {choice}")}},
                        "tiny-mc")
    shutil.rmtree(other.path / "eval")
    assert "cached" not in evaluate(reworded, other, only="base").summary["base"]


@pytest.mark.slow
def test_the_runs_own_labelled_options_get_mc2_in_the_summary_the_report_and_compare(trained, tmp_path, capsys,
                                                                                       monkeypatch):
    """eval.choice_labels on the run's own test set: every pass's mean mc2 and tuned − base paired in its summary, the
    report's key figures, per-epoch table and verdict, `tunelab eval`'s and `tunelab ls`'s tables, and each run's base
    and tuned mc2 among the figures `tunelab compare` sets side by side. Labels set after an eval without them score
    its passes anew: what is right changed."""
    from tunelab.cli import _figure_cells, _print_eval
    from tunelab.report import write_report
    from tunelab.report.compare import eval_lines, headline
    from tunelab.status import describe
    folder = tmp_path / "labelled"
    folder.mkdir()
    # true: the target's option and the one after it (if any): the first true one is the target's, as before labels
    rows = [{**r, "labels": [int(k in (r["answer"], r["answer"] + 1)) for k in range(4)]} for r in _rows(6)]
    write_jsonl(folder / "test.jsonl", rows)
    write_jsonl(folder / "train.jsonl", _rows(4, start=20))
    unlabelled, run = copy_run(trained, tmp_path, **_on(folder, fewshot=0))
    assert "mc2" not in evaluate(unlabelled, run).summary["tuned"]
    cfg = validate({**trained[0], "eval": {**trained[0]["eval"], **_on(folder, choice_labels="labels", fewshot=0)}},
                   trained[0]["name"])
    assert "tuned" not in evaluate(cfg, run, only="base").summary  # not kept from the unlabelled eval
    s = evaluate(cfg, run).summary
    assert s["choice_labels"] == "labels"
    predictions = run.read_jsonl(run.eval_dir / "predictions.jsonl")
    for name in ("base", "tuned"):
        mine = [p for p in predictions if p["model"] == name]
        assert len(mine) == 6 and s[name]["mc2"] == pytest.approx(sum(p["mc2"] for p in mine) / 6, abs=1e-6)
        for p in mine:  # right when the option picked is labelled true, whatever the target says
            row = rows[int(p["id"].split("-")[1]) - 1]
            assert p["strict_correct"] == (row["labels"][row["choices"].index(p["strict_answer"])] == 1)
    assert s["mc2_difference"]["n"] == 6
    write_report(run)
    md, m = run.report_md.read_text(), s["mc2_difference"]
    assert "The mc2 score (the probability on the true options" in md
    assert (f"| Multiple-choice accuracy (mc2: the probability on the true options) | {100 * s['base']['mc2']:.1f} % → "
            f"{100 * s['tuned']['mc2']:.1f} % | {m['delta_pts']:+.1f} pts, 95 % CI {m['ci95_pts'][0]:+.1f}.."
            f"{m['ci95_pts'][1]:+.1f} (paired bootstrap over questions), n = 6 |") in md
    epoch_rows = [line.split(" | ") for line in md.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    header = next(line for line in md.splitlines() if line.startswith("| epoch |")).split(" | ")
    column = header.index("mc2 (true options)")  # the per-epoch table: base at epoch 0, the final adapter at 1
    assert [r[column] for r in epoch_rows] == [f"{100 * s['base']['mc2']:.1f} %", f"{100 * s['tuned']['mc2']:.1f} %"]
    monkeypatch.setenv("COLUMNS", "200")  # rich's tables at full width
    capsys.readouterr()
    _print_eval(s, run)
    printed = capsys.readouterr().out
    assert re.search(rf"│ base +│ 6 │[^\n]*│ {100 * s['base']['mc2']:.1f} % +│", printed)
    assert re.search(rf"│ tuned +│ 6 │[^\n]*│ {100 * s['tuned']['mc2']:.1f} % +│", printed)
    cells = _figure_cells(describe(run))  # `tunelab ls`: the tuned mc2 and its paired change beside the accuracy
    assert cells[1].endswith(f", mc2 {100 * s['tuned']['mc2']:.1f} %")
    assert cells[2].endswith(f", mc2 {m['delta_pts']:+.1f} pts ({m['ci95_pts'][0]:+.1f}..{m['ci95_pts'][1]:+.1f})")
    figures = headline(run)["eval"]
    assert (figures["base_mc2"], figures["tuned_mc2"]) == (s["base"]["mc2"], s["tuned"]["mc2"])
    assert (f"mc2 (the probability on the true options): base {100 * s['base']['mc2']:.1f} % → epoch 1 "
            f"{100 * s['tuned']['mc2']:.1f} %; tuned − base {m['delta_pts']:+.1f} pts, 95 % CI "
            f"{m['ci95_pts'][0]:+.1f}..{m['ci95_pts'][1]:+.1f}") in eval_lines(s)  # the console's, after tunelab run


def test_an_option_after_a_sentencepiece_prompt_is_scored_as_the_text_continues_it(mistral_dir, tmp_path):
    """Under Mistral-7B-v0.1's tokenizer an option tokenized alone starts with a spurious word-start piece (▁);
    its log-likelihood is that of the prompt and option tokenized together (lm-eval's continuation), checked
    against the logits of a tiny random Mistral with its vocabulary."""
    from transformers import AutoModelForCausalLM

    from conftest import make_tiny_model
    from tunelab.config import ModelConfig
    from tunelab.models import load_tokenizer
    folder = make_tiny_model(tmp_path / "m", mistral_dir, "mistral")
    tok, model = load_tokenizer(ModelConfig(name=str(folder))), AutoModelForCausalLM.from_pretrained(folder).eval()
    prompts, options = ["Q: 2 + 2?\nA:\n", "Pick one.\n"], [["4", "five"], ["Yes", "No", "(c)"]]
    scores, _ = choices._likelihoods_of(prompts, options, model, tok, torch.device("cpu"))
    for prompt, texts, got in zip(prompts, options, scores):
        head = tok(prompt)["input_ids"]
        for text, score in zip(texts, got):
            whole = tok(prompt + text)["input_ids"]
            assert whole[:len(head)] == head and tok.tokenize(text)[0].startswith("▁")  # alone: ▁ first
            with torch.no_grad():
                logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            expected = sum(logp[k - 1, whole[k]].item() for k in range(len(head), len(whole)))
            assert score == pytest.approx(expected, abs=1e-4)
