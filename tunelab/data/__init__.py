"""Data: read the source, render prompt + target from the template, split train/validation/test.

`load_splits(cfg.data, cfg.eval)` is the one entry point. The split is seeded and deterministic; the test
split (when the source has one, or eval.source's rows) is kept for evaluation and never trained on.

Run as: tunelab train quickstart
"""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Collection
from dataclasses import dataclass, field

from tunelab import tasks
from tunelab.config import DataConfig, EvalConfig, field_of, formatted, mixed, own_format
from tunelab.data.chat import ASKED, HISTORY, conversation, conversation_fields, plain_turns, with_system
from tunelab.data.sources import BadRow, Row, read_source, short_name
from tunelab.errors import UserError

log = logging.getLogger(__name__)
MIX_SEP = ":"  # a data.mix entry's row ids: "name:train-17"


@dataclass
class Example:
    id: str
    prompt: str  # rendered data.template
    target: str  # rendered data.target; the loss is taken on it (completion-only)
    fields: dict  # the raw row, for analysis and evaluation (e.g. the reference answer)
    label: str | None = None  # data.label_field, if any
    asks: str | None = None  # the text its template's fields put in the prompt, without the template's own words


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    skipped: list[str] = field(default_factory=list)  # "where: problem" of each skipped bad row
    deduplicated: int = 0  # train rows dropped by data.dedup before the split
    eval_train: list[Example] = field(default_factory=list)  # eval.source's rows for shots (`_scored_split`)


def question_text(example: Example) -> str:
    """What a row asks: its `question` field when it has one, else the text its template's fields fill in (Alpaca's
    instruction and input, without the preamble every row shares), else its rendered prompt after the user turns of
    its history (a conversation's user side, so that two chats ending in the same "Thanks!" are not duplicates), else
    (a blank prompt: plain-text rows trained whole) its target — what analysis clusters, data checks compare and
    few-shot prompts quote."""
    q = example.fields.get("question")
    if isinstance(q, str) and q.strip():
        return q
    if example.asks and example.asks.strip():  # a template's fields: not its preamble, which every row shares
        return example.asks
    asked = [t["content"] for t in example.fields.get(HISTORY, []) if t["role"] == "user" and t["content"] != ASKED] \
        + [example.prompt]
    return "\n".join(asked) if "".join(asked).strip() else example.target


def placeholders(template: str) -> list[str]:
    """Field names used by a `{field}` template (`choices` of {choices[0]}), in order of first use."""
    names = []
    for _, placeholder, _, _ in string.Formatter().parse(template):
        if placeholder is None:
            continue
        name = field_of(placeholder)
        if name is None:
            raise UserError(f"template {template!r}: placeholder {{{placeholder}}} is not a field name")
        if name not in names:
            names.append(name)
    return names


def render(template: str, fields: dict, optional: Collection[str] = ()) -> str:
    """`template` filled from `fields`. A field in `optional` may be missing, None or blank: it renders as nothing,
    and a paragraph of the template (a line, in a template without blank lines) whose placeholders are all such
    empty fields is left out with its separator — Alpaca's "### Input:\n{input}" block when a row has no input."""
    values = {k: "" if v is None else v for k, v in fields.items()}
    empty = {name for name in optional if not str(values.get(name, "")).strip()}
    if empty:
        values.update(dict.fromkeys(empty, ""))
        sep = "\n\n" if "\n\n" in template else "\n"
        template = sep.join(part for part in template.split(sep)
                            if not (names := placeholders(part)) or not set(names) <= empty)
    return template.format_map(values)


def optional(cfg: DataConfig) -> set[str]:
    """Fields a row may leave missing or empty: `data.optional_fields` and the keys of `data.template_if_empty`."""
    return set(cfg.optional_fields) | set(cfg.template_if_empty)


def prompt_template(cfg: DataConfig, fields: dict) -> str:
    """`data.template`, or the `data.template_if_empty` prompt of the first listed field the row leaves empty."""
    for name, template in cfg.template_if_empty.items():
        if not str(fields.get(name) or "").strip():
            return template
    return cfg.template


def load_splits(cfg: DataConfig, held_out: EvalConfig | None = None) -> Splits:
    """Read `cfg.source`, render every row, and split it. With `held_out.source` (eval.source), the test rows are
    that source's instead, rendered with the same template: its test (or validation) split, or all its rows when it
    has no test split (`eval_train`: its train rows, else its dev or validation rows, when others are scored: the
    few-shot pool of eval.fewshot_from=eval_source; `_scored_split`).

    Raises:
        UserError: unknown placeholder, malformed rows (unless skip_bad_rows), too few rows.
    """
    examples, problems = _examples(cfg, cfg.source, cfg.config)
    test, eval_train = examples.get("test", []), []
    if held_out is not None and held_out.source:
        other, more = _examples(formatted(cfg, held_out), held_out.source, held_out.config, "eval.source",
                                "eval" if own_format(cfg, held_out) else "data",
                                ("train", "dev", "validation", held_out.split), held_out.task)
        (test, eval_train), problems = _scored_split(other, held_out), problems + more
        if not test:
            raise UserError(f"eval.source: {held_out.source}: no usable rows to score"
                            + (f" ({len(more)} malformed)" if more else ""))
        if unknown := [n for n in placeholders(held_out.description or "") if n not in test[0].fields]:
            raise UserError(f"eval.description: unknown placeholder {{{unknown[0]}}}; fields are: "
                            f"{', '.join(sorted(test[0].fields))}")
        if held_out.label_field and all(e.label is None for e in test):
            fields = sorted({k for e in test[:100] for k in e.fields})
            raise UserError(f"eval.label_field: no field {held_out.label_field!r} in {held_out.source}'s rows; "
                            f"fields are: {', '.join(fields)}")
    sources = [(cfg, examples)]
    for i, (entry, name) in enumerate(zip(cfg.mix, source_names(cfg)[1:])):
        mix_cfg = mixed(cfg, entry)
        more_examples, more = _examples(mix_cfg, entry.source, entry.config, f"data.mix.{i}")
        prefix = name + MIX_SEP
        for e in (e for rows in more_examples.values() for e in rows):
            e.id = prefix + e.id
        sources.append((mix_cfg, more_examples))
        problems += more
    if problems and not cfg.skip_bad_rows:
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        rows = f"{len(problems)} malformed row{'s' * (len(problems) != 1)}"
        raise UserError(f"data.source: {rows} (set data.skip_bad_rows: true to skip them)\n"
                        + "\n".join(f"  {p}" for p in problems[:5]) + more)
    if problems:
        log.warning("skipped %d malformed row%s (first: %s)", len(problems), "s" * (len(problems) != 1), problems[0])
    firsts = [(c, ex["train"][:c.limit] if c.limit else ex["train"]) for c, ex in sources]
    kept, dropped = _dedup([e for _, rows in firsts for e in rows], cfg)  # a mixed row repeating an earlier one goes
    kept_ids, train, val = {e.id for e in kept}, [], []
    for i, ((source_cfg, rows), (_, ex)) in enumerate(zip(firsts, sources)):
        more_train, more_val = _split([e for e in rows if e.id in kept_ids], ex.get("validation"), source_cfg,
                                      f"data.mix.{i - 1}" if i else "data.source")
        train, val = train + more_train, val + more_val
    return Splits(train, val, test, problems, dropped, eval_train)


def _scored_split(splits: dict[str, list[Example]], held_out: EvalConfig) -> tuple[list[Example], list[Example]]:
    """eval.source's rows scored and its few-shot pool: its `eval.split` (all its rows when it has no test split)
    and its train rows, else its `dev` rows (MMLU's few-shot split), else its validation rows, as lm-eval picks a
    task's shots — never the rows scored.

    Raises:
        UserError: eval.split validation, and the source has no validation rows (its rows are not silently scored
            instead).
    """
    if held_out.split == "validation" and not splits.get("validation"):
        raise UserError(f"split: validation: {held_out.source} has no validation split to score; score its test "
                        "split (split: test) or another source")
    if scored := splits.get(held_out.split):
        pool = splits.get("train") or splits.get("dev") or (splits.get("validation", []) if held_out.split == "test"
                                                            else [])
        return scored, pool
    return splits.get("train", []), []


def scored_rows(rows: list[Example], held_out: EvalConfig, seed: int) -> list[Example]:
    """The held-out rows the eval stage scores: the first `eval.limit`, or (`eval.limit_from: random`) as many drawn
    with `seed` (data.seed), in the source's order; all of them without a limit."""
    if not held_out.limit or held_out.limit >= len(rows):
        return rows
    if held_out.limit_from == "first":
        return rows[:held_out.limit]
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), held_out.limit))]


def source_names(cfg: DataConfig) -> list[str]:
    """The names of the training rows' sources: data.source's, then each data.mix entry's (its `name`, or its
    file's or dataset's), which prefixes its row ids."""
    return [short_name(cfg.source)] + [entry.name or short_name(entry.source) for entry in cfg.mix]


def source_weights(cfg: DataConfig) -> dict[str, float]:
    """Each source's name (as `source_names`): its weight, `data.weight` then each data.mix entry's."""
    return dict(zip(source_names(cfg), [cfg.weight] + [entry.weight for entry in cfg.mix]))


def source_of(row_id: str, cfg: DataConfig) -> str:
    """The name of the source a training or validation row came from: its data.mix entry's (whose ids are prefixed
    `name:`), else data.source's."""
    return row_id.split(MIX_SEP, 1)[0] if MIX_SEP in row_id else short_name(cfg.source)


def _examples(cfg: DataConfig, source: str, config: str | None, key: str = "data.source",
              section: str | None = None, only: tuple[str, ...] | None = None,
              task: str | None = None) -> tuple[dict[str, list[Example]], list[str]]:
    """Every split of `source` (or those in `only`) rendered by `cfg`'s templates, and "where: problem" of each row
    that could not be. `key`: the recipe key that named the source (eval.source reads a source only scored: it needs
    no train split, and its errors name that key); `section`: where its templates are set (None: the key's section,
    data for eval.source); `only`: the splits read (an unlabelled test split is left alone when another is
    scored); `task`: eval.task's (an eval.also entry's), whose fields are added to each row first."""
    try:
        raw, bad = read_source(source, config, cfg.synthetic_rows, cfg.synthetic_test_rows, cfg.seed,
                               need_train=key.startswith("data."))
    except UserError as err:
        raise UserError(str(err).replace("data.source:", f"{key}:", 1)) from None
    if task:
        raw, bad = _prepared(raw, task, bad)
    prompt_needs, target_needs = needed_fields(cfg)
    section = section or (key.removesuffix(".source") if key.startswith("data.") else "data")
    try:
        _check_placeholders(cfg, raw.get("train") or raw.get("test", []), prompt_needs + target_needs,
                            "" if key == "data.source" else f"{key} {source}: ", section)
    except UserError as err:
        if key == "eval.source" and section == "data":  # a benchmark whose fields are not the training data's
            raise UserError(f"{err} (a scored source with fields of its own takes eval.template and eval.target; "
                            "an eval.also entry, its template and target)") from None
        raise
    problems = [f"{b.where}: {b.problem}" for b in bad]
    examples = {}
    for split, rows in raw.items():
        if only is not None and split not in only:
            continue
        examples[split] = []
        for row in rows:
            example, problem = to_example(cfg, row)
            if problem:
                problems.append(f"{row.where}: {problem}")
            else:
                examples[split].append(example)
    return examples, problems


def _prepared(raw: dict[str, list[Row]], task: str, bad: list[BadRow]) -> tuple[dict[str, list[Row]], list[BadRow]]:
    """Each row with the fields `task` adds (lm-eval's process_docs); a row lacking one it reads is a bad row."""
    out, bad = {}, list(bad)
    for split, rows in raw.items():
        out[split] = []
        for row in rows:
            fields, problem = tasks.prepared(task, row.fields)
            if problem:
                bad.append(BadRow(row.where, problem))
            else:
                out[split].append(Row(row.id, row.where, fields))
    return out, bad


def needed_fields(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """The fields a row must fill (not optional): the prompt's (data.template and data.template_if_empty's
    placeholders) and the target's, in order of first use."""
    loose = optional(cfg)
    prompt = [n for t in [cfg.template, *cfg.template_if_empty.values()] for n in placeholders(t) if n not in loose]
    prompt = list(dict.fromkeys(prompt))
    return prompt, [n for n in placeholders(cfg.target) if n not in loose and n not in prompt]


def to_example(cfg: DataConfig, row: Row, need_target: bool = True) -> tuple[Example | None, str | None]:
    """One raw row rendered by `cfg`'s templates, or (None, the row's problem).

    Args:
        need_target: False for a prompt to answer (tunelab generate): the row needs only the prompt's fields, a
            conversation may end with its user turn, and the target is rendered when the row has its fields
            (else it is "").
    """
    loose = optional(cfg)
    prompt_needs, target_needs = needed_fields(cfg)
    fields, problem = conversation(row.fields, cfg.messages, open_end=not need_target) if cfg.messages \
        else (row.fields, None)
    problem = problem or _row_problem(fields, prompt_needs + (target_needs if need_target else []))
    if problem:
        return None, problem
    answered = need_target or not _row_problem(fields, target_needs)
    try:
        target = render(cfg.target, fields, loose) if answered else ""
        prompt = render(template := prompt_template(cfg, fields), fields, loose)
    except (IndexError, KeyError, TypeError) as err:  # {choices[4]} of a row with four options
        return None, f"a placeholder's item is not in the row ({type(err).__name__}: {err})"
    if need_target and not target.strip():
        return None, "empty target: data.target renders blank (its optional fields are all empty)"
    if cfg.system_prompt is not None:
        fields = with_system(fields, cfg.system_prompt)
    label = fields.get(cfg.label_field) if cfg.label_field else None
    asks = None if cfg.messages else "\n".join(v for v in (fields.get(n) for n in placeholders(template))
                                                if isinstance(v, str) and v.strip())
    return Example(row.id, prompt, target, fields, None if label is None else str(label), asks), None


REPLY_SEP = "."  # a held-out conversation's n-th reply asked on its own (eval.turns all): "test-3.1"


def conversation_id(question_id: str) -> str:
    """The held-out row a question is from: `<id>` of an earlier reply's `<id>.<n>` (`every_reply`), else the id."""
    head, sep, n = question_id.rpartition(REPLY_SEP)
    return head if sep and n.isdigit() else question_id


def every_reply(cfg: DataConfig, example: Example) -> list[Example]:
    """A held-out conversation (`cfg.messages`, one field) as one question per assistant reply, each asked after the
    turns before it (eval.turns: all): the row's id for its last reply, `<id>.<n>` for its n-th before. A reply
    that cannot stand as a row's last turn (no user turn before it) is left out; a row that is no such conversation
    is itself alone."""
    key = cfg.messages
    turns = plain_turns(example.fields.get(key)) if key and len(conversation_fields(key)) == 1 else None
    if not turns:
        return [example]
    ends = [j for j, t in enumerate(turns) if t["role"] == "assistant"]
    out = []
    for n, end in enumerate(ends, 1):
        last = end == len(turns) - 1
        asked, _ = to_example(cfg, Row(example.id if last else f"{example.id}{REPLY_SEP}{n}", example.id,
                                       {**example.fields, key: turns[:end + 1]}))
        out += [example if last else asked] if asked or last else []
    return out


def _dedup(rows: list[Example], cfg: DataConfig) -> tuple[list[Example], int]:
    """`data.dedup`: drop exact (or near) duplicates of earlier train rows before the split."""
    if cfg.dedup == "none":
        return rows, 0
    from tunelab.data.checks import duplicate_ids
    vectors = None
    if cfg.dedup == "near":
        from tunelab.analysis.embed import embed
        vectors = embed([question_text(e) for e in rows], "minilm")
    drop = duplicate_ids(rows, cfg.dedup, vectors, cfg.near_threshold)
    if drop:
        log.info("data.dedup=%s: dropped %d duplicate train rows", cfg.dedup, len(drop))
    return [e for e in rows if e.id not in drop], len(drop)


def _check_placeholders(cfg: DataConfig, rows, needed: list[str], where: str = "", section: str = "data") -> None:
    """The fields the templates, data.messages and data.label_field name are in the first rows. `where` starts
    each message: another source's name, when these are its rows (which may lack the label field: a benchmark
    scored without categories, a mixed source without them); `section`: where the templates are set (a data.mix
    entry's own)."""
    fields = sorted({k for r in rows[:100] for k in r.fields})
    for name in conversation_fields(cfg.messages) if cfg.messages and rows else []:
        if name not in fields:
            raise UserError(f"{where}{section}.messages: no field {name!r}; fields are: {', '.join(fields)}")
    fields = sorted(set(fields) | ({"user", "assistant"} if cfg.messages else set()))  # what a conversation adds
    unknown = [n for n in needed if n not in fields]
    if unknown and rows:
        hint = (f"; with {section}.messages, set {section}.template={{user}} {section}.target={{assistant}}"
                if cfg.messages else _format_hint(rows[0].fields) if section == "data" and not where else "")
        raise UserError(f"{where}{section}.template: unknown placeholder "
                        f"{', '.join('{' + u + '}' for u in unknown)}; fields are: {', '.join(fields)}{hint}")
    if cfg.label_field and rows and cfg.label_field not in fields and not where:
        raise UserError(f"data.label_field: no field {cfg.label_field!r}; fields are: {', '.join(fields)}")


def _format_hint(fields: dict) -> str:
    """What to set when a recipe's templates name fields its source's rows lack and the rows are in a format tunelab
    reads itself (`formats.read_format`): a built-in recipe given another data.source."""
    from tunelab.data.formats import read_format
    found = read_format(fields)
    return (f"; these are {found[0]} rows, whose format tunelab reads itself when data.template and data.target "
            "are unset (--set data.template=null --set data.target=null)" if found else "")


def _row_problem(fields: dict, needed: list[str]) -> str | None:
    for name in needed:
        if name not in fields:
            return f"missing field {name!r}"
        value = fields[name]
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"empty field {name!r}"
    return None


def _split(train: list[Example], val: list[Example] | None, cfg: DataConfig,
           key: str = "data.source") -> tuple[list, list]:
    """Seeded split of the (first `limit`) train rows; a source's own validation split is used as is. `key`: the
    recipe key that named the source."""
    if val:
        return train, val[:cfg.limit] if cfg.limit else val
    if len(train) < 2:
        raise UserError(f"{key}: {cfg.source}: {len(train)} usable train rows; "
                        f"need at least 2 (one to train on, one to validate)")
    order = list(range(len(train)))
    random.Random(cfg.seed).shuffle(order)
    n_val = min(max(1, round(len(train) * cfg.val_fraction)), len(train) - 1)
    val_idx = set(order[:n_val])
    return ([e for i, e in enumerate(train) if i not in val_idx],
            [e for i, e in enumerate(train) if i in val_idx])
