"""Chat-template formatting (`data.chat_template: true`): each row as one exchange in the model's own chat format.

The rendered `data.template` is the user turn and the rendered `data.target` the assistant turn, written by the
tokenizer's chat template (what an instruct model was tuned on; TRL's "conversational" rows do the same). Training
takes the loss on the assistant turn and its end-of-turn marker; evaluation prompts with the user turn and the
assistant header; the few-shot baseline puts its shots in as earlier turns (lm-eval's `--apply_chat_template
--fewshot_as_multiturn`).

    prompt = chat.prompt(tok, example.prompt)  # "...<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n"
    prompt, reply = chat.exchange(tok, example.prompt, example.target)    # reply: "{a}<|im_end|>"

Conversation rows (`data.messages: <field>`, a list of {role, content} turns as TRL and the OpenAI API take them, or
ShareGPT's {from, value} turns, from human / gpt / system; `prompt+completion`, TRL's conversational prompt /
completion rows, reads the turns of both fields one after the other):
`conversation` makes the last assistant turn the row's `{assistant}` field, the user turn before it `{user}`, and
keeps the turns before that (a system prompt, earlier exchanges) as the row's history, written before the user
turn every time the row is formatted. Every assistant turn carries loss (`data.history_loss`; `reply_spans` finds
the earlier ones by rendering the conversation turn by turn); evaluation scores the last one. An assistant turn
that carries its thinking apart (`reasoning_content`, as Axolotl and TRL hand it to the template and vLLM and the
DeepSeek API return it; or `reasoning`, or `thinking`) has it written before its content as a think block, as
Qwen3's template writes it: `<think>\n{thinking}\n</think>\n\n{content}`. Tool calling: assistant turns may make
tool calls (`tool_calls`; ShareGPT's `function_call`) that `tool` turns (`observation`) answer, and the row's `tools`
field is handed to the template; the calls and results between the last user turn and the last reply stay after
that turn, the history holding an ASKED stand-in where it goes (`_turns`).

Run as: tunelab train gsm8k-smollm2-135m --set data.chat_template=true --set data.source=../shared/data/gsm8k
        tunelab train my-chats.yaml       (data.messages: messages)
"""

from __future__ import annotations

import json

from tunelab.errors import UserError

HISTORY = "_history"  # the field a conversation row keeps its earlier turns in
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant",  # ShareGPT's turn names, and
                  "function_call": "assistant", "observation": "tool"}  # LLaMA-Factory's tool-call turns
ASKED = "\x00ASKED\x00"  # a history's stand-in for the row's user turn, where turns follow it (`conversation`)
TOOLS, REPLY = "_tools", "_reply"  # keys of that stand-in: the row's tool schemas, its last reply's tool calls
THINKING_KEYS = ("reasoning_content", "reasoning", "thinking")  # where an assistant turn may carry its thinking


def require(tok, key: str = "data.chat_template") -> None:
    """Raises UserError, naming the recipe `key` that asked for it, when the tokenizer has no chat template."""
    if not getattr(tok, "chat_template", None):
        name = getattr(tok, "name_or_path", "") or "this model"
        raise UserError(f"{key}: the tokenizer of {name} has no chat template; set {key}: false "
                        f"{'(plain prompts) ' if key == 'data.chat_template' else ''}or use an instruct model's "
                        "tokenizer")


def conversation_fields(key: str) -> list[str]:
    """The fields `data.messages` names: one, or several joined by + whose turns follow one another (TRL's
    conversational prompt / completion rows: `prompt+completion`)."""
    return [part.strip() for part in key.split("+")]


def conversation(fields: dict, key: str, open_end: bool = False) -> tuple[dict | None, str | None]:
    """A conversation row's fields with `user`, `assistant` and its history added, or (None, the problem).
    `open_end` (tunelab generate): the conversation may also end with its user turn, the prompt to answer; it then
    has no `assistant` field (nor the fields after the first of a `prompt+completion` key)."""
    turns = []
    for i, name in enumerate(conversation_fields(key)):
        if fields.get(name) is None and open_end and i:
            continue
        if fields.get(name) is None:
            return None, f"missing field {name!r}"
        part = plain_turns(fields[name])
        if part is None:
            return None, (f"field {name!r}: expected a list of {{role, content}} turns, role one of "
                          f"{', '.join(ROLES)} (or ShareGPT's {{from, value}} turns, from "
                          f"{' / '.join(SHAREGPT_ROLES)} or a role)")
        turns += part
    answered = bool(turns) and turns[-1]["role"] == "assistant"
    if not answered and not (open_end and turns and turns[-1]["role"] in ("user", "tool")):
        last = turns[-1]["role"] if turns else "nothing"
        wanted = "a user turn (to answer) or an assistant turn" if open_end else "the assistant turn (the target)"
        return None, f"field {key!r}: the last turn is {last}, expected {wanted}"
    asked = turns[:-1] if answered else turns
    user = max((i for i, t in enumerate(asked) if t["role"] == "user"), default=None)
    after = asked[user + 1:] if user is not None else []
    if user is None or (after and not any(t["role"] == "tool" for t in after)) or \
            any(t["role"] not in ("assistant", "tool") for t in after):
        return None, f"field {key!r}: expected a user turn just before the last assistant turn (or its tool calls " \
                     "and their results)"
    for t in asked[user:user + 1] + turns[len(asked):]:
        if not (t["content"].strip() or t.get("tool_calls")):
            return None, f"field {key!r}: empty {t['role']} turn"
    tools, problem = tool_schemas(fields.get("tools"))
    if problem:
        return None, problem
    reply = turns[-1] if answered else None
    history = asked[:user]
    if after or tools or (reply and reply.get("tool_calls")):  # the user turn stands where it was, turns after it
        history = [*history, {"role": "user", "content": ASKED, **({TOOLS: tools} if tools else {}),
                              **({REPLY: reply} if reply and reply.get("tool_calls") else {})}, *after]
    texts = {"assistant": reply_text(reply)} if reply else {}
    return {**fields, "user": asked[user]["content"], **texts, HISTORY: history}, None


def reply_text(turn: dict) -> str:
    """An assistant turn as text: its content, then each tool call it makes as Hermes' format (Qwen2.5's and
    Qwen3's templates) writes it, `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one per line: the
    reference a tool-calling row's reply is scored against (its own template's rendering is what trains)."""
    calls = [f'<tool_call>\n{json.dumps({"name": f["name"], "arguments": f["arguments"]}, ensure_ascii=False)}'
             f"\n</tool_call>" for f in (c["function"] for c in turn.get("tool_calls") or [])]
    return "\n".join(part for part in [turn["content"].strip("\n"), *calls] if part)


def tool_schemas(tools) -> tuple[list | None, str | None]:
    """A row's `tools` field as the list of function schemas the chat template is given (TRL's `tools` column;
    JSON text as many datasets store it is parsed), or (None, the problem)."""
    if isinstance(tools, str) and tools.strip():
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as err:
            return None, f"field 'tools': not JSON ({err.msg}, column {err.colno})"
    if not tools:
        return None, None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        return None, "field 'tools': expected a list of function schemas ({type: function, function: {name, ...}})"
    out = []
    for tool in tools:  # a function's parameters stored as JSON text (as Axolotl reads them too)
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("parameters"), str):
            try:
                tool = {**tool, "function": {**function, "parameters": json.loads(function["parameters"])}}
            except json.JSONDecodeError as err:
                return None, f"field 'tools': {function.get('name')!r}'s parameters are not JSON ({err.msg})"
        out.append(tool)
    return out, None


def plain_turns(turns) -> list[dict] | None:
    """A conversation's turns as {role, content} dicts: OpenAI / TRL turns as they are, ShareGPT's {from, value}
    turns (from human / gpt / system, as Axolotl's and LLaMA-Factory's sharegpt formats read them, or from a role)
    renamed; None when a turn is neither."""
    if not isinstance(turns, list):
        return None
    plain = []
    for t in turns:
        if not isinstance(t, dict):
            return None
        role = t["role"] if "role" in t else SHAREGPT_ROLES.get(t.get("from"), t.get("from"))
        content = t["content"] if "content" in t else t.get("value")
        calls = _tool_calls(t.get("tool_calls") or (content if t.get("from") == "function_call" else None))
        if calls:
            content = "" if t.get("from") == "function_call" or content is None else content
        if role == "tool" and isinstance(content, (dict, list)):
            content = json.dumps(content, ensure_ascii=False)
        if role not in ROLES or not isinstance(content, str) or calls is False:
            return None
        turn = {"role": role, "content": _with_thought(content, t) if role == "assistant" else content}
        if calls and role == "assistant":
            turn["tool_calls"] = calls
        if role == "tool":
            turn |= {k: t[k] for k in ("name", "tool_call_id") if isinstance(t.get(k), str)}
        plain.append(turn)
    return plain


def _tool_calls(calls) -> list[dict] | None | bool:
    """An assistant turn's tool calls as chat templates take them — `{type: function, function: {name, arguments}}`
    with the arguments a dict (OpenAI's JSON string parsed; LLaMA-Factory's function_call value, JSON of one call or
    a list of them, read the same); None when it makes none, False when they are not calls."""
    if calls is None:
        return None
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except json.JSONDecodeError:
            return False
    out = []
    for call in calls if isinstance(calls, list) else [calls]:
        f = call.get("function", call) if isinstance(call, dict) else None
        args = f.get("arguments", f.get("parameters", {})) if isinstance(f, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return False
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(args, dict):
            return False
        out.append({"type": "function", "function": {"name": f["name"], "arguments": args}})
    return out or None


def _with_thought(content: str, turn: dict) -> str:
    """An assistant turn's content with the thinking it carries apart (the first of THINKING_KEYS that holds text)
    written before it, as Qwen3's template writes `reasoning_content`: a think block, then the content. As it is when
    the turn carries none, or its content already has its thinking (a THINK_END)."""
    thought = next((turn[k] for k in THINKING_KEYS if isinstance(turn.get(k), str) and turn[k].strip()), None)
    if thought is None or THINK_END in content:
        return content
    thought, content = thought.strip("\n"), content.lstrip("\n")  # as Qwen3's template strips them
    return f"{THINK_START}\n{thought}\n{THINK_END}\n\n{content}"


def with_system(fields: dict, text: str) -> dict:
    """A row's fields with a system turn first in its history (`data.system_prompt`), unless it has its own."""
    history = fields.get(HISTORY, [])
    if history and history[0]["role"] == "system":
        return fields
    return {**fields, HISTORY: [{"role": "system", "content": text}, *history]}


def prompt(tok, user: str, shots: list[tuple[str, str]] = (), history: list[dict] = ()) -> str:
    """The text a model is prompted with: the row's system turn, earlier (user, assistant) exchanges (few-shot
    shots), the rest of its history, the user turn, the assistant header.

    A beginning-of-sequence marker that the template writes and the tokenizer adds again is dropped from the text,
    so that the sequence starts with one."""
    turns = _turns(shots, user, history)
    _require_tools(tok, bool(_tools_in(turns)), any(t.get("tool_calls") for t in turns))
    return _strip_bos(tok, _render(tok, turns, add_generation_prompt=True))


def reply_spans(tok, user: str, history: list[dict]) -> list[tuple[int, int]]:
    """Character spans, in `prompt(tok, user, history=history)`, of the history's assistant turns (each reply and its
    end-of-turn marker): what `data.history_loss` trains on besides the last reply. Found by rendering the
    conversation turn by turn; for a template that writes an earlier reply otherwise than as the last one (Qwen3's
    empty <think> block, on the last reply only), by rendering it with a placeholder in that reply's place. Empty
    when neither finds them (then only the last reply is trained on)."""
    turns = _turns((), user, history)
    text = prompt(tok, user, history=history)
    shift = len(_render(tok, turns, add_generation_prompt=True)) - len(text)  # a dropped BOS
    tools = _tools_in(turns)
    spans = []
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        head = _render(tok, turns[:k], tools, add_generation_prompt=True)
        whole = _render(tok, turns[:k + 1], tools).rstrip()
        if not (whole.startswith(head) and text.startswith(whole[shift:])):
            return _placeholder_spans(tok, turns, text, shift)
        spans.append((len(head) - shift, len(whole) - shift))
    return spans


PLACEHOLDER = "\x00REPLY\x00"  # stands in for one reply: no template writes it, none strips it


def _placeholder_spans(tok, turns: list[dict], text: str, shift: int) -> list[tuple[int, int]]:
    """`reply_spans` of a template that does not write a conversation turn by turn: each assistant turn's reply is
    what lies, in the whole conversation, between the text the template writes before and after a placeholder put in
    its place; its span runs on over the end-of-turn marker (what the template writes after a reply). [] when that
    text is not the whole conversation's around the reply, or the marker does not follow it."""
    if (around := around_reply(tok)) is None:
        return []
    marker = around[1]
    whole = text if shift == 0 else _render(tok, turns, add_generation_prompt=True)
    spans = []
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        probe = _render(tok, [*turns[:k], {**turn, "content": PLACEHOLDER}, *turns[k + 1:]],
                        add_generation_prompt=True)
        before, found, after = probe.partition(PLACEHOLDER)
        end = len(whole) - len(after)
        if not found or PLACEHOLDER in after or end < len(before) or not (
                whole.startswith(before) and whole.endswith(after) and after.startswith(marker)):
            return []
        spans.append((len(before) - shift, end + len(marker) - shift))
    return spans


def context(tok, shots: list[tuple[str, str]], history: list[dict] = ()) -> str:
    """The history's system turn (if any) and the exchanges: the few-shot part that every prompt with that system
    turn starts with when the template writes turn by turn."""
    system = [t for t in history[:1] if t["role"] == "system"]
    return _strip_bos(tok, _render(tok, _turns(shots, None, system), _tools_in(history)))


def exchange(tok, user: str, target: str, history: list[dict] = (),
             shots: list[tuple[str, str]] = ()) -> tuple[str, str]:
    """What training tokenizes for one row: `prompt(tok, user, shots, history)` and the assistant turn that follows
    it — the target and the template's end-of-turn marker, with the whitespace the template writes after it dropped
    (it would be trained on, never generated). One render of each. `shots`: (user, assistant) exchanges before the
    row's (the few-shot baseline by loss of chat rows). A prompt that ends by opening a think block (DeepSeek-R1's,
    Axolotl's qwen3) is followed by the reply's thinking, then its answer (`_after_opened_thought`).

    Raises:
        UserError: the template does not write the exchange as the prompt followed by the reply.
    """
    turns = _turns(shots, user, history)
    reply = next((t[REPLY] for t in turns if REPLY in t), {"role": "assistant", "content": target})
    _require_tools(tok, bool(_tools_in(turns)), any(t.get("tool_calls") for t in [*turns, reply]))
    head = _render(tok, turns, add_generation_prompt=True)
    whole = _render(tok, turns + [reply], _tools_in(turns))
    if whole.startswith(head):
        return _strip_bos(tok, head), whole[len(head):].rstrip()
    if (reply := _after_opened_thought(head, whole, target)) is not None:
        return _strip_bos(tok, head), reply.rstrip()
    raise UserError("data.chat_template: the tokenizer's chat template does not write an exchange as its "
                    "generation prompt followed by the reply; set data.chat_template: false")


_TOOL_SUPPORT: dict[str, tuple[bool, bool]] = {}  # chat template -> (writes tool schemas, writes tool calls)


def tool_support(tok) -> tuple[bool, bool]:
    """Whether the tokenizer's chat template writes the function schemas it is given (`tools`) and an assistant
    turn's tool calls — probed once per template, by rendering a schema and a call of made-up names."""
    import jinja2
    template = tok.chat_template or ""
    if template not in _TOOL_SUPPORT:
        schema = {"type": "function", "function": {"name": "probe_schema_fn", "description": "a probe",
                                                   "parameters": {"type": "object", "properties": {}}}}
        asked = [{"role": "user", "content": "q"}]
        call = {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "probe_call_fn", "arguments": {}}}]}
        try:
            schemas = "probe_schema_fn" in tok.apply_chat_template(asked, tools=[schema], tokenize=False,
                                                                   add_generation_prompt=True)
        except jinja2.TemplateError:
            schemas = False
        try:
            calls = "probe_call_fn" in tok.apply_chat_template(asked + [call], tokenize=False)
        except jinja2.TemplateError:
            calls = False
        _TOOL_SUPPORT[template] = (schemas, calls)
    return _TOOL_SUPPORT[template]


def _require_tools(tok, schemas: bool, calls: bool) -> None:
    """Raises UserError when a row carries tool schemas (`schemas`) or tool calls (`calls`) that the chat template
    would leave out: the prompt without the schemas, an empty reply in place of the call."""
    if not (schemas or calls):
        return
    writes_schemas, writes_calls = tool_support(tok)
    missing = [what for what, needed, written in (("tool schemas (a row's tools field)", schemas, writes_schemas),
                                                  ("tool calls", calls, writes_calls)) if needed and not written]
    if missing:
        name = getattr(tok, "name_or_path", "") or "the model"
        raise UserError(f"data.messages: the rows have {' and '.join(missing)}, which the chat template of {name} "
                        "does not write (it would leave them out of the text trained and asked); set "
                        "model.chat_template to a template that writes them, such as qwen_25 or qwen3")


THINK_START, THINK_END = "<think>", "</think>"  # Qwen3's and DeepSeek-R1's thinking markers
EMPTY_THOUGHT = "<think>\n\n</think>\n\n"  # Qwen3's empty think block; LLaMA-Factory's empty thought


def _after_opened_thought(head: str, whole: str, target: str) -> str | None:
    """The reply after a generation prompt that ends by opening a think block (DeepSeek-R1's
    `<｜Assistant｜><think>\n`: its model must think; Axolotl's qwen3 `<think>\n\n`), where the template writes the
    assistant turn otherwise: the thinking it writes there after its own opening marker (Axolotl's qwen3, a target
    with thinking), or, when it leaves thinking out (DeepSeek-R1's), `_thought` then what it writes. None when the
    prompt opens no think block or the template writes the turn otherwise still."""
    start = head.rfind(THINK_START)
    if start < 0 or head[start + len(THINK_START):].strip() or not whole.startswith(head[:start]):
        return None
    rest = whole[start:]
    if rest.startswith(THINK_START):
        return rest[len(THINK_START):].lstrip()
    return None if THINK_END in rest else _thought(target, head[start:]) + rest


def _thought(target: str, opened: str) -> str:
    """What a reply after a prompt that opens a think block writes before the answer the template writes (which
    leaves thinking out): the target's own thinking through its last THINK_END, less an opening marker the prompt
    already wrote; else an empty one (as LLaMA-Factory trains a reasoning template's reply without thinking)."""
    if THINK_END not in target:
        return EMPTY_THOUGHT[len(THINK_START):].removeprefix(opened[len(THINK_START):])
    return target[:target.rindex(THINK_END) + len(THINK_END)].lstrip().removeprefix(THINK_START).lstrip()


def think_tokens(tok) -> bool:
    """Whether the tokenizer writes THINK_START and THINK_END as one token each (Qwen3's, DeepSeek-R1's): what vLLM's
    reasoning parsers look for, and refuse to start without."""
    vocab = tok.get_vocab()
    return THINK_START in vocab and THINK_END in vocab


def around_reply(tok) -> tuple[str, str] | None:
    """What the chat template writes around a reply in an exchange: between the generation prompt and the reply
    (Qwen3's `</think>\n\n`; mostly nothing), and after it (the end-of-turn marker). None when the tokenizer has no
    template, or it does not write an exchange as its generation prompt followed by the reply."""
    import jinja2
    if not getattr(tok, "chat_template", None):
        return None
    try:
        _, reply = exchange(tok, "Q", PLACEHOLDER)
    except (UserError, jinja2.TemplateError):
        return None
    lead, _, marker = reply.partition(PLACEHOLDER)
    return lead, marker


def end_marker(tok) -> int | None:
    """The token the chat template ends a reply with (ChatML's <|im_end|>, Llama 3's <|eot_id|>, Gemma's
    <end_of_turn>), when the tokenizer has a template and that marker is one added token (never ordinary text);
    else None. Generation stops there as at the EOS (an instruct model's generation config names it so), the marker
    left out of the reply."""
    if (around := around_reply(tok)) is None:
        return None
    ids = tok(around[1], add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 and ids[0] in tok.added_tokens_decoder else None


def think_end(tok) -> str | None:
    """THINK_END when an exchange writes it between the generation prompt and the reply (Qwen3's empty think block;
    the thinking after DeepSeek-R1's prompt, which opens one): a reply generated after that prompt carries one; else
    None (`eval.think_end`'s default)."""
    around = around_reply(tok)
    return THINK_END if around is not None and THINK_END in around[0] else None


def _turns(shots, user: str | None, history: list[dict] = ()) -> list[dict]:
    """The system turn, the shots' exchanges, the rest of the history and the user turn — in the history's ASKED
    stand-in's place where it has one (tool calls and results follow it), else last."""
    system = list(history[:1]) if history and history[0]["role"] == "system" else []  # a system turn stays first
    exchanges = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    rest = list(history[len(system):])
    at = next((i for i, t in enumerate(rest) if t["content"] == ASKED), None)
    if at is not None and user is not None:
        rest[at] = {**rest[at], "content": user}
    elif user is not None:
        rest.append({"role": "user", "content": user})
    return system + exchanges + rest


def _tools_in(turns) -> list | None:
    """The tool schemas a row's ASKED stand-in carries (`conversation`), or None."""
    return next((t[TOOLS] for t in turns if TOOLS in t), None)


def _render(tok, turns: list[dict], tools: list | None = None, add_generation_prompt: bool = False) -> str:
    """The chat template's text of `turns`, given the row's tool schemas (`tools`, else those the turns carry) as
    TRL hands a `tools` column to it; the stand-in's own keys are not the template's."""
    tools = tools or _tools_in(turns)
    plain = [{k: v for k, v in t.items() if k not in (TOOLS, REPLY)} for t in turns]
    return tok.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt,
                                   **({"tools": tools} if tools else {}))


def _strip_bos(tok, text: str) -> str:
    bos = tok.bos_token
    if bos and text.startswith(bos) and tok("", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]:
        return text[len(bos):]
    return text
