"""eval.models: other models asked the run's questions, zero-shot, scored beside the base model and paired with the
fine-tune — is a bigger model (or the one in production) as good without fine-tuning?"""

import pytest

from conftest import copy_run, make_tiny_model, one_epoch_run
from tunelab.config import validate
from tunelab.data import load_splits
from tunelab.errors import UserError
from tunelab.evaluate.generate import generate
from tunelab.evaluate.stage import check_models, evaluate
from tunelab.evaluate.summary import baselines, pass_names


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    return one_epoch_run(tiny_model, tmp_path_factory.mktemp("other-models"), "tiny-om")


@pytest.fixture(scope="module")
def other(tmp_path_factory, smollm2_dir):
    """Another model: a tiny Qwen2 with SmolLM2's tokenizer (whose chat template it asks through)."""
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), smollm2_dir, "qwen2"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory, smollm2_dir):
    """Another model whose tokenizer has no chat template."""
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-plain"), smollm2_dir, "mistral")
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    import json
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.slow
def test_another_model_answers_through_its_chat_template_and_is_paired_with_the_fine_tune(
        trained, other, plain, tmp_path, monkeypatch):
    """Each other model answers every question (SmolLM2's chat template for one, the run's prompt as plain text for
    the one without a template); the summary pairs tuned with each, the report gives a Key-metrics row and a
    verdict per model, and a second eval takes their answers from the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = copy_run(trained, tmp_path, models=[other, plain])
    result = evaluate(cfg, run)
    s = result.summary
    assert pass_names(s) == ["base", f"model:{other}", f"model:{plain}", "tuned"]
    tok = AutoTokenizer.from_pretrained(other)
    questions = load_splits(cfg.data, cfg.eval).test[:4]
    asked = {m: [p for p in result.predictions if p["model"] == f"model:{m}"] for m in (other, plain)}
    prompts = {other: [tok.apply_chat_template([{"role": "user", "content": q.prompt.strip()}], tokenize=False,
                                               add_generation_prompt=True) for q in questions],
               plain: [q.prompt for q in questions]}
    for m in (other, plain):
        said = generate(AutoModelForCausalLM.from_pretrained(m), tok, prompts[m], max_new_tokens=8, slots=1)[0]
        assert [g.completion for g in said] == [p["completion"] for p in asked[m]] and len(asked[m]) == 4
    tuned = sum(p["flexible_correct"] for p in result.predictions if p["model"] == "tuned")
    (first, second) = s["models"]
    assert (first["name"], second["name"]) == (other, plain)
    assert first["tuned_vs_model"]["flexible"]["delta_pts"] == pytest.approx(
        25 * (tuned - sum(p["flexible_correct"] for p in asked[other])))
    compared = [b for b in baselines(s) if b.get("other")]
    assert [b["how"] for b in compared] == ["zero-shot, the run's prompt as the user turn of its own chat template",
                                            "zero-shot, the run's prompt as plain text"]
    assert not any(b["prompting"] for b in compared)  # not a way of prompting the base model
    from tunelab.report import write_report
    write_report(run)
    md = run.report_md.read_text()
    theirs, tuned_pct = (f"{100 * s[name]['flexible_accuracy']:.1f} %" for name in (f"model:{other}", "tuned"))
    assert f"| vs {other} (eval.models) (flexible-extract) | {theirs} → {tuned_pct}" in md
    assert f"{100 * s['tuned']['flexible_accuracy']:.1f} % vs {100 * s[f'model:{plain}']['flexible_accuracy']:.1f} % " \
           "(zero-shot, the run's prompt as plain text)" in md  # its verdict
    again = evaluate(cfg, run, only="base", adapter=False).summary
    assert again[f"model:{other}"]["cached"] and pass_names(again)[:3] == pass_names(s)[:3]
    fewer, _ = copy_run(trained, tmp_path / "fewer", models=[plain])
    dropped = evaluate(fewer, run, only="tuned").summary
    assert pass_names(dropped) == ["base", f"model:{plain}", "tuned"]  # a model no longer named is not kept


def test_other_models_are_refused_where_they_cannot_be_compared_by_answers(trained, other, plain):
    raw, _ = trained

    def recipe(models, data=None, **evals):
        return validate({**raw, "data": {**raw["data"], **(data or {})},
                         "eval": {**raw["eval"], "models": models, **evals}}, "r")

    def check(cfg):
        check_models(cfg, load_splits(cfg.data, cfg.eval))

    with pytest.raises(UserError, match=r"eval.models: ./no/such/model: no such local path"):
        check(recipe(["./no/such/model"]))
    with pytest.raises(UserError, match=r"eval.models: other models are compared by their answers .* this set is "
                                        r"not scored by its answers \(eval.scoring: none\)"):
        check(recipe([other], scoring="none"))
    with pytest.raises(UserError, match=r"eval.models: .*: its tokenizer has no chat template, and this run's "
                                        r"prompts are chat turns"):
        check(recipe([plain], {"chat_template": True}))
    check(recipe([other], {"chat_template": True}))  # asked through its own template
    with pytest.raises(UserError) as err:
        recipe([other, other, raw["model"]["name"]])
    assert "eval.models.1: " in str(err.value) and "is listed twice" in str(err.value)
    assert "eval.models.2: " in str(err.value) and "is model.name, whose base passes are scored" in str(err.value)


def test_an_entry_can_ask_a_model_with_a_chat_template_in_the_runs_plain_format(trained, other):
    """A model fine-tuned on the run's own format and merged (an earlier run, in production) has its base model's
    chat template; {name, chat_template: false} asks it the run's prompts as they were trained."""
    from tunelab.evaluate.stage import _other_model_pass, other_models
    raw, _ = trained
    questions = load_splits(validate(raw, "r").data).test[:2]

    def asked(entry):
        cfg = validate({**raw, "eval": {**raw["eval"], "models": [entry]}}, "r")
        (model, chats), = other_models(cfg, "numeric")
        return _other_model_pass(cfg, model, chats, questions, None, 8)
    plain, chat = asked({"name": other, "chat_template": False}), asked(other)
    assert plain.prompts == [q.prompt for q in questions] and plain.asked_with["chat_template"] is False
    assert chat.prompts != plain.prompts and chat.prompts[0].startswith("<|im_start|>")
    assert other_models(validate({**raw, "eval": {**raw["eval"], "models": [other]}}, "r"), "choice") == []


def test_check_show_prints_each_other_models_prompt(trained, other, tmp_path, capsys):
    from tunelab.cli import main
    from tunelab.evaluate.stage import preview
    from transformers import AutoTokenizer
    raw, _ = trained
    cfg = validate({**raw, "eval": {**raw["eval"], "models": [other]}}, "r")
    question = load_splits(cfg.data, cfg.eval).test[0]
    shown = preview(cfg, AutoTokenizer.from_pretrained(other), 1)["eval"]["model_prompts"]
    assert shown == {other: AutoTokenizer.from_pretrained(other).apply_chat_template(
        [{"role": "user", "content": question.prompt.strip()}], tokenize=False, add_generation_prompt=True)}
    import yaml
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**raw, "eval": {**raw["eval"], "models": ["./no/such/model"]}}))
    assert main(["check", str(path)]) == 2  # a model that does not load is said before any check runs
    assert "eval.models: ./no/such/model: no such local path" in capsys.readouterr().err


def test_where_no_answer_check_suits_other_models_replies_are_scored_by_chrf_beside_the_fine_tunes(
        trained, other, tmp_path, monkeypatch):
    """Prose rows: each other model's generated replies are scored against the references by chrF and paired with
    the tuned adapter's, as the prompting baselines' are; with eval.overlap off nothing would compare them."""
    from conftest import write_jsonl
    from tunelab.evaluate.stage import replies
    from tunelab.report import replies as said
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = copy_run(trained, tmp_path, models=[other])
    s = replies(cfg, run)
    assert f"model:{other}" in s["versus"] and s[f"model:{other}"]["n"] == 4
    (what, d), = said.baselines(s)
    assert what == f"{other} (eval.models)" and d["n"] == 4
    assert any(f"vs {other} (eval.models) (reply chrF)" == row[0] for row in said.key_rows(s))
    raw, _ = trained
    prose = write_jsonl(tmp_path / "prose.jsonl", [{"prompt": f"Tell me about the number {i}.", "completion":
                                                    f"The number {i} comes after {i - 1} and before {i + 1}, "
                                                    f"and it is {'even' if i % 2 == 0 else 'odd'}."}
                                                   for i in range(30)])
    data = {"source": str(prose), "template": "{prompt}", "target": "{completion}"}
    cfg = validate({**raw, "data": data, "eval": {**raw["eval"], "models": [other]}}, "r")
    check_models(cfg, load_splits(cfg.data, cfg.eval))  # measured by its replies' chrF: compared
    off = validate({**raw, "data": data, "eval": {**raw["eval"], "models": [other], "overlap": False}}, "r")
    with pytest.raises(UserError, match=r"eval.models: .* this set is not scored by its answers \(data.target: "):
        check_models(off, load_splits(off.data, off.eval))
