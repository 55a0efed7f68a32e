"""Data sources, template rendering, deterministic splits, malformed rows named by file and line."""

import json

import pytest

from tunelab.config import DataConfig
from tunelab.data import load_splits, placeholders
from tunelab.errors import UserError
from conftest import write_jsonl

TEMPLATE = {"template": "Instruction: {question}\nResponse: ", "target": "{answer}"}


def rows(n, start=0):
    return [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(start, start + n)]


def cfg(source, **kw):
    return DataConfig(source=str(source), **{**TEMPLATE, **kw})


def test_gsm8k_directory_gives_train_val_and_untouched_test(gsm8k):
    s = load_splits(cfg(gsm8k, limit=100))
    assert (len(s.train), len(s.val), len(s.test)) == (90, 10, 1319)
    assert s.train[0].prompt.startswith("Instruction: ") and s.train[0].prompt.endswith("\nResponse: ")
    assert "####" in s.train[0].target
    train_q = {e.fields["question"] for e in s.train + s.val}
    assert not train_q & {e.fields["question"] for e in s.test}


def test_split_is_seeded_and_deterministic(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", rows(50))
    a, b = load_splits(cfg(src)), load_splits(cfg(src))
    assert [e.id for e in a.val] == [e.id for e in b.val] and len(a.val) == 5
    c = load_splits(cfg(src, seed=1))
    assert [e.id for e in a.val] != [e.id for e in c.val]
    assert not {e.id for e in a.train} & {e.id for e in a.val}


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
def test_single_files_of_each_kind(tmp_path, kind):
    import pandas as pd
    data = rows(20)
    path = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        write_jsonl(path, data)
    elif kind == "json":
        path.write_text(json.dumps(data))
    elif kind == "csv":
        pd.DataFrame(data).to_csv(path, index=False)
    else:
        pd.DataFrame(data).to_parquet(path)
    s = load_splits(cfg(path))
    assert len(s.train) + len(s.val) == 20 and s.test == []
    assert {e.target for e in s.train + s.val} == {r["answer"] for r in data}


def test_a_hub_dataset_that_cannot_load_names_the_id_and_a_local_folder_instead(monkeypatch):
    """Offline (or a gated set): the error names the id and its config, the hub client's reason, and that a folder
    of split files is a source too."""
    import datasets

    def unreachable(dataset_id, config):
        raise ConnectionError(f"Couldn't reach '{dataset_id}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(UserError) as err:
        load_splits(cfg("openai/gsm8k"))
    assert str(err.value).startswith("data.source: openai/gsm8k (config None): could not load: Couldn't reach "
                                     "'openai/gsm8k' on the Hub")
    assert "a folder holding train.jsonl and test.jsonl" in str(err.value)


def test_hub_loader_reads_a_local_datasets_folder(tmp_path):
    folder = tmp_path / "hubset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows(30))
    write_jsonl(folder / "test.jsonl", rows(5, 100))
    s = load_splits(cfg(f"hub:{folder}"))  # datasets.load_dataset(folder): the hub code path, offline
    assert (len(s.train) + len(s.val), len(s.test)) == (30, 5)
    import datasets
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows(12)),
                          "test": datasets.Dataset.from_list(rows(3))}).save_to_disk(str(saved))
    s = load_splits(cfg(saved))
    assert (len(s.train) + len(s.val), len(s.test)) == (12, 3)


def test_synthetic_source_carries_labels():
    s = load_splits(DataConfig(source="synthetic:arith", label_field="family", synthetic_rows=100,
                               synthetic_test_rows=10, **TEMPLATE))
    assert (len(s.train), len(s.val), len(s.test)) == (90, 10, 10)
    assert all(e.label for e in s.train)


def test_unknown_placeholder_lists_the_real_fields(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", rows(5))
    with pytest.raises(UserError, match=r"data.template: unknown placeholder \{qestion\}; fields are: answer, question"):
        load_splits(DataConfig(source=str(src), template="Q: {qestion}", target="{answer}"))
    assert placeholders("Q: {question} {{literal}} {answer}") == ["question", "answer"]


def test_malformed_rows_are_named_by_file_and_line_or_skipped_and_counted(tmp_path):
    good = [json.dumps(r) for r in rows(10)]
    src = write_jsonl(tmp_path / "d.jsonl", good[:3] + ['{"question": "x", "answer": '] + good[3:6]
                      + ['{"question": "only"}', '{"question": "  ", "answer": "1"}'] + good[6:])
    with pytest.raises(UserError) as err:
        load_splits(cfg(src))
    text = str(err.value)
    assert "3 malformed rows" in text
    assert f"{src}:4: bad JSON" in text
    assert f"{src}:8: missing field 'answer'" in text
    assert f"{src}:9: empty field 'question'" in text
    s = load_splits(cfg(src, skip_bad_rows=True))
    assert len(s.train) + len(s.val) == 10 and len(s.skipped) == 3


def test_empty_and_missing_sources(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(UserError, match="0 usable train rows"):
        load_splits(cfg(empty))
    with pytest.raises(UserError, match="no such file or directory"):
        load_splits(cfg(tmp_path / "nope.jsonl"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(UserError, match="no train file"):
        load_splits(cfg(tmp_path / "dir"))


def test_eval_source_replaces_the_test_rows_and_names_itself_in_errors(tmp_path):
    from tunelab.config import EvalConfig
    data = write_jsonl(tmp_path / "train.jsonl", rows(20))
    bench = write_jsonl(tmp_path / "bench.jsonl", rows(7, start=100))  # one file: every row is scored
    s = load_splits(cfg(data), EvalConfig(source=str(bench)))
    assert len(s.train) + len(s.val) == 20
    assert [e.fields["question"] for e in s.test] == [r["question"] for r in rows(7, 100)]
    assert load_splits(cfg(data)).test == []  # without it, the single file has no test rows
    only_test = tmp_path / "only-test"
    only_test.mkdir()
    write_jsonl(only_test / "test.jsonl", rows(3, start=200))  # a benchmark folder with a test split alone
    scored = load_splits(cfg(data), EvalConfig(source=str(only_test))).test
    assert [e.fields["question"] for e in scored] == [r["question"] for r in rows(3, 200)]
    with pytest.raises(UserError, match="^eval.source: .*no-such.jsonl: no such file"):
        load_splits(cfg(data), EvalConfig(source=str(tmp_path / "no-such.jsonl")))
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(UserError, match=r"^eval.source .*other.jsonl: data.template: unknown placeholder"):
        load_splits(cfg(data), EvalConfig(source=str(other)))
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(UserError, match="eval.source: .*no train, test or validation file"):
        load_splits(cfg(data), EvalConfig(source=str(tmp_path / "empty-dir")))
    labelled = load_splits(cfg(data, label_field="question"), EvalConfig(source=str(bench)))
    assert labelled.test[0].label == "What is 100 + 1?"  # a label field the source has is read; one it lacks is none


def alpaca_rows():
    return [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hello.", "input": "", "output": "Hello!"},
            {"instruction": "Name a colour.", "output": "Red."},  # no input key at all
            {"instruction": "Count to two.", "input": None, "output": "1, 2"}] * 3


@pytest.mark.parametrize("template, with_input, without_input", [
    # a template without blank lines: the line of the empty field goes
    ("Instruction: {instruction}\nInput: {input}\nResponse: ",
     "Instruction: Add the numbers.\nInput: 2 and 3\nResponse: ", "Instruction: Say hello.\nResponse: "),
    # Stanford Alpaca's layout: the whole "### Input:" paragraph goes, header included
    ("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
     "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n",
     "### Instruction:\nSay hello.\n\n### Response:\n"),
    # the empty field's paragraph is the last one: the separator before it goes
    ("{instruction}\n{input}", "Add the numbers.\n2 and 3", "Say hello."),
    # the field shares its line with a required one: the line stays, the field renders as nothing
    ("{instruction} {input}\nAnswer:", "Add the numbers. 2 and 3\nAnswer:", "Say hello. \nAnswer:"),
])
def test_optional_fields_render_as_nothing_and_their_empty_paragraph_goes(tmp_path, template, with_input,
                                                                          without_input):
    src = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows())
    with pytest.raises(UserError, match=r"alpaca.jsonl:2: empty field 'input'"):
        load_splits(DataConfig(source=str(src), template=template, target="{output}"))
    s = load_splits(DataConfig(source=str(src), template=template, target="{output}", optional_fields=["input"]))
    prompts = {e.fields["instruction"]: e.prompt for e in s.train + s.val}
    assert prompts["Add the numbers."] == with_input
    assert prompts["Say hello."] == without_input
    assert prompts["Name a colour."] == without_input.replace("Say hello.", "Name a colour.")  # missing = empty
    assert prompts["Count to two."] == without_input.replace("Say hello.", "Count to two.")  # null = empty


ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
          "### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def test_rows_without_the_field_get_the_other_prompt_as_alpaca_writes_them(tmp_path):
    """Stanford Alpaca's two preambles: rows with an input say so, rows without it get the shorter one."""
    src = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows() + [{"instruction": "Spaces.", "input": "  ",
                                                                   "output": "ok"}])
    cfg = DataConfig(source=str(src), template=ALPACA, target="{output}", template_if_empty={"input": ALPACA_NO_INPUT})
    s = load_splits(cfg)
    prompts = {e.fields["instruction"]: e.prompt for e in s.train + s.val}
    assert prompts["Add the numbers."] == ALPACA.format(instruction="Add the numbers.", input="2 and 3")
    for blank in ("Say hello.", "Name a colour.", "Count to two.", "Spaces."):  # empty, missing, null, blank
        assert prompts[blank] == ALPACA_NO_INPUT.format(instruction=blank)
    with pytest.raises(UserError, match=r"unknown placeholder \{context\}"):  # its fields are checked like the main's
        load_splits(cfg.model_copy(update={"template_if_empty": {"input": "{context}: {instruction}"}}))
    from tunelab.report.stage import _prompt_format
    assert _prompt_format(cfg).endswith(f"; rows with no {{input}}: {ALPACA_NO_INPUT!r}")  # the report's Overview


def test_a_row_whose_target_renders_blank_is_malformed_and_required_fields_stay_required(tmp_path):
    rows = [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
            {"instruction": "", "input": "x", "output": "1"},
            {"instruction": "Think.", "input": "", "output": ""}] * 2
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(UserError) as err:
        load_splits(DataConfig(source=str(src), template="{instruction}\n{input}", target="{output}\n{input}",
                               optional_fields=["input", "output"]))
    assert f"{src}:2: empty field 'instruction'" in str(err.value)
    assert f"{src}:3: empty target: data.target renders blank" in str(err.value)


def test_plain_text_rows_trained_whole_are_told_apart_by_their_text(tmp_path):
    """TRL's language-modelling rows ({"text": ...}) with an empty template: analysis, dedup and the data checks
    read the text itself, not the blank prompt (which made every row a duplicate of every other)."""
    from tunelab.data import question_text
    from tunelab.data.checks import duplicate_ids
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": f"Story {i}: the fox ran {i} miles."} for i in range(6)]
                      + [{"text": "Story 0: the fox ran 0 miles."}])
    s = load_splits(DataConfig(source=str(src), template="", target="{text}", val_fraction=0.2))
    rows = s.train + s.val
    assert {question_text(e) for e in rows} == {f"Story {i}: the fox ran {i} miles." for i in range(6)}
    dropped = duplicate_ids(rows, "exact")  # the one real copy, not six rows of one blank prompt
    assert len(dropped) == 1
    assert {question_text(e) for e in rows if e.id in dropped} == {"Story 0: the fox ran 0 miles."}


@pytest.mark.parametrize("name, content, message", [
    ("cp1252.csv", b"question,answer\n\"Q1\",\"#### 1\"\n\"caf\xe9?\",\"#### 2\"\n",
     r"cp1252.csv:3: not UTF-8 text \(byte 0xe9 at column 5\); save the file as UTF-8"),
    ("cp1252.jsonl", b'{"question": "Q1", "answer": "#### 1"}\n{"question": "caf\xe9", "answer": "#### 2"}\n',
     r"cp1252.jsonl:2: not UTF-8 text \(byte 0xe9 at column 18\)"),
    ("broken.parquet", b"PAR1 not really", r"data.source: .*broken.parquet: not a readable Parquet file \("),
])
def test_files_that_are_not_utf8_text_or_not_parquet_stop_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_splits(cfg(tmp_path / name))


def test_mixed_sources_are_split_apart_rendered_their_own_way_and_named_in_ids(tmp_path):
    from tunelab.data import source_of
    main_rows = write_jsonl(tmp_path / "main.jsonl", rows(50))
    other = tmp_path / "alpaca"
    other.mkdir()
    write_jsonl(other / "train.jsonl", [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(30)])
    write_jsonl(other / "test.jsonl", [{"instruction": "Never scored.", "output": "0"}])
    more = write_jsonl(tmp_path / "more.jsonl", rows(40, start=500))
    mix = [{"source": str(other), "template": "Do: {instruction}\n", "target": "{output}"},
           {"source": str(more), "name": "extra", "limit": 20}]
    alone, s = load_splits(cfg(main_rows)), load_splits(cfg(main_rows, mix=mix))
    assert [e.id for e in s.train if ":" not in e.id] == [e.id for e in alone.train]  # data.source's split unchanged
    assert [e.id for e in s.val if ":" not in e.id] == [e.id for e in alone.val]
    by_source = {name: ([e for e in s.train if source_of(e.id, s_cfg) == name],
                        [e for e in s.val if source_of(e.id, s_cfg) == name])
                 for s_cfg in [cfg(main_rows, mix=mix)] for name in ("main", "alpaca", "extra")}
    assert [(len(t), len(v)) for t, v in by_source.values()] == [(45, 5), (27, 3), (18, 2)]  # each: val_fraction
    alpaca = by_source["alpaca"][0][0]
    assert alpaca.id.startswith("alpaca:train-") and alpaca.prompt.startswith("Do: Say ") and alpaca.target.isdigit()
    extra = by_source["extra"][0][0]  # no template of its own: data's, and only its first `limit` rows
    assert extra.prompt.startswith("Instruction: What is 5") and max(int(e.fields["question"].split()[2])
                                                                     for e in by_source["extra"][0]) < 520
    assert s.test == [] and all(":" not in e.id for e in s.test)  # only data.source's test rows are scored


def test_a_mixed_row_repeating_an_earlier_one_is_deduplicated_and_mix_errors_name_their_entry(tmp_path):
    main_rows = write_jsonl(tmp_path / "main.jsonl", rows(20))
    copy = write_jsonl(tmp_path / "copy.jsonl", rows(10, start=15))  # rows 15..19 repeat data.source's
    s = load_splits(cfg(main_rows, dedup="exact", mix=[{"source": str(copy)}]))
    assert s.deduplicated == 5 and len([e for e in s.train + s.val if e.id.startswith("copy:")]) == 5
    assert len([e for e in s.train + s.val if ":" not in e.id]) == 20  # the earlier source keeps its rows
    with pytest.raises(UserError, match="^data.mix.0: .*nope.jsonl: no such file"):
        load_splits(cfg(main_rows, mix=[{"source": str(tmp_path / "nope.jsonl")}]))
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "q", "completion": "a"}] * 5)
    with pytest.raises(UserError, match=r"^data.mix.0 .*odd.jsonl: data.mix.0.template: unknown placeholder "
                                        r"\{question\}, \{answer\}; fields are: completion, prompt"):
        load_splits(cfg(main_rows, mix=[{"source": str(odd)}]))
    one = write_jsonl(tmp_path / "one.jsonl", rows(1))
    with pytest.raises(UserError, match="^data.mix.0: .*one.jsonl: 1 usable train rows"):
        load_splits(cfg(main_rows, mix=[{"source": str(one), "name": "one"}]))
    broken = write_jsonl(tmp_path / "broken.jsonl", rows(5) + ["{not json"])
    with pytest.raises(UserError, match="broken.jsonl:6: bad JSON"):
        load_splits(cfg(main_rows, mix=[{"source": str(broken)}]))


def test_eval_limit_takes_the_first_rows_or_a_seeded_draw_in_the_sources_order(tiny_recipe):
    """eval.limit_from: random draws the scored rows with data.seed (a set stored by subject is not its first
    subjects only); the eval stage, the familiarity check before training and an eval.also set take the same rows."""
    from tunelab.config import also_recipe, validate
    from tunelab.data import scored_rows
    from tunelab.evaluate.stage import _limited
    from tunelab.train.loop import familiarity_rows
    raw = {**tiny_recipe, "data": {**tiny_recipe["data"], "synthetic_test_rows": 40},
           "eval": {"limit": 6, "limit_from": "random"}}
    drawn = validate(raw, "tiny")
    splits = load_splits(drawn.data, drawn.eval)
    ids = [e.id for e in _limited(drawn, splits)[1]]
    order = [e.id for e in splits.test]
    assert len(ids) == 6 and ids != order[:6] and ids == sorted(ids, key=order.index)  # drawn, in the source's order
    assert [e.id for e in familiarity_rows(drawn, splits)] == ids
    assert ids == [e.id for e in _limited(validate(raw, "tiny"), splits)[1]]  # the same seed, the same rows
    reseeded = validate({**raw, "data": {**raw["data"], "seed": 1}}, "tiny")
    assert [e.id for e in scored_rows(splits.test, reseeded.eval, reseeded.data.seed)] != ids
    first = validate({**raw, "eval": {"limit": 6}}, "tiny")
    assert [e.id for e in _limited(first, splits)[1]] == order[:6]
    assert scored_rows(splits.test[:4], drawn.eval, 0) == splits.test[:4]  # a limit above the rows: all of them
    entry = validate({**raw, "eval": {"limit": 6, "limit_from": "random", "also": [{"source": "synthetic:arith"}]}},
                     "tiny")
    assert also_recipe(entry, entry.eval.also[0]).eval.limit_from == "random"


def test_a_scored_source_whose_test_split_is_unlabelled_is_scored_on_its_validation_split(tiny_recipe, tmp_path):
    """HellaSwag's and PIQA's test rows have no label: eval.split validation (an eval.also entry's split) scores the
    labelled validation rows and leaves the test rows unread, instead of failing on them as malformed."""
    from tunelab.config import also_recipe, validate
    from tunelab.evaluate.stage import _limited
    bench = tmp_path / "bench"
    bench.mkdir()
    write_jsonl(bench / "train.jsonl", [{"question": f"t{i}", "answer": str(i)} for i in range(3)])
    write_jsonl(bench / "validation.jsonl", [{"question": f"v{i}", "answer": str(i)} for i in range(4)])
    write_jsonl(bench / "test.jsonl", [{"question": f"x{i}", "answer": ""} for i in range(5)])
    raw = {**tiny_recipe, "eval": {"source": str(bench), "split": "validation"}}
    scored = validate(raw, "tiny")
    split, rows = _limited(scored, load_splits(scored.data, scored.eval))
    assert split == "validation" and [e.fields["question"] for e in rows] == ["v0", "v1", "v2", "v3"]
    assert [e.fields["question"] for e in load_splits(scored.data, scored.eval).eval_train] == ["t0", "t1", "t2"]
    tested = validate({**raw, "eval": {"source": str(bench)}}, "tiny")
    with pytest.raises(UserError, match="5 malformed rows"):  # the test split, unlabelled
        load_splits(tested.data, tested.eval)
    entry = validate({**tiny_recipe, "eval": {"also": [{"source": str(bench), "split": "validation"}]}}, "tiny")
    extra = also_recipe(entry, entry.eval.also[0])
    assert _limited(extra, load_splits(extra.data, extra.eval))[1][0].fields["question"] == "v0"


def test_a_benchmark_with_validation_and_dev_splits_keeps_both_and_takes_its_shots_from_dev(tiny_recipe, tmp_path):
    """MMLU has no train split, and both `validation` and `dev` (five rows a subject, lm-eval's few-shot split): dev
    no longer overwrites validation, the few-shot baseline takes its shots from dev, and a source without a
    validation split is refused for split: validation instead of having its other rows scored."""
    import datasets
    from tunelab.config import also_recipe, validate
    from tunelab.evaluate.stage import _limited, _shots_from, shot_pool
    mmlu = tmp_path / "mmlu"
    datasets.DatasetDict({split: datasets.Dataset.from_list([{"question": f"{split}{i}", "answer": str(i)}
                                                            for i in range(n)])
                          for split, n in (("test", 6), ("validation", 4), ("dev", 3))}).save_to_disk(str(mmlu))
    also = {"source": str(mmlu), "template": "{question}", "target": "{answer}", "fewshot": 2}
    for split, scored in (("test", "test0"), ("validation", "validation0")):
        raw = validate({**tiny_recipe, "eval": {"also": [{**also, "split": split}]}}, "tiny")
        extra = also_recipe(raw, raw.eval.also[0])
        splits = load_splits(extra.data, extra.eval)
        assert _limited(extra, splits)[1][0].fields["question"] == scored
        assert [e.fields["question"] for e in shot_pool(extra, splits)] == ["dev0", "dev1", "dev2"]
        pool = shot_pool(extra, splits)
        assert _shots_from(extra, [pool[:2]], pool) == f"the first 2 dev rows of {mmlu} (eval.source)"
    bench = tmp_path / "bench"  # a folder: dev.jsonl is its validation split when it has no validation.jsonl
    bench.mkdir()
    write_jsonl(bench / "dev.jsonl", [{"question": f"d{i}", "answer": str(i)} for i in range(2)])
    write_jsonl(bench / "test.jsonl", [{"question": f"x{i}", "answer": str(i)} for i in range(3)])
    raw = validate({**tiny_recipe, "eval": {"source": str(bench), "split": "validation"}}, "tiny")
    assert [e.fields["question"] for e in load_splits(raw.data, raw.eval).test] == ["d0", "d1"]
    (bench / "dev.jsonl").unlink()
    with pytest.raises(UserError, match=f"split: validation: {bench} has no validation split to score"):
        load_splits(raw.data, raw.eval)
