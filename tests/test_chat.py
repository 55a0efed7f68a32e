"""data.chat_template: rows as one exchange in the tokenizer's chat format, for training, eval and few-shot."""

import re
import shutil

import pytest
import yaml

from tunelab.cli import main
from tunelab.data import Example, chat
from tunelab.data.checks import MARKER
from tunelab.errors import UserError
from tunelab.train.batching import IGNORE, encode, tokenize

ROW = Example("r1", "How many legs do 3 cats have?", "3 * 4 = 12\n#### 12", {"question": "How many legs?"})


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_the_exchange_is_the_templates_own_rendering_with_loss_on_the_reply_and_one_eos(tok):
    (prompt,), (target,), (trained,) = encode([ROW], tok, chat=True)
    turns = [{"role": "user", "content": ROW.prompt}, {"role": "assistant", "content": ROW.target}]
    whole = tok.apply_chat_template(turns, tokenize=False)  # ... <|im_start|>assistant\n{target}<|im_end|>\n
    assert tok.decode(prompt + target) == whole.rstrip()
    assert tok.decode(prompt).endswith("<|im_start|>user\n" + ROW.prompt + "<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(target) == ROW.target + "<|im_end|>"  # the end-of-turn marker is this tokenizer's EOS
    assert trained is None  # one exchange: nothing in the prompt carries loss
    assert target.count(tok.eos_token_id) == 1
    (item,), _ = tokenize([ROW], tok, 256, completion_only=True, chat=True)
    assert item.labels == [IGNORE] * len(prompt) + target
    # plain rows are unchanged: the template's text, then the target and EOS
    (plain_prompt,), (plain_target,), _ = encode([ROW], tok, chat=False)
    assert tok.decode(plain_prompt) == ROW.prompt and tok.decode(plain_target) == ROW.target + "<|im_end|>"


def test_a_template_that_does_not_extend_its_generation_prompt_is_refused(tok):
    copy = type(tok).from_pretrained(tok.name_or_path)
    copy.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(UserError, match="does not write an exchange as its generation prompt"):
        chat.exchange(copy, "q", "a")
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


def test_reply_spans_point_at_the_earlier_replies_after_a_dropped_bos():
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    text = chat.prompt(_BosTokenizer(), "q2", history=history)
    assert text == "[user]q1[assistant]a1[user]q2[assistant]"
    assert [text[a:b] for a, b in chat.reply_spans(_BosTokenizer(), "q2", history)] == ["a1"]
    kept = chat.prompt(_TemplateBosOnly(), "q2", history=history)  # "<s>[user]q1...": the BOS stays
    assert [kept[a:b] for a, b in chat.reply_spans(_TemplateBosOnly(), "q2", history)] == ["a1"]


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


@pytest.mark.slow
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


def _bare(tiny_model, folder):
    """A copy of the tiny model whose tokenizer has no chat template (a base model's)."""
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"chat_template"', '"unused_chat_template"'))
    return folder


TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.mark.slow
def test_the_recipes_own_chat_template_writes_the_rows_travels_with_the_adapter_and_reaches_the_hand_offs(
        tiny_recipe, tiny_model, tmp_path, capsys):
    """model.chat_template: a base model's tokenizer without one gets the recipe's (its text, or a .jinja file,
    kept as text in the run's config.yaml); rows are written with it, the adapter folder holds the tokenizer with it,
    and lm-eval and vLLM are told to read it there; a broken template or a missing file is refused naming the key."""
    from transformers import AutoTokenizer

    from tunelab.config import validate
    from tunelab.handoff import for_run
    from tunelab.rundir import RunDir
    from tunelab.train import train
    bare = _bare(tiny_model, tmp_path / "base")
    (tmp_path / "chat.jinja").write_text(TEMPLATE)
    raw = {**tiny_recipe, "model": {"name": str(bare), "chat_template": str(tmp_path / "chat.jinja")},
           "data": {**tiny_recipe["data"], "chat_template": True, "template": "{question}"},
           "train": {**tiny_recipe["train"], "epochs": 1}}
    assert validate(raw, "t").model.chat_template == TEMPLATE  # the file's text
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["check", str(recipe), "--show", "1", "--json"]) == 0
    import json
    shown = json.loads(capsys.readouterr().out)["examples"][0]["segments"]
    text = "".join(seg["text"] for seg in shown)
    eos = AutoTokenizer.from_pretrained(bare).eos_token
    assert text.startswith("<user>") and f"{eos}<assistant>" in text  # the recipe's template, and its eos
    assert [seg["text"] for seg in shown if seg["loss"]][-1].endswith(eos)  # the reply's end is trained

    run = RunDir(tmp_path / "run")
    train(validate(raw, "t"), run)
    assert yaml.safe_load(run.config.read_text())["model"]["chat_template"] == TEMPLATE
    assert AutoTokenizer.from_pretrained(run.adapter).chat_template == TEMPLATE
    assert (run.adapter / "chat_template.jinja").read_text() == TEMPLATE
    commands = [c for _, c in for_run(run)]
    adapter = str(run.adapter.resolve())
    assert any(c.endswith(f"--chat-template {adapter}/chat_template.jinja") for c in commands)
    assert all(f"tokenizer={adapter}" in c for c in commands if c.startswith("lm_eval"))
    for template, problem in (("{% for m in messages %}", "model.chat_template: not a Jinja template: line 1"),
                              (str(tmp_path / "none.jinja"), "none.jinja: no such file")):
        recipe.write_text(yaml.safe_dump({**raw, "model": {**raw["model"], "chat_template": template}}))
        assert main(["check", str(recipe)]) == 2
        assert problem in capsys.readouterr().err


def test_chat_template_without_one_exits_2_and_writes_nothing(tiny_recipe, tiny_model, tmp_path, capsys):
    bare = _bare(tiny_model, tmp_path / "no-template")
    raw = {**tiny_recipe, "model": {"name": str(bare)}, "data": {**tiny_recipe["data"], "chat_template": True}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run)]) == 2
    assert "data.chat_template: the tokenizer of" in capsys.readouterr().err
    assert not run.exists()
    assert main(["eval", str(recipe), "--run-dir", str(run)]) == 2
    assert not run.exists()
    raw["data"]["chat_template"], raw["eval"] = False, {"chat_baseline": True}  # the chat baseline needs one too
    recipe.write_text(yaml.safe_dump(raw))
    for command in ("run", "eval"):
        capsys.readouterr()
        assert main([command, str(recipe), "--run-dir", str(run)]) == 2
        assert f"eval.chat_baseline: the tokenizer of {bare} has no chat template; set eval.chat_baseline: false or " \
               "use an instruct model's tokenizer" in " ".join(capsys.readouterr().err.split())
        assert not run.exists()


def test_the_chat_baseline_with_chat_formatted_prompts_is_refused(tiny_recipe):
    from tunelab.config import validate
    raw = {**tiny_recipe, "data": {**tiny_recipe["data"], "chat_template": True}, "eval": {"chat_baseline": True}}
    with pytest.raises(UserError, match="eval.chat_baseline: the run's prompts go through the chat template already"):
        validate(raw, "r.yaml")


def _chat_row(question, answer, system=None, earlier=()):
    turns = ([{"role": "system", "content": system}] if system else []) + list(earlier)
    return {"messages": turns + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_a_conversation_row_is_its_history_then_the_last_exchange_with_loss_on_the_last_reply(tok, tmp_path):
    from conftest import write_jsonl
    from tunelab.config import DataConfig
    from tunelab.data import load_splits
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! Ask away."}]
    rows = [_chat_row(f"What is {i} + {i}?", f"{i} + {i} = {2 * i}\n#### {2 * i}", "Answer tersely.", earlier)
            for i in range(6)]
    cfg = DataConfig(source=str(write_jsonl(tmp_path / "chats.jsonl", rows)), messages="messages", val_fraction=0.5)
    assert (cfg.template, cfg.target, cfg.chat_template) == ("{user}", "{assistant}", True)
    splits = load_splits(cfg)
    row = splits.train[0]
    (prompt,), (target,), _ = encode([row], tok, chat=True)
    whole = tok.apply_chat_template(rows[int(row.id.split("-")[1]) - 1]["messages"], tokenize=False)
    assert tok.decode(prompt + target) == whole.rstrip()  # every turn, in order, the template's own rendering
    assert tok.decode(target) == row.target + "<|im_end|>"  # the loss is on the last reply only
    assert "<|im_start|>system\nAnswer tersely.<|im_end|>" in tok.decode(prompt) and "You are a helpful" not in \
        tok.decode(prompt)


def test_sharegpt_turns_are_read_as_the_same_conversation(tok, tmp_path):
    from conftest import write_jsonl
    from tunelab.config import DataConfig
    from tunelab.data import load_splits
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! Ask away."}]
    rows = [_chat_row(f"What is {i} + {i}?", f"#### {2 * i}", "Answer tersely.", earlier) for i in range(6)]
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    shared = [{"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in r["messages"]]}
              for r in rows]
    plain = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "a.jsonl", rows)), messages="messages"))
    share = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "b.jsonl", shared)), messages="conversations"))
    for a, b in zip(plain.train + plain.val, share.train + share.val, strict=True):
        assert (a.id, a.prompt, a.target) == (b.id, b.prompt, b.target)
        assert encode([a], tok, chat=True) == encode([b], tok, chat=True)  # the same tokens and loss mask
    assert share.train[0].fields["_history"][0] == {"role": "system", "content": "Answer tersely."}


def test_thinking_carried_apart_in_a_turn_is_trained_as_the_template_writes_it(tok, tmp_path):
    """An assistant turn's reasoning_content (Axolotl's and TRL's key, handed to the template; or reasoning, or
    thinking) is written before its content as a think block: with Qwen3's own template the rows render as it renders
    the turns with reasoning_content; with Axolotl's qwen3 (whose prompt opens the block) the reply is the thinking
    after it; the last reply's thinking carries loss either way."""
    from conftest import write_jsonl
    from tunelab.config import DataConfig, ModelConfig
    from tunelab.data import load_splits
    axolotl, qwen3 = type(tok).from_pretrained(tok.name_or_path), type(tok).from_pretrained(tok.name_or_path)
    axolotl.chat_template = ModelConfig(name="x", chat_template="qwen3").chat_template
    qwen3.chat_template, opened = re.subn(r"\{%- else %\}\s*\{\{- '<think>\\n\\n' \}\}\s*", "",
                                          axolotl.chat_template)  # Qwen3's own: its prompt opens no think block
    assert opened == 1
    turns = [[{"role": "user", "content": f"What is {i} + {i}?"},
              {"role": "assistant", "content": f"\n#### {2 * i}", key: f"\n{i} and {i} make {2 * i}.\n"}]
             for i, key in enumerate(["reasoning_content", "reasoning", "thinking"] * 2)]
    splits = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "r.jsonl", [{"messages": t} for t in turns])),
                                    messages="messages", val_fraction=0.5))
    for row in splits.train + splits.val:
        i = int(row.id.split("-")[1]) - 1
        assert row.target == f"<think>\n{i} and {i} make {2 * i}.\n</think>\n\n#### {2 * i}"
        (prompt,), (target,), _ = encode([row], qwen3, chat=True)
        given = [turns[i][0], {"role": "assistant", "content": f"#### {2 * i}",
                               "reasoning_content": f"{i} and {i} make {2 * i}."}]
        assert qwen3.decode(prompt + target) == qwen3.apply_chat_template(given, tokenize=False).rstrip()
        assert qwen3.decode(target) == f"<think>\n{i} and {i} make {2 * i}.\n</think>\n\n#### {2 * i}<|im_end|>"
        (prompt,), (target,), _ = encode([row], axolotl, chat=True)
        assert axolotl.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n")
        assert axolotl.decode(target) == f"{i} and {i} make {2 * i}.\n</think>\n\n#### {2 * i}<|im_end|>"
    kept = {"role": "assistant", "content": "<think>r</think>a", "reasoning_content": "other"}  # its own wins
    row, _ = chat.conversation({"m": [{"role": "user", "content": "q"}, kept]}, "m")
    assert row["assistant"] == "<think>r</think>a"


def test_prompt_and_completion_fields_read_as_one_conversation(tok, tmp_path):
    from conftest import write_jsonl
    from tunelab.config import DataConfig
    from tunelab.data import load_splits
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! Ask away."}]
    rows = [_chat_row(f"What is {i} + {i}?", f"#### {2 * i}", "Answer tersely.", earlier) for i in range(6)]
    split = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]  # TRL's conversational
    whole = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "a.jsonl", rows)), messages="messages"))
    parts = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "b.jsonl", split)), messages="prompt+completion"))
    for a, b in zip(whole.train + whole.val, parts.train + parts.val, strict=True):
        assert (a.prompt, a.target, a.fields["_history"]) == (b.prompt, b.target, b.fields["_history"])
        assert encode([a], tok, chat=True) == encode([b], tok, chat=True)
    asked, problem = chat.conversation({"prompt": rows[0]["messages"][:-1]}, "prompt+completion", open_end=True)
    assert problem is None and asked["user"] == "What is 0 + 0?" and "assistant" not in asked  # generate's rows
    assert chat.conversation({"prompt": []}, "prompt+completion")[1] == "missing field 'completion'"
    with pytest.raises(UserError, match="data.messages: no field 'completion'; fields are: prompt"):
        load_splits(DataConfig(source=str(write_jsonl(tmp_path / "c.jsonl", [{"prompt": rows[0]["messages"]}])),
                               messages="prompt+completion"))


@pytest.mark.parametrize("messages, problem", [
    ([{"role": "user", "content": "q"}], "the last turn is user, expected the assistant turn"),
    ([{"role": "assistant", "content": "a"}], "expected a user turn just before the last assistant turn"),
    ("q: a", "expected a list of {role, content} turns"),
    ([{"role": "bot", "content": "a"}], "expected a list of {role, content} turns"),
    ([{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}],
     "expected a list of {role, content} turns, role one of system, user, assistant, tool .or ShareGPT's "
     "{from, value} turns, from system / human / gpt / function_call / observation or a role."),  # {} calls nothing
    ([{"from": "human", "value": "q"}, {"from": "gpt"}], "expected a list of {role, content} turns"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}], "empty assistant turn"),
])
def test_a_malformed_conversation_is_refused_naming_file_and_line(messages, problem, tmp_path):
    from conftest import write_jsonl
    from tunelab.config import DataConfig
    from tunelab.data import load_splits
    good = _chat_row("What is 1 + 1?", "#### 2")
    path = write_jsonl(tmp_path / "chats.jsonl", [good, good, {"messages": messages}, good])
    with pytest.raises(UserError, match=f"chats.jsonl:3: field 'messages': {problem}"):
        load_splits(DataConfig(source=str(path), messages="messages"))
    with pytest.raises(UserError, match="data.messages: no field 'turns'; fields are: messages"):
        load_splits(DataConfig(source=str(path), messages="turns"))
    with pytest.raises(UserError, match=r"unknown placeholder \{question\}; fields are: assistant, messages, user; "
                                        r"with data.messages, set data.template=\{user\}"):
        load_splits(DataConfig(source=str(path), messages="messages", template="Q: {question}"))


def test_messages_with_chat_template_turned_off_is_refused(tiny_recipe):
    from tunelab.config import validate
    raw = {**tiny_recipe, "data": {"source": "x.jsonl", "messages": "messages", "chat_template": False}}
    with pytest.raises(UserError, match="data.chat_template: must be true with data.messages"):
        validate(raw, "r.yaml")


def test_conversations_train_and_evaluate_with_their_system_turn(tiny_recipe, tmp_path, monkeypatch, tok):
    from conftest import write_jsonl
    from tunelab.config import validate
    from tunelab.evaluate.stage import _plan, evaluate
    from tunelab.rundir import RunDir
    from tunelab.train.loop import train
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    folder = tmp_path / "chats"
    folder.mkdir()
    rows = [_chat_row(f"What is {i} + 3?", f"{i} + 3 = {i + 3}\n#### {i + 3}", "Be brief.") for i in range(40)]
    write_jsonl(folder / "train.jsonl", rows[:32])
    write_jsonl(folder / "test.jsonl", rows[32:])
    raw = {**tiny_recipe, "data": {"source": str(folder), "messages": "messages"},
           "train": {**tiny_recipe["train"], "epochs": 1}, "eval": {"limit": 4, "max_new_tokens": 8, "fewshot": 1}}
    cfg, run = validate(raw, "tiny"), RunDir(tmp_path / "run")
    assert train(cfg, run).epochs[-1]["val_loss"] > 0
    from tunelab.data import load_splits
    splits = load_splits(cfg.data)
    base, few = _plan(cfg, run, splits.train, splits.test[:4], "base", False, tok)
    # the row's system turn comes first (before the shots), once, in place of the template's default one
    assert all(p.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n") and p.count("system") == 1
               for p in base.prompts + few.prompts)
    assert all(p.startswith(few.prefix) for p in few.prompts) and "Be brief." in few.prefix  # shots shared
    preds = evaluate(cfg, run).predictions
    assert {p["model"] for p in preds} == {"base", "base-1shot", "tuned"}
    assert preds[0]["question"] == rows[32]["messages"][-2]["content"]


def test_earlier_assistant_turns_carry_loss_unless_history_loss_is_off(tok, tmp_path):
    from conftest import write_jsonl
    from tunelab.config import DataConfig
    from tunelab.data import load_splits
    earlier = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4\n#### 4"},
               {"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": "4 * 2 = 8\n#### 8"}]
    rows = [_chat_row("And plus one?", "8 + 1 = 9\n#### 9", "Be brief.", earlier)] * 4
    splits = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "c.jsonl", rows)), messages="messages"))
    row = splits.train[0]
    (item,), _ = tokenize([row], tok, 512, completion_only=True, chat=True)
    supervised = [x for x in item.labels if x != IGNORE]
    assert tok.decode(supervised) == "2 + 2 = 4\n#### 4<|im_end|>4 * 2 = 8\n#### 8<|im_end|>8 + 1 = 9\n#### 9<|im_end|>"
    assert tok.decode(item.input_ids) == tok.apply_chat_template(rows[0]["messages"], tokenize=False).rstrip()
    (last_only,), _ = tokenize([row], tok, 512, completion_only=True, chat=True, history_loss=False)
    assert last_only.input_ids == item.input_ids
    assert tok.decode([x for x in last_only.labels if x != IGNORE]) == "8 + 1 = 9\n#### 9<|im_end|>"
    from types import SimpleNamespace
    from tunelab.evaluate.stage import _fewshot_prompts
    cfg = SimpleNamespace(data=SimpleNamespace(chat_template=True), eval=SimpleNamespace(description=None))
    (asked,), _ = _fewshot_prompts(cfg, tok, [[row]], [row])
    # few-shot through the template: the earlier turns once, as turns; the last user turn asked lm-eval's way
    assert asked.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n2 + 2 = 4\n#### 4"
                          "<|im_end|>\n<|im_start|>user\nAnd doubled?<|im_end|>\n<|im_start|>assistant\n4 * 2 = 8\n"
                          "#### 8<|im_end|>\n<|im_start|>user\nQuestion: And plus one?\nAnswer:<|im_end|>\n"
                          "<|im_start|>assistant\n")


def test_earlier_replies_written_otherwise_than_the_last_are_found_where_a_placeholder_stands(tok):
    """Qwen3's way: only the last reply opens with an empty think block, so rendering turn by turn does not give the
    whole conversation; each earlier reply is found there between what the template writes around a placeholder in
    its place, with the end-of-turn marker after it."""
    copy = type(tok).from_pretrained(tok.name_or_path)
    copy.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{% if m['role'] == 'assistant' and loop.last %}"
                          "<t></t>{% endif %}{{ m['content'] }}{% if m['role'] == 'assistant' %}<end>{% endif %}"
                          "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
               {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    text = chat.prompt(copy, "q3", history=history)
    assert text == "[user]q1[assistant]a1<end>[user]q2[assistant]a2<end>[user]q3[assistant]"
    assert [text[a:b] for a, b in chat.reply_spans(copy, "q3", history)] == ["a1<end>", "a2<end>"]
    row = Example("r", "q3", "a3", {"user": "q3", "assistant": "a3", chat.HISTORY: history})
    (item,), _ = tokenize([row], copy, 128, completion_only=True, chat=True)
    assert copy.decode([x for x in item.labels if x != IGNORE]) == "a1<end>a2<end><t></t>a3<end>" + copy.eos_token


def test_a_prompt_that_opens_a_think_block_is_followed_by_the_thinking_then_the_templates_reply(tok):
    """DeepSeek-R1's way: its generation prompt ends by opening a think block, and its assistant turn leaves thinking
    out (what follows the last </think>). The trained reply is the target's own thinking or an empty one, then the
    template's reply; the evaluation reads replies after the thinking. Where the template writes the thinking itself
    (Axolotl's qwen3), the reply is what it writes after its own opening marker."""
    copy = type(tok).from_pretrained(tok.name_or_path)
    copy.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}[user]{{ m['content'] }}{% else %}"
                          "{% set c = m['content'] %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}"
                          "{% endif %}[assistant]{{ c }}<|im_end|>{% endif %}{% endfor %}"
                          "{% if add_generation_prompt %}[assistant]<think>\n{% endif %}")
    assert chat.exchange(copy, "q", "a") == ("[user]q[assistant]<think>\n", "\n</think>\n\na<|im_end|>")
    assert chat.exchange(copy, "q", "<think>\nr\n</think>\n\na")[1] == "r\n</think>\n\na<|im_end|>"
    assert chat.exchange(copy, "q", "r</think>a")[1] == "r</think>a<|im_end|>"  # thinking as generated after it
    assert chat.think_end(copy) == "</think>" and chat.end_marker(copy) == copy.convert_tokens_to_ids("<|im_end|>")
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    row = Example("r", "q2", "a2", {"user": "q2", "assistant": "a2", chat.HISTORY: history})
    (item,), _ = tokenize([row], copy, 128, completion_only=True, chat=True)
    assert copy.decode(item.input_ids) == ("[user]q1[assistant]a1<|im_end|>[user]q2[assistant]<think>\n"
                                           "\n</think>\n\na2<|im_end|>")
    assert copy.decode([x for x in item.labels if x != IGNORE]) == "a1<|im_end|>\n</think>\n\na2<|im_end|>"
    from tunelab.config import ModelConfig  # Axolotl's qwen3 opens it too, and writes a target's thinking itself
    r1, copy.chat_template = copy.chat_template, ModelConfig(name="x", chat_template="qwen3").chat_template
    assert chat.exchange(copy, "q", "<think>\nr\n</think>\n\na") == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n", "r\n</think>\n\na<|im_end|>")
    assert chat.exchange(copy, "q", "a")[1] == "</think>\n\na<|im_end|>"  # its empty block follows its prompt
    closed = type(tok).from_pretrained(tok.name_or_path)  # a prompt whose think block is closed opens none
    closed.chat_template = r1.replace("<think>\n", "<think></think>")
    with pytest.raises(UserError, match="does not write an exchange as its generation prompt"):
        chat.exchange(closed, "q", "a")


def test_a_template_that_rewrites_earlier_replies_trains_on_the_last_one_and_says_so(tok, caplog):
    copy = type(tok).from_pretrained(tok.name_or_path)
    copy.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[earlier reply]"
                          "{% else %}[{{ m['role'] }}]{{ m['content'] }}{% endif %}{% endfor %}"
                          "{% if add_generation_prompt %}[assistant]{% endif %}")
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    row = Example("r", "q2", "a2", {"user": "q2", "assistant": "a2", chat.HISTORY: history})
    (item,), _ = tokenize([row], copy, 128, completion_only=True, chat=True)
    assert copy.decode([x for x in item.labels if x != IGNORE]) == "a2" + copy.eos_token
    assert "does not write these conversations turn by turn; 1 rows train on their last reply only" in caplog.text


def test_a_system_prompt_goes_first_in_every_row_that_has_none(tok, tmp_path, tiny_recipe):
    from conftest import write_jsonl
    from tunelab.config import DataConfig, validate
    from tunelab.data import load_splits
    plain = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(4)]
    cfg = DataConfig(source=str(write_jsonl(tmp_path / "p.jsonl", plain)), template="{question}", target="{answer}",
                     chat_template=True, system_prompt="You are a careful math tutor.")
    row = load_splits(cfg).train[0]
    (prompt,), _, _ = encode([row], tok, chat=True)
    assert tok.decode(prompt) == (f"<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n<|im_start|>user\n"
                                  f"{row.prompt}<|im_end|>\n<|im_start|>assistant\n")
    own = [_chat_row("What is 1 + 1?", "#### 2", "Be brief.")] * 4  # a conversation with its own system turn keeps it
    cfg = DataConfig(source=str(write_jsonl(tmp_path / "c.jsonl", own)), messages="messages", system_prompt="Other.")
    (prompt,), _, _ = encode([load_splits(cfg).train[0]], tok, chat=True)
    assert "Be brief." in tok.decode(prompt) and "Other." not in tok.decode(prompt)
    raw = {**tiny_recipe, "data": {**tiny_recipe["data"], "system_prompt": "x"}}
    with pytest.raises(UserError, match="data.system_prompt: needs data.chat_template: true"):
        validate(raw, "r.yaml")


def test_conversations_are_compared_by_their_whole_user_side(tmp_path):
    from conftest import write_jsonl
    from tunelab.config import DataConfig
    from tunelab.data import load_splits, question_text
    thanks = [{"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]
    chats = [[{"role": "user", "content": f"What is {i} squared?"}, {"role": "assistant", "content": str(i * i)}]
             + thanks for i in (2, 3, 2, 4, 5)]  # the third repeats the first
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": c} for c in chats])
    splits = load_splits(DataConfig(source=str(path), messages="messages", dedup="exact", val_fraction=0.25))
    assert splits.deduplicated == 1  # the repeated chat, not every chat that ends in "Thanks!"
    assert sorted(question_text(e) for e in splits.train + splits.val) == [
        f"What is {i} squared?\nThanks!" for i in (2, 3, 4, 5)]


def test_conversations_mixed_into_a_chat_run_of_plain_rows_keep_their_turns(tok, tmp_path):
    from conftest import write_jsonl
    from tunelab.config import DataConfig
    from tunelab.data import load_splits
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! Ask away."}]
    chats = [_chat_row(f"What is {i} + {i}?", f"{2 * i}", None, earlier) for i in range(6)]
    plain = [{"question": f"Name colour {i}.", "answer": f"Colour {i}."} for i in range(6)]
    cfg = DataConfig(source=str(write_jsonl(tmp_path / "plain.jsonl", plain)), template="{question}",
                     target="{answer}", chat_template=True,
                     mix=[{"source": str(write_jsonl(tmp_path / "chats.jsonl", chats)), "messages": "messages"}])
    rows = load_splits(cfg).train
    chat_row = next(e for e in rows if e.id.startswith("chats:"))
    plain_row = next(e for e in rows if ":" not in e.id)
    (chat_prompt, plain_prompt), (chat_target, _), _ = encode([chat_row, plain_row], tok, chat=True)
    i = int(chat_row.id.split("-")[1]) - 1
    assert tok.decode(chat_prompt + chat_target) == tok.apply_chat_template(chats[i]["messages"], tokenize=False).rstrip()
    assert "Hello! Ask away." not in tok.decode(plain_prompt) and plain_row.prompt in tok.decode(plain_prompt)


def test_passes_asked_through_a_reasoning_chat_template_read_the_reply_after_its_thinking(tiny_recipe, tok,
                                                                                            tmp_path):
    """eval.think_end's default: </think> when the chat template writes it between its generation prompt and a reply
    (Qwen3's); then every pass asked through the template — the chat baselines, and with data.chat_template every
    pass — stops and is scored after the thinking, the plain-text passes not; '' turns it off, another marker is
    taken as set."""
    from tunelab.config import ModelConfig, validate
    from tunelab.data import load_splits
    from tunelab.evaluate.generate import AfterThinking
    from tunelab.evaluate.stage import _plan
    from tunelab.rundir import RunDir
    qwen3 = type(tok).from_pretrained(tok.name_or_path)
    qwen3.chat_template = ModelConfig(name="x", chat_template="qwen3").chat_template
    assert chat.think_end(qwen3) == "</think>" and chat.think_end(tok) is None  # SmolLM2's own writes no thinking
    raw = {**tiny_recipe, "eval": {**tiny_recipe["eval"], "fewshot": 2, "chat_baseline": True}}
    splits = load_splits(validate(raw, "tiny").data)

    def planned(changes: dict, data: dict | None = None) -> dict:
        cfg = validate({**raw, "eval": {**raw["eval"], **changes}, "data": {**raw["data"], **(data or {})}}, "tiny")
        passes = _plan(cfg, RunDir(tmp_path / "run"), splits.train, splits.test[:3], None, True, qwen3)
        assert all(isinstance(p.stop_rule, AfterThinking) == bool(p.think_end) for p in passes)
        return {p.name: p.think_end for p in passes}

    assert planned({}) == {"base": None, "base-2shot": None, "base-chat": "</think>", "base-chat-2shot": "</think>",
                           "tuned": None}
    assert planned({"chat_baseline": False}, {"chat_template": True}) == {"base": "</think>",
                                                                          "base-2shot": "</think>",  # shots as turns
                                                                          "tuned": "</think>"}
    assert set(planned({"think_end": ""}).values()) == {None}
    assert planned({"think_end": "<|/r|>"})["base-chat"] == "<|/r|>"
    exact = validate({**raw, "eval": {**raw["eval"], "max_new_tokens": 300}}, "tiny")  # exact match's short budget
    budgets = {p.name: p.max_new_tokens for p in _plan(exact, RunDir(tmp_path / "run"), splits.train, splits.test[:3],
                                                       None, True, qwen3, mode="exact")}
    assert budgets["base-chat"] == budgets["base-chat-2shot"] == 300 > budgets["base"]  # but not before the thinking
    from tunelab.evaluate.inference import thinks  # tunelab generate: the run's prompts, not raw texts
    chatted = validate({**raw, "data": {**raw["data"], "chat_template": True},
                        "eval": {**raw["eval"], "chat_baseline": False}}, "tiny")
    assert thinks(chatted, qwen3, raw=False) == "</think>" and thinks(chatted, qwen3, raw=True) is None
    assert thinks(validate(raw, "tiny"), qwen3, raw=False) is None  # plain prompts


def test_an_adapter_trained_on_reasoning_traces_is_read_after_its_thinking_and_so_are_the_references(tiny_recipe,
                                                                                                     tok, tmp_path):
    """Targets that are reasoning traces (<think>…</think> then the answer) with no reasoning chat template: the
    adapters' passes read the reply after the last </think> (the base model's do not: it never learned to think),
    once half the scored targets hold one and eval.think_end is unset; every answer check reads the reference after
    the thinking, so a short answer after a long trace is still exact match's."""
    from dataclasses import replace
    from tunelab.config import validate
    from tunelab.data import load_splits
    from tunelab.evaluate.scoring import is_short, reference_answer, regex_reference, short_answer, states_answer
    from tunelab.evaluate.stage import _plan
    from tunelab.rundir import RunDir
    raw = {**tiny_recipe, "eval": {**tiny_recipe["eval"], "fewshot": 2}}
    splits = load_splits(validate(raw, "tiny").data)
    traces = [replace(q, target=f"<think>\nfirst 3, then 4 #### 9\n</think>\n\n{q.target}") for q in splits.test[:4]]

    def planned(questions, changes: dict | None = None) -> dict:
        cfg = validate({**raw, "eval": {**raw["eval"], **(changes or {})}}, "tiny")
        return {p.name: p.think_end for p in _plan(cfg, RunDir(tmp_path / "run"), splits.train, questions, None,
                                                   True, tok)}

    assert planned(traces[:2] + splits.test[:2]) == {"base": None, "base-2shot": None, "tuned": "</think>"}
    assert set(planned(traces[:1] + splits.test[1:4]).values()) == {None}  # a quarter: not the data's format
    assert set(planned(traces, {"think_end": ""}).values()) == {None}
    assert planned(traces, {"think_end": "</think>"})["tuned"] == "</think>"  # set: read in the adapters' replies too
    assert set(planned(traces, {"think_end": "<|/r|>"}).values()) == {None}  # no trace holds that marker
    assert [reference_answer(t.target) for t in traces] == [reference_answer(q.target) for q in splits.test[:4]]
    trace = "<think>\nIt praises the plot.\nSo: positive.\n</think>\n\npositive"
    assert is_short(trace) and short_answer(trace) == "positive" and not states_answer(trace)
    assert regex_reference(re.compile(r"<answer>(.*?)</answer>"), "<think><answer>no</answer></think>"
                                                                  "<answer>yes</answer>") == "yes"


def test_passes_read_after_the_thinking_count_the_replies_that_never_end_it(tiny_recipe, tmp_path, monkeypatch):
    """A pass read after a reasoning template's thinking counts its replies without the end-of-thinking marker (read
    whole by the answer check): the tiny random model never writes </think>, so every reply."""
    from tunelab.config import validate
    from tunelab.evaluate.stage import evaluate
    from tunelab.rundir import RunDir
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    raw = {**tiny_recipe, "model": {**tiny_recipe["model"], "chat_template": "qwen3"},
           "data": {**tiny_recipe["data"], "template": "{question}", "chat_template": True},
           "eval": {**tiny_recipe["eval"], "limit": 4, "max_new_tokens": 8}}
    result = evaluate(validate(raw, "tiny"), RunDir(tmp_path / "run"), adapter=False)
    stats, rows = result.summary["base"], [p for p in result.predictions if p["model"] == "base"]
    assert stats["think_end"] == "</think>" and len(rows) == 4
    assert stats["without_think_end"] == sum("</think>" not in p["completion"] for p in rows) == 4
    assert stats["think_tokens"] is False  # SmolLM2 writes <think> as text: no vLLM reasoning parser is offered


def test_think_tokens_needs_both_markers_as_tokens_of_their_own(tok):
    """vLLM's reasoning parsers look up <think> and </think> in the vocabulary and refuse to start without either."""
    import copy
    from tunelab.data.chat import think_tokens
    grown = copy.deepcopy(tok)
    assert not think_tokens(grown)
    grown.add_tokens(["<think>"])
    assert not think_tokens(grown)
    grown.add_tokens(["</think>"])
    assert think_tokens(grown) and len(grown("<think>a</think>", add_special_tokens=False)["input_ids"]) == 3


def test_the_chat_baseline_with_shots_puts_them_in_as_earlier_turns(tiny_recipe, tok, tmp_path):
    """eval.chat_baseline with eval.fewshot: the base model is also prompted N-shot through its chat template, each
    shot a user turn ("Question: ...\nAnswer:") and an assistant turn (its answer), as lm-eval's
    --apply_chat_template --fewshot_as_multiturn asks an instruct model; the plain N-shot pass stays as it was."""
    from tunelab.config import validate
    from tunelab.data import load_splits
    from tunelab.evaluate.fewshot import fewshot_prompt
    from tunelab.evaluate.stage import _plan
    from tunelab.rundir import RunDir
    raw = {**tiny_recipe, "eval": {**tiny_recipe["eval"], "fewshot": 2, "chat_baseline": True}}
    cfg = validate(raw, "tiny")
    splits = load_splits(cfg.data)
    questions = splits.test[:3]
    passes = _plan(cfg, RunDir(tmp_path / "run"), splits.train, questions, "base", False, tok)
    assert [p.name for p in passes] == ["base", "base-2shot", "base-chat", "base-chat-2shot"]
    assert passes[1].prompts == [fewshot_prompt(splits.train[:2], q) for q in questions]
    shots = [m for s in splits.train[:2] for m in ({"role": "user", "content": f"Question: {s.fields['question']}\n"
                                                                             "Answer:"},
                                                   {"role": "assistant", "content": s.target})]
    assert passes[3].prompts == [tok.apply_chat_template(
        shots + [{"role": "user", "content": f"Question: {q.fields['question']}\nAnswer:"}], tokenize=False,
        add_generation_prompt=True) for q in questions]
    assert all(p.startswith(passes[3].prefix) for p in passes[3].prompts) and passes[3].shots_from


@pytest.mark.parametrize("name", ["alpaca", "chatml", "deepseek_v3", "gemma", "gemma3", "llama3", "llama4",
                                  "mistral_v1", "mistral_v7_tekken", "phi_3", "phi_35", "phi_4", "qwen3", "qwen_25"])
@pytest.mark.slow
def test_each_chat_template_tunelab_ships_writes_conversations_turn_by_turn_with_every_reply_trained(
        name, tok, tmp_path):
    """model.chat_template: <name> reads as tunelab/templates/<name>.jinja; a conversation written with it (its
    markers added as tokens, as a recipe does by model.added_tokens) is the
    template's own rendering, each reply carrying loss with the marker that ends it, and the last one then the
    eos_token where that marker is another token (generation stops at the eos_token). Gemma takes no system turn;
    Qwen3's earlier replies are found by a placeholder (the last one alone gets a think block)."""
    from conftest import write_jsonl
    from tunelab.config import TEMPLATES, DataConfig, ModelConfig, template_names
    from tunelab.data import load_splits
    assert name in template_names()
    template = ModelConfig(name="x", chat_template=name).chat_template
    assert template == (TEMPLATES / f"{name}.jinja").read_text()
    copy = type(tok).from_pretrained(tok.name_or_path)
    copy.chat_template = template
    copy.add_tokens(sorted(set(MARKER.findall(template)) - set(copy.get_vocab())))  # model.added_tokens' part
    earlier = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    row = _chat_row("And doubled?", "8", None if name == "gemma" else "Be brief.", earlier)
    splits = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "c.jsonl", [row] * 4)), messages="messages"))
    (item,), _ = tokenize([splits.train[0]], copy, 512, completion_only=True, chat=True)
    end = {"alpaca": copy.eos_token, "chatml": "<|im_end|>", "gemma": "<end_of_turn>", "llama3": "<|eot_id|>",
           "mistral_v1": copy.eos_token, "phi_3": "<|end|>", "qwen_25": "<|im_end|>", "qwen3": "<|im_end|>",
           "gemma3": "<end_of_turn>", "phi_4": "<|im_end|>", "phi_35": "<|end|>", "llama4": "<|eot|>",
           "mistral_v7_tekken": copy.eos_token, "deepseek_v3": "<｜end▁of▁sentence｜>"}[name]
    eos = "" if end == copy.eos_token else copy.eos_token  # SmolLM2's is <|im_end|>
    whole = copy.apply_chat_template(row["messages"], tokenize=False)
    assert copy.decode(item.input_ids) == chat._strip_bos(copy, whole).rstrip() + eos
    lead = " " if name == "mistral_v1" else ""  # [/INST] then a space, then the reply
    last = "</think>\n\n" if name == "qwen3" else lead  # its generation prompt opens an empty <think> block
    assert copy.decode([x for x in item.labels if x != IGNORE]) == f"{lead}4{end}{last}8{end}{eos}"


def test_generation_stops_at_the_chat_templates_end_marker_and_leaves_it_out(tok):
    """A reply ends at the template's end-of-turn marker when it is a token of its own (phi_3's <|end|>, added), as
    at the EOS, the marker not in the reply; a template that ends a reply with ordinary text (a full stop) does not
    stop there."""
    from types import SimpleNamespace

    from tunelab.config import ModelConfig
    from tunelab.evaluate.generate import _eos_ids, _finished
    copy = type(tok).from_pretrained(tok.name_or_path)
    copy.chat_template = ModelConfig(name="x", chat_template="phi_3").chat_template
    copy.add_tokens(["<|end|>"])
    marker = copy.convert_tokens_to_ids("<|end|>")
    assert chat.end_marker(copy) == marker and {marker, copy.eos_token_id} <= _eos_ids(SimpleNamespace(), copy)
    tokens = copy("12 apples", add_special_tokens=False)["input_ids"] + [marker]
    done = _finished(copy, tokens, marker, _eos_ids(SimpleNamespace(), copy), ["\n\n"], 64)
    assert done.completion == "12 apples" and done.tokens == len(tokens)
    copy.chat_template = "{% for m in messages %}{{ m.content }}.{% endfor %}"  # a reply ends with "."
    assert chat.end_marker(copy) is None and _eos_ids(SimpleNamespace(), copy) == {copy.eos_token_id}
