"""Data checks: contamination injected into data built from ../shared GSM8K (never committed), duplicates,
lengths, scoreable targets, file quirks of spreadsheets and Windows editors, and `tunelab check`."""

import json
import re

import pytest

from conftest import write_jsonl
from tunelab.cli import main
from tunelab.config import DataConfig, load_recipe
from tunelab.data import load_splits

TEMPLATE = "Instruction: {question}\nResponse: "


NAMES = ["Zelda", "Omar", "Priya", "Tomas", "Keiko", "Bruno"]
COMMON = {"The", "How", "If", "What", "She", "He", "They", "Each", "A", "In", "On", "At", "Then", "There", "It",
          "His", "Her", "After", "When", "Every", "One", "Two", "This", "That", "For", "Of", "And", "But"}


def changed_names_and_numbers(question: str) -> str:
    """The same problem with every number changed and each person's name replaced by another (consistently),
    the way a scraped or generated copy of a test question looks."""
    names: dict[str, str] = {}

    def rename(m):
        word = m.group()
        if word in COMMON:
            return word
        return names.setdefault(word, NAMES[len(names) % len(NAMES)])

    q = re.sub(r"\d+", lambda m: str(int(m.group()) + 3), question)
    return re.sub(r"\b[A-Z][a-z]{2,}\b", rename, q)


@pytest.fixture(scope="module")
def contaminated(gsm8k, tmp_path_factory):
    """300 GSM8K train rows + 5 verbatim test questions + 5 test questions with names and numbers changed +
    3 train rows duplicated; the test split is the first 100 GSM8K test rows."""
    root = tmp_path_factory.mktemp("contaminated")
    train = [json.loads(x) for x in (gsm8k / "train.jsonl").read_text().splitlines()[:300]]
    test = [json.loads(x) for x in (gsm8k / "test.jsonl").read_text().splitlines()[:100]]
    verbatim, changed = test[10:15], test[20:25]
    rows = train + verbatim + [{"question": changed_names_and_numbers(t["question"]), "answer": t["answer"]}
                               for t in changed] + train[40:43]
    write_jsonl(root / "train.jsonl", rows)
    write_jsonl(root / "test.jsonl", test)
    return root


def run_check(tmp_path, source, *extra):
    import os
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return main(["check", "gsm8k-smollm2-135m", "--set", f"data.source={source}", "--set", "data.val_fraction=0.05",
                     "--json", *extra])
    finally:
        os.chdir(cwd)


def test_each_kind_of_contamination_is_found_and_clean_rows_are_not(contaminated, tmp_path, capsys):
    before = set(tmp_path.iterdir())
    assert run_check(tmp_path, contaminated, "--device", "L4") == 0
    result = json.loads(capsys.readouterr().out)
    assert set(tmp_path.iterdir()) == before  # nothing written without --run-dir
    test = [o for o in result["overlap"] if o["split"] == "test"]
    by_id = {o["row_id"]: o for o in test}
    verbatim = {f"test-{i}" for i in range(11, 16)}  # jsonl ids are line numbers (1-based)
    changed = {f"test-{i}" for i in range(21, 26)}
    assert verbatim <= set(by_id) and all(by_id[i]["kind"] == "exact" for i in verbatim)
    assert changed <= set(by_id) and all(by_id[i]["kind"] in ("ngram", "near") for i in changed)
    assert set(by_id) - verbatim - changed == set(), "a clean test row was flagged"
    assert all(o["row_text"] and o["train_text"] for o in test)
    d = result["train_duplicates"]
    assert d["exact_rows"] >= 3 and result["verdict"].startswith("test overlap found: 5 exact")
    assert result["lengths"]["truncated"] == 0 and result["targets"]["test"]["share"] == 1.0
    assert result["estimate"]["flops"] > 0 and result["estimate"]["device"] == "L4"
    assert result["estimate"]["gpu_memory"]["fits"] and result["estimate"]["memory_gib"] == 24  # a 135M model


@pytest.mark.slow
def test_strict_exits_1_on_overlap_and_run_dir_gets_the_files(contaminated, tmp_path, capsys):
    assert run_check(tmp_path, contaminated, "--strict", "--run-dir", str(tmp_path / "r")) == 1
    capsys.readouterr()
    checks = json.loads((tmp_path / "r" / "analysis" / "data_checks.json").read_text())
    assert checks["overlap_counts"]["test"]["exact"] == 5
    assert (tmp_path / "r" / "analysis" / "lengths.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_clean_split_passes_strict_and_dedup_drops_duplicates(gsm8k, tmp_path, capsys):
    train = [json.loads(x) for x in (gsm8k / "train.jsonl").read_text().splitlines()[:200]]
    test = [json.loads(x) for x in (gsm8k / "test.jsonl").read_text().splitlines()[:60]]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", test)
    assert run_check(tmp_path, tmp_path, "--strict") == 0
    result = json.loads(capsys.readouterr().out)
    assert "no test row overlaps" in result["verdict"] and result["overlap_counts"]["test"] == \
        {"exact": 0, "ngram": 0, "near": 0}
    bench = tmp_path / "bench"  # an eval.also set holding two training questions, one with its numbers changed
    bench.mkdir()
    copied = dict(train[7], question=re.sub(r"\d", lambda m: str((int(m[0]) + 1) % 10), train[7]["question"]))
    assert copied["question"] != train[7]["question"]
    write_jsonl(bench / "test.jsonl", [train[3], copied, *test[:10]])
    assert run_check(tmp_path, tmp_path, "--strict", "--set", f"eval.also=[{{source: {bench}}}]") == 1
    result = json.loads(capsys.readouterr().out)
    extra = result["extra_sets"]["bench"]
    assert extra["rows"] == 12 and extra["overlap_counts"] == {"exact": 1, "ngram": 1, "near": 0}
    assert {o["row_id"] for o in extra["overlap"]} == {"test-1", "test-2"}
    assert result["overlap_counts"]["test"] == {"exact": 0, "ngram": 0, "near": 0}  # the run's own test rows: clean
    assert "eval.also bench overlap found: 1 exact, 1 ngram" in result["verdict"]
    rows = train[:50]
    write_jsonl(tmp_path / "one.jsonl", rows)  # one file: no test split, so no contamination verdict either way
    assert run_check(tmp_path, tmp_path / "one.jsonl") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verdict"].startswith("no test split to check for overlap") and result["rows"]["test"] == 0
    from tunelab.report.observations import contamination
    note = contamination(result, [])
    assert note.kind == "info" and "no test split" in note.text and "no test set to check" in note.text
    write_jsonl(tmp_path / "dup.jsonl", rows + rows[:4])
    cfg = DataConfig(source=str(tmp_path / "dup.jsonl"), template=TEMPLATE, target="{answer}", dedup="exact")
    splits = load_splits(cfg)
    assert splits.deduplicated == 4 and len(splits.train) + len(splits.val) == 50
    ids = [e.id for e in splits.train + splits.val]
    assert len(set(ids)) == 50 and not {f"train-{i}" for i in range(51, 55)} & set(ids)  # the later copies go


def test_with_eval_source_the_checks_compare_its_rows_and_the_report_flags_a_stale_check(gsm8k, tmp_path, capsys):
    """The questions scored are eval.source's, so they are the ones checked against the training rows; a check
    of another source says nothing about them, and the contamination rule says so instead of joining by id."""
    from tunelab.report.observations import contamination
    train = [json.loads(x) for x in (gsm8k / "train.jsonl").read_text().splitlines()[:60]]
    test = [json.loads(x) for x in (gsm8k / "test.jsonl").read_text().splitlines()[:30]]
    write_jsonl(tmp_path / "mine.jsonl", train)
    bench = write_jsonl(tmp_path / "bench.jsonl", test + train[5:7])  # a benchmark that leaked two training rows
    assert run_check(tmp_path, tmp_path / "mine.jsonl", "--set", f"eval.source={bench}", "--strict") == 1
    result = json.loads(capsys.readouterr().out)
    assert result["rows"]["test"] == 32 and result["overlap_counts"]["test"]["exact"] == 2
    assert result["test_source"] == str(bench)
    stale = contamination(result, [], checked=str(bench), scored="openai/gsm8k")
    assert stale.kind == "watch" and "but the answers were scored on openai/gsm8k's questions" in stale.text
    assert contamination(result, [], checked=str(bench), scored=str(bench)).text.startswith("2 test questions overlap")


BOM, CRLF = "\ufeff", "\r\n"
ROWS = [{"question": "Ann has 3, then 4 \"more\" apples.", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "Bo walks 2 km.", "answer": "#### 2"},
        {"question": "Cy reads 5 pages", "answer": "#### 5"}]


def quirky(kind: str) -> str:
    """ROWS as a spreadsheet or Windows editor writes them: BOM, CRLF, a blank line, no final newline."""
    if kind == "jsonl":
        lines = [json.dumps(r) for r in ROWS]
        return BOM + CRLF.join(lines[:2] + [""] + lines[2:])
    if kind == "json":
        return BOM + json.dumps(ROWS, indent=1).replace("\n", CRLF)
    out = ['question,answer']
    for r in ROWS:
        q, a = (v.replace('"', '""').replace("\n", CRLF) for v in (r["question"], r["answer"]))
        out.append(f'"{q}","{a}"')
    return BOM + CRLF.join(out[:2] + [""] + out[2:])


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
@pytest.mark.parametrize("layout", ["file", "dir"])
def test_files_from_spreadsheets_and_windows_editors_load_as_meant(kind, layout, tmp_path):
    if layout == "file":
        path = tmp_path / f"data.{kind}"
    else:
        path = tmp_path / "d" / f"train.{kind}"
        path.parent.mkdir()
    path.write_bytes(quirky(kind).encode("utf-8"))
    cfg = DataConfig(source=str(path if layout == "file" else path.parent), template=TEMPLATE, target="{answer}",
                     val_fraction=0.34)
    splits = load_splits(cfg)
    loaded = sorted((e.fields["question"], e.fields["answer"]) for e in splits.train + splits.val)
    assert loaded == sorted((r["question"], r["answer"]) for r in ROWS)


def test_show_prints_rows_as_trained_with_the_loss_bearing_tokens_marked(tiny_model, capsys):
    import json

    from tunelab.config import load_recipe
    from tunelab.data import load_splits
    args = ["check", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=24",
            "--set", "data.synthetic_test_rows=4", "--show", "2"]
    assert main([*args, "--json"]) == 0
    examples = json.loads(capsys.readouterr().out)["examples"]
    rows = load_splits(load_recipe("quickstart", [f"model.name={tiny_model}", "data.synthetic_rows=24",
                                                  "data.synthetic_test_rows=4"]).data).train[:2]
    assert [e["id"] for e in examples] == [r.id for r in rows]
    for ex, row in zip(examples, rows):
        assert "".join(s["text"] for s in ex["segments"] if not s["loss"]) == row.prompt
        assert "".join(s["text"] for s in ex["segments"] if s["loss"]) == row.target + "<|im_end|>"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"⟦{rows[0].target.splitlines()[0]}" in out and "<|im_end|>⟧" in out


def test_show_prints_each_test_set_as_the_eval_asks_it(tiny_model, tmp_path, capsys):
    """--show N also prints the first N scored questions of the run's test set and of each eval.also set, in each
    set's own format (eval.also's template), with the reference the answer is scored against, and the few-shot
    baseline's prompt for the first; a set that is not scored says why."""
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(5)])
    words = write_jsonl(tmp_path / "words.jsonl", [{"q": "Name a colour.", "a": "It could be red or blue or green, "
                                                    "depending on the light and the day and the mood."}] * 3)
    args = ["check", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=24",
            "--set", "data.synthetic_test_rows=4", "--show", "2", "--set", "eval.fewshot=1", "--set",
            "eval.chat_baseline=true", "--set",
            f"eval.also=[{{source: {bench}, template: 'Q: {{q}}\\nA:', target: ' {{a}}', fewshot: 0}}, "
            f"{{source: {words}, template: '{{q}}', target: '{{a}}'}}]"]
    assert main([*args, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["eval_examples"]
    assert list(shown) == ["eval", "bench", "words"]
    splits = load_splits(load_recipe("quickstart", [f"model.name={tiny_model}", "data.synthetic_rows=24",
                                                    "data.synthetic_test_rows=4"]).data)
    test = splits.test[:2]
    assert shown["eval"]["scoring"] == "numeric" and [(r["id"], r["prompt"]) for r in shown["eval"]["rows"]] == \
        [(q.id, q.prompt) for q in test]
    assert shown["eval"]["rows"][0]["reference"] == test[0].target.rsplit("#### ", 1)[1].strip()
    from tunelab.evaluate.fewshot import fewshot_prompt  # lm-eval's format, the first training row as the shot
    assert shown["eval"]["fewshot_prompt"] == fewshot_prompt(splits.train[:1], test[0])
    assert shown["eval"]["fewshot_prompt"].startswith("Question: ") and "fewshot_prompt" not in shown["bench"]
    assert shown["bench"]["scoring"] == "numeric" and shown["bench"]["source"] == str(bench)
    asked = shown["eval"]["chat_baseline_prompt"]  # SmolLM2's template writes its default system turn first
    assert asked.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM") and \
        asked.endswith(f"<|im_start|>user\n{test[0].prompt.strip()}<|im_end|>\n<|im_start|>assistant\n")
    assert shown["bench"]["chat_baseline_prompt"].endswith("<|im_start|>user\nQ: What is 0 plus 0?\nA:<|im_end|>\n"
                                                           "<|im_start|>assistant\n")
    assert [(r["prompt"], r["reference"]) for r in shown["bench"]["rows"]] == [("Q: What is 0 plus 0?\nA:", "0"),
                                                                               ("Q: What is 1 plus 1?\nA:", "2")]
    assert "rows" not in shown["words"] and "scor" in shown["words"]["skipped"] and shown["words"]["by_loss"]
    assert shown["words"]["overlap"]  # eval.overlap: its replies generated and scored too
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"bench: {shown['bench']['rows'][1]['id']}, as the eval asks it" in out
    assert "Q: What is 1 plus 1?\nA:\n→ numeric scoring against '2' (" in out
    assert "words (" in out and "test split): not scored (" in out
    assert "its target loss is measured instead, and its generated replies' chrF and ROUGE-L against the " \
           "references" in " ".join(out.split())
    assert f"eval: {test[0].id}, as the few-shot baseline asks the base model" in out
    assert f"bench: {shown['bench']['rows'][0]['id']}, as the chat baseline asks the base model" in out
    assert shown["eval"]["chat_fewshot_prompt"].endswith(f"<|im_start|>user\nQuestion: {test[0].fields['question']}\n"
                                                         "Answer:<|im_end|>\n<|im_start|>assistant\n")
    assert "chat_fewshot_prompt" not in shown["bench"]  # its fewshot: 0
    assert f"eval: {test[0].id}, as the few-shot chat baseline asks the base model" in out


@pytest.mark.slow
def test_check_counts_rows_whose_prompt_merges_into_the_answer_when_tokenized_together(capsys):
    """The quickstart template ends in a space: tokenized together with the answer, that space merges into the
    answer's first token (what TRL trains on); moved into the target, no row merges."""
    assert main(["check", "quickstart", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    boundary = found["boundary"]
    assert boundary["rows"] == boundary["of"] == found["rows"]["train"]
    assert boundary["example"]["prompt_end"] == " " and boundary["example"]["together"].startswith(" ")
    assert main(["check", "quickstart", "--set", "data.template=Instruction: {question}\\nResponse:",
                 "--set", "data.target= {answer}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["boundary"] == {"rows": 0, "of": found["rows"]["train"]}
    assert main(["check", "quickstart"]) == 0
    assert f"prompt/answer boundary: on {boundary['rows']} of {boundary['of']} training rows" in capsys.readouterr().out


@pytest.mark.slow
def test_tokens_the_rows_use_whose_embedding_rows_the_base_model_never_trained_are_named_with_the_fix(
        tiny_model, tiny_recipe, tmp_path, capsys, caplog):
    """A base model whose chat tokens' embedding rows are zeros (as Llama 3's base model ships them): the check
    reads the rows from the weight file, names the tokens the training rows use — input rows for every token,
    output rows only for the tokens with loss — and says lora.modules_to_save trains them, or that it does; the
    train stage warns before its first step."""
    import shutil

    import torch
    import yaml
    from safetensors.torch import load_file, save_file

    from tunelab.config import ModelConfig, validate
    from tunelab.data.checks import untrained_tokens
    from tunelab.models import embedding_norms, load_tokenizer
    from tunelab.train.batching import tokenize_with
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    tok = load_tokenizer(ModelConfig(name=str(base)))
    start, end, unused = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
    weights = load_file(base / "model.safetensors")
    for i in (start, end, unused):
        weights["model.embed_tokens.weight"][i] = 1e-24 * torch.randn(weights["model.embed_tokens.weight"].shape[1])
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    norms = embedding_norms(ModelConfig(name=str(base)))
    assert norms["output"] is None  # tied: one matrix
    assert norms["input"] == pytest.approx(weights["model.embed_tokens.weight"].norm(dim=1).numpy(), rel=1e-5)

    raw = {**tiny_recipe, "model": {"name": str(base)},  # long enough that no row loses its end
           "data": {**tiny_recipe["data"], "chat_template": True, "template": "{question}"},
           "train": {**tiny_recipe["train"], "max_length": 512}}
    cfg = validate(raw, "chat")
    items, _ = tokenize_with(cfg, load_splits(cfg.data).train, tok)
    found = untrained_tokens(cfg, tok, items)
    assert found["untrained_rows"] == {"input": 3, "output": 3}
    assert found["input"] == [{"id": start, "token": "<|im_start|>", "rows": len(items), "trained": False},
                              {"id": end, "token": "<|im_end|>", "rows": len(items), "trained": False}]
    assert found["output"] == [{"id": end, "token": "<|im_end|>", "rows": len(items), "trained": False}]  # has loss
    recipe = tmp_path / "chat.yaml"
    for lora, said in (({}, ", which LoRA leaves as they are: set lora.trainable_tokens: [<|im_start|>, <|im_end|>] "
                            "to train those rows (or lora.modules_to_save: [embed_tokens, lm_head], the whole "
                            "matrices)"),
                       ({"trainable_tokens": ["<|im_start|>"]}, ", which LoRA leaves as they are: set "
                                                                "lora.trainable_tokens: [<|im_end|>]"),
                       ({"modules_to_save": ["lm_head"]}, "; lora.modules_to_save or lora.trainable_tokens trains them"),
                       ({"trainable_tokens": [end, "<|im_start|>"]}, "; lora.modules_to_save or lora.trainable_tokens")):
        recipe.write_text(yaml.safe_dump({**raw, "lora": {**raw["lora"], **lora}}))
        capsys.readouterr()
        assert main(["check", str(recipe)]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert (f"2 tokens of the training rows (<|im_start|>, <|im_end|>; the commonest in {len(items)} rows) have "
                f"untrained input and output embedding rows in the base model{said}") in out
    assert embedding_norms(ModelConfig(name="someone/never-downloaded")) is None  # nothing is fetched for the check
    from tunelab.models import add_lora, load_model, start_untrained_rows
    used = {i for item in items for i in item.input_ids}
    assert unused not in used
    for lora, started in (({"trainable_tokens": ["<|im_start|>", 7]}, [start]),
                          ({"modules_to_save": ["lm_head"]}, sorted([start, end]))):  # the untrained rows in use
        trains = validate({**raw, "lora": {**raw["lora"], **lora}}, "s")
        model = add_lora(load_model(trains.model, torch.device("cpu")), trains.lora, tok=tok)
        assert start_untrained_rows(model, used) == started  # each from the mean trained row, the rest as they were
        rows = model.get_input_embeddings()(torch.tensor([[start, 7]]))[0]
        base = weights["model.embed_tokens.weight"]
        mean = base[[i for i in range(len(base)) if i not in (start, end, unused)]].mean(0)
        torch.testing.assert_close(rows[0], mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rows[1], base[7])
    from tunelab.rundir import RunDir
    from tunelab.train import train
    run = RunDir(tmp_path / "run")
    with caplog.at_level("WARNING", logger="tunelab"):  # the train stage says it before the first step
        train(validate({**raw, "train": {**raw["train"], "epochs": 1}}, "chat"), run)
    assert any("which LoRA leaves as they are: set lora.trainable_tokens" in r.getMessage() for r in caplog.records)
    from tunelab.data import checks
    from tunelab.report import write_report
    result, totals = checks.run_checks(cfg, load_splits(cfg.data), tok)  # as the analysis stage writes them
    checks.write(run, {**result, "estimate": {}, "verdict": checks.verdict({**result, "estimate": {}})}, totals)
    write_report(run)
    md = " ".join(run.report_md.read_text().split())
    assert "watch** — 2 tokens of the training rows (<|im_start|>, <|im_end|>;" in md  # among what to watch
    assert "| tokens used with untrained embedding rows (input / output) | 2 input / 1 output tokens of 3 / 3 " in md


@pytest.mark.slow
def test_check_says_when_the_eval_reads_replies_after_a_reasoning_templates_thinking(tiny_recipe, tmp_path, capsys):
    """Rows written through a chat template that opens a think block before each reply (Qwen3's): `tunelab check`
    says the eval reads the replies after </think>; with eval.think_end: '' it does not."""
    import yaml
    raw = {**tiny_recipe, "model": {**tiny_recipe["model"], "chat_template": "qwen3"},
           "data": {**tiny_recipe["data"], "template": "{question}", "chat_template": True}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["check", str(recipe)]) == 0
    assert ("eval: scores answers read after the thinking's last </think> (eval.think_end), within "
            "eval.max_new_tokens=16 tokens, the thinking included") in " ".join(capsys.readouterr().out.split())
    recipe.write_text(yaml.safe_dump({**raw, "eval": {**raw["eval"], "think_end": ""}}))
    assert main(["check", str(recipe), "--json"]) == 0
    assert "eval_think_end" not in json.loads(capsys.readouterr().out)


def test_deepseeks_full_width_markers_are_chat_markers_too(smollm2_dir):
    """DeepSeek's templates write <｜User｜> with full-width bars: rows holding them, split by a tokenizer that lacks
    them, are named like <|name|> markers."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from tunelab.data.checks import markers
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok("<｜User｜>What is 2 + 2?<｜Assistant｜>4<｜end▁of▁sentence｜>")["input_ids"]
    found = markers(SimpleNamespace(model=SimpleNamespace(added_tokens=[])), tok, [SimpleNamespace(input_ids=ids)])
    assert sorted(s["marker"] for s in found["split"]) == ["<｜Assistant｜>", "<｜User｜>", "<｜end▁of▁sentence｜>"]
    assert all(s["pieces"] > 1 and s["rows"] == 1 for s in found["split"])


@pytest.mark.slow
def test_chat_markers_the_tokenizer_splits_and_added_tokens_no_row_uses_are_named(tiny_recipe, tmp_path, capsys,
                                                                                 caplog):
    """Rows that write <|name|> markers the tokenizer splits into pieces (a chat format the base model's tokenizer
    lacks) are named with the fix, model.added_tokens; once added, the markers are one token each and the check is
    quiet, but an added token no row uses is named (its rows would not train); the report and the train stage say
    the same."""
    import yaml

    from tunelab.config import validate
    from tunelab.models import load_tokenizer
    raw = {**tiny_recipe, "data": {**tiny_recipe["data"], "template": "<|user|>{question}<|bot|>"}}
    pieces = len(load_tokenizer(validate(raw, "m").model).tokenize("<|user|>"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["check", str(recipe), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    rows = found["rows"]["train"]
    assert found["markers"]["split"] == [{"marker": "<|bot|>", "pieces": pieces, "rows": rows},
                                         {"marker": "<|user|>", "pieces": pieces, "rows": rows}]
    assert (f"the training rows write chat markers the tokenizer splits (<|bot|> as {pieces} tokens, <|user|> as "
            f"{pieces} tokens; the commonest in {rows} rows): make them tokens of their own (model.added_tokens)"
            ) in found["verdict"]
    raw["model"] = {**raw["model"], "added_tokens": ["<|user|>", "<|bot|>", "<|tool|>"]}
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["check", str(recipe), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["markers"]["split"] == [] and found["markers"]["unused_added"] == ["<|tool|>"]
    assert ("added tokens <|tool|> (model.added_tokens) are in no training row, so their embedding rows do not train"
            in found["verdict"])
    from tunelab.report.observations import markers
    said = markers(found)
    assert said.kind == "watch" and said.text.startswith("Added tokens <|tool|> (model.added_tokens) are in")
    from tunelab.rundir import RunDir
    from tunelab.train import train
    with caplog.at_level("WARNING", logger="tunelab"):  # the train stage says it before the first step
        train(validate({**raw, "train": {**raw["train"], "epochs": 1}}, "m"), RunDir(tmp_path / "run"))
    assert any("added tokens <|tool|> (model.added_tokens)" in r.getMessage() for r in caplog.records)
