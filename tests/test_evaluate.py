"""Generation and the eval stage: batched greedy equals batch-1 greedy; base vs tuned on the same questions."""

import json

import pytest
import torch

from tunelab.cli import main
from tunelab.config import to_yaml, validate
from tunelab.evaluate.stage import evaluate
from tunelab.evaluate.summary import pass_names
from tunelab.evaluate.generate import ANSWER_LINE, generate
from tunelab.rundir import ExtraSetDir, RunDir
from tunelab.train import train


def test_batched_generation_equals_batch_one(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompts = [f"Instruction: what is {i} times {i + 3}, explained {'very ' * i}carefully?\nResponse: "
               for i in range(7)]
    batched, _ = generate(model, tok, prompts, max_new_tokens=12, slots=4)
    single = [generate(model, tok, [p], max_new_tokens=12, slots=1)[0][0] for p in prompts]
    assert [g.completion for g in batched] == [g.completion for g in single]
    assert [g.tokens for g in batched] == [g.tokens for g in single]
    assert all(0 < g.tokens <= 12 for g in batched)


@pytest.mark.slow
def test_continuous_batching_refills_slots_and_equals_batch_one(tiny_model):
    """More prompts than slots, lengths from 3 to ~150 tokens, rows stopping early at different steps:
    every row's tokens equal its batch-1 greedy decoding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompts = [("word " * (1 + 13 * i)) + f"question {i}?" for i in range(11)]
    free = [generate(model, tok, [p], max_new_tokens=20, slots=1)[0][0] for p in prompts]
    # each odd row stops early, at a stop string taken from its own unstopped completion (step 2..12)
    stops = [None if i % 2 == 0 else [tok.decode(tok(free[i].completion, add_special_tokens=False)["input_ids"]
                                                 [2 + i:4 + i])] for i in range(len(prompts))]
    single = [generate(model, tok, [p], max_new_tokens=20, slots=1, stops=[s])[0][0] for p, s in zip(prompts, stops)]
    assert any(g.tokens < 20 for g in single)  # some rows do stop early
    for slots in (3, 5):
        batched, _ = generate(model, tok, prompts, max_new_tokens=20, slots=slots, stops=stops)
        assert [(g.completion, g.tokens) for g in batched] == [(g.completion, g.tokens) for g in single], slots


def test_verified_drafts_give_the_same_tokens_as_one_token_steps(tiny_model, monkeypatch):
    """Draft tokens are checked in one forward: the matching prefix is kept, the rest masked out of the cache.
    With drafts that are right up to a planted wrong token (at every offset), every row's tokens equal plain
    one-token greedy steps, alone or beside other rows, a stop string included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import tunelab.evaluate.generate as gen
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompts = ["one two three one two three", "a b a b", "word " * 30 + "end", "Instruction: 12 times 3?\nResponse: "]
    encoded = [tok(p)["input_ids"] for p in prompts]
    reference = []  # each prompt's greedy continuation, one full forward per token
    with torch.no_grad():
        for ids in encoded:
            seq = list(ids)
            for _ in range(40):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
            reference.append(seq[len(ids):])
    plain = [generate(model, tok, [p], max_new_tokens=40, slots=1, speculate=False)[0][0] for p in prompts]
    stops = [None, [tok.decode(reference[1][6:8])], None, None]
    plain[1] = generate(model, tok, [prompts[1]], max_new_tokens=40, slots=1, stops=[stops[1]], speculate=False)[0][0]

    def oracle(context, k=gen.SPEC_TOKENS, n=gen.SPEC_NGRAM):
        i = next(i for i, ids in enumerate(encoded) if context[:len(ids)] == ids)
        done = len(context) - len(encoded[i])
        proposal = list(reference[i][done:done + k])
        if proposal and done % 3:  # a wrong token at offset done % k: only the part before it may be kept
            wrong = done % len(proposal)
            proposal[wrong] = (proposal[wrong] + 1) % len(tok)
        return proposal

    accepted, real_step = [], gen._Batch.step

    def counting_step(self, m, drafts=None):
        real_step(self, m, drafts)
        accepted.append(sum(len(a) for a in self.accepted))

    monkeypatch.setattr(gen, "draft", oracle)
    monkeypatch.setattr(gen._Batch, "step", counting_step)
    for slots in (1, 2, 4):
        spec, _ = generate(model, tok, prompts, max_new_tokens=40, slots=slots, stops=stops)
        assert [(g.completion, g.tokens) for g in spec] == [(g.completion, g.tokens) for g in plain], slots
    assert sum(accepted) > 40  # drafts were verified and kept: fewer forwards than tokens


def test_draft_is_what_followed_the_last_earlier_occurrence():
    from tunelab.evaluate.generate import draft
    assert draft([5, 1, 2, 3, 9, 9, 1, 2, 3, 4, 4, 1, 2, 3], k=3) == [4, 4, 1]  # the most recent earlier match
    assert draft([1, 2, 3, 4], k=3) == [] and draft([1, 2], k=3) == []


def test_a_shared_prefix_is_run_once_and_changes_nothing_a_row_computes(tiny_model):
    """Few-shot prompts share their context: it is prefilled once and its cache copied. Each row's cache then holds
    what a whole-prompt prefill holds (to fp32 rounding), batched rows equal batch-1 rows, and a prompt that does
    not start with the prefix is prefilled whole beside them. Without a prefix given, the tokens every prompt
    starts with are shared the same way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import tunelab.evaluate.generate as gen
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    context = "Question: one plus two?\nAnswer: three.\n\nQuestion: two times four?\nAnswer: eight.\n\n"
    prompts = [context + f"Question: what is {i} plus {'one ' * i}?\nAnswer:" for i in range(6)] + ["Other: 7?"]
    encoded = tok(prompts, add_special_tokens=True)["input_ids"]
    device = torch.device("cpu")
    with torch.no_grad():
        shared = gen.SharedPrefix.run(model, tok, context, device)
        assert shared is not None and len(shared.ids) >= gen.SHARED_MIN_TOKENS
        assert [shared.starts(x) for x in encoded] == [True] * 6 + [False]
        fed = []
        real_forward = model.forward
        model.forward = lambda **kw: fed.append(int(kw["attention_mask"][:, -kw["input_ids"].shape[1]:].sum())) \
            or real_forward(**kw)
        fast = gen._prefill(model, tok, list(range(7)), encoded, device, shared)
        del model.forward
        assert sum(fed) == sum(len(x) for x in encoded) - 6 * len(shared.ids)  # the context was not fed again
        plain = gen._prefill(model, tok, list(range(7)), encoded, device)
        fast_rows, plain_rows = {r.index: j for j, r in enumerate(fast.rows)}, {r.index: j for j, r in enumerate(plain.rows)}
        for i, x in enumerate(encoded):
            a, b = fast_rows[i], plain_rows[i]
            mine_cols, ref_cols = fast.mask[a].bool(), plain.mask[b].bool()  # the row's tokens, padding left out
            assert int(mine_cols.sum()) == int(ref_cols.sum()) == len(x) and fast.nxt[a] == plain.nxt[b]
            for mine, ref in zip(gen._layers(fast.cache), gen._layers(plain.cache)):
                assert torch.allclose(mine.keys[a, :, mine_cols], ref.keys[b, :, ref_cols], atol=1e-5)
                assert torch.allclose(mine.values[a, :, mine_cols], ref.values[b, :, ref_cols], atol=1e-5)
    batched, _ = generate(model, tok, prompts, max_new_tokens=10, slots=4, prefix=context)
    single = [generate(model, tok, [p], max_new_tokens=10, slots=1, prefix=context)[0][0] for p in prompts]
    assert [(g.completion, g.tokens) for g in batched] == [(g.completion, g.tokens) for g in single]
    common = gen.SharedPrefix.common(model, encoded[:6], device)  # no prefix given: the tokens all prompts share
    assert common.ids == encoded[0][:len(common.ids)] and len(common.ids) >= len(shared.ids)
    assert gen.SharedPrefix.common(model, encoded, device) is None  # "Other: 7?" shares too few tokens
    found, _ = generate(model, tok, prompts[:6], max_new_tokens=10, slots=4)
    assert [(g.completion, g.tokens) for g in found] == [(g.completion, g.tokens) for g in single[:6]]
    from unittest import mock
    with mock.patch.object(gen.SharedPrefix, "common", side_effect=AssertionError("share=False shares nothing")):
        whole, _ = generate(model, tok, prompts[:6], max_new_tokens=10, slots=4, share=False)
    assert [(g.completion, g.tokens) for g in whole] == [(g.completion, g.tokens) for g in found]


def test_cache_with_room_holds_what_concatenation_holds():
    """Prefill, one-token and multi-token steps past the spare room, row selection, dropping left columns and
    assignment (a merge): the layer's keys/values equal a transformers DynamicLayer fed the same updates."""
    from transformers.cache_utils import DynamicLayer
    import tunelab.evaluate.generate as gen
    torch.manual_seed(0)
    mine, ref = gen._RoomyLayer(), DynamicLayer()

    def both(op):
        op(mine), op(ref)
        assert torch.equal(mine.keys, ref.keys) and torch.equal(mine.values, ref.values)
        assert mine.get_seq_length() == ref.get_seq_length()

    def update(n, rows=5):
        k, v = torch.randn(rows, 2, n, 4), torch.randn(rows, 2, n, 4)
        both(lambda layer: layer.update(k, v))

    update(7)  # the prefill
    for n in [1] * (gen.ROOM + 3) + [4, 1]:  # past the first room, then again
        update(n)
    both(lambda layer: layer.batch_select_indices(torch.tensor([0, 2, 3])))
    update(1, rows=3)
    mine.drop_left(5)
    ref.keys, ref.values = ref.keys[:, :, 5:], ref.values[:, :, 5:]
    for n in [1] * (gen.ROOM + 1):
        update(n, rows=3)
    merged_k, merged_v = torch.randn(4, 2, 50, 4), torch.randn(4, 2, 50, 4)
    both(lambda layer: (setattr(layer, "keys", merged_k), setattr(layer, "values", merged_v)))
    update(1, rows=4)
    assert mine._keys.shape[2] > mine._length  # room was made: the next steps write in place


def test_answer_line_stop_rule():
    assert ANSWER_LINE.search("3 + 4 = 7\n#### 7\n")
    assert not ANSWER_LINE.search("3 + 4 = 7\n#### 7")  # the line is not finished yet
    assert not ANSWER_LINE.search("####\n")


def _ends_at(tok, text: str, rule) -> str | None:
    """`text`'s tokens fed to generation's stop check one by one: the completion where `rule` ends it, else None."""
    from tunelab.evaluate.generate import _finished
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for k in range(1, len(ids) + 1):
        done = _finished(tok, ids[:k], ids[k - 1], set(), rule, max_new_tokens=1000)
        if done is not None:
            return done.completion
    return None


def test_an_answer_pattern_stops_a_row_once_the_line_holding_its_match_is_complete(tiny_model):
    """A row decoded under eval.answer_pattern ends at the newline after the first match, not before the match
    closes (a number still growing) and not at an earlier newline."""
    import re
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rule = re.compile(r"answer is (\d+)")

    def ends_at(text: str, rule: re.Pattern = rule) -> str | None:
        return _ends_at(tok, text, rule)

    assert ends_at("First line.\nSo the answer is 1234\nThen more words\n") == "First line.\nSo the answer is 1234\n"
    assert ends_at("So the answer is 12 apples, because\nmore\n") == "So the answer is 12 apples, because\n"
    assert ends_at("No answer here\nnor here\n") is None
    tagged = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)  # a match spanning lines ends on its own newline
    assert ends_at("<answer>\n7\n</answer>\nmore\n", tagged) == "<answer>\n7\n</answer>\n"


def test_a_reasoning_models_stop_rule_and_answer_check_read_the_reply_after_its_thinking(tiny_model):
    """With an end-of-thinking marker (eval.think_end), nothing in the thinking ends a reply — not its first line,
    not a blank line lm-eval's `until` would stop at, not a `#### N` line — and the rule then reads the text after
    the marker's last occurrence; the answer check reads that text too (lm-eval's think_end_token), the whole reply
    when the marker never came."""
    from transformers import AutoTokenizer

    from tunelab.evaluate.generate import AfterThinking
    from tunelab.evaluate.scoring import after_thinking, score, score_exact
    tok = AutoTokenizer.from_pretrained(tiny_model)

    def ends_at(text: str, rule) -> str | None:
        return _ends_at(tok, text, rule)

    reply = "<think>\nIt says 3 then 4.\n\n#### 3\n</think>\n\npositive\nand more\n\n"
    assert ends_at(reply, "line") == "<think>\n"  # the first line: the thinking's
    assert ends_at(reply, AfterThinking("</think>", "line")) == reply[:reply.index("and more")]
    # the blank line right after the marker is not the one that ends it: lm-eval strips it before `until` applies
    assert ends_at(reply, AfterThinking("</think>", ["\n\n"])) == reply[:reply.index("\nand more") + 9]
    gsm = "<think>\n#### 3\n</think>\nSo #### 4\nmore\n"
    assert ends_at(gsm, AfterThinking("</think>", None)) == "<think>\n#### 3\n</think>\nSo #### 4\n"
    assert ends_at("<think>\nstill thinking\n\n", AfterThinking("</think>", "line")) is None
    answered = ends_at(reply, AfterThinking("</think>", "line"))
    assert after_thinking(answered, "</think>") == "positive\n"
    assert score_exact(after_thinking(answered, "</think>"), "positive")["strict_correct"]
    assert not score_exact(answered, "positive")["strict_correct"]  # its first line is <think>
    assert score(after_thinking(gsm, "</think>"), "#### 4")["flexible_correct"] and not score(gsm, "#### 4")[
        "strict_correct"]  # the thinking's #### 3 comes first
    assert after_thinking("no thinking here", "</think>") == "no thinking here" == after_thinking(
        "no thinking here", None)
    from tunelab.evaluate.scoring import naming  # the report's definition names the passes read that way
    said = naming({"scoring": "exact", "base": {"n": 3}, "base-chat": {"think_end": "</think>"},
                   "tuned": {"think_end": "</think>"}}).definition
    assert said.endswith("The replies of base-chat, tuned (asked through a chat template that writes a thinking "
                         "block) are read after their last `</think>` (eval.think_end), as lm-evaluation-harness's "
                         "think_end_token reads them: the thinking before it is not scored, nor does it end a reply.")
    assert "think_end" not in naming({"scoring": "exact", "tuned": {"n": 3}}).definition


@pytest.fixture(scope="module")
def tiny_trained(tiny_model, tmp_path_factory):
    raw = {"name": "tiny", "model": {"name": str(tiny_model)},
           "data": {"source": "synthetic:arith", "template": "Instruction: {question}\nResponse: ",
                    "target": "{answer}", "label_field": "family", "synthetic_rows": 24, "synthetic_test_rows": 6},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"epochs": 1, "batch_size": 8, "lr": 3e-2, "max_length": 128},
           "eval": {"limit": 6, "max_new_tokens": 8}}
    run = RunDir(tmp_path_factory.mktemp("evalrun") / "run")
    cfg = validate(raw, "tiny")
    train(cfg, run)
    return cfg, run


@pytest.mark.slow
def test_eval_writes_predictions_summary_and_paired_difference(tiny_trained, monkeypatch, tmp_path):
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = tiny_trained
    result = evaluate(cfg, run)
    preds = run.read_jsonl(run.eval_dir / "predictions.jsonl")
    assert sorted({p["model"] for p in preds}) == ["base", "tuned"] and len(preds) == 12
    base_ids = [p["id"] for p in preds if p["model"] == "base"]
    assert base_ids == [p["id"] for p in preds if p["model"] == "tuned"]  # same questions
    p = preds[0]
    assert {"question", "reference", "completion", "strict_answer", "flexible_answer", "strict_correct",
            "flexible_correct", "tokens", "label"} <= set(p)
    summary = run.read_json(run.eval_dir / "summary.json")
    assert summary["base"]["n"] == 6 and 0 <= summary["tuned"]["flexible_accuracy"] <= 1
    assert summary["strict_difference"]["n"] == 6 and len(summary["flexible_difference"]["ci95_pts"]) == 2
    families = {p["label"] for p in preds}
    by = summary["by_category"]  # data.label_field: accuracy per family, paired
    assert by["source"] == "data.label_field (family)" and {r["category"] for r in by["rows"]} == families
    assert sum(r["n"] for r in by["rows"]) == 6 and "confusion" not in by
    assert "eval" not in run.read_json(run.summary)  # data flows forward: eval writes only eval/
    # the base pass is cached per model + questions; --only tuned keeps it
    again = evaluate(cfg, run, only="tuned")
    assert again.summary["base"] == result.summary["base"] and "flexible_difference" in again.summary
    third = evaluate(cfg, run, only="base")
    assert third.summary["base"]["cached"] is True


def test_eval_source_scores_another_datasets_questions_and_answers_are_never_mixed(tiny_trained, gsm8k,
                                                                                    monkeypatch, tmp_path):
    """Trained on synthetic:arith, scored on GSM8K's test questions (rendered with the run's template); a later
    eval of the run's own test rows keeps no pass that answered the other set's questions, though the ids match."""
    from tunelab.report import write_report
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = tiny_trained
    other = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"source": str(gsm8k)})})
    result = evaluate(other, run)
    asked = [json.loads(line)["question"] for line in (gsm8k / "test.jsonl").read_text().splitlines()[:6]]
    for model in ("base", "tuned"):
        assert [p["question"] for p in result.predictions if p["model"] == model] == asked
    assert all("label" not in p for p in result.predictions)  # GSM8K has no family: scored without categories
    summary = run.read_eval_summary()
    assert summary["source"] == str(gsm8k) and summary["split"] == "test" and "by_category" not in summary
    write_report(run)
    assert f"n = 6 questions of {gsm8k}" in run.report_md.read_text()
    card = (run.adapter / "README.md").read_text()
    assert f"on `{gsm8k}` test questions (eval.source: not the training data)" in card
    own = evaluate(cfg, run, only="tuned")  # test-0.. again, but synthetic questions: GSM8K's base answers go
    assert "base" not in own.summary and "source" not in own.summary
    assert [p["id"] for p in own.predictions] == [f"test-{i}" for i in range(6)]
    assert all(p["question"] not in asked for p in own.predictions)


def test_a_benchmarks_own_category_column_gives_accuracy_per_category_on_it(tiny_trained, monkeypatch, tmp_path):
    """eval.label_field (and an eval.also entry's label_field): the scored set's own category column, which the
    training data need not have — accuracy per category on a benchmark; a column it lacks is refused by name."""
    from conftest import write_jsonl
    from tunelab.data.synthetic import generate as synthetic
    from tunelab.errors import UserError
    from tunelab.evaluate.stage import evaluate_extra
    import shutil
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = tiny_trained
    run = RunDir(shutil.copytree(trained.path, tmp_path / "run"))  # its recipe is rewritten below
    rows = [{"question": r["question"], "answer": r["answer"], "kind": r["family"]} for r in synthetic(6, 7)]
    bench = write_jsonl(tmp_path / "bench.jsonl", rows)
    other = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"source": str(bench), "label_field": "kind"})})
    by = evaluate(other, run).summary["by_category"]
    assert by["source"] == "eval.label_field (kind)"
    assert {r["category"] for r in by["rows"]} == {r["kind"] for r in rows}
    assert sum(r["n"] for r in by["rows"]) == 6
    also = validate({**cfg.model_dump(mode="json"), "eval": {**cfg.eval.model_dump(mode="json"), "also": [
        {"source": str(bench), "name": "bench", "label_field": "kind"}]}}, "tiny")
    (name, result), = evaluate_extra(also, run)
    assert name == "bench" and result.summary["by_category"]["source"] == "eval.label_field (kind)"
    from tunelab.report import write_report
    run.write_text(run.config, to_yaml(also))  # the run's recipe now names the set: its report shows it
    write_report(run)
    text = run.report_md.read_text()
    section = text[text.index("## Other test sets"):]
    assert "bench, by category:" in section and "Categories: eval.label_field (kind); accuracy is" in section
    assert all(f"| {kind} |" in section for kind in {r["kind"] for r in rows})
    missing = other.model_copy(update={"eval": other.eval.model_copy(update={"label_field": "subject"})})
    with pytest.raises(UserError, match="eval.label_field: no field 'subject' in .*bench.jsonl's rows; fields are: "
                                        "answer, kind, question"):
        evaluate(missing, run)
    with pytest.raises(UserError, match="eval.label_field: needs eval.source"):
        validate({**cfg.model_dump(mode="json"), "eval": {"label_field": "kind"}}, "tiny")


def test_a_test_set_with_fields_of_its_own_is_scored_in_its_format_and_no_pass_asked_otherwise_is_kept(
        tiny_trained, gsm8k, monkeypatch, tmp_path):
    """eval.template / eval.target render eval.source's rows (GSM8K's test rows with their fields renamed q / a):
    written as data's template writes GSM8K's own rows, the earlier passes are kept; written otherwise, a pass
    asked the same ids and references with other prompts is not."""
    import shutil
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = tiny_trained
    run = RunDir(shutil.copytree(trained.path, tmp_path / "run"))
    bench = tmp_path / "renamed"
    bench.mkdir()
    rows = [json.loads(line) for line in (gsm8k / "test.jsonl").read_text().splitlines()[:6]]
    (bench / "test.jsonl").write_text("".join(json.dumps({"q": r["question"], "a": r["answer"]}) + "\n" for r in rows))

    def scored(**ev):
        return evaluate(cfg.model_copy(update={"eval": cfg.eval.model_copy(update=ev)}), run, only="tuned").summary

    evaluate(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"source": str(gsm8k)})}), run)
    same = scored(source=str(bench), template="Instruction: {q}\nResponse: ", target="{a}")
    assert same["base"]["n"] == 6 and same["prompts"] == run.read_eval_summary()["prompts"]
    other = scored(source=str(bench), template="Question: {q}\nAnswer: ", target="{a}")
    assert "base" not in other and other["prompts"] != same["prompts"]
    tuned = [p for p in run.read_predictions() if p["model"] == "tuned"]
    assert [p["question"] for p in tuned] == [f"Question: {r['question']}\nAnswer: " for r in rows]  # no {question}
    assert [p["reference"] for p in tuned] == [r["answer"].split("#### ")[-1] for r in rows]


def test_fewshot_from_eval_source_takes_the_shots_from_its_train_split(tiny_trained, gsm8k, monkeypatch, tmp_path):
    """lm-eval's fewshot_split: with eval.fewshot_from=eval_source the baseline's shots are the benchmark's first
    train rows, never the rows scored, and the summary and the report say where the shots came from."""
    import shutil
    from tunelab.data import load_splits
    from tunelab.errors import UserError
    from tunelab.evaluate.fewshot import fewshot_context
    from tunelab.evaluate.stage import _plan, shot_pool
    from tunelab.report import write_report
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = tiny_trained
    run = RunDir(shutil.copytree(trained.path, tmp_path / "run"))
    bench = cfg.eval.model_copy(update={"source": str(gsm8k), "fewshot": 2, "limit": 3})
    own, theirs = (cfg.model_copy(update={"eval": bench.model_copy(update={"fewshot_from": f})})
                   for f in ("data", "eval_source"))
    splits = load_splits(theirs.data, theirs.eval)
    first = [json.loads(line)["question"] for line in (gsm8k / "train.jsonl").read_text().splitlines()[:2]]
    assert [e.fields["question"] for e in shot_pool(theirs, splits)[:2]] == first
    few = {c.eval.fewshot_from: _plan(c, run, shot_pool(c, splits), splits.test[:3], "base", False, None)[1]
           for c in (own, theirs)}
    assert few["eval_source"].prefix == fewshot_context(splits.eval_train[:2])
    assert few["data"].prefix == fewshot_context(splits.train[:2]) != few["eval_source"].prefix

    summary = evaluate(theirs, run).summary
    said = f"the first 2 train rows of {gsm8k} (eval.source)"
    assert summary["base-2shot"]["shots_from"] == summary["fewshot"]["shots_from"] == said
    write_report(run)
    assert f"shots: {said}" in run.report_md.read_text()
    one_file = gsm8k / "test.jsonl"  # a single file: every row is scored, so none is left for shots
    alone = theirs.model_copy(update={"eval": theirs.eval.model_copy(update={"source": str(one_file)})})
    with pytest.raises(UserError, match=r"eval.fewshot_from: eval_source: .*test.jsonl has 0 rows to take shots "
                                        r"from apart from the rows scored.*\(with no test split, all its rows are "
                                        r"scored\)"):
        evaluate(alone, run, only="base")


def test_eval_cli_on_a_run_without_adapter_exits_2(tiny_trained, tmp_path, capsys):
    cfg, run = tiny_trained
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text(run.config.read_text())
    assert main(["eval", str(bare)]) == 2
    assert "no adapter: train first" in capsys.readouterr().err
    assert not (bare / "eval").exists()


def test_export_merged_and_adapter_only(tiny_trained, tmp_path):
    from transformers import AutoModelForCausalLM
    cfg, run = tiny_trained
    assert main(["export", str(run.path), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k for k in merged.state_dict())
    assert main(["export", str(run.path), str(tmp_path / "ad"), "--adapter-only"]) == 0
    assert (tmp_path / "ad" / "adapter_config.json").is_file()
    assert main(["export", str(run.path), str(tmp_path / "ad")]) == 2  # exists: refused


@pytest.mark.slow
def test_real_smollm2_eval_on_gsm8k_questions(gsm8k, tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")  # no cached base pass
    from tunelab.config import load_recipe
    cfg = load_recipe("gsm8k-smollm2-135m", [f"data.source={gsm8k}", "eval.limit=4", "eval.max_new_tokens=64",
                                              "eval.fewshot=0"])
    run = RunDir(tmp_path / "bare")
    result = evaluate(cfg, run, adapter=False)
    preds = result.predictions  # the recipe's chat baseline too: SmolLM2-Instruct asked through its chat template
    assert [p["model"] for p in preds] == ["base"] * 4 + ["base-chat"] * 4
    assert all(p["completion"].strip() for p in preds)
    assert all(0 < p["tokens"] <= 64 for p in preds)
    assert result.summary["base"]["tokens_per_second"] > 0


@pytest.fixture(scope="module")
def two_epoch_run(tiny_model, tmp_path_factory):
    raw = {"name": "tiny2", "model": {"name": str(tiny_model)},
           "data": {"source": "synthetic:arith", "template": "Instruction: {question}\nResponse: ",
                    "target": "{answer}", "synthetic_rows": 24, "synthetic_test_rows": 5},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"epochs": 2, "batch_size": 8, "lr": 3e-2, "max_length": 128},
           "eval": {"limit": 5, "max_new_tokens": 10, "fewshot": 2}}
    run = RunDir(tmp_path_factory.mktemp("epochs") / "run")
    cfg = validate(raw, "tiny2")
    train(cfg, run)
    return cfg, run


@pytest.mark.slow
def test_accuracy_per_epoch_equals_scoring_each_epoch_adapter_alone(two_epoch_run, monkeypatch, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = two_epoch_run
    assert (run.epoch_adapter(1) / "adapter_config.json").exists()
    result = evaluate(cfg, run)
    s = result.summary
    assert set(s) >= {"base", "base-2shot", "epoch-1", "tuned", "epochs", "best_epoch", "flips"}
    assert [(e["epoch"], e["model"]) for e in s["epochs"]] == [(1, "epoch-1"), (2, "tuned")]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    questions = [p for p in result.predictions if p["model"] == "base"]
    prompts = [f"Instruction: {p['question']}\nResponse: " for p in questions]
    for name, adapter in (("epoch-1", run.epoch_adapter(1)), ("tuned", run.epoch_adapter(2)), ("tuned", run.adapter)):
        alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.model.name), str(adapter))
        alone = alone.merge_and_unload()
        texts = [generate(alone, tok, [p], max_new_tokens=10, slots=1)[0][0].completion for p in prompts]
        assert texts == [p["completion"] for p in result.predictions if p["model"] == name], (name, adapter)
        row = next(e for e in s["epochs"] if e["model"] == name)
        assert row["flexible_accuracy"] == pytest.approx(
            sum(p["flexible_correct"] for p in result.predictions if p["model"] == name) / len(prompts))


@pytest.mark.slow
def test_export_of_an_epochs_adapter_or_the_best_one_carries_that_epochs_card(two_epoch_run, monkeypatch, tmp_path,
                                                                               capsys):
    import shutil

    import yaml
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunelab.models import load_adapter
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = two_epoch_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path)
    shutil.rmtree(run.eval_dir, ignore_errors=True)  # another test may have evaluated the shared run
    assert main(["export", str(run.path), str(tmp_path / "x"), "--epoch", "best"]) == 2  # not evaluated yet
    assert f"tunelab eval {run.path} scores every kept epoch's adapter" in capsys.readouterr().err
    assert main(["export", str(run.path), str(tmp_path / "x"), "--epoch", "3"]) == 2
    assert "--epoch: '3'; choose best, best-loss or an epoch from 1 to 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    evaluation = evaluate(cfg, run).summary

    assert main(["export", str(run.path), str(tmp_path / "one"), "--epoch", "1", "--adapter-only"]) == 0
    assert "(epoch 1's adapter)" in capsys.readouterr().out
    exported, kept = (load_file(f / "adapter_model.safetensors") for f in (tmp_path / "one", run.epoch_adapter(1)))
    assert exported.keys() == kept.keys() and all(exported[k].equal(kept[k]) for k in kept)
    card = (tmp_path / "one" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    results = {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert results["flexible-extract accuracy"] == round(evaluation["epoch-1"]["flexible_accuracy"], 4)
    assert results["validation loss"] == round(run.read_epochs()[1]["val_loss"], 4)  # epoch 1's, not the last
    assert ", epoch 1 of 2" in card and "not the final one" in card and str(run.epoch_adapter(1).resolve()) in card

    assert main(["export", str(run.path), str(tmp_path / "merged"), "--epoch", "1"]) == 0
    ids = torch.tensor([[1, 20, 300, 4000]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
        want = load_adapter(AutoModelForCausalLM.from_pretrained(cfg.model.name), run.epoch_adapter(1))(ids).logits
    torch.testing.assert_close(merged, want)

    best = evaluation["best_epoch"]["epoch"]
    assert main(["export", str(run.path), str(tmp_path / "best"), "--epoch", "best", "--adapter-only"]) == 0
    chosen = load_file(tmp_path / "best" / "adapter_model.safetensors")
    source = run.adapter if best == 2 else run.epoch_adapter(best)  # the last epoch's is the final adapter
    assert all(chosen[k].equal(v) for k, v in load_file(source / "adapter_model.safetensors").items())
    assert ("epoch 1 of 2" in (tmp_path / "best" / "README.md").read_text()) == (best == 1)

    from tunelab.report import write_report
    for epoch in (1, 2):  # the report says how to take an earlier best epoch, and only then
        run.write_json(run.eval_summary, {**evaluation, "best_epoch": {**evaluation["best_epoch"], "epoch": epoch}})
        write_report(run)
        text = run.report_md.read_text()
        assert ("The best epoch by answer accuracy is epoch 1, not the last" in text) == (epoch == 1)
        assert (f"`tunelab export {run.path} OUT --epoch best`" in text) == (epoch == 1)


def test_fewshot_prompt_and_stops_follow_lm_eval_gsm8k(gsm8k):
    from tunelab.config import DataConfig
    from tunelab.data import load_splits
    from tunelab.evaluate.fewshot import STOP, fewshot_prompt
    splits = load_splits(DataConfig(source=str(gsm8k), template="Instruction: {question}\nResponse: ",
                                    target="{answer}", limit=50))
    shots, question = splits.train[:2], splits.test[0]
    expected = "".join(f"Question: {s.fields['question']}\nAnswer: {s.fields['answer']}\n\n" for s in shots) + \
        f"Question: {question.fields['question']}\nAnswer:"
    assert fewshot_prompt(shots, question) == expected
    assert STOP == ["Question:", "</s>", "<|im_end|>"]  # lm-eval gsm8k.yaml (version 3) generation_kwargs.until


@pytest.mark.slow
def test_sigkill_mid_eval_then_resume_answers_each_question_once(two_epoch_run, tmp_path):
    import shutil
    import signal
    import subprocess
    import sys
    cfg, run = two_epoch_run
    killed, whole = RunDir(tmp_path / "killed"), RunDir(tmp_path / "whole")
    for target in (killed, whole):
        shutil.copytree(run.path, target.path, ignore=shutil.ignore_patterns("eval"))
    env = {**__import__("os").environ, "TUNELAB_CACHE": str(tmp_path / "cache-a")}
    script = ("import os, signal, sys\n"
              "from tunelab.evaluate import journal, stage\n"
              "from tunelab.rundir import RunDir\n"
              "real, n = journal.Journal.append, [0]\n"
              "def append(self, *a):\n"
              "    real(self, *a)\n"
              "    n[0] += 1\n"
              "    if n[0] == 7: os.kill(os.getpid(), signal.SIGKILL)  # mid-way through the second pass\n"
              "journal.Journal.append = append\n"
              "run = RunDir(sys.argv[1])\n"
              "stage.evaluate(run.read_recipe(), run)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(killed.path)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not killed.predictions.exists() and len(killed.journals()) == 1
    assert len(killed.journals()[0].read_text().splitlines()) == 7

    import tunelab.evaluate.generate as gen
    asked = []
    real = gen.generate

    def counting(model, tok, prompts, *args, **kwargs):
        asked.extend(prompts)
        return real(model, tok, prompts, *args, **kwargs)

    gen.generate = counting
    try:
        __import__("os").environ["TUNELAB_CACHE"] = str(tmp_path / "cache-b")
        resumed = evaluate(cfg, killed)
        asked_resume = list(asked)
        asked.clear()
        __import__("os").environ["TUNELAB_CACHE"] = str(tmp_path / "cache-c")
        uninterrupted = evaluate(cfg, whole)
    finally:
        gen.generate = real
        __import__("os").environ.pop("TUNELAB_CACHE", None)
    assert len(asked_resume) == len(asked) - 7  # the 7 journaled answers were not generated again
    assert resumed.predictions == uninterrupted.predictions
    assert not killed.journals() and killed.predictions.exists()
    assert resumed.summary["base-2shot"]["resumed_answers"] == 2


def test_replies_killed_mid_pass_resume_from_their_journal(two_epoch_run, tmp_path, monkeypatch):
    """The generated replies (runs whose answers no scoring mode suits) are journaled as eval's answers are: a pass
    interrupted after 3 replies generates only the rest when run again, and ends with what an uninterrupted run
    writes."""
    import shutil
    import tunelab.evaluate.generate as gen
    from tunelab.evaluate import journal
    from tunelab.evaluate.stage import replies
    from tunelab.rundir import RepliesDir
    cfg, run = two_epoch_run
    killed, whole = RunDir(tmp_path / "killed"), RunDir(tmp_path / "whole")
    for target in (killed, whole):
        shutil.copytree(run.path, target.path, ignore=shutil.ignore_patterns("eval"))
    real_append, appended = journal.Journal.append, []

    def append(self, *args):
        real_append(self, *args)
        appended.append(args)
        if len(appended) == 3:
            raise KeyboardInterrupt  # Ctrl-C after the third reply was journaled
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache-a"))
    monkeypatch.setattr(journal.Journal, "append", append)
    with pytest.raises(KeyboardInterrupt):
        replies(cfg, killed)
    monkeypatch.setattr(journal.Journal, "append", real_append)
    assert not RepliesDir(killed.path).eval_summary.exists() and len(RepliesDir(killed.path).journals()) == 1
    asked, real = [], gen.generate

    def counting(model, tok, prompts, *args, **kwargs):
        asked.append(len(prompts))
        return real(model, tok, prompts, *args, **kwargs)
    monkeypatch.setattr(gen, "generate", counting)
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache-b"))
    resumed, resumed_asked = replies(cfg, killed), sum(asked)
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache-c"))
    uninterrupted = replies(cfg, whole)
    passes = [name for name, v in uninterrupted.items() if isinstance(v, dict) and "generated_tokens" in v]
    assert passes == ["base", "base-2shot", "epoch-1", "tuned"]  # eval's passes: the 2-shot baseline, each epoch
    assert resumed_asked == 4 * 5 - 3 and sum(asked) - resumed_asked == 4 * 5  # 5 rows each
    assert RepliesDir(killed.path).read_predictions() == RepliesDir(whole.path).read_predictions()
    assert resumed["overlap"] == uninterrupted["overlap"] and resumed["base"]["resumed_answers"] == 3
    assert not RepliesDir(killed.path).journals() and len(killed.read_jsonl(killed.eval_samples)) == 5


def test_a_cached_base_pass_is_scored_against_the_references_of_the_rows_asked(two_epoch_run, tmp_path, monkeypatch):
    """The cross-run cache keeps a base pass by its prompts; another recipe asking the same prompts with other targets
    gets those answers scored against its own references, not the first recipe's."""
    import shutil
    from tunelab.evaluate.overlap import score
    from tunelab.evaluate.stage import replies
    from tunelab.rundir import RepliesDir
    cfg, run = two_epoch_run
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    first, second = RunDir(tmp_path / "first"), RunDir(tmp_path / "second")
    for target in (first, second):
        shutil.copytree(run.path, target.path, ignore=shutil.ignore_patterns("eval"))
    raw = cfg.model_dump()
    raw["data"]["target"] = "Worked out: {answer}"  # same prompts, other reference replies
    reworded = validate(raw, "tiny2")
    replies(cfg, first)
    assert replies(reworded, second)["base"].get("cached")
    base = [r for r in RepliesDir(second.path).read_predictions() if r["model"] == "base"]
    assert base and all(r["reference"].startswith("Worked out: ") for r in base)
    assert [r["chrf"] for r in base] == [score(r["completion"], r["reference"])["chrf"] for r in base]
    said = {r["id"]: r["completion"] for r in RepliesDir(first.path).read_predictions() if r["model"] == "base"}
    assert {r["id"]: r["completion"] for r in base} == said  # the answers themselves: the cached ones


def test_out_of_memory_restarts_unfinished_rows_with_half_the_slots(tiny_model, monkeypatch):
    """On CUDA an out-of-memory step puts the unfinished rows back in the queue and halves the slots;
    simulated here: greedy decoding gives the same completions as without the failure."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import tunelab.evaluate.generate as gen
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompts = [("word " * (1 + 9 * i)) + f"question {i}?" for i in range(9)]
    expected = [g.completion for g in generate(model, tok, prompts, max_new_tokens=12, slots=4)[0]]
    real_step, calls = gen._Batch.step, {"n": 0}

    def failing_step(self, m, drafts=None):
        calls["n"] += 1
        if calls["n"] in (3, 9):
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_step(self, m, drafts)

    monkeypatch.setattr(gen._Batch, "step", failing_step)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    got, _ = generate(model, tok, prompts, max_new_tokens=12, slots=4)
    assert [g.completion for g in got] == expected and calls["n"] > 9


def parity_rows(n: int, start: int = 0) -> list[dict]:
    return [{"question": f"Is {i} even or odd?", "answer": "even" if i % 2 == 0 else "odd"}
            for i in range(start, start + n)]


@pytest.mark.slow
def test_short_answers_are_scored_by_exact_match_through_eval_report_and_card(tiny_model, tmp_path, monkeypatch):
    """Labels as targets: eval.scoring=auto picks exact match; zero-shot passes stop after the first line; the
    summary, report, card and console name the mode's figures. Generation is replaced by answers chosen here."""
    from conftest import write_jsonl
    from tunelab.evaluate.generate import Generation
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    folder = tmp_path / "parity"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", parity_rows(40))
    write_jsonl(folder / "test.jsonl", parity_rows(10, start=100))
    seen = []

    def answers(model, tok, prompts, max_new_tokens, slots, label, on_result, stops, prefix, sampling=None):
        seen.append((label, tuple(stops), max_new_tokens))
        numbers = [int(p.split("Is ")[1].split(" ")[0]) for p in prompts]
        truth = ["even" if n % 2 == 0 else "odd" for n in numbers]
        if label == "eval base":  # wordy: right only by whole words, and only when the truth is odd
            said = ["It is odd, I think.\nMore words" for _ in numbers]
        else:  # terse, right but for the first question
            said = [("Even" if t == "odd" else "Odd") if k == 0 else f"{t.capitalize()}." for k, t in enumerate(truth)]
        return [Generation(s, 3) for s in said], 0.1

    monkeypatch.setattr("tunelab.evaluate.generate.generate", answers)
    args = ["run", "quickstart", "--set", f"model.name={tiny_model}", "--set", f"data.source={folder}",
            "--set", "data.label_field=null", "--set", "train.epochs=1", "--set", "train.batch_size=8",
            "--set", "analysis.k_max=3", "--run-dir", str(tmp_path / "r")]
    assert main(args) == 0
    run = RunDir(tmp_path / "r")
    summary = run.read_eval_summary()
    assert summary["scoring"] == "exact" and summary["split"] == "test"
    assert {s for _, s, _ in seen} == {("line",) * 10}  # zero-shot passes stop after the first line
    from transformers import AutoTokenizer
    longest = max(len(AutoTokenizer.from_pretrained(tiny_model)(w, add_special_tokens=False)["input_ids"])
                  for w in ("even", "odd"))
    assert {budget for _, _, budget in seen} == {2 * longest + 16}  # no room for a rambling first line
    assert run.read_json(run.data_checks)["targets"]["test"] == {"rows": 10, "scoreable": 10, "scoring": "exact",
                                                                 "share": 1.0, "without_answer": []}
    assert summary["base"]["strict_accuracy"] == 0 and summary["base"]["flexible_accuracy"] == 0.5
    assert summary["tuned"]["strict_accuracy"] == summary["tuned"]["flexible_accuracy"] == 0.9
    pred = next(p for p in run.read_predictions() if p["model"] == "base")
    assert pred["reference"] in ("even", "odd") and pred["strict_answer"] == "It is odd, I think."
    by = summary["by_category"]  # few distinct references: accuracy per class, and where the answers went
    assert by["source"] == "reference answer (class)" and {r["category"]: r["n"] for r in by["rows"]} == \
        {"even": 5, "odd": 5}
    assert by["confusion"] == {"base": {"even": {"odd": 5}, "odd": {"odd": 5}},
                               "tuned": {"even": {"odd": 1, "even": 4}, "odd": {"odd": 5}}}
    md = run.report_md.read_text()
    assert "| Exact-match accuracy (answer in line) | 50.0 % → 90.0 % |" in md
    assert "| Exact-match accuracy (exact line) | 0.0 % → 90.0 % |" in md
    assert "Exact-match accuracy = the completion's first non-blank line against the whole target" in md
    assert "| even | 5 | 0 % | 80 % | +80.0 (+" in md and "Where the tuned model's answers went" in md
    assert "GSM8K" not in md.split("## Take it further")[0].replace("lm-eval's GSM8K format", "")
    card = (run.adapter / "README.md").read_text()
    assert "| model | n | exact line | answer in line |" in card and "name: exact line accuracy" in card


def tagged_rows(n: int, start: int = 0) -> list[dict]:
    """Reasoning-format parity rows: the worked step in <think> tags, the label in <answer> tags."""
    return [{"question": f"Is {i} even or odd?", "answer": f"<think>{i} mod 2 = {i % 2}</think>\n<answer>"
             f"{'even' if i % 2 == 0 else 'odd'}</answer>"} for i in range(start, start + n)]


@pytest.mark.slow
def test_tagged_answers_are_scored_by_regex_through_eval_report_and_card(tiny_model, tmp_path, monkeypatch):
    """<answer> tags in the targets: eval.scoring=auto picks regex with the default pattern; zero-shot passes stop
    after the line holding a match; an eval.also set of `#### N` targets is still scored numerically; the summary,
    report and card name the mode and its pattern. Generation is replaced by answers chosen here."""
    import re
    from conftest import write_jsonl
    from tunelab.evaluate.generate import AfterThinking, Generation
    from tunelab.evaluate.scoring import ANSWER_TAG
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    folder, sums = tmp_path / "tagged", tmp_path / "sums"
    folder.mkdir(), sums.mkdir()
    write_jsonl(folder / "train.jsonl", tagged_rows(40))
    write_jsonl(folder / "test.jsonl", tagged_rows(10, start=100))
    write_jsonl(sums / "test.jsonl", [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(4)])
    seen = []

    def answers(model, tok, prompts, max_new_tokens, slots, label, on_result, stops, prefix, sampling=None):
        seen.append((label, tuple(stops), max_new_tokens))
        if "What is" in prompts[0]:  # the eval.also set: right on the first question only
            return [Generation("#### 0", 2) for _ in prompts], 0.1
        truth = ["even" if int(p.split("Is ")[1].split(" ")[0]) % 2 == 0 else "odd" for p in prompts]
        if label == "eval base":  # untagged: no answer read, however right
            said = [f"It is {t}." for t in truth]
        else:  # tagged, first answer wrong and corrected in a second tag on the first question
            said = [f"<think>x</think>\n<answer>{'odd' if t == 'even' else 'even'}</answer>, no: <answer>{t}</answer>"
                    if k == 0 else f"<answer>{t.capitalize()}.</answer>" for k, t in enumerate(truth)]
        return [Generation(a, 3) for a in said], 0.1

    monkeypatch.setattr("tunelab.evaluate.generate.generate", answers)
    args = ["run", "quickstart", "--set", f"model.name={tiny_model}", "--set", f"data.source={folder}",
            "--set", "data.label_field=null", "--set", "train.epochs=1", "--set", "train.batch_size=8",
            "--set", f"eval.also=[{{source: {sums}, name: sums}}]", "--set", "analysis.k_max=3",
            "--run-dir", str(tmp_path / "r")]
    assert main(args) == 0
    run = RunDir(tmp_path / "r")
    summary = run.read_eval_summary()
    assert summary["scoring"] == "regex" and summary["answer_pattern"] == ANSWER_TAG
    main_passes = [(stops, budget) for label, stops, budget in seen if "What is" not in label and len(stops) == 10]
    tag = re.compile(ANSWER_TAG)  # stop after the tagged line; the adapter's (trained on <think> traces) after it
    assert {stops for stops, _ in main_passes} == {(tag,) * 10, (AfterThinking("</think>", tag),) * 10}
    assert "think_end" not in summary["base"] and summary["tuned"]["think_end"] == "</think>"
    assert summary["tuned"]["without_think_end"] == 9  # only the first answer here thinks first
    assert {budget for _, budget in main_passes} == {96}  # the recipe's eval.max_new_tokens: the reasoning needs room
    assert run.read_json(run.data_checks)["targets"]["test"] == {"rows": 10, "scoreable": 10, "scoring": "regex",
                                                                 "share": 1.0, "without_answer": []}
    assert summary["base"]["strict_accuracy"] == summary["base"]["flexible_accuracy"] == 0
    assert summary["tuned"]["strict_accuracy"] == 0.9 and summary["tuned"]["flexible_accuracy"] == 1.0
    assert (summary["base"]["no_answer"], summary["tuned"]["no_answer"]) == (10, 0)  # untagged: nothing read
    first = next(p for p in run.read_predictions() if p["model"] == "tuned" and p["id"] == "test-1")
    assert first["reference"] == "even" and (first["strict_answer"], first["flexible_answer"]) == ("odd", "even")
    assert summary["by_category"]["source"] == "reference answer (class)"
    also = ExtraSetDir(run.path, "sums").read_eval_summary()
    assert also["scoring"] == "numeric" and "answer_pattern" not in also and also["tuned"]["flexible_accuracy"] == 0.25
    md = run.report_md.read_text()
    assert "| Regex-match accuracy (answer in last match) | 0.0 % → 100.0 % |" in md
    assert "Regex-match accuracy = the answer read by the pattern `<answer>\\s*(.*?)\\s*</answer>`" in md
    assert "**ℹ note** — Answers in which the scoring found no answer (no match of the answer pattern): base 10 of " \
           "10. Those passes' accuracy measures whether the model writes its answer in the form scored" in md
    card = (run.adapter / "README.md").read_text()
    assert "| model | n | first match | answer in last match |" in card
    assert "the answer the pattern `<answer>\\s*(.*?)\\s*</answer>` reads" in card


def test_the_chat_baseline_is_the_base_model_asked_through_its_chat_template(two_epoch_run, monkeypatch, tmp_path):
    """eval.chat_baseline: the base model answers each rendered prompt sent as the user turn of its chat template
    (lm-eval's --apply_chat_template), beside the plain base pass, and the summary pairs it with the fine-tune."""
    import shutil
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = two_epoch_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path, ignore=shutil.ignore_patterns("eval"))  # not other tests' passes
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"chat_baseline": True, "fewshot": 0,
                                                                      "epochs": "last"})})
    result = evaluate(cfg, run)
    assert pass_names(result.summary) == ["base", "base-chat", "tuned"]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    asked = [p for p in result.predictions if p["model"] == "base-chat"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Instruction: {p['question']}\nResponse:"}],
                                       tokenize=False, add_generation_prompt=True) for p in asked]
    assert all(p.startswith("<|im_start|>") and p.endswith("<|im_start|>assistant\n") for p in prompts)
    texts = [generate(base, tok, [p], max_new_tokens=10, slots=1)[0][0].completion for p in prompts]
    assert texts == [p["completion"] for p in asked] and len(asked) == 5
    assert result.summary["base-chat"]["max_new_tokens"] == 10  # and how many answers it cut
    assert result.summary["base-chat"]["at_budget"] == sum(p["tokens"] >= 10 for p in asked)
    passes = [result.summary[name] for name in pass_names(result.summary)]
    assert result.summary["cost"]["device_hours"] == pytest.approx(sum(s["seconds"] for s in passes) / 3600, abs=1e-8)
    again = evaluate(cfg, run).summary  # the base passes come from the cache now: their time is not this eval's
    assert again["base"]["cached"] and again["base-chat"]["cached"] and not again["tuned"].get("cached")
    assert again["cost"]["device_hours"] == pytest.approx(again["tuned"]["seconds"] / 3600, abs=1e-8)
    assert run.eval_cost()["cost_usd"] == again["cost"]["cost_usd"] > 0
    vs = result.summary["chat_baseline"]["tuned_vs_chat"]["flexible"]
    tuned = [p["flexible_correct"] for p in result.predictions if p["model"] == "tuned"]
    assert vs["n"] == 5 and vs["delta_pts"] == pytest.approx(20 * (sum(tuned) - sum(p["flexible_correct"]
                                                                                      for p in asked)))


def test_a_few_shot_context_longer_than_max_length_keeps_every_reply_token_the_trained_pass_keeps(tiny_recipe):
    from transformers import AutoTokenizer
    from tunelab.data import Example
    from tunelab.evaluate.losses import _written
    cfg = validate({**tiny_recipe, "train": {**tiny_recipe["train"], "max_length": 48}}, "tiny")
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    shots = [Example(f"train-{i}", f"Tell a long story number {i}.\n", "Once upon a time " * 12, {}) for i in range(3)]
    rows = [Example(f"test-{i}", f"Describe item {i}.\n", f"Item {i} is small and wooden.", {}) for i in range(4)]
    trained, few = _written("trained", cfg, rows, tok, shots), _written("fewshot", cfg, rows, tok, shots)
    assert len(few[0].input_ids) > 48  # the context alone is longer than train.max_length
    for a, b in zip(trained, few, strict=True):  # the same reply tokens carry loss after the context
        assert [t for t in a.labels if t != -100] == [t for t in b.labels if t != -100]


def _with_a_prose_set(two_epoch_run, tmp_path, **settings) -> tuple:
    """The trained run copied without its eval, and its recipe with `settings` in eval and one eval.also set of
    4 prose replies in one file (no split: all its rows scored), named prose."""
    import shutil
    from conftest import write_jsonl
    cfg, trained = two_epoch_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path, ignore=shutil.ignore_patterns("eval"))
    prose = write_jsonl(tmp_path / "prose.jsonl", [{"q": f"Describe the number {i}.", "a": f"The number {i} is whole, "
                                                    f"and it comes after {i - 1} when counting."} for i in range(4)])
    raw = cfg.model_dump(mode="json")
    raw["eval"].update(**settings, also=[{"source": str(prose), "template": "{q}\n", "target": "{a}", "name": "prose"}])
    return validate(raw, "tiny2"), run

def test_the_chat_baseline_of_a_set_measured_by_loss_asks_each_prompt_as_a_user_turn(two_epoch_run, tmp_path):
    """eval.chat_baseline on a set measured by loss: the base model's target loss with each prompt as the user turn of
    its chat template (transformers' loss on tokens built here from apply_chat_template), paired with the tuned
    adapter's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.config import also_recipe
    from tunelab.data import load_splits
    from tunelab.evaluate.stage import evaluate_extra
    from tunelab.rundir import ExtraSetDir
    from tunelab.stats import paired_loss_difference
    cfg, run = _with_a_prose_set(two_epoch_run, tmp_path, fewshot=0, chat_baseline=True, overlap=False)  # losses
    ((_, result),) = evaluate_extra(cfg, run)
    s = result.summary
    assert list(s["losses"]) == ["base", "base-chat", "epoch-1", "tuned"]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    total = tokens = 0
    extra = also_recipe(cfg, cfg.eval.also[0])
    for r in load_splits(extra.data, extra.eval).test:
        turn = [{"role": "user", "content": r.prompt.strip()}]  # "Describe the number 1." without its newline
        head = tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        reply = tok.apply_chat_template(turn + [{"role": "assistant", "content": r.target}], tokenize=False)
        asked = tok(head, add_special_tokens=False)["input_ids"]
        said = tok(reply[len(head):].rstrip(), add_special_tokens=False)["input_ids"]  # the reply and <|im_end|>
        with torch.no_grad():
            out = model(input_ids=torch.tensor([asked + said]), labels=torch.tensor([[-100] * len(asked) + said]))
        total, tokens = total + out.loss.item() * len(said), tokens + len(said)  # every reply token is predicted
    assert s["losses"]["base-chat"]["loss"] == pytest.approx(total / tokens, rel=1e-4)
    per_row = {}
    for r in ExtraSetDir(run.path, "prose").read_jsonl(ExtraSetDir(run.path, "prose").losses):
        per_row.setdefault(r["model"], {})[r["id"]] = (r["loss"], r["tokens"])
    assert s["chat_baseline"] == paired_loss_difference(per_row["base-chat"], per_row["tuned"])


@pytest.mark.slow
def test_an_extra_set_no_scoring_mode_suits_is_measured_by_loss(two_epoch_run, monkeypatch, tmp_path):
    """An eval.also set of prose replies: the base model's, each epoch adapter's and the final adapter's target loss
    on its rows (the loss transformers computes on the same tokens), paired tuned − base, into eval/also/<name>/;
    a second eval keeps the models already measured."""
    import shutil
    from conftest import write_jsonl
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.data import load_splits
    from tunelab.evaluate.stage import evaluate_extra
    from tunelab.rundir import ExtraSetDir
    from tunelab.stats import paired_loss_difference
    from tunelab.train.batching import IGNORE, tokenize_with
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = two_epoch_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path, ignore=shutil.ignore_patterns("eval"))
    prose = write_jsonl(tmp_path / "prose.jsonl", [{"q": f"Describe the number {i}.", "a": f"The number {i} is a "
                                                    f"whole number, written with {len(str(i))} digits, and it comes "
                                                    f"after {i - 1} when counting up from zero."} for i in range(6)])
    raw = cfg.model_dump(mode="json")
    raw["eval"].update(fewshot=0, also=[{"source": str(prose), "template": "{q}\n", "target": "{a}", "name": "prose"}])
    cfg = validate(raw, "tiny2")
    ((name, result),) = evaluate_extra(cfg, run)
    s = result.summary
    assert name == "prose" and s["scoring"] == "loss" and s["n"] == 5 and "scor" in s["reason"]  # eval.limit 5
    assert list(s["losses"]) == ["base", "epoch-1", "tuned"]
    from tunelab.config import also_recipe
    extra = also_recipe(cfg, cfg.eval.also[0])
    rows = load_splits(extra.data, extra.eval).test[:5]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    items, _ = tokenize_with(extra, rows, tok)

    def loss_of(model) -> float:  # transformers' own loss, token-weighted over the rows
        total = tokens = 0
        for it in items:
            labels = torch.tensor([it.labels])
            with torch.no_grad():
                out = model(input_ids=torch.tensor([it.input_ids]), labels=labels)
            n = int((labels[0, 1:] != IGNORE).sum())
            total, tokens = total + out.loss.item() * n, tokens + n
        return total / tokens
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    assert s["losses"]["base"]["loss"] == pytest.approx(loss_of(base), rel=1e-4)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.model.name), str(run.adapter))
    assert s["losses"]["tuned"]["loss"] == pytest.approx(loss_of(tuned.eval()), rel=1e-4)
    view = ExtraSetDir(run.path, "prose")
    per_row = {}
    for r in view.read_jsonl(view.losses):
        per_row.setdefault(r["model"], {})[r["id"]] = (r["loss"], r["tokens"])
    assert s["loss_difference"] == paired_loss_difference(per_row["base"], per_row["tuned"])
    assert [(e["epoch"], e["model"]) for e in s["epochs"]] == [(1, "epoch-1"), (2, "tuned")]
    assert s["cost"]["device_hours"] > 0
    _its_replies_are_generated_scored_and_resumed_apart(cfg, run, view)
    ((_, again),) = evaluate_extra(cfg, run, only="tuned")  # what was measured on the same rows is kept
    assert again.summary["losses"] == s["losses"] and again.summary["loss_difference"] == s["loss_difference"]
    raw["eval"]["also"][0]["target"] = "{a} Indeed."  # the replies written another way: measured again
    ((_, other),) = evaluate_extra(validate(raw, "tiny2"), run)
    assert other.summary["losses"]["base"]["tokens"] > s["losses"]["base"]["tokens"]


def _its_replies_are_generated_scored_and_resumed_apart(cfg, run: RunDir, view) -> None:
    """The set's replies themselves (eval.overlap): each model's greedy reply to the same rows, scored against the
    reference, in eval/also/<name>/replies/; a resumed run that finds them missing generates them alone."""
    from tunelab.evaluate.overlap import score
    from tunelab.evaluate.stage import evaluate_extra
    from tunelab.evaluate.summary import extra_done
    from tunelab.rundir import RepliesDir
    replies = RepliesDir(run.path, "prose")
    said = replies.read_eval_summary()
    rows = replies.read_predictions()
    assert replies.eval_dir == view.eval_dir / "replies" and said["split"] == "test"
    assert [p for p in said if "generated_tokens" in (said[p] or {})] == ["base", "epoch-1", "tuned"]
    assert {r["model"] for r in rows} == {"base", "epoch-1", "tuned"} and len(rows) == 15  # eval.limit 5 each
    assert all(score(r["completion"], r["reference"])["chrf"] == r["chrf"] for r in rows)
    tuned = [r["chrf"] for r in rows if r["model"] == "tuned"]
    assert said["overlap"]["chrf"]["means"][1] == pytest.approx(sum(tuned) / 5, abs=1e-6)
    assert not run.eval_samples.exists()  # the report's samples are the run's own rows'
    assert run.eval_cost()["device_hours"] == pytest.approx(
        view.read_eval_summary()["cost"]["device_hours"] + said["cost"]["device_hours"])
    assert extra_done(cfg, run) and evaluate_extra(cfg, run, skip_done=True) == []  # a resumed run: nothing redone
    stamp = view.eval_summary.stat().st_mtime_ns
    replies.eval_summary.unlink()  # killed before its replies were scored: resumed, the loss passes kept
    assert not extra_done(cfg, run)
    ((_, resumed),) = evaluate_extra(cfg, run, skip_done=True)
    assert replies.read_eval_summary()["overlap"] == said["overlap"] and view.eval_summary.stat().st_mtime_ns == stamp
    assert resumed.summary == view.read_eval_summary()
    assert extra_done(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"overlap": False})}), run)


def test_the_best_loss_adapters_replies_are_generated_and_set_against_the_final_adapters(two_epoch_run, monkeypatch,
                                                                                         tmp_path):
    """adapters/best-loss answers the held-out rows too (eval.overlap), as the adapter it holds would; its chrF is
    paired with the final adapter's, and the report says which came closer."""
    import shutil
    from tunelab.evaluate.stage import replies
    from tunelab.report.replies import section
    from tunelab.rundir import RepliesDir
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = two_epoch_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path, ignore=shutil.ignore_patterns("eval"))
    shutil.copytree(run.epoch_adapter(1), run.best_loss_adapter)  # as if epoch 1's weights were the lowest pass's
    s = replies(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"fewshot": 0})}), run)
    said = {(r["id"], r["model"]): r["completion"] for r in RepliesDir(run.path).read_predictions()}
    assert [p for p in s if "generated_tokens" in (s[p] or {})] == ["base", "epoch-1", "best-loss", "tuned"]
    assert all(said[i, "best-loss"] == said[i, "epoch-1"] for i, model in said if model == "tuned")  # same weights
    d = s["versus"]["best-loss"]["chrf"]
    assert d == s["versus"]["epoch-1"]["chrf"] and [e["model"] for e in s["epochs"]] == ["epoch-1", "tuned"]
    blocks, found = section(run)
    (table,) = [b for b in blocks if b[0] == "table"]
    assert [row[0] for row in table[2]] == ["base", "epoch-1", "best-loss", "tuned"]
    (verdict,) = [o for o in found if "adapters/best-loss" in o.text]
    assert verdict.text.startswith("The replies of the adapter of the lowest validation loss (")
    assert f"chrF {d['means'][0]:.3f} against {d['means'][1]:.3f} (final − it {d['delta']:+.3f}" in verdict.text
    assert verdict.kind == ("watch" if d["ci95"][1] < 0 else "info")  # flagged only when the final one is worse

def test_a_set_with_no_pool_of_shots_generates_its_replies_without_the_few_shot_passes(two_epoch_run, monkeypatch,
                                                                                       tmp_path):
    """An eval.also set of one file (all its rows scored, none left to take shots from) with eval.fewshot and
    eval.chat_baseline: its replies come from base, the chat baseline, each epoch and tuned — the few-shot passes
    are left out, as its loss passes leave them, instead of asking the chat template for an empty conversation."""
    from tunelab.evaluate.stage import evaluate_extra
    from tunelab.rundir import RepliesDir
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, run = _with_a_prose_set(two_epoch_run, tmp_path, fewshot=2, chat_baseline=True)
    evaluate_extra(cfg, run, only="base")  # the base passes alone: its loss, no replies (they pair with tuned)
    assert not RepliesDir(run.path, "prose").eval_dir.exists()
    ((_, result),) = evaluate_extra(cfg, run)
    said = RepliesDir(run.path, "prose").read_eval_summary()
    assert [p for p in said if "generated_tokens" in (said[p] or {})] == ["base", "base-chat", "epoch-1", "tuned"]
    assert list(result.summary["losses"]) == ["base", "base-chat", "epoch-1", "tuned"]  # as its loss passes

def test_loss_passes_advance_their_progress_bar_row_by_row(two_epoch_run, monkeypatch, tmp_path):
    """A set measured by loss shows one bar over every model's rows, advanced as each micro-batch is measured, not
    once per model: a long pass does not sit still."""
    import shutil
    from conftest import recording_bar, write_jsonl
    from tunelab.evaluate.stage import evaluate_extra
    cfg, trained = two_epoch_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path, ignore=shutil.ignore_patterns("eval"))
    prose = write_jsonl(tmp_path / "prose.jsonl", [{"q": f"Tell me about {i}.", "a": f"{i} is a number that comes "
                                                    "after the one before it, as counting goes."} for i in range(6)])
    raw = cfg.model_dump(mode="json")
    raw["eval"].update(fewshot=0, also=[{"source": str(prose), "template": "{q}\n", "target": "{a}", "name": "p"}])
    seen = recording_bar(monkeypatch)
    evaluate_extra(validate({**raw, "train": {**raw["train"], "batch_size": 2}}, "tiny2"), run)
    (description, total), steps = seen[0], seen[1:]
    assert description.endswith("loss passes") and total == 3 * 5  # base, epoch 1, tuned over eval.limit's 5 rows
    assert sum(n for n, _ in steps) == total and len(steps) > 3  # several steps per model: batches of 2 rows
    assert {fields["model"] for _, fields in steps} == {"base", "epoch-1", "tuned"}  # the model measured, beside


def test_a_few_shot_loss_pass_is_kept_only_after_the_same_shots(tmp_path):
    """A later eval keeps what was measured on the same rows, but a few-shot pass only when its shots are the same:
    eval.fewshot_from can change them while N stays."""
    from tunelab.data import Example
    from tunelab.evaluate.losses import _kept, _shots_digest
    from tunelab.rundir import ExtraSetDir
    view = ExtraSetDir(tmp_path / "run", "prose")
    view.eval_dir.mkdir(parents=True)
    shots = [Example("train-1", "Q1\n", "A1", {}), Example("train-2", "Q2\n", "A2", {})]
    other = [Example("bench-1", "Q9\n", "A9", {}), *shots[1:]]
    assert _shots_digest(shots) != _shots_digest(other) and _shots_digest(shots) == _shots_digest(list(shots))
    view.write_json(view.eval_summary, {"prompts": "p", "losses": {
        "base": {"loss": 1.0}, "base-2shot": {"loss": 0.9, "shots": _shots_digest(shots)}}})
    view.write_jsonl(view.losses, [{"id": "test-1", "model": m, "loss": 1.0, "tokens": 3}
                                   for m in ("base", "base-2shot")])
    assert set(_kept(view, ["test-1"], "p", _shots_digest(shots))) == {"base", "base-2shot"}
    assert set(_kept(view, ["test-1"], "p", _shots_digest(other))) == {"base"}  # other shots: measured again
    assert _kept(view, ["test-1"], "other prompts", _shots_digest(shots)) == {}


def test_a_continued_runs_start_adapter_is_measured_by_loss_and_by_its_replies_too(two_epoch_run, monkeypatch,
                                                                                   tmp_path):
    """A set measured by loss, in a run that continued an adapter (adapters/start/): that adapter is measured and
    answers beside the others, the tuned adapter is set against it, and the first epoch's change is from it."""
    import shutil
    from conftest import write_jsonl
    from tunelab.evaluate.stage import evaluate_extra
    from tunelab.report import write_report
    from tunelab.rundir import ExtraSetDir, RepliesDir
    from tunelab.stats import paired_loss_difference
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = two_epoch_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path, ignore=shutil.ignore_patterns("eval"))
    shutil.copytree(run.epoch_adapter(1), run.start_adapter)  # as if the run had continued epoch 1's adapter
    prose = write_jsonl(tmp_path / "prose.jsonl", [{"q": f"Describe {i}.", "a": f"{i} is a whole number that comes "
                                                    f"after {i - 1}."} for i in range(6)])
    raw = cfg.model_dump(mode="json")
    raw["eval"].update(fewshot=0, also=[{"source": str(prose), "template": "{q}\n", "target": "{a}", "name": "prose"}])
    ((_, result),) = evaluate_extra(validate(raw, "tiny2"), run)
    s = result.summary
    assert list(s["losses"]) == ["base", "start", "epoch-1", "tuned"]
    assert s["losses"]["start"]["loss"] == s["losses"]["epoch-1"]["loss"] != s["losses"]["base"]["loss"]
    per_row = ExtraSetDir(run.path, "prose").read_losses()
    by_model = {m: {i: per_row[i][m] for i in per_row} for m in ("start", "tuned")}
    assert s["start_baseline"] == paired_loss_difference(by_model["start"], by_model["tuned"])
    assert s["epochs"][0]["vs_previous"]["model"] == "start"
    said = RepliesDir(run.path, "prose").read_eval_summary()
    assert "start" in said["versus"] and said["epochs"][0]["previous"] == "start"
    replies = RepliesDir(run.path, "prose").read_predictions()
    assert [r["completion"] for r in replies if r["model"] == "start"] == \
        [r["completion"] for r in replies if r["model"] == "epoch-1"]
    write_report(run)
    text = run.report_md.read_text()
    assert "than the adapter this run continued training (lora.continue_from, adapters/start/)" in text or \
        "and the adapter this run continued training (lora.continue_from, adapters/start/) made" in text
    assert f"| start {said['epochs'][0]['chrf']['means'][0]:.3f} → " in text  # the replies' chrF per epoch


def test_a_continued_runs_other_test_sets_say_what_its_training_did_from_the_start_adapter(two_epoch_run,
                                                                                           monkeypatch, tmp_path):
    """An eval.also set scored by its answers, in a run that continued an adapter: the adapter it continued answers
    it too, and the report gives that accuracy first per epoch and judges the tuned adapter against it (what training
    on new data cost or gained on an earlier task)."""
    import shutil
    from tunelab.evaluate.stage import evaluate_extra
    from tunelab.report import write_report
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    cfg, trained = two_epoch_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path, ignore=shutil.ignore_patterns("eval"))
    shutil.copytree(run.epoch_adapter(1), run.start_adapter)
    raw = cfg.model_dump(mode="json")
    raw["eval"].update(fewshot=0, also=[{"source": "synthetic:arith", "name": "older", "limit": 5}])
    ((_, result),) = evaluate_extra(validate(raw, "tiny2"), run)
    s = result.summary
    assert s["start"]["flexible_accuracy"] == s["epoch-1"]["flexible_accuracy"]  # the same adapter's answers
    assert s["continued"]["tuned_vs_start"]["flexible"]["n"] == 5
    write_report(run)
    text = run.report_md.read_text()
    start = f"start {100 * s['start']['flexible_accuracy']:.0f} % → {100 * s['epoch-1']['flexible_accuracy']:.0f} %"
    assert f"| {start} → " in text and "on older from the adapter this run continued to its own (flexible" in text
