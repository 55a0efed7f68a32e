"""Recipe schema: built-in recipes validate, every problem is reported at once with its key, --set is typed."""

import re
from pathlib import Path

import pytest
import yaml

from tunelab.config import apply_overrides, builtin_recipes, load_recipe, reference, validate
from tunelab.errors import UserError


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_builtin_recipe_validates_and_every_key_is_in_the_schema(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert builtin_recipes()[name], "every recipe carries a one-line description"


def test_flagship_recipe_matches_the_seed_report():
    r = load_recipe("gsm8k-mistral-7b")
    assert r.model.name == "mistralai/Mistral-7B-v0.1"
    assert (r.data.source, r.data.config, r.data.val_fraction, r.train.epochs) == ("openai/gsm8k", "main", 0.1, 3)
    assert r.data.template == "Instruction: {question}\nResponse: "
    assert load_recipe("gsm8k-mistral-7b", ["model.load_in_4bit=true"]).model.load_in_4bit is True


def test_all_problems_are_reported_together_with_their_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "x", "colour": "blue"},
        "data": {"source": "synthetic:arith", "template": "{question}", "target": "{answer}", "val_fraction": 1.5},
        "train": {"epochs": -1, "lr": "fast"},
    }))
    with pytest.raises(UserError) as err:
        load_recipe(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: 4 problems")
    for key in ("model.colour: unknown key", "data.val_fraction", "train.epochs", "train.lr"):
        assert key in text
    assert "(got -1)" in text


def test_a_config_without_a_source_is_refused_and_a_sources_validation_split_may_be_scored():
    assert load_recipe("quickstart", ["eval.source=../bench", "eval.split=validation"]).eval.split == "validation"
    with pytest.raises(UserError, match="eval.config: names a config of eval.source, which is not set"):
        load_recipe("quickstart", ["eval.config=main"])
    assert load_recipe("quickstart", ["eval.source=openai/gsm8k", "eval.config=main"]).eval.config == "main"
    with pytest.raises(UserError, match="eval.fewshot_from: eval_source takes the shots from eval.source's train"):
        load_recipe("quickstart", ["eval.fewshot_from=eval_source"])


def test_set_overrides_are_typed_and_turn_backslash_n_into_newlines():
    r = load_recipe("quickstart", ["train.epochs=1", "train.lr=1e-4", "data.limit=10", "train.completion_only=false",
                                   r"data.template=Q: {question}\nA: ", "train.report_to=[tensorboard]"])
    assert (r.train.epochs, r.train.lr, r.data.limit, r.train.completion_only) == (1, 1e-4, 10, False)
    assert r.data.template == "Q: {question}\nA: "
    assert r.train.report_to == ["tensorboard"]
    r = load_recipe("quickstart", [r"data.template_if_empty.question=Q:\nA: "])  # one entry of a mapping
    assert r.data.template_if_empty == {"question": "Q:\nA: "}


def test_set_on_a_key_not_in_the_schema_is_named():
    raw = {}
    problems = apply_overrides(raw, ["train.epoch=3", "nonsense", "lora.r.x=1", "data.template_if_empty.a.b=1"])
    assert problems == ["--set train.epoch: no such key in the recipe schema (did you mean train.epochs?)",
                        "--set nonsense: expected dotted.key=value",
                        "--set lora.r.x: no such key in the recipe schema",
                        "--set data.template_if_empty.a.b: no such key in the recipe schema"]
    assert raw == {}


def test_a_misspelt_key_is_named_with_the_key_of_its_section_spelt_closest(tmp_path):
    assert apply_overrides({}, ["tarin.lr=1", "eval.few_shot=5", "lora.rank=8"]) == [
        "--set tarin.lr: no such key in the recipe schema (did you mean train.lr?)",
        "--set eval.few_shot: no such key in the recipe schema (did you mean eval.fewshot?)",
        "--set lora.rank: no such key in the recipe schema"]  # r is too far from rank to guess
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "model": {"name": "x"}, "train": {"shceduler": "linear"},
                                    "data": {"source": "synthetic:arith", "template": "{question}",
                                             "target": "{answer}", "mix": [{"source": "a.jsonl", "limt": 3}]}}))
    with pytest.raises(UserError) as err:
        load_recipe(str(path))
    assert str(err.value).splitlines()[1:] == ["  data.mix.0.limt: unknown key (did you mean data.mix.0.limit?)",
                                               "  train.shceduler: unknown key (did you mean train.scheduler?)"]


def test_missing_sections_and_unknown_recipe_names():
    with pytest.raises(UserError, match="model: required"):
        validate({"data": {"source": "s", "template": "t", "target": "u"}}, "r.yaml")
    with pytest.raises(UserError, match="no such recipe; built-in recipes are: .*quickstart"):
        load_recipe("no-such-recipe")


def test_reference_lists_every_key_with_its_description():
    ref = reference()
    assert "| `lora.r` | `16` | rank: higher = more capacity and memory |" in ref
    assert "`train.completion_only`" in ref and "`data.skip_bad_rows`" in ref


def test_readme_recipe_reference_is_in_sync():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert reference() in readme, "regenerate the README's recipe reference: tunelab recipes --reference"


def test_readme_run_directory_table_is_rundirs_layout():
    from tunelab.rundir import LAYOUT, RunDir, layout_table
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert layout_table() in readme
    run = RunDir("r")
    for rel, (attr, _) in LAYOUT.items():  # every declared file is reachable by its attribute (or method)
        if attr:
            assert getattr(run, attr) == Path("r", rel.rstrip("/").replace("/step-N", ""))
    assert run.epoch_adapter(2) == Path("r/adapters/epoch-2") and run.journal(1) == Path("r/eval/journal-1.jsonl")


def test_readme_file_map_matches_the_tree():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    listed = set(re.findall(r"^\| `((?:tunelab|benchmarks)/[^`*]+\.py)` \|", readme, re.M))
    on_disk = {p.relative_to(root).as_posix() for p in [*root.glob("tunelab/**/*.py"), *root.glob("benchmarks/*.py")]}
    thin = {p for p in on_disk if p.endswith("__init__.py")  # re-exports only: no code of their own to map
            and "\ndef " not in (root / p).read_text()}
    assert listed == on_disk - thin


@pytest.mark.parametrize("change, problem", [
    ({"template": "Q: {question"},
     "data.template: expected '}' before end of string (write {{ and }} for a literal brace)"),
    ({"target": "{} {answer}"}, "data.target: placeholder {} is not a field name"),
    ({"optional_fields": ["inptu"]}, "data.optional_fields: 'inptu' is not a placeholder of data.template or "
                                     "data.target (placeholders: answer, question)"),
    ({"template_if_empty": {"answer": "Q: {question}"}},
     "data.template_if_empty: 'answer' is not a placeholder of data.template (placeholders: question)"),
    ({"template_if_empty": {"question": "Q: {"}},
     "data.template_if_empty.question: Single '{' encountered in format string (write {{ and }} for a literal "
     "brace)"),
])
def test_templates_and_optional_fields_are_checked_before_any_data_is_read(change, problem):
    raw = {"model": {"name": "x"}, "data": {"source": "no/such/dir", "template": "Q: {question}",
                                            "target": "{answer}", **change}}
    with pytest.raises(UserError) as err:
        validate(raw, "r.yaml")
    assert str(err.value) == f"r.yaml: 1 problem\n  {problem}"


@pytest.mark.parametrize("mix, problem", [
    ([{"source": "x/gsm8k"}], "data.mix.0.name: 'gsm8k' is also data.source's name; give one of them a name"),
    ([{"source": "a.jsonl"}, {"source": "b/a.csv"}], "data.mix.1.name: 'a' is also data.mix.0's name; give one of "
                                                     "them a name"),
    ([{"source": "a.jsonl", "name": "my:rows"}], "data.mix.0.name: 'my:rows' must be letters, digits, - _ or . "
                                                 "(it prefixes row ids)"),
    ([{"source": "a.jsonl", "template": "Q: {x", "target": "{y}"}],
     "data.mix.0.template: expected '}' before end of string (write {{ and }} for a literal brace)"),
    ([{"source": "a.jsonl", "template": "{instruction}", "optional_fields": ["input"]}],
     "data.mix.0.optional_fields: 'input' is not a placeholder of data.mix.0.template or data.mix.0.target "
     "(placeholders: answer, instruction)"),
    ([{"source": "chats.jsonl", "messages": "messages"}], "data.mix.0.messages: needs data.chat_template: true (a "
                                                          "conversation is written by the tokenizer's chat template)"),
    ([{"source": "a.jsonl", "limit": 0}], "data.mix.0.limit: must be greater than or equal to 1 (got 0)"),
    ([{"source": "a.jsonl", "probability": 2}], "data.mix.0.probability: unknown key"),
    ([{"source": "a.jsonl", "weight": 0}], "data.mix.0.weight: must be greater than 0 (got 0)"),
])
def test_each_mixed_source_is_checked_before_any_data_is_read(mix, problem):
    raw = {"model": {"name": "x"}, "data": {"source": "data/gsm8k", "template": "Q: {question}",
                                            "target": "{answer}", "mix": mix}}
    with pytest.raises(UserError) as err:
        validate(raw, "r.yaml")
    assert str(err.value) == f"r.yaml: 1 problem\n  {problem}"


def test_a_mixed_source_takes_datas_format_unless_it_sets_its_own():
    from tunelab.config import mixed
    data = load_recipe("quickstart", ["data.optional_fields=[question]", "data.config=main", "data.limit=50",
                                      "data.mix=[{source: a.jsonl, limit: 5}, "
                                      "{source: b.jsonl, template: '{instruction}', target: '{output}'}]"]).data
    same, own = mixed(data, data.mix[0]), mixed(data, data.mix[1])
    assert (same.source, same.limit, same.template, same.optional_fields, same.mix) == \
        ("a.jsonl", 5, data.template, ["question"], [])
    assert (own.template, own.target, own.optional_fields, own.limit, own.config) == \
        ("{instruction}", "{output}", [], None, None)  # data.limit and data.config are data.source's alone


def test_set_reaches_a_key_of_one_mix_entry_and_names_an_entry_the_recipe_lacks():
    mix = "data.mix=[{source: a.jsonl, limit: 5}, {source: b.jsonl}]"
    r = load_recipe("quickstart", [mix, "data.mix.1.limit=50", "data.mix.0.name=first", "data.mix.1.weight=0.25"])
    assert [(m.source, m.name, m.limit, m.weight) for m in r.data.mix] == [("a.jsonl", "first", 5, 1),
                                                                           ("b.jsonl", None, 50, 0.25)]
    with pytest.raises(UserError) as err:
        load_recipe("quickstart", [mix, "data.mix.2.limit=50", "data.mix.0.share=2", "data.mix.first.limit=1"])
    assert str(err.value).splitlines()[1:] == [
        "  --set data.mix.2.limit: the recipe has no data.mix.2 (its mix has 2 entries)",
        "  --set data.mix.0.share: no such key in the recipe schema",
        "  --set data.mix.first.limit: no such key in the recipe schema"]
    from tunelab.sweep import parse_vary, plan  # a sweep over how much of a source to mix
    assert [(name, combo) for name, combo in plan(parse_vary(["data.mix.0.limit=100,300"]))] == \
        [("limit=100", ["data.mix.0.limit=100"]), ("limit=300", ["data.mix.0.limit=300"])]
    assert [name for name, _ in plan(parse_vary(["data.mix.0.weight=0.25,1"]))] == ["weight=0.25", "weight=1"]


@pytest.mark.parametrize("sets, problem", [
    (["eval.target={a}"], "eval.target: sets how eval.source's rows are written, and eval.source is not set "
                          "(data.source's test rows are written with data.target)"),
    (["eval.source=b.jsonl", "eval.template=Q: {q"],
     "eval.template: expected '}' before end of string (write {{ and }} for a literal brace)"),
    (["eval.source=b.jsonl", "eval.template=Q: {q}", "eval.optional_fields=[input]"],
     "eval.optional_fields: 'input' is not a placeholder of eval.template or eval.target (placeholders: answer, q)"),
    (["eval.source=b.jsonl", "eval.template=Q: {q}", "eval.fewshot=5"],
     "eval.fewshot_from: data takes the shots from the training rows, written in data's format, not eval's; set "
     "eval.fewshot_from: eval_source (eval.source's train rows) or eval.fewshot: 0"),
    (["eval.also=[{source: chats.jsonl, messages: turns}]"],
     "eval.also.0.messages: needs data.chat_template: true (a conversation is written by the tokenizer's chat "
     "template)"),
    (["eval.also=[{source: b.jsonl, target: '{a'}]"],
     "eval.also.0.target: expected '}' before end of string (write {{ and }} for a literal brace)"),
])
def test_a_test_sets_own_templates_are_checked_before_any_data_is_read(sets, problem):
    with pytest.raises(UserError) as err:
        load_recipe("quickstart", sets)
    assert str(err.value) == f"quickstart: 1 problem\n  {problem}"


def test_an_extra_test_set_is_written_in_its_own_format_else_its_mixed_sources_else_datas():
    from tunelab.config import also_recipe
    cfg = load_recipe("quickstart", [
        "data.optional_fields=[question]", "eval.fewshot=3",
        "data.mix=[{source: alpaca.jsonl, template: 'Do: {instruction}\\n', target: '{output}'}, {source: c.jsonl}]",
        "eval.also=[{source: alpaca.jsonl}, {source: b.jsonl, template: 'Q: {q}\\nA: ', target: '{a}', fewshot: 0},"
        " {source: c.jsonl}, {source: alpaca.jsonl, name: as-data, template: null}]"])
    assert cfg.data.mix[0].template == "Do: {instruction}\n" and cfg.eval.also[1].template == "Q: {q}\nA: "
    trained, own, plain, unset = (also_recipe(cfg, entry).eval for entry in cfg.eval.also)
    assert (trained.template, trained.target, trained.optional_fields) == ("Do: {instruction}\n", "{output}", None)
    assert (trained.fewshot, trained.fewshot_from) == (3, "eval_source")  # training rows are in another format
    assert (own.template, own.target, own.fewshot, own.fewshot_from) == ("Q: {q}\nA: ", "{a}", 0, "eval_source")
    assert (plain.template, plain.fewshot, plain.fewshot_from) == (None, 3, "data")  # data's format: data's shots
    assert (unset.template, unset.fewshot_from) == (None, "data")  # an entry that sets a format key, if only to null


def test_extra_test_sets_need_names_that_make_distinct_folders():
    with pytest.raises(UserError) as err:
        load_recipe("quickstart", ["eval.also=[{source: a/bench.jsonl}, {source: b/bench.csv}, "
                                   "{source: c.jsonl, name: ../up}]"])
    assert str(err.value).splitlines()[1:] == [
        "  eval.also.1.name: 'bench' is also eval.also.0's name; give one of them a name",
        "  eval.also.2.name: '../up' must be letters, digits, - _ or . (it names a folder)"]
    from tunelab.config import also_recipe
    cfg = load_recipe("quickstart", ["eval.also=[{source: openai/gsm8k, config: main, limit: 50}]", "eval.limit=9"])
    extra = also_recipe(cfg, cfg.eval.also[0])  # scored the way eval.source is; the run's own eval unchanged
    assert (extra.eval.source, extra.eval.config, extra.eval.limit, extra.eval.also) == ("openai/gsm8k", "main", 50, [])
    assert (cfg.eval.source, cfg.eval.limit) == (None, 9)
