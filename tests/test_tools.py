"""Tool-calling conversations: a row's `tools` schemas, assistant turns that make tool calls and the tool turns
that answer them, trained as the model's own chat template writes them (TRL's `tools` column and OpenAI's turns;
LLaMA-Factory's ShareGPT function_call / observation turns)."""

import json

import pytest

from conftest import write_jsonl
from tunelab.config import DataConfig, ModelConfig
from tunelab.data import chat, load_splits, question_text
from tunelab.train.batching import encode

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Today's weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture(scope="module")
def tok_plain(smollm2_dir):
    """SmolLM2's tokenizer with its own chat template, which writes no tools."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def qwen(smollm2_dir):
    """SmolLM2's tokenizer with Qwen2.5's chat template (shipped), which writes tools and tool calls."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.chat_template = ModelConfig(name="x", chat_template="qwen_25").chat_template
    return tok


def _call(city: str, as_text: bool = False) -> dict:
    args = {"city": city}
    return {"type": "function", "function": {"name": "get_weather",
                                             "arguments": json.dumps(args) if as_text else args}}


def _rows(n: int, final: bool) -> list[dict]:
    """Rows asking for a city's weather: the reply is the tool call, or (`final`) the call, its result and the
    answer after it. Tools as a JSON string in half of them (a function's parameters as JSON text in a quarter), the
    call's arguments as OpenAI's JSON text too."""
    rows = []
    for i in range(n):
        city = f"City{i}"
        turns = [{"role": "system", "content": "You help with the weather."},
                 {"role": "user", "content": f"How warm is it in {city}?"},
                 {"role": "assistant", "content": None, "tool_calls": [_call(city, as_text=i % 2 == 1)]}]
        if final:
            turns += [{"role": "tool", "name": "get_weather", "content": {"temp_c": 10 + i}},
                      {"role": "assistant", "content": f"It is {10 + i} °C in {city}."}]
        text = {**WEATHER, "function": {**WEATHER["function"],  # parameters as JSON text, as Axolotl reads them
                                        "parameters": json.dumps(WEATHER["function"]["parameters"])}}
        tools = json.dumps([WEATHER]) if i % 2 else [text] if i % 4 == 2 else [WEATHER]
        rows.append({"messages": turns, "tools": tools})
    return rows


def _structured(row: dict) -> list[dict]:
    """A row's turns as Hugging Face templates take them: arguments as a dict, a tool's JSON content as text."""
    out = []
    for t in row["messages"]:
        t = dict(t)
        if t.get("tool_calls"):
            t["content"] = ""
            t["tool_calls"] = [{"type": "function", "function": {"name": c["function"]["name"], "arguments": (
                json.loads(a) if isinstance(a := c["function"]["arguments"], str) else a)}} for c in t["tool_calls"]]
        if isinstance(t["content"], dict):
            t["content"] = json.dumps(t["content"])
        out.append(t)
    return out


def test_a_tool_call_reply_trains_as_the_template_writes_it_with_the_rows_tools(qwen, tmp_path):
    splits = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "t.jsonl", _rows(6, final=False))),
                                    messages="messages", val_fraction=0.5))
    rows = _rows(6, final=False)
    for row in splits.train + splits.val:
        (prompt,), (target,), _ = encode([row], qwen, chat=True)
        raw = rows[int(row.id.split("-")[1]) - 1]
        whole = qwen.apply_chat_template(_structured(raw), tools=[WEATHER], tokenize=False)
        assert qwen.decode(prompt + target) == whole.rstrip()  # the tools in the system turn, the call as written
        city = raw["messages"][1]["content"].split()[-1].rstrip("?")
        trained = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "' + city + '"}}\n</tool_call><|im_end|>'
        assert qwen.decode(target) == trained  # the loss is on the call
        assert row.target == trained.removesuffix("<|im_end|>")  # the reference: Hermes' format
        assert row.prompt == f"How warm is it in {city}?" and question_text(row) == row.prompt
        assert '"name": "get_weather"' in qwen.decode(prompt) and "<tools>" in qwen.decode(prompt)


def test_the_answer_after_a_tool_result_trains_with_the_call_before_it_as_an_earlier_reply(qwen, tmp_path):
    splits = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "t.jsonl", _rows(4, final=True))),
                                    messages="messages", val_fraction=0.5))
    row = splits.train[0]
    raw = _rows(4, final=True)[int(row.id.split("-")[1]) - 1]
    (prompt,), (target,), (trained,) = encode([row], qwen, chat=True)
    whole = qwen.apply_chat_template(_structured(raw), tools=[WEATHER], tokenize=False)
    assert qwen.decode(prompt + target) == whole.rstrip()
    city = raw["messages"][1]["content"].split()[-1].rstrip("?")
    assert row.target == raw["messages"][-1]["content"] and qwen.decode(target) == row.target + "<|im_end|>"
    assert "<tool_response>\n{\"temp_c\"" in qwen.decode(prompt)  # the result is read, not trained
    earlier = qwen.decode([t for t, on in zip(prompt, trained) if on])  # history_loss: the call is trained too
    assert earlier == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "' + city + \
        '"}}\n</tool_call><|im_end|>'
    (_,), (_,), (none,) = encode([row], qwen, chat=True, history_loss=False)
    assert none is None or not any(none)
    asked = chat.prompt(qwen, row.prompt, history=row.fields[chat.HISTORY])  # what the eval prompts with
    assert asked == qwen.apply_chat_template(_structured(raw)[:-1], tools=[WEATHER], tokenize=False,
                                             add_generation_prompt=True)


def test_llamafactory_function_call_and_observation_turns_are_the_same_conversation(qwen, tmp_path):
    rows = _rows(4, final=True)
    names = {"system": "system", "user": "human", "tool": "observation"}

    def shared(t: dict) -> dict:
        if t.get("tool_calls"):
            f = t["tool_calls"][0]["function"]
            args = json.loads(f["arguments"]) if isinstance(f["arguments"], str) else f["arguments"]
            return {"from": "function_call", "value": json.dumps({"name": f["name"], "arguments": args})}
        content = json.dumps(t["content"]) if isinstance(t["content"], dict) else t["content"]
        return {"from": names.get(t["role"], "gpt"), "value": content}

    lf = [{"conversations": [shared(t) for t in r["messages"]], "tools": json.dumps([WEATHER])} for r in rows]
    plain = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "a.jsonl", rows)), messages="messages"))
    share = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "b.jsonl", lf)), messages="conversations"))
    for a, b in zip(plain.train + plain.val, share.train + share.val, strict=True):
        assert (a.id, a.prompt, a.target) == (b.id, b.prompt, b.target)
        assert encode([a], qwen, chat=True) == encode([b], qwen, chat=True)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(tools="[{not json"), "field 'tools': not JSON"),
    (lambda r: r.update(tools={"name": "x"}), "field 'tools': expected a list of function schemas"),
    (lambda r: r.update(tools=[{"function": {"name": "f", "parameters": "{x"}}]), "'f''s parameters are not JSON"),
    (lambda r: r["messages"][2].update(tool_calls=[{"function": {"arguments": {}}}]), "expected a list of"),
    (lambda r: r["messages"].pop(1), "expected a user turn just before the last assistant turn"),
])
def test_malformed_tool_rows_are_refused_naming_the_line(tmp_path, change, message):
    from tunelab.errors import UserError
    rows = _rows(3, final=True)
    change(rows[1])
    with pytest.raises(UserError, match=message) as err:
        load_splits(DataConfig(source=str(write_jsonl(tmp_path / "t.jsonl", rows)), messages="messages"))
    assert "t.jsonl:2" in str(err.value)


def test_tool_calls_are_read_whatever_wraps_them_and_compared_as_json_values():
    from tunelab.evaluate.scoring import NO_CALL, score_tool, tool_reference
    hermes = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2.0}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_time", "arguments": "{\\"tz\\": \\"CET\\"}"}\n</tool_call>')
    gold = tool_reference(hermes)
    assert gold == 'get_weather({"city": "Paris", "days": 2})\nget_time({"tz": "CET"})'
    mistral = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"days": 2, "city": "Paris"}}, ' \
              '{"name": "get_time", "arguments": {"tz": "CET"}}]'
    llama = '{"name": "get_time", "parameters": {"tz": "CET"}}; {"name": "get_weather", "parameters": ' \
            '{"city": "Paris", "days": 2}}'
    assert score_tool(mistral, gold) == {"strict_answer": gold, "flexible_answer": gold,
                                        "strict_correct": True, "flexible_correct": True}
    assert (score_tool(llama, gold)["strict_correct"], score_tool(llama, gold)["flexible_correct"]) == (False, True)
    wrong = score_tool('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}</tool_call>'
                       '<tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call>', gold)
    assert not wrong["flexible_correct"] and "Rome" in wrong["flexible_answer"]
    assert score_tool(hermes.split("\n<tool_call>\n{\"name\": \"get_time")[0], gold)["flexible_correct"] is False
    assert score_tool("It is 10 °C in Paris.", gold)["flexible_answer"] is None
    assert tool_reference("#### 5") == tool_reference('{"a": [1, 2]}') == NO_CALL  # no call due: none is right
    assert tool_reference('<think>{"name": "x", "arguments": {}}</think>\n\nno call') == NO_CALL  # after thinking
    assert score_tool("No tool tells the time on Mars.", NO_CALL) == {
        "strict_answer": NO_CALL, "flexible_answer": NO_CALL, "strict_correct": True, "flexible_correct": True}
    assert not score_tool(mistral, NO_CALL)["flexible_correct"]


def test_each_tool_scored_reply_is_right_or_says_how_its_calls_went_wrong():
    from tunelab.evaluate.scoring import NO_CALL, OUTCOMES, score_tool, tool_outcome, tool_reference
    from tunelab.evaluate.summary import tool_outcomes
    gold = tool_reference('[{"name": "get_time", "arguments": {"city": "Oslo"}}, '
                          '{"name": "get_weather", "arguments": {"city": "Oslo"}}]')
    replies = {"right": '{"name": "get_weather", "arguments": {"city": "Oslo"}} {"name": "get_time", "arguments": '
                        '{"city": "Oslo"}}',
               "no call": "It is sunny in Oslo.",
               "wrong arguments": '{"name": "get_time", "arguments": {"city": "Oslo"}} {"name": "get_weather", '
                                  '"arguments": {"city": "Bergen"}}',
               "wrong tool": '{"name": "get_time", "arguments": {"city": "Oslo"}}'}  # one call too few
    for outcome, reply in replies.items():
        assert tool_outcome(score_tool(reply, gold)["flexible_answer"], gold) == outcome
    assert tool_outcome(score_tool(replies["wrong tool"], NO_CALL)["flexible_answer"], NO_CALL) == "call not due"
    assert tool_outcome(score_tool("No tool does that.", NO_CALL)["flexible_answer"], NO_CALL) == "right"
    rows = [{"model": m, "reference": gold, **score_tool(replies[o], gold)}
            for m, said in (("base", ["no call", "no call"]), ("tuned", ["right", "wrong arguments"])) for o in said]
    counts = tool_outcomes(rows, ["base", "tuned"])
    assert list(counts["tuned"]) == list(OUTCOMES) and counts["base"]["no call"] == 2
    assert counts["tuned"] == {"right": 1, "no call": 0, "call not due": 0, "wrong tool": 0, "wrong arguments": 1}


def test_accuracy_per_tool_groups_the_questions_by_the_functions_their_reference_calls():
    from tunelab.evaluate.scoring import NO_CALL, score_tool, tool_reference
    from tunelab.evaluate.summary import by_category
    targets = ['{"name": "get_weather", "arguments": {"city": "Oslo"}}', '{"name": "get_time", "arguments": {}}',
               '{"name": "get_weather", "arguments": {"city": "Rome"}}', "Sorry, no tool does that.",
               '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Lima"}}]']
    said = {"base": ["none"] * 5, "tuned": [targets[0], "none", targets[2], "none", targets[4]]}
    predictions = [{"id": f"t{i}", "model": m, "reference": tool_reference(t), **score_tool(said[m][i],
                                                                                             tool_reference(t))}
                   for m in said for i, t in enumerate(targets)]
    found = by_category(predictions, [f"t{i}" for i in range(5)], None, "tool")
    assert found["source"] == "the tools the reference calls"
    assert {r["category"]: (r["n"], r["base_accuracy"], r["tuned_accuracy"]) for r in found["rows"]} == {
        "get_weather": (2, 0.0, 1.0), "get_time": (1, 0.0, 0.0), NO_CALL: (1, 1.0, 1.0),
        "get_time, get_weather": (1, 0.0, 1.0)}


def test_a_reply_due_no_call_is_measured_by_its_words_as_well_as_by_calling_none():
    """Under tool scoring, a held-out reply whose reference calls nothing (the answer after a tool's result) gets
    chrF and ROUGE-L against the reference's text (after its thinking); a call's reply, or a blank target, none."""
    from tunelab.evaluate import overlap
    from tunelab.evaluate.scoring import NO_CALL
    from tunelab.evaluate.stage import _worded
    same = _worded(NO_CALL, "It is 12 °C in Oslo.", "<think>look it up</think>\n\nIt is 12 °C in Oslo.")
    assert same == {"chrf": 1.0, "rouge_l": 1.0}
    other = _worded(NO_CALL, "Paris: sunny.", "It is 12 °C in Oslo.")
    assert 0 <= other["chrf"] < 0.3 and other["rouge_l"] == 0.0
    assert _worded('get_weather({"city": "Oslo"})', "It is 12 °C in Oslo.", "{...}") == {}
    assert _worded(NO_CALL, "anything", "  ") == {}
    rows = [{"id": f"t{i}", "model": m, **({"chrf": c, "rouge_l": c} if c is not None else {})}
            for m, scores in (("base", (0.1, 0.2, None)), ("tuned", (0.5, 0.8, None))) for i, c in enumerate(scores)]
    found = overlap.answers(rows, ["base", "tuned"], "test")
    chrf = found["overlap"]["chrf"]
    assert found["split"] == "test" and chrf["n"] == 2 and chrf["means"] == [0.15, 0.65]
    assert chrf["delta"] == pytest.approx(0.5) and found["versus"]["base"]["chrf"]["n"] == 2
    assert overlap.answers([r for r in rows if "chrf" not in r], ["base", "tuned"], "test") is None


@pytest.mark.parametrize("calls, mode", [(1, "tool"), (0, None)])
def test_auto_picks_tool_scoring_when_a_quarter_of_the_replies_call(tiny_recipe, tmp_path, calls, mode):
    """Four test rows: one calling (a quarter) is tool data, the others answers after results; none calling, and
    the answers neither short nor numeric, is no mode (the message counts the calls when there are any)."""
    from tunelab.config import validate
    from tunelab.evaluate.stage import scoring_mode
    folder = tmp_path / "d"
    folder.mkdir()
    answered = [{**r, "messages": r["messages"][:-1] + [{"role": "assistant", "content": "The weather there is mild "
                                                          "and dry today, with a light wind from the west."}]}
                for r in _rows(4, final=True)]
    write_jsonl(folder / "train.jsonl", _rows(4, final=False))
    write_jsonl(folder / "test.jsonl", _rows(calls, final=False) + answered[calls:])
    cfg = validate({**tiny_recipe, "model": {**tiny_recipe["model"], "chat_template": "qwen_25"},
                    "data": {"source": str(folder), "messages": "messages"}}, "tiny")
    found, why = scoring_mode(cfg, load_splits(cfg.data))
    assert found == mode
    assert mode or why.startswith("data.target: of 4 test targets") and "tool calls" not in why
    if mode:  # tunelab check and the report's data table count the targets that call
        from tunelab.data.checks import targets, targets_line
        counted = targets(load_splits(cfg.data), mode, cfg)["test"]
        assert (counted["scoreable"], counted["rows"]) == (1, 4)
        assert targets_line("test", counted) == ("test targets making a tool call (tool scoring; the others are "
                                                 "right when no call is made, and are measured by their words)",
                                                 "1 / 4")
    write_jsonl(folder / "test.jsonl", _rows(1, final=False) + answered[1:] * 2)  # 1 of 7 calls: under a quarter
    found, why = scoring_mode(cfg, load_splits(cfg.data))
    assert found is None and why.endswith("; 1 make tool calls, where tool scoring needs 25%")


def test_every_reply_of_a_held_out_conversation_is_a_question_with_eval_turns_all(tiny_recipe, qwen, tmp_path):
    """eval.turns all: a conversation whose last reply is the answer after a tool's result is asked twice — the
    call, after the user turn alone (id <row>.1), and the answer, after the call and its result (the row's id) —
    so the calls mid-conversation are scored too; the default scores the last reply alone."""
    from tunelab.config import validate
    from tunelab.evaluate.stage import _limited, scoring_mode
    folder = tmp_path / "d"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", _rows(4, final=True))
    write_jsonl(folder / "test.jsonl", _rows(3, final=True) + [{"messages": [  # a chat of two exchanges
        {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye!"}, {"role": "assistant", "content": "Goodbye."}]}])
    raw = {**tiny_recipe, "model": {**tiny_recipe["model"], "chat_template": "qwen_25"},
           "data": {"source": str(folder), "messages": "messages"}}
    last, every = (validate({**raw, "eval": {"turns": turns}}, "tiny") for turns in ("last", "all"))
    splits = load_splits(last.data)
    assert [e.id for e in _limited(last, splits)[1]] == ["test-1", "test-2", "test-3", "test-4"]
    asked = _limited(every, splits)[1]
    assert [e.id for e in asked] == ["test-1.1", "test-1", "test-2.1", "test-2", "test-3.1", "test-3", "test-4.1",
                                     "test-4"]
    call, answer = asked[0], asked[1]
    assert answer is splits.test[0] and call.prompt == answer.prompt == "How warm is it in City0?"
    assert call.target.startswith("<tool_call>") and answer.target == "It is 10 °C in City0."
    assert "<tool_response>" not in chat.prompt(qwen, call.prompt, history=call.fields[chat.HISTORY])
    assert "<tool_response>" in chat.prompt(qwen, answer.prompt, history=answer.fields[chat.HISTORY])
    assert (asked[6].prompt, asked[6].target, asked[7].prompt) == ("Hi!", "Hello.", "Bye!")
    assert scoring_mode(last, splits)[0] == "exact"  # the last replies alone: short answers, no call
    assert scoring_mode(every, splits) == ("tool", None)  # 3 of 8 replies call
    from tunelab.data.checks import targets
    assert [(t["scoreable"], t["rows"]) for t in (targets(splits, "tool", c)["test"] for c in (last, every))] == [
        (0, 4), (3, 8)]  # tunelab check counts the replies the eval asks
    from tunelab.data import conversation_id
    assert [conversation_id(e.id) for e in asked] == ["test-1"] * 2 + ["test-2"] * 2 + ["test-3"] * 2 + ["test-4"] * 2
    assert conversation_id("data.v2:test-3") == "data.v2:test-3"  # a source name's dot is no reply number
    from tunelab.report.observations import contamination
    checks = {"settings": {"ngram": 13, "near": False}, "rows": {"test": 4},
              "overlap": [{"split": "test", "row_id": "test-1"}],
              "overlap_counts": {"test": {"exact": 1, "ngram": 0, "near": 0}}}
    flags = [False, False, True, True, True, True, True, True]  # the overlapping conversation's two replies wrong
    said = contamination(checks, [{"id": e.id, "model": "tuned", "flexible_correct": ok}
                                  for e, ok in zip(asked, flags)])
    assert "tuned accuracy on them 0.0 % vs 100.0 % on the rest (n = 2 vs 6" in said.text  # both replies of test-1
    from tunelab.report.stage import _test_rows
    said = _test_rows(every, {"test_examples": 4}, {"turns": "all", "base": {"n": 8}, "tuned": {"n": 8}})
    assert said.endswith("4 test rows kept for evaluation; every assistant reply of the conversations scored asked "
                         "after the turns before it (eval.turns: all), 8 questions")
    from tunelab.errors import UserError
    plain = validate({**tiny_recipe, "eval": {**tiny_recipe["eval"], "turns": "all"}}, "tiny")
    with pytest.raises(UserError, match="eval.turns: all asks each reply of a conversation, and the test rows are not"):
        scoring_mode(plain, load_splits(plain.data))


@pytest.mark.slow
def test_tool_calling_rows_are_scored_by_their_calls_base_and_tuned(tiny_recipe, qwen, tmp_path, monkeypatch):
    """eval.scoring auto picks tool scoring when a quarter of the held-out replies make tool calls; every pass asks
    with the row's tools in the prompt (the chat template's system turn) and scores the calls it writes; the answers
    after a tool's result are scored on calling none and, by their words, chrF — in the report and the card."""
    from tunelab.config import validate
    from tunelab.evaluate.scoring import NO_CALL
    from tunelab.evaluate.stage import evaluate, scoring_mode
    from tunelab.rundir import RunDir
    from tunelab.train.loop import train
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    folder = tmp_path / "calls"
    folder.mkdir()
    rows = _rows(24, final=False)
    write_jsonl(folder / "train.jsonl", rows[:20])
    write_jsonl(folder / "test.jsonl", rows[20:22] + _rows(24, final=True)[22:])  # two calls, two answers
    raw = {**tiny_recipe, "model": {**tiny_recipe["model"], "chat_template": "qwen_25"},
           "data": {"source": str(folder), "messages": "messages"},
           "train": {**tiny_recipe["train"], "epochs": 1, "max_length": 512}, "eval": {"limit": 4, "max_new_tokens": 8}}
    cfg, run = validate(raw, "tiny"), RunDir(tmp_path / "run")
    assert scoring_mode(cfg, load_splits(cfg.data)) == ("tool", None)
    train(cfg, run)
    prompts = []
    real = __import__("tunelab.evaluate.generate", fromlist=["generate"]).generate

    def seen(model, tok, texts, *args, **kwargs):
        prompts.extend(texts)
        return real(model, tok, texts, *args, **kwargs)

    monkeypatch.setattr("tunelab.evaluate.generate.generate", seen)
    result = evaluate(cfg, run)
    assert result.summary["scoring"] == "tool" and {"base", "tuned"} <= result.summary.keys()
    assert prompts and all("<tools>" in p and "get_weather" in p for p in prompts)
    tuned = [p for p in result.predictions if p["model"] == "tuned"]
    assert [p["reference"] for p in tuned] == [f'get_weather({{"city": "City{i}"}})' for i in (20, 21)] + [NO_CALL] * 2
    assert all(p["flexible_correct"] == (p["flexible_answer"] == p["reference"]) for p in tuned)
    assert ["chrf" in p for p in tuned] == [False, False, True, True]  # the answers' words, against the reference's
    words = result.summary["answers"]["overlap"]["chrf"]
    assert words["n"] == 2 and words["means"][1] == pytest.approx(sum(p["chrf"] for p in tuned[2:]) / 2, abs=1e-6)
    from tunelab import card
    from tunelab.report import write_report
    write_report(run)
    md = run.report_md.read_text()
    assert "Tool-call accuracy = the tool calls the completion makes" in md and "tool-call acc" in md
    assert f"| Reply that should call no tool: chrF vs reference | {words['means'][0]:.3f} → " in md
    assert "The tuned adapter's generated replies that should call no tool are " in md
    assert "The words of the 2 test replies that should call no tool (greedy, base → tuned)" in card.render(run)
    outcomes = result.summary["tool_outcomes"]
    assert list(outcomes) == ["base", "tuned"] and sum(outcomes["tuned"].values()) == 4
    assert outcomes["tuned"]["right"] == sum(p["flexible_correct"] for p in tuned)
    counted = " | ".join(map(str, outcomes["tuned"].values()))
    assert "## How the tool calls went" in md and f"| tuned | {counted} |" in md


def test_vllm_is_served_with_the_tool_call_parser_of_the_format_the_tuned_replies_call_in():
    from tunelab.handoff import commands, tool_parser
    hermes = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert tool_parser([hermes, hermes, "It is noon."]) == "hermes"
    assert tool_parser(['[TOOL_CALLS][{"name": "get_time", "arguments": {}}]', hermes,
                        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]']) == "mistral"
    assert tool_parser(['{"name": "get_time", "parameters": {}}']) == "llama3_json"
    assert tool_parser(["It is noon.", "<tool_call>not json</tool_call>"]) is None  # no call made
    serve = next(c for _, c in commands("Qwen/Qwen2.5-7B-Instruct", "/a", 16, "n", task=None, tools="hermes")
                 if c.startswith("vllm serve"))
    assert serve.endswith(" --enable-auto-tool-choice --tool-call-parser hermes")


def test_generate_hands_a_tools_file_to_the_template_with_each_prompt_of_a_conversation_run(tiny_recipe, tmp_path,
                                                                                             capsys, monkeypatch):
    """--tools FILE: typed texts and --file rows without tools of their own are prompted with those schemas (a
    row's own are kept); a run whose rows are not conversations, a --raw text or a bad file are refused, exit 2."""
    import yaml
    from tunelab.cli import main
    from tunelab.evaluate.generate import Generation
    seen = []

    def answers(model, tok, prompts, *args, **kwargs):
        seen.extend(prompts)
        return [Generation('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', 9)
                for _ in prompts], 0.1

    monkeypatch.setattr("tunelab.evaluate.generate.generate", answers)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**tiny_recipe, "model": {**tiny_recipe["model"], "chat_template": "qwen_25"},
                                      "data": {"source": "x.jsonl", "messages": "messages"}}))
    (tmp_path / "tools.json").write_text(json.dumps({"tools": [WEATHER]}))
    other = {**WEATHER, "function": {**WEATHER["function"], "name": "get_time"}}
    write_jsonl(tmp_path / "asks.jsonl", [{"messages": [{"role": "user", "content": "Warm in Oslo?"}]},
                                          {"messages": [{"role": "user", "content": "Time?"}], "tools": [other]}])
    assert main(["generate", str(recipe), "Warm in Oslo?", "--tools", str(tmp_path / "tools.json")]) == 0
    assert main(["generate", str(recipe), "--file", str(tmp_path / "asks.jsonl"),
                 "--tools", str(tmp_path / "tools.json")]) == 0
    assert main(["generate", str(recipe), "Warm in Oslo?"]) == 0
    assert ["get_weather" in p for p in seen] == [True, True, False, False]
    assert "get_time" in seen[2] and "<tools>" not in seen[3]  # its own tools; none given
    capsys.readouterr()
    (tmp_path / "bad.json").write_text("[{not json")
    for extra, message in ((["--tools", str(tmp_path / "bad.json")], "bad.json:1: not JSON"),
                           (["--tools", str(tmp_path / "none.json")], "none.json: no such file"),
                           (["--tools", str(tmp_path / "tools.json"), "--raw"], "--tools: a --raw text is the whole")):
        assert main(["generate", str(recipe), "Warm in Oslo?", *extra]) == 2
        assert message in capsys.readouterr().err
    plain = tmp_path / "p.yaml"
    plain.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["generate", str(plain), "2 + 2?", "--tools", str(tmp_path / "tools.json")]) == 2
    assert "the run's rows are not conversations" in capsys.readouterr().err


def test_a_template_that_writes_no_tools_or_calls_is_refused_before_it_trains_an_empty_reply(tok_plain, qwen,
                                                                                           tmp_path):
    """SmolLM2's own template knows no tools: a tool-call reply would render as an empty turn and the schemas would
    be left out; both are refused naming what is missing, the template Qwen2.5's is probed as writing both."""
    from tunelab.errors import UserError
    splits = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "t.jsonl", _rows(4, final=False))),
                                    messages="messages", val_fraction=0.5))
    assert chat.tool_support(qwen) == (True, True) and chat.tool_support(tok_plain) == (False, False)
    with pytest.raises(UserError, match="the rows have tool schemas .a row's tools field. and tool calls, which the "
                                        "chat template of .* does not write"):
        encode(splits.train[:1], tok_plain, chat=True)
    with pytest.raises(UserError, match="model.chat_template to a template that writes them, such as qwen_25"):
        chat.prompt(tok_plain, splits.train[0].prompt, history=splits.train[0].fields[chat.HISTORY])
    plain = load_splits(DataConfig(source=str(write_jsonl(tmp_path / "p.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4)),
        messages="messages", val_fraction=0.5))
    assert encode(plain.train[:1], tok_plain, chat=True)  # rows without tools: no probe asked of the template


def test_tool_scoring_asked_of_data_without_calls_says_so(tiny_recipe):
    from tunelab.config import validate
    from tunelab.evaluate.stage import scoring_mode
    cfg = validate({**tiny_recipe, "eval": {**tiny_recipe["eval"], "scoring": "tool"}}, "tiny")
    mode, why = scoring_mode(cfg, load_splits(cfg.data))
    assert mode is None and why == "data.target: no test target makes a tool call (a JSON object with a name and " \
                                   "its arguments)"
    auto = validate(tiny_recipe, "tiny")
    assert scoring_mode(auto, load_splits(auto.data))[0] == "numeric"  # '#### N' targets: not tool calls


def test_the_generated_tool_set_loads_its_test_questions_naming_no_training_city(tmp_path, qwen):
    """benchmarks/tool_data.py (the README's measured set): rows tunelab reads, each through Qwen2.5's template;
    with --answers 1 every call is followed by its result and the answer; no test city in a training row."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "tool_data.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "--train", "60", "--test", "20", "--answers",
                           "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    spec = importlib.util.spec_from_file_location("tool_data", script)
    sys.path.insert(0, str(script.parent))
    try:
        spec.loader.exec_module(made := importlib.util.module_from_spec(spec))
    finally:
        sys.path.remove(str(script.parent))
    splits = load_splits(DataConfig(source=str(tmp_path), messages="messages"))
    assert len(splits.train) + len(splits.val) == 60 and len(splits.test) == 20
    chats = {answer for _, answer in made.CHAT}
    assert all(e.target in chats or "<tool_response>" in chat.prompt(qwen, e.prompt, history=e.fields[chat.HISTORY])
               for e in splits.test)  # an answer written after the tool's result, or plain chat
    train_text = " ".join(e.prompt + e.target for e in splits.train + splits.val)
    asked = [c for c in made.TEST_CITIES if any(c in e.prompt for e in splits.test)]
    assert asked and not any(c in train_text for c in made.TEST_CITIES)
