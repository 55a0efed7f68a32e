"""Try a model on your own prompts (`tunelab generate`): the tuned adapter's — and the base model's, side by side —
greedy answers to text given on the command line, typed line by line, or read from a file of rows.

Each text fills the run's prompt the way training wrote it: the one field of `data.template` (`{question}`), or the
user turn through the chat template (with `data.system_prompt`) for chat runs; `--raw` sends the text as it is. A
file holds rows with the template's fields (any `data.source` file kind; a conversation ending with its user turn
for `data.messages` runs); a row that also has the target's fields shows it as the reference. Decoding is the eval
stage's (greedy, merged adapter, continuous batching), so a held-out question answered here gets the answer eval
scored (`--until answer` stops where numeric scoring does, `line` where exact scoring does, `pattern` where regex
scoring does).

Run as: tunelab generate runs/quickstart "Tom has 3 boxes of 12 eggs. How many eggs?"
        tunelab generate runs/quickstart --file questions.jsonl --base --json > answers.jsonl
        tunelab generate runs/quickstart --epoch best     # then type questions, one per line (Ctrl-D ends)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import Recipe
from tunelab.data import Example, needed_fields, question_text, to_example
from tunelab.data.chat import conversation_fields
from tunelab.data.sources import FILE_KINDS, Row, read_source
from tunelab.errors import UserError
from tunelab.rundir import RunDir

UNTIL = {"eos": [], "answer": None, "line": "line", "pattern": "pattern"}  # --until -> generate()'s stop rule (EOS
# ends every rule; "pattern": eval.answer_pattern's, compiled by `answer`)


@dataclass
class Model:
    name: str  # "tuned" or "base"
    adapter: Path | None  # None: the base model
    title: str  # "tuned (epoch 2's adapter)"


def run_models(run: RunDir, epoch: str | None, base: bool) -> list[Model]:
    """The run's adapter to answer with (the final one, or `--epoch`'s: N, best, best-loss), then the base model when
    `base`.

    Raises:
        UserError: the run has no adapter yet, no such epoch, or none kept for it.
    """
    from tunelab.export import adapter_folder, chosen_epoch
    number = chosen_epoch(run, epoch)
    trained = (run.read_summary() or {}).get("epochs")
    title = f"tuned ({run.kept_adapter_name(number)})" if number else \
        "tuned (final adapter" + (f", epoch {trained})" if trained else ")")
    return [Model("tuned", adapter_folder(run, number), title)] + ([Model("base", None, "base")] if base else [])


def text_field(cfg: Recipe) -> str:
    """The one field of `data.template` a line of text fills.

    Raises:
        UserError: the template has no field or several (then rows come from --file, or --raw sends text as is).
    """
    names, _ = needed_fields(cfg.data)
    if len(names) != 1:
        listed = ", ".join("{" + n + "}" for n in names) or "no field"
        raise UserError(f"data.template: has {listed}; a text fills exactly one field — give rows with every field "
                        f"(--file rows.jsonl), or --raw to send the text as the whole prompt")
    return names[0]


def from_texts(cfg: Recipe, texts: list[str], raw: bool = False, tools: list | None = None) -> list[Example]:
    """Each text as a row: the template's one field (or, `raw`, the prompt as it is); a conversation run's rows
    given `tools` (their function schemas, `tools_file`)."""
    if raw:
        return [Example(f"text-{i + 1}", text, "", {}) for i, text in enumerate(texts)]
    field, turns = text_field(cfg), cfg.data.messages and conversation_fields(cfg.data.messages)[0]

    def row(text: str) -> dict:  # a conversation run's text is a conversation of one user turn
        return {turns: [{"role": "user", "content": text}], **({"tools": tools} if tools else {})} if turns \
            else {field: text}
    return [_example(cfg, Row(f"text-{i + 1}", f"text {i + 1}", row(text))) for i, text in enumerate(texts)]


def tools_file(cfg: Recipe, path: str) -> list:
    """`tunelab generate --tools`: the function schemas in a JSON file (a list of them, or an object holding one in
    `tools`), handed to the chat template with every prompt of a conversation run that has none of its own.

    Raises:
        UserError: no such file, not JSON, not a list of schemas, or a run whose rows are not conversations.
    """
    import json
    from tunelab.data.chat import tool_schemas
    if not cfg.data.messages:
        raise UserError("--tools: the run's rows are not conversations (data.messages): its prompts have no tools")
    try:
        found = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--tools: {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise UserError(f"--tools: {path}:{err.lineno}: not JSON ({err.msg})") from None
    tools, problem = tool_schemas(found.get("tools") if isinstance(found, dict) else found)
    if problem or not tools:
        raise UserError(f"--tools: {path}: {problem or 'no function schemas'}")
    return tools


def from_file(cfg: Recipe, path: str, tools: list | None = None) -> list[Example]:
    """The rows of a jsonl / json / csv / parquet file, rendered like training rows (given `tools` where a row has
    none of its own); all checked before any is answered.

    Raises:
        UserError: no such file, another kind, unreadable rows or rows missing a prompt field (naming file and line).
    """
    if not Path(path).is_file():
        raise UserError(f"--file: {path}: no such file")
    if not path.endswith(FILE_KINDS):
        raise UserError(f"--file: {path}: expected one of {', '.join(FILE_KINDS)}")
    rows, bad = read_source(path, None, 0, 0, 0)
    problems = [f"{b.where}: {b.problem}" for b in bad]
    examples = []
    for row in rows["train"]:
        if tools and cfg.data.messages and not row.fields.get("tools"):
            row.fields["tools"] = tools
        example, problem = to_example(cfg.data, row, need_target=False)
        if problem:
            problems.append(f"{row.where}: {problem}")
        else:
            examples.append(example)
    if problems:
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise UserError(f"--file: rows that cannot be prompts: {len(problems)}\n"
                        + "\n".join(f"  {p}" for p in problems[:5]) + more)
    if not examples:
        raise UserError(f"--file: {path}: no rows")
    return examples


def _example(cfg: Recipe, row: Row) -> Example:
    example, problem = to_example(cfg.data, row, need_target=False)
    if problem:
        raise UserError(f"{row.where}: {problem}")
    return example


def prompts(cfg: Recipe, tok, examples: list[Example], raw: bool = False) -> list[str]:
    """What the model is given: each row's prompt as training wrote it, or (`raw`) the text alone."""
    from tunelab.evaluate.stage import prompt_texts
    return [e.prompt for e in examples] if raw else prompt_texts(cfg, tok, examples)


def load(cfg: Recipe, model: Model, device):
    """The base model, with `model.adapter` merged in (as the eval stage scores it) when there is one."""
    from tunelab.models import load_adapter, load_model
    base = load_model(cfg.model, device)
    return load_adapter(base, model.adapter, merge=True) if model.adapter else base


def thinks(cfg: Recipe, tok, raw: bool, model: Model | None = None, run: RunDir | None = None) -> str | None:
    """The end-of-thinking marker `model`'s stop rule reads after, as the eval stage's passes do: with a chat template
    that writes a thinking block, its marker (`stage.think_end`) for every model; with plain prompts, an adapter's
    replies are read after eval.think_end when it is set, else after the marker the run's eval read its tuned
    replies after (targets that are reasoning traces, `stage.traced_end`); None for raw texts and the base model's
    plain prompts."""
    from tunelab.evaluate.stage import think_end
    if raw:
        return None
    if cfg.data.chat_template:
        return think_end(cfg, tok)
    if model is None or model.adapter is None:
        return None
    if cfg.eval.think_end is not None:
        return cfg.eval.think_end or None
    tuned = ((run.read_eval_summary() if run is not None else None) or {}).get("tuned")
    return tuned.get("think_end") if isinstance(tuned, dict) else None


def answer(cfg: Recipe, tok, loaded, name: str, texts: list[str], until: str, max_new_tokens: int,
           sample: bool = False, think_end: str | None = None):
    """Greedy completions of `texts` by one loaded model (a list of `Generation`, same order); with `sample`, drawn
    as eval.pass_at_k draws them (eval.temperature, eval.top_p, each text's generator seeded by eval.sample_seed and
    its place); with `think_end`, the `until` rule read after the thinking (`thinks`)."""
    from tunelab.evaluate.generate import AfterThinking, Sampling, generate
    from tunelab.evaluate.scoring import ANSWER_TAG
    stop = re.compile(cfg.eval.answer_pattern or ANSWER_TAG) if until == "pattern" else UNTIL[until]
    stop = AfterThinking(think_end, stop) if think_end else stop
    drawn = Sampling(cfg.eval.temperature, cfg.eval.top_p, cfg.eval.sample_seed) if sample else None
    gens, _ = generate(loaded, tok, texts, max_new_tokens, cfg.eval.batch_size, label=f"generate {name}",
                       stops=[stop] * len(texts), sampling=drawn)
    return gens


def answer_all(cfg: Recipe, tok, models: list[Model], texts: list[str], until: str, max_new_tokens: int,
               device, sample: bool = False, think_end: dict[str, str | None] | None = None) -> dict[str, list]:
    """Every model's completions of `texts` (drawn, with `sample`; the `until` rule read after `think_end[name]`
    where given), one model in memory at a time."""
    out = {}
    for m in models:
        loaded = load(cfg, m, device)
        out[m.name] = answer(cfg, tok, loaded, m.name, texts, until, max_new_tokens, sample,
                             (think_end or {}).get(m.name))
        del loaded
    return out


def record(example: Example, prompt: str, answers: dict[str, object]) -> dict:
    """One prompt's JSON line: what was asked, the prompt as the model saw it, each model's answer and tokens."""
    return {"id": example.id, **({"fields": _plain(example.fields)} if example.fields else {}), "prompt": prompt,
            **{name: g.completion for name, g in answers.items()},
            "tokens": {name: g.tokens for name, g in answers.items()},
            **({"reference": example.target} if example.target else {})}


def _plain(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if not k.startswith("_")}  # not the chat history kept for prompting


def show(number: int, example: Example, answers: dict[str, object], models: list[Model]) -> str:
    """One prompt and its answers as text: what was asked, then each model's answer (indented), then the reference."""
    blocks = [f"[{number}] {question_text(example).strip()}"]
    blocks += [f"{m.title}:\n{_indent(answers[m.name].completion)}" for m in models]
    if example.target:
        blocks.append(f"reference:\n{_indent(example.target)}")
    return "\n".join(blocks) + "\n"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in (text.strip("\n") or "(nothing)").split("\n"))
