"""Row formats read from a dataset's fields: a recipe without data.template / data.target trains TRL's, Axolotl's
and ShareGPT's rows as those tools would write them."""

import pytest
import yaml

from tunelab.cli import main
from tunelab.config import load_recipe
from tunelab.data import load_splits
from tunelab.data.formats import ALPACA_INPUT, ALPACA_NO_INPUT, read_format
from tunelab.errors import UserError
from conftest import write_jsonl

TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]


@pytest.mark.parametrize("fields, kind", [
    ({"messages": TURNS, "text": "also here"}, "messages"),  # a conversation before a text field, as TRL reads it
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}, "conversations"),
    ({"prompt": "2+2=", "completion": "4"}, "prompt + completion"),
    ({"prompt": TURNS[:1], "completion": TURNS[1:]}, "conversational prompt + completion"),
    ({"instruction": "Add", "input": "2, 3", "output": "5"}, "alpaca"),
    ({"instruction": "Name a colour", "output": "Red"}, "alpaca"),
    ({"question": "What is 2+2?", "answer": "#### 4"}, "question + answer"),
    ({"text": "Once upon a time."}, "text"),
    ({"prompt": "2+2=", "answer": "4"}, None),  # half of two formats is neither
    ({"messages": "not a list"}, None),
])
def test_each_format_is_read_from_the_fields_that_make_it(fields, kind):
    found = read_format(fields)
    assert (found[0] if found else None) == kind


def recipe_file(tmp_path, data: dict) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "model": {"name": "smollm2-135m-instruct"}, "data": data}))
    return str(path)


def test_alpaca_rows_are_written_with_axolotls_prompt_and_the_short_one_without_input(tmp_path):
    src = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"Add {i} and {i + 1}.", "input": "" if i % 2 else
                                                   f"{i}, {i + 1}", "output": str(2 * i + 1)} for i in range(20)])
    cfg = load_recipe(recipe_file(tmp_path, {"source": str(src)}))
    assert (cfg.data.template, cfg.data.target) == (ALPACA_INPUT, "{output}")
    splits = load_splits(cfg.data)
    by_row = {e.fields["instruction"]: e for e in splits.train + splits.val}
    assert by_row["Add 0 and 1."].prompt == ALPACA_INPUT.format(instruction="Add 0 and 1.", input="0, 1")
    assert by_row["Add 1 and 2."].prompt == ALPACA_NO_INPUT.format(instruction="Add 1 and 2.")
    assert by_row["Add 1 and 2."].target == "3"


def test_conversations_prompt_completion_and_text_rows_get_the_keys_trl_would_read(tmp_path):
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"conversations": [{"from": "human", "value": f"hi {i}"},
                                                                      {"from": "gpt", "value": f"hello {i}"}]}
                                                   for i in range(12)])
    cfg = load_recipe(recipe_file(tmp_path, {"source": str(chats)}))
    assert (cfg.data.messages, cfg.data.chat_template, cfg.data.template, cfg.data.target) == \
        ("conversations", True, "{user}", "{assistant}")
    assert load_splits(cfg.data).train[0].target.startswith("hello ")
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"2+{i}=", "completion": str(2 + i)} for i in range(12)])
    cfg = load_recipe(recipe_file(tmp_path, {"source": str(pc)}))
    assert (cfg.data.template, cfg.data.target, cfg.data.chat_template) == ("{prompt}", "{completion}", False)
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": f"Line {i}."} for i in range(12)])
    cfg = load_recipe(recipe_file(tmp_path, {"source": str(text)}), ["data.val_fraction=0.25"])
    example = load_splits(cfg.data).train[0]
    assert (example.prompt, example.target) == ("", example.fields["text"])  # every token trained


def test_a_mix_entry_gets_its_own_rows_format_and_a_recipe_that_sets_one_is_left_alone(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"Say {i}.", "output": str(i)} for i in range(12)])
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"{i}+1?", "answer": f"#### {i + 1}"} for i in range(12)])
    cfg = load_recipe(recipe_file(tmp_path, {"source": str(qa), "mix": [{"source": str(alpaca)}]}))
    assert cfg.data.template == "Instruction: {question}\nResponse: " and cfg.data.mix[0].target == "{output}"
    targets = {e.target for e in load_splits(cfg.data).train}  # both sources' rows, each in its format
    assert any(t.startswith("#### ") for t in targets) and any(t.isdigit() for t in targets)
    mine = load_recipe(recipe_file(tmp_path, {"source": str(alpaca), "template": "Q: {instruction}\nA: ",
                                              "target": "{output}"}))
    assert (mine.data.template, mine.data.template_if_empty) == ("Q: {instruction}\nA: ", {})


def test_rows_in_no_known_format_or_half_a_format_are_refused_naming_what_to_set(tmp_path, capsys):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": "a", "bar": "b"}] * 4)
    with pytest.raises(UserError, match=r"data.source: .*odd.jsonl: data.template and data.target are unset, and its "
                                        r"rows \(fields: bar, foo\) are in no format tunelab reads by itself"):
        load_recipe(recipe_file(tmp_path, {"source": str(odd)}))
    with pytest.raises(UserError, match=r"data.target: required with data.template \(or leave both unset"):
        load_recipe(recipe_file(tmp_path, {"source": str(odd), "template": "{foo}"}))
    run = tmp_path / "run"
    assert main(["check", recipe_file(tmp_path, {"source": str(tmp_path / "none.jsonl")})]) == 2
    assert "data.source: " in capsys.readouterr().err and not run.exists()


def test_a_builtin_recipe_given_rows_of_a_known_format_says_how_to_read_it(tmp_path, capsys):
    src = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"Say {i}.", "output": str(i)} for i in range(12)])
    run = tmp_path / "run"
    assert main(["train", "quickstart", "--set", f"data.source={src}", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "data.template: unknown placeholder {question}, {answer}; fields are: instruction, output; these are " \
           "alpaca rows, whose format tunelab reads itself when data.template and data.target are unset " \
           "(--set data.template=null --set data.target=null)" in err and not run.exists()
    cfg = load_recipe("quickstart", [f"data.source={src}", "data.template=null", "data.target=null",
                                     "data.label_field=null"])
    assert cfg.data.target == "{output}"


def test_plain_text_rows_ask_nothing_so_they_are_measured_by_loss_without_replies(tmp_path):
    from tunelab.evaluate.stage import generates_replies, scoring_mode
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": f"The number {i} comes before {i + 1}."} for i in range(20)])
    cfg = load_recipe(recipe_file(tmp_path, {"source": str(text)}))
    splits = load_splits(cfg.data, cfg.eval)
    mode, why = scoring_mode(cfg, splits)
    assert mode is None and why.startswith("the validation rows' prompts are empty (data.template writes nothing")
    assert not generates_replies(cfg, splits)  # a reply to nothing would be the same for every row
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": f"Tell me about {i}.", "completion": f"The number {i} comes "
                                              f"before {i + 1}, and after {i - 1}, in order."} for i in range(20)])
    cfg = load_recipe(recipe_file(tmp_path, {"source": str(qa)}))
    assert generates_replies(cfg, load_splits(cfg.data, cfg.eval))  # prose with questions: replies are scored


def test_alpaca_rows_are_compared_by_their_fields_not_the_preamble_every_row_shares(tmp_path):
    """The data checks, clusters and few-shot quotes read what a row asks: with Axolotl's alpaca prompt (30 words
    every row shares), a test row is not a 13-gram overlap of every train row, and its text is its instruction and
    input."""
    from tunelab.data import question_text
    from tunelab.data.checks import ngram_pairs
    words = ["apple", "river", "stone", "cloud", "maple", "torch", "violin", "desert", "harbor", "pepper"]
    src = write_jsonl(tmp_path / "train.jsonl", [{"instruction": f"Name the {w}.", "input": f"{i} {w}",
                                                  "output": w} for i, w in enumerate(words * 2)])
    write_jsonl(tmp_path / "test.jsonl", [{"instruction": "Spell a word backwards.", "input": "", "output": "x"}])
    cfg = load_recipe(recipe_file(tmp_path, {"source": str(tmp_path)}))
    splits = load_splits(cfg.data, cfg.eval)
    assert src.exists() and question_text(splits.test[0]) == "Spell a word backwards."
    assert question_text(splits.train[0]) == "\n".join([splits.train[0].fields["instruction"],
                                                        splits.train[0].fields["input"]])
    assert ngram_pairs(splits.test, splits.train, 13) == []
    assert ALPACA_NO_INPUT.split("\n")[0] in splits.test[0].prompt  # the prompt itself still has the preamble


@pytest.mark.slow
def test_a_plain_text_run_reports_its_held_out_texts_by_loss_and_perplexity(tiny_model, tmp_path, capsys):
    """Plain-text rows (continued pretraining): the report, console and model card speak of texts, not replies,
    and give perplexity, exp of the token-weighted target loss, its ratio's interval the loss interval's ends."""
    import math
    import re
    from tunelab.rundir import HeldOutLossDir, RunDir
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": f"The number {i} is followed by {i + 1}, and {i + 2} "
                                                  "follows that."} for i in range(40)])
    args = ["run", recipe_file(tmp_path, {"source": str(text)}), "--set", f"model.name={tiny_model}", "--set",
            "train.epochs=1", "--set", "train.max_length=12", "--set", "analysis.k_max=3", "--run-dir",
            str(tmp_path / "run")]
    assert main(["check", *args[1:-2]]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "the held-out texts' target loss is measured instead" in said and "chrF" not in said  # none generated
    assert main(args) == 0
    run = RunDir(tmp_path / "run")
    s = HeldOutLossDir(run.path).read_eval_summary()
    assert s["texts"] is True and s["split"] == "validation"
    summary = run.read_summary()  # every text is longer than 12 tokens: trained in windows, none truncated
    assert summary["truncated_examples"] == 0 and summary["train_examples"] == 36 < summary["train_windows"]
    assert f"the train texts trained as {summary['train_windows']} windows of at most 12 tokens (data.chunk)" in \
        run.report_md.read_text()
    from tunelab.config import load_recipe as load
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize_with
    cfg = load(str(tmp_path / "run" / "config.yaml"))
    rows = {r["id"]: r for r in run.read_jsonl(run.eval_dir / "loss" / "losses.jsonl") if r["model"] == "tuned"}
    val = [e for e in load_splits(cfg.data).val]
    windows = tokenize_with(cfg, val, load_tokenizer(cfg.model))[0]
    assert len(windows) > len(val) == len(rows)  # one record per row, its windows' tokens summed
    assert {e.id: sum(w.supervised for w in windows if w.index == i) for i, e in enumerate(val)} == \
        {i: r["tokens"] for i, r in rows.items()}
    d, (base, tuned) = s["loss_difference"], s["loss_difference"]["means"]
    md = run.report_md.read_text()
    ratio = f"× {math.exp(d['delta']):.3f}, 95 % CI × {math.exp(d['ci95'][0]):.3f}..{math.exp(d['ci95'][1]):.3f}"
    assert f"| Held-out perplexity | {math.exp(base):.3g} → {math.exp(tuned):.3g} | {ratio}, exp of the target " \
           "loss |" in md
    section = md[md.index("## Held-out texts, by loss"):]
    section = section[:section.index("\n## ")]
    assert "repl" not in section and "answers are right" not in section  # nothing was asked or answered
    assert "| text made | row | text | base loss | tuned loss | Δ |" in section
    assert re.search(r"The fine-tune (made the texts in the held-out rows (less|more) likely|did not change)", md)
    assert "; loss on every token (plain text) |" in md and "Word cloud of the training texts" in md
    assert "| id | score | why | text |" in md and "rare texts:" in md  # the outliers, texts too
    definitions = md[md.index("## Definitions"):]
    assert "Held-out target loss = " in definitions and "Reply chrF" not in definitions  # no replies: not defined
    assert f"{summary['final_val_loss']:.4f} (perplexity {math.exp(summary['initial_val_loss']):.3g} → " \
           f"{math.exp(summary['final_val_loss']):.3g})" in md  # the validation curve's too
    out = " ".join(capsys.readouterr().out.split())
    assert f"held-out texts (validation rows, measured by loss): target loss {base:.3f} → {tuned:.3f}" in out
    assert f"perplexity {math.exp(base):.3g} → {math.exp(tuned):.3g} ({ratio})" in out
    card = (run.adapter / "README.md").read_text()
    assert "How likely each model finds the texts of the first" in card
    assert f"| tuned | {tuned:.4f} | {math.exp(tuned):.3g} |" in card


def test_plain_text_longer_than_max_length_is_trained_in_windows_and_a_prompted_row_is_cut(smollm2_dir):
    """data.chunk: a plain-text row (empty prompt) over train.max_length becomes consecutive windows covering
    every token; a row with a prompt is still truncated (a window would part its answer from its question)."""
    from tunelab.data import Example
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize
    from tunelab.config import ModelConfig
    tok = load_tokenizer(ModelConfig(name=str(smollm2_dir)))
    text = " ".join(f"word{i}" for i in range(60))
    rows = [Example("t-0", "", text, {}), Example("t-1", "Say: ", text, {})]
    whole = tokenize(rows[:1], tok, 10_000, True)[0][0].input_ids
    items, truncated = tokenize(rows, tok, 32, True, chunk=True)
    windows = [it for it in items if it.index == 0]
    assert len(windows) == -(-len(whole) // 32) > 1 and sum((w.input_ids for w in windows), []) == whole
    assert [len(it.input_ids) for it in items if it.index == 1] == [32] and truncated == 1  # the prompted row: cut
    assert tokenize(rows, tok, 32, True, chunk=False)[1] == 2  # data.chunk: false cuts both


def test_a_rows_windows_merge_into_one_record_of_their_token_weighted_loss():
    from tunelab.rundir import merge_rows
    rows = [{"id": "a", "split": "train", "epoch": 1, "loss": 2.0, "tokens": 30},
            {"id": "b", "split": "train", "epoch": 1, "loss": 1.0, "tokens": 10},
            {"id": "a", "split": "train", "epoch": 1, "loss": 1.0, "tokens": 10},  # a's second window
            {"id": "a", "split": "train", "epoch": 2, "loss": 0.5, "tokens": 40},  # another epoch: its own
            {"id": "a", "split": "val", "epoch": 1, "loss": 3.0, "tokens": 40}]  # another split: its own
    merged = merge_rows(rows)
    assert [(r["id"], r["split"], r["epoch"], r["loss"], r["tokens"]) for r in merged] == [
        ("a", "train", 1, 1.75, 40), ("b", "train", 1, 1.0, 10), ("a", "train", 2, 0.5, 40), ("a", "val", 1, 3.0, 40)]
    assert rows[0]["loss"] == 2.0  # the records read are left as they are
