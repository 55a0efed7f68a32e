"""`tunelab generate`: a run's model answering prompts given as text, typed, piped or read from a file — the same
answers the eval stage scored, the prompt as training wrote it, and bad input refused before any model loads."""

import io
import json

import pytest

from conftest import write_jsonl
from tunelab.cli import main
from tunelab.config import validate
from tunelab.data import chat
from tunelab.data.synthetic import generate as synthetic
from tunelab.evaluate import inference
from tunelab.evaluate.stage import evaluate
from tunelab.rundir import RunDir
from tunelab.train import train


@pytest.fixture(scope="module")
def evaluated(tiny_model, tmp_path_factory):
    """A 2-epoch tiny run on a folder source, scored on its 5 test rows (base, epoch-1, tuned)."""
    folder = tmp_path_factory.mktemp("gen-data")
    rows = synthetic(29, 3)
    write_jsonl(folder / "train.jsonl", rows[:24])
    write_jsonl(folder / "test.jsonl", rows[24:])
    raw = {"name": "tinygen", "model": {"name": str(tiny_model)},
           "data": {"source": str(folder), "template": "Instruction: {question}\nResponse: ", "target": "{answer}"},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"epochs": 2, "batch_size": 8, "lr": 3e-2, "max_length": 128},
           "eval": {"limit": 5, "max_new_tokens": 12}}
    run = RunDir(tmp_path_factory.mktemp("gen") / "run")
    cfg = validate(raw, "tinygen")
    train(cfg, run)
    cache = tmp_path_factory.mktemp("gen-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tunelab.evaluate.stage.cache_dir", lambda: cache)
        predictions = evaluate(cfg, run).predictions
    return run, folder, predictions


def _answers(predictions: list[dict], model: str) -> dict[str, str]:
    return {p["question"]: p["completion"] for p in predictions if p["model"] == model}


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.slow
def test_file_rows_get_the_answers_eval_scored_from_the_adapter_and_the_base_model(evaluated, capsys):
    run, folder, predictions = evaluated
    assert main(["generate", str(run.path), "--file", str(folder / "test.jsonl"), "--base", "--until", "answer",
                 "--json"]) == 0
    got = _lines(capsys.readouterr().out)
    rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    assert [g["fields"]["question"] for g in got] == [r["question"] for r in rows]
    assert [g["prompt"] for g in got] == [f"Instruction: {r['question']}\nResponse: " for r in rows]
    assert [g["reference"] for g in got] == [r["answer"] for r in rows]  # the file has the target's field
    tuned, base = _answers(predictions, "tuned"), _answers(predictions, "base")
    assert [g["tuned"] for g in got] == [tuned[r["question"]] for r in rows]
    assert [g["base"] for g in got] == [base[r["question"]] for r in rows]
    assert all(g["tokens"]["tuned"] >= 1 for g in got)
    assert len({g["tuned"] for g in got} | {g["base"] for g in got}) > 1  # not one constant string


def test_texts_epochs_and_piped_lines_answer_like_the_matching_adapter(evaluated, capsys, monkeypatch):
    run, folder, predictions = evaluated
    question = json.loads((folder / "test.jsonl").read_text().splitlines()[0])["question"]
    # a prompt after an option is still a prompt; --epoch 1 answers with epoch 1's adapter
    assert main(["generate", str(run.path), "--epoch", "1", question, "--until", "answer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"[1] {question}\ntuned (epoch 1's adapter):\n")
    assert "  " + _answers(predictions, "epoch-1")[question].strip().replace("\n", "\n  ") in out
    assert "reference:" not in out  # a text has no target
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{question}\n\n  \n{question}\n"))  # blank lines skipped
    assert main(["generate", str(run.path), "--json", "--until", "answer"]) == 0
    got = _lines(capsys.readouterr().out)
    assert [g["id"] for g in got] == ["text-1", "text-2"]
    assert [g["tuned"] for g in got] == [_answers(predictions, "tuned")[question]] * 2


def test_typed_lines_are_answered_one_by_one_until_ctrl_d(evaluated, capsys, monkeypatch):
    run, folder, predictions = evaluated
    questions = [json.loads(line)["question"] for line in (folder / "test.jsonl").read_text().splitlines()[:2]]
    typed = iter([questions[0], "", questions[1]])

    def fake_input(prompt):
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["generate", str(run.path), "--until", "answer", "--json"]) == 0
    got = _lines(capsys.readouterr().out)
    tuned = _answers(predictions, "tuned")
    assert [(g["fields"]["question"], g["tuned"]) for g in got] == [(q, tuned[q]) for q in questions]


def test_raw_text_is_the_whole_prompt_and_eos_is_the_default_end(evaluated, capsys):
    run, _, _ = evaluated
    assert main(["generate", str(run.path), "--raw", "12 + 30 =", "--json", "--max-new-tokens", "5"]) == 0
    (got,) = _lines(capsys.readouterr().out)
    assert got["prompt"] == "12 + 30 =" and "fields" not in got
    assert got["tokens"]["tuned"] <= 5


def test_bad_input_is_refused_with_exit_2_before_any_model_loads(evaluated, tiny_recipe, tmp_path, capsys,
                                                                 monkeypatch):
    run, folder, _ = evaluated
    monkeypatch.setattr(inference, "load", lambda *a: pytest.fail("a model was loaded"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "What is 2 + 2?"}, {"q": "typo"}, "{not json"])
    cases = {
        ("--file", str(bad)): ["rows that cannot be prompts: 2", f"{bad}:2: missing field 'question'", f"{bad}:3:"],
        ("--file", str(folder / "test.jsonl"), "extra text"): ["give no texts"],
        ("--file", str(tmp_path / "none.jsonl")): ["no such file"],
        ("--epoch", "3", "x"): ["--epoch: '3'"],
        ("--set", "train.lr=1", "x"): ["--set train.lr"],
    }
    for extra, messages in cases.items():
        assert main(["generate", str(run.path), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert all(m in err for m in messages), (extra, err)
    two = tmp_path / "two.yaml"
    tiny_recipe["data"]["template"] = "Q: {question}\nFamily: {family}\nA: "
    two.write_text(json.dumps(tiny_recipe))
    assert main(["generate", str(two), "What is 2 + 2?"]) == 2
    assert "has {question}, {family}; a text fills exactly one field" in capsys.readouterr().err
    assert main(["generate", str(two), "--epoch", "1", "x"]) == 2
    assert "a recipe has no adapters" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "x"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_chat_runs_prompt_with_the_chat_template_the_system_turn_and_an_open_conversation(smollm2_dir, tmp_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    cfg = validate({"model": {"name": str(smollm2_dir)},
                    "data": {"source": "synthetic:arith", "messages": "messages", "system_prompt": "Be brief."}}, "chat")
    (typed,) = inference.from_texts(cfg, ["What is 2 + 2?"])
    system = [{"role": "system", "content": "Be brief."}]
    assert inference.prompts(cfg, tok, [typed]) == [chat.prompt(tok, "What is 2 + 2?", history=system)]
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "And 3 + 4?"}]
    rows = write_jsonl(tmp_path / "chats.jsonl", [{"messages": turns}, {"messages": turns + [
        {"role": "assistant", "content": "7"}]}])
    open_end, answered = inference.from_file(cfg, str(rows))
    expected = chat.prompt(tok, "And 3 + 4?", history=system + turns[:2])
    assert inference.prompts(cfg, tok, [open_end, answered]) == [expected, expected]
    assert (open_end.target, answered.target) == ("", "7")  # a conversation that ends answered shows its reference
    ended = write_jsonl(tmp_path / "ended.jsonl", [{"messages": turns[:2] + [{"role": "system", "content": "x"}]}])
    with pytest.raises(Exception, match=r"ended.jsonl:1: field 'messages': the last turn is system, expected a "
                                        r"user turn \(to answer\) or an assistant turn"):
        inference.from_file(cfg, str(ended))


def test_until_pattern_stops_where_regex_scoring_would(evaluated, capsys, monkeypatch):
    """--until pattern hands generate() eval.answer_pattern compiled, as the eval stage's regex passes stop; the
    answers printed are the ones it returns."""
    import re
    from tunelab.evaluate.generate import Generation
    run, _, _ = evaluated
    seen = []

    def answers(model, tok, prompts, max_new_tokens, slots, label, stops, sampling=None):
        seen.append(stops)
        return [Generation("<answer>7</answer>", 4) for _ in prompts], 0.1

    monkeypatch.setattr("tunelab.evaluate.generate.generate", answers)
    assert main(["generate", str(run.path), "What is 3 + 4?", "--until", "pattern", "--json",
                 "--set", "eval.answer_pattern=Answer: (\\d+)"]) == 0
    assert seen == [[re.compile(r"Answer: (\d+)")]]
    assert _lines(capsys.readouterr().out)[0]["tuned"] == "<answer>7</answer>"
    assert main(["generate", str(run.path), "What is 3 + 4?", "--until", "pattern"]) == 0
    from tunelab.evaluate.scoring import ANSWER_TAG
    assert seen[-1] == [re.compile(ANSWER_TAG)]  # the default pattern


def test_until_reads_an_adapters_reply_after_the_thinking_its_eval_read_it_after(evaluated, capsys, monkeypatch):
    """A plain-prompt run whose eval read the tuned replies after </think> (targets that are reasoning traces):
    --until reads the adapter's replies after it, the base model's not; eval.think_end set reads after that one,
    '' after none; --raw texts are read whole."""
    from tunelab.evaluate.generate import AfterThinking, Generation
    run, _, _ = evaluated
    seen = []

    def answers(model, tok, prompts, max_new_tokens, slots, label, stops, sampling=None):
        seen.append((label, stops[0]))
        return [Generation("<think>2 + 2</think> #### 4", 6) for _ in prompts], 0.1

    monkeypatch.setattr("tunelab.evaluate.generate.generate", answers)
    assert main(["generate", str(run.path), "What is 2 + 2?", "--until", "answer", "--base"]) == 0
    assert seen == [("generate tuned", None), ("generate base", None)]  # its eval read no thinking
    summary = {**run.read_eval_summary(), "tuned": {**run.read_eval_summary()["tuned"], "think_end": "</think>"}}
    monkeypatch.setattr(RunDir, "read_eval_summary", lambda self: summary)
    seen.clear()
    assert main(["generate", str(run.path), "What is 2 + 2?", "--until", "answer", "--base"]) == 0
    assert seen == [("generate tuned", AfterThinking("</think>", None)), ("generate base", None)]
    seen.clear()
    assert main(["generate", str(run.path), "What is 2 + 2?", "--until", "line", "--set", "eval.think_end=<|/r|>"]) == 0
    assert main(["generate", str(run.path), "What is 2 + 2?", "--until", "line", "--set", "eval.think_end=''"]) == 0
    assert main(["generate", str(run.path), "What is 2 + 2?", "--until", "line", "--raw"]) == 0
    assert seen == [("generate tuned", AfterThinking("<|/r|>", "line")), ("generate tuned", "line"),
                    ("generate tuned", "line")]
    capsys.readouterr()


@pytest.mark.slow
def test_sampled_answers_are_the_draws_eval_pass_at_k_makes(evaluated, capsys):
    """--temperature T draws each answer (eval.top_p, eval.sample_seed) as eval.pass_at_k does: the same texts as
    the generator sampling at T gives; --sample draws at eval.temperature; a temperature out of range is refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.evaluate.generate import Sampling, generate
    run, folder, predictions = evaluated
    questions = [json.loads(line)["question"] for line in (folder / "test.jsonl").read_text().splitlines()]
    assert main(["generate", str(run.path), *questions, "--base", "--temperature", "1.5", "--until", "answer",
                 "--json"]) == 0
    got = _lines(capsys.readouterr().out)
    cfg = run.read_recipe()
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    drawn = generate(base, tok, [g["prompt"] for g in got], 12, sampling=Sampling(1.5, 0.95, 0))[0]
    assert [g["base"] for g in got] == [d.completion for d in drawn]
    assert [g["base"] for g in got] != [_answers(predictions, "base")[q] for q in questions]  # not the greedy ones
    assert main(["generate", str(run.path), *questions, "--base", "--sample", "--set", "eval.temperature=1.5",
                 "--until", "answer", "--json"]) == 0
    assert _lines(capsys.readouterr().out) == got
    assert main(["generate", str(run.path), questions[0], "--temperature", "0"]) == 2
    assert "eval.temperature" in capsys.readouterr().err
