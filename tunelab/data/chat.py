"""Chat-template formatting (`data.chat_template: true`): each row as one exchange in the model's own chat format.

The rendered `data.template` is the user turn and the rendered `data.target` the assistant turn, written by the
tokenizer's chat template (what an instruct model was tuned on; TRL's "conversational" rows do the same). Training
takes the loss on the assistant turn and its end-of-turn marker; evaluation prompts with the user turn and the
assistant header; the few-shot baseline puts its shots in as earlier turns (lm-eval's `--apply_chat_template
--fewshot_as_multiturn`).

    prompt = chat.prompt(tok, example.prompt)                  # "...<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n"
    reply = chat.reply(tok, example.prompt, example.target)    # "{a}<|im_end|>"

Run as: tunelab train gsm8k-smollm2-135m --set data.chat_template=true --set data.source=../shared/data/gsm8k
"""

from __future__ import annotations

from tunelab.errors import UserError


def require(tok) -> None:
    """Raises UserError when the tokenizer has no chat template to format with."""
    if not getattr(tok, "chat_template", None):
        name = getattr(tok, "name_or_path", "") or "this model"
        raise UserError(f"data.chat_template: the tokenizer of {name} has no chat template; set "
                        f"data.chat_template: false (plain prompts) or use an instruct model's tokenizer")


def prompt(tok, user: str, shots: list[tuple[str, str]] = ()) -> str:
    """The text a model is prompted with: earlier (user, assistant) exchanges, the user turn, the assistant header.

    A beginning-of-sequence marker that the template writes and the tokenizer adds again is dropped from the text,
    so that the sequence starts with one."""
    return _strip_bos(tok, tok.apply_chat_template(_turns(shots, user), tokenize=False, add_generation_prompt=True))


def context(tok, shots: list[tuple[str, str]]) -> str:
    """The exchanges alone (the few-shot part every prompt starts with when the template writes turn by turn)."""
    return _strip_bos(tok, tok.apply_chat_template(_turns(shots, None), tokenize=False))


def reply(tok, user: str, target: str) -> str:
    """The assistant turn that follows `prompt(tok, user)`: the target and the template's end-of-turn marker, with
    the whitespace the template writes after it dropped (it would be trained on, never generated).

    Raises:
        UserError: the template does not write the exchange as the prompt followed by the reply.
    """
    head = tok.apply_chat_template(_turns((), user), tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(_turns((), user) + [{"role": "assistant", "content": target}], tokenize=False)
    if not whole.startswith(head):
        raise UserError("data.chat_template: the tokenizer's chat template does not write an exchange as its "
                        "generation prompt followed by the reply; set data.chat_template: false")
    return whole[len(head):].rstrip()


def _turns(shots, user: str | None) -> list[dict]:
    turns = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return turns + ([{"role": "user", "content": user}] if user is not None else [])


def _strip_bos(tok, text: str) -> str:
    bos = tok.bos_token
    if bos and text.startswith(bos) and tok("", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]:
        return text[len(bos):]
    return text
