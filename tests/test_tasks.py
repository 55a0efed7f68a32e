"""lm-eval tasks by name (tunelab/tasks.py): an eval.also entry's or eval's `task` fills the keys lm-eval's task YAML
sets, the rows are prepared as lm-eval's process_docs prepares them, and the entry's own keys win."""

import json
import random

import pytest

from conftest import copy_run, one_epoch_run, write_jsonl
from tunelab.cli import main
from tunelab.config import also_recipe, validate
from tunelab.data import load_splits
from tunelab.errors import UserError
from tunelab.evaluate.stage import _held_out, _questions, _shots_from, _shots_of, evaluate_extra, shot_pool
from tunelab.report import extra
from tunelab.tasks import TASKS, prepared

WIKIHOW = {"activity_label": "Home and Garden", "ctx_b": "", "label": "0",
           "ctx_a": "[header] How to grow tomatoes [title] Pick a  sunny spot. [step] Tomatoes need light.",
           "endings": ["[substeps] Water them daily.", "Paint  the pots [title] red.", "Sing.", "Buy them."]}


def test_hellaswag_rows_are_cleaned_and_mmlu_rows_prompted_as_lm_eval_writes_them():
    fields, problem = prepared("hellaswag", WIKIHOW)
    assert problem is None and fields["query"] == ("Home and Garden: How to grow tomatoes. Pick a sunny spot. "
                                                   "Tomatoes need light.")
    assert fields["choices"] == [" Water them daily.", "Paint the pots. red.", "Sing.", "Buy them."]  # lm-eval strips
    # before it removes the marks, so a leading [substeps] leaves a space: its prompts have it, so tunelab's do
    assert fields["ctx_a"] == WIKIHOW["ctx_a"]  # the raw fields are kept
    activity = prepared("hellaswag", {**WIKIHOW, "activity_label": "Ice fishing", "ctx_a": "A man sits.",
                                      "ctx_b": "then he"})[0]
    assert activity["query"] == "Ice fishing: A man sits. Then he"  # ctx_b capitalised after ctx_a
    mmlu = prepared("mmlu", {"question": "  What is 2 + 2?\n", "subject": "abstract_algebra",
                             "choices": ["3", "4", "5", "22"], "answer": 1})[0]
    assert mmlu["query"] == "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    assert mmlu["subject_name"] == "abstract algebra"  # its description's
    assert prepared("hellaswag", {"ctx_a": "x"})[1].startswith("no field 'activity_label' (task hellaswag reads")
    assert prepared("piqa", {"goal": "g"}) == ({"goal": "g"}, None)  # a task without process_docs adds nothing
    truthful = prepared("truthfulqa_mc1", {"question": "q", "mc1_targets": {"choices": ["yes", "no"],
                                                                            "labels": [1, 0]}})[0]
    assert truthful["mc1_choices"] == ["yes", "no"]


def test_a_task_fills_the_keys_the_entry_leaves_unset_and_an_unknown_one_is_refused(tiny_recipe):
    raw = {**tiny_recipe, "eval": {"also": [{"task": "arc_challenge"}, {"task": "arc_easy", "limit": 5},
                                            {"task": "mmlu", "source": "./mmlu-copy", "fewshot": 3}]}}
    arc, easy, mmlu = validate(raw, "tiny").eval.also
    assert (arc.source, arc.config, arc.name, arc.choices, arc.target) == ("allenai/ai2_arc", "ARC-Challenge",
                                                                           "arc_challenge", "choices", "{answerKey}")
    assert (easy.config, easy.name, easy.limit) == ("ARC-Easy", "arc_easy", 5)  # two ARC sets, two folders
    assert (mmlu.source, mmlu.config, mmlu.fewshot, mmlu.label_field) == ("./mmlu-copy", "all", 3, "subject")
    assert mmlu.fewshot_same_category and mmlu.description.startswith("The following are multiple choice")
    extra = also_recipe(validate(raw, "tiny"), mmlu)
    assert extra.eval.task == "mmlu" and extra.eval.scoring == "choice" and extra.eval.choice_target == " {letter}"
    scored = validate({**raw, "eval": {"task": "piqa"}}, "tiny").eval
    assert (scored.source, scored.split, scored.choices, scored.fewshot_from) == ("baber/piqa", "validation",
                                                                                 ["sol1", "sol2"], "eval_source")
    with pytest.raises(UserError, match="eval.also.0: task: unknown task 'hellaswg'; tunelab knows arc_easy, "
                                        "arc_challenge, hellaswag, mmlu"):
        validate({**raw, "eval": {"also": [{"task": "hellaswg"}]}}, "tiny")
    assert set(TASKS) >= {"arc_easy", "arc_challenge", "hellaswag", "mmlu", "piqa", "openbookqa", "truthfulqa_mc1",
                          "gsm8k"}
    truthful = validate({**raw, "eval": {"fewshot": 5, "also": [{"task": "truthfulqa_mc1"}]}}, "tiny").eval.also[0]
    assert (truthful.split, truthful.fewshot, truthful.target) == ("validation", 0, "0")  # no rows to take shots from


@pytest.mark.slow
def test_a_hellaswag_copy_is_scored_on_its_validation_rows_as_lm_eval_asks_them(tiny_model, tmp_path, capsys):
    """`tunelab check --show` on a local HellaSwag copy named by task: the validation rows (the test rows have no
    label and are left unread), the cleaned query, the cleaned endings each after a space, and the right one; a row
    lacking a field the task reads is named by file and line."""
    copy = tmp_path / "hellaswag"
    copy.mkdir()
    write_jsonl(copy / "train.jsonl", [{**WIKIHOW, "activity_label": f"Shot {i}"} for i in range(2)])
    write_jsonl(copy / "validation.jsonl", [{**WIKIHOW, "label": "1"}, {**WIKIHOW, "activity_label": "Two"}])
    write_jsonl(copy / "test.jsonl", [{**WIKIHOW, "label": ""}])
    args = ["check", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=24",
            "--set", "data.synthetic_test_rows=4", "--show", "2", "--set",
            f"eval.also=[{{task: hellaswag, source: {copy}, fewshot: 1}}]"]
    assert main([*args, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["eval_examples"]["hellaswag"]
    assert (shown["scoring"], shown["split"]) == ("choice", "validation")
    first = shown["rows"][0]
    assert first["prompt"] == "Home and Garden: How to grow tomatoes. Pick a sunny spot. Tomatoes need light."
    assert first["options"] == ["  Water them daily.", " Paint the pots. red.", " Sing.", " Buy them."]
    assert (first["right"], shown["rows"][1]["right"]) == (1, 0) and first["reference"] == "Paint the pots. red."
    assert shown["rows"][1]["prompt"].startswith("Two: How to grow")
    drawn = random.Random(1234).sample([0, 1], 2)[0]  # lm-eval's draw scoring a validation split: one more shot
    assert shown["fewshot_prompt"].startswith(f"Shot {drawn}: How to grow tomatoes.") and \
        "Tomatoes need light.  Water them daily.\n\n" in shown["fewshot_prompt"]  # the shot with its right ending
    assert main(args) == 0
    assert "against ' Paint the pots. red.', whose text is 'Paint the pots. red.'" in capsys.readouterr().out
    write_jsonl(copy / "validation.jsonl", [{**WIKIHOW}, {"ctx_a": "x", "label": "0"}])
    assert main(args) == 2
    assert f"{copy / 'validation.jsonl'}:2: no field 'activity_label' (task hellaswag reads" in capsys.readouterr().err


MMLU_ROWS = [{"question": f"Q{i}: what is {i} + {i}?", "subject": subject, "answer": i % 4,
              "choices": [str(2 * i + d - i % 4) for d in range(4)]}
             for i, subject in enumerate(["astronomy", "anatomy", "astronomy", "anatomy", "anatomy", "astronomy"])]


def _mmlu_copy(folder):
    """A local MMLU copy: six test questions of two subjects, two dev rows of each subject, no train split."""
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", MMLU_ROWS)
    write_jsonl(folder / "dev.jsonl", [{**r, "question": f"Shot {k} of {r['subject']}"}
                                       for r in MMLU_ROWS[:2] for k in range(2)][::-1])
    return folder


def _lm_eval_mmlu_prompt(row: dict, shots: list[dict]) -> str:
    """lm-eval's MMLU prompt, written out: the subject's description, each shot with its right letter, the question."""
    def text(r):
        return r["question"].strip() + "".join(f"\n{L}. {c}" for L, c in zip("ABCD", r["choices"])) + "\nAnswer:"
    return (f"The following are multiple choice questions (with answers) about {row['subject']}.\n\n"
            + "".join(f"{text(s)} {'ABCD'[s['answer']]}\n\n" for s in shots) + text(row))


@pytest.mark.slow
def test_mmlus_shots_are_its_subjects_dev_rows_after_one_description_as_lm_eval_writes_them(tiny_model, tmp_path):
    """Each question's few-shot shots are the first dev rows of its own subject (eval.fewshot_same_category), written
    after the subject's description once (eval.description): lm-eval's MMLU prompt; every option's log-likelihood
    is the one computed from the model's logits on that whole prompt, each subject's shots run once and shared."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    copy = _mmlu_copy(tmp_path / "mmlu")
    dev = [json.loads(line) for line in (copy / "dev.jsonl").read_text().splitlines()]
    cfg, run = copy_run(one_epoch_run(tiny_model, tmp_path / "trained", "tiny-mmlu"), tmp_path,
                        also=[{"task": "mmlu", "source": str(copy), "fewshot": 2, "limit": 6}])
    result = dict(evaluate_extra(cfg, run, only="base"))["mmlu"]
    assert result.summary["base-2shot"]["shots_from"] == \
        f"the first 2 validation rows of each question's own category of {copy} (eval.source)"
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name).eval()
    for p in result.predictions:
        row = MMLU_ROWS[int(p["id"].split("-")[1]) - 1]
        shots = [d for d in dev if d["subject"] == row["subject"]][:2] if p["model"] == "base-2shot" else []
        head = tok(_lm_eval_mmlu_prompt(row, shots))["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([head + tok(" A", add_special_tokens=False)["input_ids"]])).logits[0, -2]
        expected = [float(logp.log_softmax(-1)[tok(f" {L}", add_special_tokens=False)["input_ids"][0]])
                    for L in "ABCD"]
        assert p["logliks"] == pytest.approx(expected, abs=2e-4)


def test_a_task_set_is_scored_and_the_report_names_its_prompt_as_lm_evals(tiny_model, tmp_path):
    copy = tmp_path / "hellaswag"
    copy.mkdir()
    write_jsonl(copy / "validation.jsonl", [{**WIKIHOW, "label": str(i % 4), "activity_label": f"Row {i}"}
                                            for i in range(5)])
    cfg, run = copy_run(one_epoch_run(tiny_model, tmp_path / "trained", "tiny-task"), tmp_path,
                        also=[{"task": "hellaswag", "source": str(copy), "fewshot": 0, "limit": 5}])
    scored = dict(evaluate_extra(cfg, run))["hellaswag"]
    assert scored.summary["scoring"] == "choice" and scored.summary["base"]["n"] == 5
    assert scored.summary["format"] == {"template": "{query}", "target": "{label}", "task": "hellaswag"}
    table = extra.section(run)[0][1][2]
    assert table[0][:3] == ("hellaswag", str(copy), "lm-eval's hellaswag ('{query}')")


def test_a_description_is_written_once_before_the_prompt_and_in_chat_as_the_system_turn(tiny_model, tmp_path,
                                                                                       capsys):
    copy = _mmlu_copy(tmp_path / "mmlu")
    args = ["check", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=24",
            "--set", "data.synthetic_test_rows=4", "--show", "1", "--set", "eval.chat_baseline=true", "--set",
            f"eval.also=[{{task: mmlu, source: {copy}, fewshot: 1}}]"]
    assert main([*args, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["eval_examples"]["mmlu"]
    row, shot = MMLU_ROWS[0], [json.loads(x) for x in (copy / "dev.jsonl").read_text().splitlines()]
    assert shown["rows"][0]["prompt"] == _lm_eval_mmlu_prompt(row, [])
    assert shown["fewshot_prompt"] == _lm_eval_mmlu_prompt(row, [s for s in shot if s["subject"] == "astronomy"][:1])
    described = "The following are multiple choice questions (with answers) about astronomy.\n\n"
    assert shown["chat_baseline_prompt"].startswith(f"<|im_start|>system\n{described}<|im_end|>\n<|im_start|>user\n"
                                                    f"{row['question']}\nA. ")  # lm-eval's --apply_chat_template
    chatted = shown["chat_fewshot_prompt"]  # the description once, then the question's own subject's first shot
    assert chatted.count(described) == 1 and chatted.count("Shot 1 of astronomy") == 1 and "anatomy" not in chatted


def test_settings_the_description_and_category_shots_need_are_refused_naming_the_key(tiny_recipe):
    with pytest.raises(UserError, match="eval.also.0.fewshot_same_category: takes each question's shots from its "
                                        "own category, and no category column is named; set eval.also.0.label_field"):
        validate({**tiny_recipe, "data": {**tiny_recipe["data"], "label_field": None},
                  "eval": {"also": [{"source": "x.jsonl", "fewshot_same_category": True}]}}, "tiny")
    with pytest.raises(UserError, match="eval.description: is written before eval.source's prompts, and eval.source "
                                        "is not set"):
        validate({**tiny_recipe, "eval": {"description": "About {family}.\n\n"}}, "tiny")
    raw = validate({**tiny_recipe, "eval": {"source": "synthetic:arith", "description": "About {subject}.\n\n"}},
                   "tiny")
    with pytest.raises(UserError, match=r"eval.description: unknown placeholder \{subject\}; fields are: answer, "):
        load_splits(raw.data, raw.eval)


def test_a_truthfulqa_copy_holding_its_validation_split_alone_is_scored_on_it(tiny_recipe, tmp_path):
    from tunelab.evaluate import choices
    from tunelab.evaluate.stage import _questions
    copy = tmp_path / "truthful_qa"
    copy.mkdir()
    write_jsonl(copy / "validation.jsonl", [{"question": f"Is {i} odd?", "mc1_targets": {
        "choices": ["It depends on the number.", "Yes.", "No."], "labels": [1, 0, 0]}} for i in range(3)])
    raw = validate({**tiny_recipe, "eval": {"fewshot": 5, "also": [{"task": "truthfulqa_mc1", "source": str(copy)}]}},
                   "tiny")
    extra = also_recipe(raw, raw.eval.also[0])
    mode, questions = _questions(extra, load_splits(extra.data, extra.eval))
    assert mode == "choice" and len(questions) == 3 and questions[0].prompt.endswith("\n\nQ: Is 0 odd?\nA:")
    assert questions[0].prompt.startswith("Q: What is human life expectancy in the United States?\n")
    assert [q.target for q in questions] == ["It depends on the number."] * 3  # the first option, MC1's true one
    assert choices.written(extra, questions[0]) == [" It depends on the number.", " Yes.", " No."]


def _drawn(raw: dict, entry: dict, limit: int | None = None, limit_from: str = "first"):
    """An eval.also entry's questions (its first `limit`, or as many drawn at random), its shot pool and each
    question's shots, as its few-shot baseline asks them."""
    cfg = validate({**raw, "eval": {"fewshot": 3, "limit": limit, "limit_from": limit_from, "also": [entry]}}, "t")
    extra = also_recipe(cfg, cfg.eval.also[0])
    splits = load_splits(extra.data, extra.eval)
    mode, questions = _questions(extra, splits)
    pool = shot_pool(extra, splits)
    return extra, questions, pool, _shots_of(extra, pool, questions, mode, _held_out(extra, splits)[1])


def test_random_shots_are_lm_evals_draws_for_each_question_in_the_splits_order_whatever_is_scored(tiny_recipe,
                                                                                                tmp_path):
    """eval.fewshot_sampler random (task: gsm8k sets it, as lm-eval's YAML names no sampler): one
    random.Random(1234) draws each test question's shots in the split's order, so a question is asked after the
    same shots however many and whichever questions are scored (eval.limit, limit_from); first_n asks every
    question after the first ones."""
    copy = tmp_path / "gsm8k"
    copy.mkdir()
    write_jsonl(copy / "train.jsonl", [{"question": f"Shot {i}?", "answer": f"#### {i}"} for i in range(12)])
    write_jsonl(copy / "test.jsonl", [{"question": f"Q {i}?", "answer": f"#### {i}"} for i in range(8)])
    entry = {"task": "gsm8k", "source": str(copy)}
    extra, questions, pool, shots = _drawn(tiny_recipe, entry)
    assert extra.eval.fewshot_sampler == "random" and len(questions) == 8
    rnd = random.Random(1234)
    assert shots == [rnd.sample(pool, 3) for _ in questions]  # lm-eval's ContextSampler.sample, question by question
    assert len({tuple(e.id for e in its) for its in shots}) > 1  # not the same shots for every question
    assert _shots_from(extra, shots, pool) == (f"3 of the train rows drawn for each question (lm-eval's sampler, "
                                               f"seed 1234) of {copy} (eval.source)")
    for limit, limit_from in ((3, "first"), (4, "random")):
        _, some, _, theirs = _drawn(tiny_recipe, entry, limit, limit_from)
        assert len(some) == limit and all(its == shots[questions.index(q)] for q, its in zip(some, theirs))
    _, _, _, first = _drawn(tiny_recipe, {**entry, "fewshot_sampler": "first_n"})
    assert all(its == pool[:3] for its in first)


@pytest.mark.slow
def test_a_few_shot_pass_with_shots_drawn_for_each_question_generates_for_each(tiny_model, tmp_path):
    copy = tmp_path / "gsm8k"
    copy.mkdir()
    write_jsonl(copy / "train.jsonl", [{"question": f"Shot {i}?", "answer": f"#### {i}"} for i in range(6)])
    write_jsonl(copy / "test.jsonl", [{"question": f"Q {i}?", "answer": f"#### {i}"} for i in range(3)])
    cfg, run = copy_run(one_epoch_run(tiny_model, tmp_path / "trained", "tiny-drawn"), tmp_path,
                        also=[{"task": "gsm8k", "source": str(copy), "fewshot": 2}])
    summary = dict(evaluate_extra(cfg, run, only="base"))["gsm8k"].summary
    assert summary["base-2shot"]["n"] == 3 and "drawn for each question" in summary["base-2shot"]["shots_from"]


def test_scoring_a_validation_split_lm_eval_draws_one_more_shot_and_leaves_out_the_question_itself(tiny_recipe,
                                                                                                 tmp_path):
    """HellaSwag, PIQA and Winogrande have no test split: lm-eval scores their validation rows and draws n + 1 shots
    for each, leaving out any equal to the question, so the next question's draws follow from that."""
    copy = tmp_path / "piqa"
    copy.mkdir()
    held_out = [{"goal": f"Goal {i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(4)]
    write_jsonl(copy / "validation.jsonl", held_out)
    write_jsonl(copy / "train.jsonl", [held_out[0], *({**r, "goal": f"Shot {i}"} for i, r in enumerate(held_out[:3]))])
    _, questions, pool, shots = _drawn(tiny_recipe, {"task": "piqa", "source": str(copy)})
    assert sorted(e.fields["goal"] for e in shots[0]) == ["Shot 0", "Shot 1", "Shot 2"]  # 4 of 4 drawn, its copy out
    rnd = random.Random(1234)
    for q, its in zip(questions, shots):
        expected = [e for e in rnd.sample(pool, 4) if e.fields != q.fields][:3]
        assert its == expected and q.fields not in [e.fields for e in its]


WINO = [{"sentence": f"Tom gave {i} apples to Ann because _ was hungry.", "option1": "Tom", "option2": "Ann",
         "answer": str(1 + i % 2)} for i in range(4)]


def _loglik_after(model, tok, context: str, text: str) -> float:
    """The summed log-probability of `text`'s tokens after `context`, from the model's logits directly."""
    import torch
    head, tail = tok(context)["input_ids"], tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([head + tail])).logits[0, len(head) - 1:-1].log_softmax(-1)
    return float(logp.gather(1, torch.tensor(tail)[:, None]).sum())


def test_winogrande_scores_the_rest_of_the_sentence_after_each_option_filling_its_blank(tiny_model, tmp_path):
    """lm-eval's partial scoring: each option fills the blank, and the log-likelihood compared is that of the rest of
    the sentence after it (the same text for both options); a shot is its sentence with the right option filled in.
    Chat baselines skip the set; a chat-formatted run or a prompt baseline is refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    copy = tmp_path / "winogrande"
    copy.mkdir()
    write_jsonl(copy / "validation.jsonl", WINO)
    write_jsonl(copy / "train.jsonl", [{**WINO[0], "sentence": "Ann thanked Tom because _ had helped her."}])
    cfg, run = copy_run(one_epoch_run(tiny_model, tmp_path / "trained", "tiny-wino"), tmp_path, chat_baseline=True,
                        also=[{"task": "winogrande", "source": str(copy), "fewshot": 1, "limit": 4}])
    result = dict(evaluate_extra(cfg, run, only="base"))["winogrande"]
    assert sorted(result.summary) >= ["base", "base-1shot"] and "base-chat" not in result.summary
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name).eval()
    shot = "Ann thanked Tom because Tom had helped her.\n\n"  # the right option (answer 1: Tom) in its blank
    for p in result.predictions:
        row = WINO[int(p["id"].split("-")[1]) - 1]
        before = (shot if p["model"] == "base-1shot" else "") + row["sentence"].split("_")[0]
        expected = [_loglik_after(model, tok, before + name, " was hungry.") for name in ("Tom", "Ann")]
        assert p["logliks"] == pytest.approx(expected, abs=2e-4)
        assert p["reference"] == ("Tom", "Ann")[int(row["answer"]) - 1]
        assert p["flexible_answer"] == p["strict_answer"]  # per character ranks as the sum: the same text scored
    with pytest.raises(UserError, match="eval.also.0.choice_blank: scores the text after the blank, and "
                                        "data.chat_template writes each prompt inside a chat turn"):
        validate(_raw_with(tiny_model, copy, chat=True), "tiny")
    with pytest.raises(UserError, match="eval.also.0.prompt_baseline: its prompts would not be cut at the blank"):
        validate(_raw_with(tiny_model, copy, prompt_baseline="Fill in: {prompt}"), "tiny")


def _raw_with(tiny_model, copy, chat: bool = False, **entry) -> dict:
    return {"name": "tiny", "model": {"name": str(tiny_model)},
            "data": {"source": "synthetic:arith", "template": "{question}", "target": "{answer}",
                     "chat_template": chat},
            "eval": {"also": [{"task": "winogrande", "source": str(copy), **entry}]}}


TRUTHFUL = [{"question": f"What happens if you crack your knuckles {i} times?", "mc2_targets": [
    {"choices": [f"It is {i}.", f"It is {i + 1}.", f"It is {i + 2}.", f"It is {i + 3}."], "labels": [1, 1, 0, 0]},
    {"choices": [f"It is {i + 3}.", f"It is {i}.", f"It is {i + 1}."], "labels": [1, 0, 0]}][i % 2]}
            for i in range(5)]  # options a digit apart (the tiny model learnt sums): mc2 between 0 and 1


@pytest.mark.slow
def test_truthfulqa_mc2_is_the_probability_on_the_true_options_as_lm_eval_computes_it(tiny_model, tmp_path, capsys):
    """MC2: several options are true (mc2_targets.labels); each question's mc2 is the probability the model gives
    the true options, normalised over all (lm-eval's process_results_mc2, from log-likelihoods computed here
    directly); a pick is right when it is a true option; each pass's mc2 is the mean, and tuned − base is paired in
    the summary, the report's table and verdict, the console line and the model card."""
    import numpy as np
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.tasks import TRUTHFULQA_SHOTS
    copy = tmp_path / "truthful_qa"
    copy.mkdir()
    write_jsonl(copy / "validation.jsonl", TRUTHFUL)
    cfg, run = copy_run(one_epoch_run(tiny_model, tmp_path / "trained", "tiny-tqa"), tmp_path,
                        also=[{"task": "truthfulqa_mc2", "source": str(copy), "limit": 5}])
    scored = dict(evaluate_extra(cfg, run))["truthfulqa_mc2"]
    s = scored.summary
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    models = {"base": AutoModelForCausalLM.from_pretrained(cfg.model.name).eval(),
              "tuned": PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.model.name),
                                                 str(run.adapter)).eval()}
    mc2 = {}
    for p in scored.predictions:
        row = TRUTHFUL[int(p["id"].split("-")[1]) - 1]
        prompt = TRUTHFULQA_SHOTS + f"\n\nQ: {row['question']}\nA:"
        lls = [_loglik_after(models[p["model"]], tok, prompt, f" {o}") for o in row["mc2_targets"]["choices"]]
        assert p["logliks"] == pytest.approx(lls, abs=2e-4)
        labels = np.array(row["mc2_targets"]["labels"])
        probs = np.exp(np.array(lls)) / np.exp(np.array(lls)).sum()  # lm-eval 0.4.13's process_results_mc2
        assert p["mc2"] == pytest.approx(probs[labels == 1].sum(), rel=2e-3, abs=2e-6)
        assert p["strict_correct"] == bool(labels[int(np.argmax(lls))])
        mc2.setdefault(p["model"], []).append(p["mc2"])
    assert sorted(mc2) == ["base", "tuned"] and len(mc2["base"]) == 5
    for name in mc2:
        assert s[name]["mc2"] == pytest.approx(np.mean(mc2[name]), abs=1e-6)
    d = s["mc2_difference"]
    assert d["n"] == 5 and d["delta_pts"] == pytest.approx(100 * (np.mean(mc2["tuned"]) - np.mean(mc2["base"])),
                                                            abs=1e-3)
    assert d["ci95_pts"][0] <= d["delta_pts"] <= d["ci95_pts"][1]
    blocks, found = extra.section(run)
    table = blocks[1][2]
    assert [r[4] for r in table] == ["choice acc (acc_norm)", "mc2 (probability on the true options)"]
    assert table[1][5] == f"{100 * s['base']['mc2']:.1f} %" and table[1][8] == f"{100 * s['tuned']['mc2']:.1f} %"
    assert any(o.text.startswith(f"The mc2 score on truthfulqa_mc2 (the probability on the true options") and
               f"{100 * s['base']['mc2']:.1f} % → {100 * s['tuned']['mc2']:.1f} %" in o.text for o in found)
    assert extra.line("truthfulqa_mc2", s).endswith(
        f"; mc2 {100 * s['base']['mc2']:.1f} % → {100 * s['tuned']['mc2']:.1f} % ({d['delta_pts']:+.1f} pts, 95 % CI "
        f"{d['ci95_pts'][0]:+.1f}..{d['ci95_pts'][1]:+.1f})")
    card = (run.adapter / "README.md").read_text()
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    metrics = {m["name"]: m["value"] for r in index if str(copy) in r["dataset"]["name"] for m in r["metrics"]}
    assert metrics["mc2"] == round(s["tuned"]["mc2"], 4) and {"acc", "acc_norm"} <= metrics.keys()
    assert f"| truthfulqa_mc2 | `{copy}` | 5 | mc2 | {100 * s['base']['mc2']:.1f} % |" in card
    capsys.readouterr()
    assert main(["check", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=24",
                 "--show", "1", "--set", f"eval.also=[{{task: truthfulqa_mc2, source: {copy}}}]"]) == 0
    assert ("against the options labelled true, ' It is 0.', ' It is 1.' (mc2: their share of the probability); the "
            "first, whose text is 'It is 0.'") in " ".join(capsys.readouterr().out.split())


def test_labels_that_do_not_fit_the_options_leave_the_row_unscored_and_need_options(tiny_recipe):
    from math import exp
    from tunelab.data import Example
    from tunelab.evaluate import choices
    cfg = validate({**tiny_recipe, "eval": {"choices": "opts", "choice_labels": "labels"}}, "tiny")

    def row(labels) -> Example:
        return Example(id="t-1", prompt="Q?", target="2", fields={"opts": ["a", "b", "c"], "labels": labels})

    assert choices.answer_of(cfg, row([0, 1, 1])) == 1  # the first true option; the target (2) is not read
    assert choices.answer_of(cfg, row(["true", "false", "0"])) == 0
    for wrong in ([1, 0], [0, 0, 0], [1, 2, 0], "1,0,0", None):  # too few, none true, not 0/1, not a list, absent
        assert choices.answer_of(cfg, row(wrong)) is None
    scored = choices.row(cfg, row([0, 1, 1]), [-1.0, -2.0, -3.0])
    assert (scored["strict_answer"], scored["strict_correct"]) == ("a", False)
    assert scored["mc2"] == pytest.approx((exp(-2) + exp(-3)) / (exp(-1) + exp(-2) + exp(-3)), abs=1e-6)
    with pytest.raises(UserError, match="eval.also.0.choice_labels: labels each option, and eval.also.0.choices "
                                        "names none"):
        validate({**tiny_recipe, "eval": {"also": [{"source": "x", "choice_labels": "labels"}]}}, "tiny")
