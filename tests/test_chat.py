"""data.chat_template: rows as one exchange in the tokenizer's chat format, for training, eval and few-shot."""

import shutil

import pytest
import yaml

from tunelab.cli import main
from tunelab.data import Example, chat
from tunelab.errors import UserError
from tunelab.train.batching import IGNORE, encode, tokenize

ROW = Example("r1", "How many legs do 3 cats have?", "3 * 4 = 12\n#### 12", {"question": "How many legs?"})


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_the_exchange_is_the_templates_own_rendering_with_loss_on_the_reply_and_one_eos(tok):
    (prompt,), (target,) = encode([ROW], tok, chat=True)
    turns = [{"role": "user", "content": ROW.prompt}, {"role": "assistant", "content": ROW.target}]
    whole = tok.apply_chat_template(turns, tokenize=False)  # ... <|im_start|>assistant\n{target}<|im_end|>\n
    assert tok.decode(prompt + target) == whole.rstrip()
    assert tok.decode(prompt).endswith("<|im_start|>user\n" + ROW.prompt + "<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(target) == ROW.target + "<|im_end|>"  # the end-of-turn marker is this tokenizer's EOS
    assert target.count(tok.eos_token_id) == 1
    (item,), _ = tokenize([ROW], tok, 256, completion_only=True, chat=True)
    assert item.labels == [IGNORE] * len(prompt) + target
    # plain rows are unchanged: the template's text, then the target and EOS
    (plain_prompt,), (plain_target,) = encode([ROW], tok, chat=False)
    assert tok.decode(plain_prompt) == ROW.prompt and tok.decode(plain_target) == ROW.target + "<|im_end|>"


def test_a_template_that_does_not_extend_its_generation_prompt_is_refused(tok):
    copy = type(tok).from_pretrained(tok.name_or_path)
    copy.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(UserError, match="does not write an exchange as its generation prompt"):
        chat.reply(copy, "q", "a")
    copy.chat_template = None
    with pytest.raises(UserError, match="data.chat_template: the tokenizer of .* has no chat template"):
        encode([ROW], copy, chat=True)


class _BosTokenizer:
    """A tokenizer that adds <s> itself and whose template also writes it (Llama 2 / Mistral instruct style)."""
    bos_token, bos_token_id, chat_template = "<s>", 1, "set"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1] if add_special_tokens else []}

    def apply_chat_template(self, turns, tokenize=False, add_generation_prompt=False):
        return "<s>" + "".join(f"[{t['role']}]{t['content']}" for t in turns) + ("[assistant]" if add_generation_prompt
                                                                                  else "")


def test_a_bos_the_tokenizer_adds_again_is_written_once():
    assert chat.prompt(_BosTokenizer(), "q") == "[user]q[assistant]"
    assert chat.context(_BosTokenizer(), [("q1", "a1")]) == "[user]q1[assistant]a1"
    assert chat.prompt(_TemplateBosOnly(), "q") == "<s>[user]q[assistant]"  # the only BOS there is: kept


class _TemplateBosOnly(_BosTokenizer):
    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": []}


def test_eval_prompts_and_fewshot_turns_go_through_the_template(tiny_recipe, tmp_path, tok):
    from tunelab.config import validate
    from tunelab.data import load_splits
    from tunelab.evaluate.fewshot import ask, answer_text
    from tunelab.evaluate.stage import _plan
    from tunelab.rundir import RunDir
    raw = {**tiny_recipe, "data": {**tiny_recipe["data"], "chat_template": True, "template": "{question}"},
           "eval": {**tiny_recipe["eval"], "fewshot": 2}}
    cfg = validate(raw, "tiny")
    splits = load_splits(cfg.data)
    questions = splits.test[:3]
    base, few = _plan(cfg, RunDir(tmp_path / "run"), splits.train, questions, "base", False, tok)
    assert base.prompts == [chat.prompt(tok, q.prompt) for q in questions]
    assert base.prompts[0].endswith(f"<|im_start|>user\n{questions[0].prompt}<|im_end|>\n<|im_start|>assistant\n")
    shots = splits.train[:2]
    for q, p in zip(questions, few.prompts):
        turns = "".join(f"<|im_start|>user\n{ask(s)}<|im_end|>\n<|im_start|>assistant\n{answer_text(s)}<|im_end|>\n"
                        for s in shots)
        assert p.endswith(turns + f"<|im_start|>user\n{ask(q)}<|im_end|>\n<|im_start|>assistant\n")
        assert p.startswith(few.prefix)  # the shots are prefilled once and shared (generate's prefix)


def test_train_and_eval_with_chat_template_end_to_end(tiny_recipe, tmp_path, monkeypatch):
    from tunelab.config import validate
    from tunelab.evaluate.stage import evaluate
    from tunelab.rundir import RunDir
    from tunelab.train.loop import train
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    raw = {**tiny_recipe, "data": {**tiny_recipe["data"], "chat_template": True, "template": "{question}"},
           "train": {**tiny_recipe["train"], "epochs": 1}}
    cfg, run = validate(raw, "tiny"), RunDir(tmp_path / "run")
    result = train(cfg, run)
    assert result.epochs[-1]["val_loss"] < result.epochs[0]["val_loss"]
    preds = evaluate(cfg, run).predictions
    assert {p["model"] for p in preds} == {"base", "tuned"} and all("<|im_end|>" not in p["completion"]
                                                                   for p in preds)
    card = (run.adapter / "README.md").read_text()  # the card's usage example prompts the way it was trained
    assert "tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": prompt}]" in card


def test_handoff_asks_lm_eval_through_the_chat_template_only_for_chat_runs(tmp_path):
    from tunelab.handoff import commands
    chat_lines = [cmd for _, cmd in commands("org/m", tmp_path, 16, "x", chat=True) if cmd.startswith("lm_eval")]
    plain_lines = [cmd for _, cmd in commands("org/m", tmp_path, 16, "x") if cmd.startswith("lm_eval")]
    assert len(chat_lines) == 2 and all(c.endswith("--apply_chat_template --fewshot_as_multiturn") for c in chat_lines)
    assert plain_lines and not any("chat_template" in c for c in plain_lines)


def test_chat_template_without_one_exits_2_and_writes_nothing(tiny_recipe, tiny_model, tmp_path, capsys):
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = bare / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"chat_template"', '"unused_chat_template"'))
    raw = {**tiny_recipe, "model": {"name": str(bare)}, "data": {**tiny_recipe["data"], "chat_template": True}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run)]) == 2
    assert "data.chat_template: the tokenizer of" in capsys.readouterr().err
    assert not run.exists()
    assert main(["eval", str(recipe), "--run-dir", str(run)]) == 2
    assert not run.exists()
