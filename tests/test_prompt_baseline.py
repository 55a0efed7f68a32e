"""eval.prompt_baseline: the base model asked with a prompt written in words (an instruction, the answer's form),
scored beside the fine-tune on the same questions, by accuracy or, for rows no answer check suits, by target loss."""

import json

import pytest
import torch

from conftest import copy_run, one_epoch_run
from tunelab.cli import main
from tunelab.config import also_recipe, validate
from tunelab.errors import UserError
from tunelab.evaluate.generate import generate
from tunelab.evaluate.stage import evaluate
from tunelab.evaluate.summary import baselines, pass_names

ASKED = "Solve this: {question}\nWrite only the number.\nAnswer: "


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One epoch of the tiny model on synthetic arithmetic; tests copy its run directory."""
    return one_epoch_run(tiny_model, tmp_path_factory.mktemp("prompt-baseline"), "tiny-pb")


@pytest.mark.slow
def test_the_prompt_baseline_asks_the_base_model_each_question_in_the_users_words(trained, tmp_path, monkeypatch):
    """The base model answers each question written with eval.prompt_baseline (its fields filled in) as plain text,
    the answers are scored like every pass's, and the summary pairs the fine-tune with it: the report's baseline
    rows and the model card say how it was asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = copy_run(trained, tmp_path, prompt_baseline=ASKED)
    result = evaluate(cfg, run)
    s = result.summary
    assert pass_names(s) == ["base", "base-prompt", "tuned"]
    asked = [p for p in result.predictions if p["model"] == "base-prompt"]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    prompts = [f"Solve this: {p['question']}\nWrite only the number.\nAnswer: " for p in asked]
    said = generate(base, tok, prompts, max_new_tokens=8, slots=1)[0]
    assert [g.completion for g in said] == [p["completion"] for p in asked] and len(asked) == 4
    assert s["base-prompt"]["asked_with"] == {"template": ASKED, "chat_template": False}
    pb = s["prompt_baseline"]
    tuned = [p["flexible_correct"] for p in result.predictions if p["model"] == "tuned"]
    assert pb["tuned_vs_prompt"]["flexible"]["delta_pts"] == pytest.approx(
        25 * (sum(tuned) - sum(p["flexible_correct"] for p in asked)))
    (b,) = baselines(s)
    assert b["model"] == "base-prompt" and b["prompting"] and \
        b["how"] == 'zero-shot, "Solve this: {question}\\nWrite only the number.\\nAnswer: " as plain text'
    from tunelab.report import write_report
    write_report(run)
    md = run.report_md.read_text()
    assert "| vs the base model asked with eval.prompt_baseline (flexible-extract) | " \
           f"{100 * s['base-prompt']['flexible_accuracy']:.1f} % → {100 * s['tuned']['flexible_accuracy']:.1f} %" in md
    assert "`base-prompt` is the base model asked with eval.prompt_baseline" in (run.adapter / "README.md").read_text()


def test_with_the_chat_baseline_the_prompt_baseline_is_the_user_turn(trained, tmp_path, monkeypatch):
    """With eval.chat_baseline the run asks through the chat template, and so does the prompt baseline: its text,
    stripped, as the user turn; a cached base pass is not asked again."""
    from transformers import AutoTokenizer
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = copy_run(trained, tmp_path, prompt_baseline=ASKED, chat_baseline=True)
    result = evaluate(cfg, run, only="base", adapter=False)
    assert pass_names(result.summary) == ["base", "base-chat", "base-prompt"]
    assert result.summary["base-prompt"]["asked_with"]["chat_template"]
    from tunelab.evaluate.stage import prompt_baseline_prompts
    from tunelab.data import load_splits
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    test = load_splits(cfg.data, cfg.eval).test[:1]
    turn = [{"role": "user", "content": f"Solve this: {test[0].fields['question']}\nWrite only the number.\nAnswer:"}]
    assert prompt_baseline_prompts(cfg, tok, test) == [tok.apply_chat_template(turn, tokenize=False,
                                                                               add_generation_prompt=True)]
    again = evaluate(cfg, run, only="base", adapter=False).summary
    assert again["base-prompt"]["cached"] and again["base-prompt"]["flexible_accuracy"] == \
        result.summary["base-prompt"]["flexible_accuracy"]


def test_a_field_the_prompt_baseline_names_and_a_row_lacks_stops_the_run_before_training(trained, tmp_path, capsys):
    """`tunelab run` checks the prompt baseline against the held-out rows before it trains: exit 2 naming the key,
    the row and its fields, and no run directory written."""
    raw, _ = trained
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({**raw, "eval": {**raw["eval"], "prompt_baseline": "{prompt} ({topic})"}}))
    out = tmp_path / "never"
    assert main(["run", str(path), "--run-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "eval.prompt_baseline: row test-0 has no field 'topic' (its fields: " in err and "prompt, question" in err
    assert not (out / "adapter").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize(("text", "said"), [
    ("Answer the question.", "eval.prompt_baseline: names no field"),
    ("{prompt} {", "eval.prompt_baseline: Single '{' encountered"),
    ("{0} {prompt}", "eval.prompt_baseline: placeholder {0} is not a field name"),
])
def test_a_prompt_baseline_that_cannot_ask_each_row_is_refused(tiny_recipe, text, said):
    with pytest.raises(UserError, match="1 problem") as err:
        validate({**tiny_recipe, "eval": {"prompt_baseline": text}}, "tiny")
    assert said in str(err.value)


def test_an_eval_also_set_is_asked_its_own_prompt_baseline_not_the_runs(trained, tmp_path, monkeypatch):
    """eval.prompt_baseline is written for the run's own rows; an eval.also set is asked the one its entry sets (its
    rows' fields), paired with the fine-tune on that set; a field its rows lack is said before training, naming the
    entry."""
    from conftest import write_jsonl
    from tunelab.evaluate.stage import check_extra, evaluate_extra
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(4)])
    entry = {"source": str(bench), "template": "Q: {q}\nA:", "target": " {a}", "name": "bench", "fewshot": 0}
    cfg, run = copy_run(trained, tmp_path, prompt_baseline=ASKED, also=[entry])
    assert also_recipe(cfg, cfg.eval.also[0]).eval.prompt_baseline is None
    cfg, run = copy_run(trained, tmp_path / "own", prompt_baseline=ASKED,
                     also=[{**entry, "prompt_baseline": "Compute: {q} Reply with the number.\n"}])
    ((name, result),) = evaluate_extra(cfg, run)
    s = result.summary
    assert name == "bench" and pass_names(s) == ["base", "base-prompt", "tuned"]
    assert s["base-prompt"]["asked_with"] == {"template": "Compute: {q} Reply with the number.\n",
                                              "chat_template": False}
    assert "prompt_baseline" in s and {b["model"] for b in baselines(s)} == {"base-prompt"}
    bad, _ = copy_run(trained, tmp_path / "bad", also=[{**entry, "prompt_baseline": "{question}"}])
    with pytest.raises(UserError, match=r"eval.also.0 \(.*bench.jsonl\): eval.prompt_baseline: row \S+ has no "
                                        r"field 'question'"):
        check_extra(bad)


def test_adding_the_prompt_baseline_later_keeps_the_other_passes_and_a_changed_one_is_asked_again(
        trained, tmp_path, monkeypatch):
    """An eval of the base passes alone (--only base) after the run's eval: the adapters' passes stay; a prompt
    baseline asked another way is asked again, the same one is kept."""
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = copy_run(trained, tmp_path)
    tuned = evaluate(cfg, run).summary["tuned"]
    asked = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"prompt_baseline": ASKED})})
    s = evaluate(asked, run, only="base").summary
    assert pass_names(s) == ["base", "base-prompt", "tuned"] and s["tuned"] == tuned and "prompt_baseline" in s
    first = run.read_predictions()
    other = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"prompt_baseline": "{question} = "})})
    s = evaluate(other, run, only="tuned").summary  # the base passes are kept, the prompt baseline's is not
    assert pass_names(s) == ["base", "tuned"]
    assert evaluate(asked, run, only="base").summary["base-prompt"]["cached"]  # asked as before: from the cache
    assert [p for p in run.read_predictions() if p["model"] == "base-prompt"] == \
        [p for p in first if p["model"] == "base-prompt"]


def test_rows_measured_by_loss_get_the_base_models_loss_asked_with_the_prompt_baseline(tiny_model, tmp_path):
    """Held-out prose rows no answer check suits: the base model's target loss on each reference reply after the
    prompt baseline's text (transformers' loss on the same tokens), beside its loss as trained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from conftest import write_jsonl
    from tunelab.data import load_splits
    from tunelab.evaluate import losses
    from tunelab.rundir import HeldOutLossDir
    rows = [{"q": f"Describe the number {i}.", "a": f"The number {i} is whole, and it comes after {i - 1}."}
            for i in range(12)]
    source = write_jsonl(tmp_path / "prose.jsonl", rows)
    cfg = validate({"name": "prose", "model": {"name": str(tiny_model)},
                    "data": {"source": str(source), "template": "{q}\n", "target": "{a}", "val_fraction": 0.25},
                    "eval": {"prompt_baseline": "Write one sentence.\n{q}\n"}}, "prose")
    splits = load_splits(cfg.data, cfg.eval)
    view = HeldOutLossDir(tmp_path / "run")
    s = losses.measure(cfg, view, "validation", splits.val, "prose", only="base", adapter=False)
    assert list(s["losses"]) == ["base", "base-prompt"]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    total = tokens = 0
    for r in splits.val:
        asked = tok(f"Write one sentence.\n{r.fields['q']}\n")["input_ids"]
        said = tok(r.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([asked + said]), labels=torch.tensor([[-100] * len(asked) + said]))
        total, tokens = total + out.loss.item() * len(said), tokens + len(said)
    assert s["losses"]["base-prompt"]["loss"] == pytest.approx(total / tokens, rel=1e-4)
    assert s["losses"]["base-prompt"]["loss"] != s["losses"]["base"]["loss"]


def test_replies_and_losses_name_the_prompt_baseline():
    """The generated replies' and the loss baselines' wording of the base-prompt pass."""
    from tunelab.report import extra, replies
    d = {"delta": -0.1, "ci95": [-0.2, -0.05], "means": [2.0, 1.9], "n": 10}
    assert replies.baselines({"versus": {"base-prompt": {"chrf": d}}}) == [
        ("the base model asked with eval.prompt_baseline", d)]
    assert extra.loss_baselines({"prompt_baseline": d}) == [("the base model asked with eval.prompt_baseline", d)]


def test_check_show_prints_the_prompt_baseline_as_it_asks_the_base_model(trained, tmp_path, capsys):
    raw, _ = trained
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({**raw, "eval": {**raw["eval"], "prompt_baseline": ASKED}}))
    assert main(["check", str(path), "--show", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["eval_examples"]["eval"]
    question = shown["rows"][0]["prompt"].removeprefix("Instruction: ").removesuffix("\nResponse: ")
    assert shown["prompt_baseline_prompt"] == f"Solve this: {question}\nWrite only the number.\nAnswer: "
    assert main(["check", str(path), "--show", "1"]) == 0
    assert "as the prompt baseline (eval.prompt_baseline) asks the base model" in capsys.readouterr().out
