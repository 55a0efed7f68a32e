"""`tunelab run` end to end on a tiny model: every stage writes its files; a re-run redoes nothing."""

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.pipeline import stages_done
from tunelab.rundir import RepliesDir, RunDir


def _run_args(tiny_model: str, run_dir: Path, *settings: str) -> list[str]:
    """`tunelab run quickstart` on the tiny model into `run_dir`, each of `settings` a --set."""
    return ["run", "quickstart", "--set", f"model.name={tiny_model}", *(a for s in settings for a in ("--set", s)),
            "--run-dir", str(run_dir)]


SMALL_RUN = ("data.synthetic_rows=30", "data.synthetic_test_rows=4", "eval.limit=4", "eval.max_new_tokens=8",
             "train.epochs=2", "train.max_length=128", "analysis.k_max=3")  # a small synthetic run, two epochs


@pytest.mark.slow
def test_run_all_stages_then_resume_without_redoing(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    args = _run_args(tiny_model, tmp_path / "q", "data.synthetic_rows=40", "data.synthetic_test_rows=6", "eval.limit=6",
                     "eval.max_new_tokens=8", "train.epochs=2", "train.max_length=128", "analysis.k_max=4")
    assert main(args) == 0
    run = RunDir(tmp_path / "q")
    assert stages_done(run) == {"train": True, "eval": True, "analyze": True}
    out = capsys.readouterr().out
    assert f"report: {run.report_html}" in out and "GSM8K-style accuracy (flexible-extract)" in out and "cost $" in out
    md = run.report_md.read_text()
    assert "## Insights from model analysis" in md and "GSM8K-style accuracy (flexible-extract)" in md
    assert "## Data" in md and run.read_json(run.data_checks)["rows"]["test"] == 6  # analyze ran the data checks
    assert "accuracy per epoch (flexible-extract): base" in out and "## Questions gained and lost" in md
    stamp = run.summary.stat().st_mtime_ns, (run.eval_dir / "summary.json").stat().st_mtime_ns
    assert main(args) == 0  # resumed: nothing to redo but the report
    assert (run.summary.stat().st_mtime_ns, (run.eval_dir / "summary.json").stat().st_mtime_ns) == stamp
    assert main([*args[:-2], "--set", "train.lr=0.5", "--run-dir", str(tmp_path / "q")]) == 2
    assert "holds a run of a different recipe" in capsys.readouterr().err
    # a run made before a key existed (here model.hub_id) still resumes: the key takes its default
    run.config.write_text("".join(line for line in run.config.read_text().splitlines(keepends=True)
                                  if not line.strip().startswith("hub_id:")))
    assert main(args) == 0


@pytest.mark.slow
def test_prose_targets_skip_eval_say_why_and_still_report(tiny_model, tmp_path, caplog, capsys):
    from conftest import write_jsonl
    folder = tmp_path / "chats"
    folder.mkdir()
    turns = [{"messages": [{"role": "user", "content": f"Name a colour, please ({c})."},
                           {"role": "assistant", "content": f"The colour you asked for is {c}, a fine choice for "
                                                            "any room."}]}
             for c in ["red", "blue", "green", "teal", "pink", "gold", "grey", "navy"] * 3]
    write_jsonl(folder / "train.jsonl", turns[:20])
    write_jsonl(folder / "test.jsonl", turns[20:])
    args = _run_args(tiny_model, tmp_path / "c", f"data.source={folder}", "data.messages=messages",
                     "data.template={user}", "data.target={assistant}", "data.label_field=null", "train.epochs=1",
                     "train.batch_size=4", "analysis.k_max=3", "eval.fewshot=2")
    assert main(args) == 0
    run = RunDir(tmp_path / "c")
    reason = "data.target: of 4 test targets, 0 state a final number"
    out = capsys.readouterr().out
    assert f"accuracy: not measured ({reason}" in out
    assert re.search(r"train loss \d+\.\d{4} \(one epoch\), val loss", out)  # no first-to-last change in one epoch
    assert run.read_summary()["train_loss_improvement_pct"] is None  # not a measured 0 % (compare shows —)
    assert reason in caplog.text  # said before training, not after it
    assert reason in run.read_json(run.eval_skipped)["reason"] and not run.eval_summary.exists()
    md = run.report_md.read_text()
    assert f"| Answer accuracy | not measured | no answer check: {reason}" in md
    assert "| Train loss improvement | — (one epoch) |" in md
    samples = run.read_jsonl(run.eval_samples)  # not scored, but seen: 4 test prompts, base and tuned answers
    assert [s["id"] for s in samples] == ["test-1", "test-2", "test-3", "test-4"]
    assert samples[0]["reference"] == turns[20]["messages"][1]["content"]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.data import chat
    from tunelab.evaluate.generate import generate
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = chat.prompt(tok, turns[20]["messages"][0]["content"])  # the user turn as training wrote it
    (alone,), _ = generate(AutoModelForCausalLM.from_pretrained(tiny_model), tok, [prompt],
                           run.read_recipe().eval.max_new_tokens, stops=[[]])
    assert samples[0]["base"] == alone.completion  # the base model's greedy answer, to EOS or the budget
    assert "## Sample answers" in md and f"No answer check ({reason}" in md
    _generated_replies_are_scored_against_the_references(run, samples, out, md)
    _held_out_replies_are_measured_by_loss(run, out, md, args, capsys)
    _chat_rows_few_shot_baseline_is_the_loss_after_the_shots_as_turns(run, tiny_model, turns, md)


@pytest.mark.slow
def test_every_reply_of_a_held_out_chat_is_generated_and_measured_by_loss_with_eval_turns_all(tiny_model, tmp_path,
                                                                                            capsys):
    """eval.turns all on prose chats of two exchanges: each reply is a held-out row of its own, asked after the
    turns before it — generated and scored by chrF, and measured by loss — under `<id>.1` and the row's id."""
    from conftest import write_jsonl
    from tunelab.rundir import HeldOutLossDir
    folder = tmp_path / "chats"
    folder.mkdir()
    chats = [{"messages": [{"role": "user", "content": f"Name a colour, please ({c})."},
                           {"role": "assistant", "content": f"The colour you asked for is {c}, a fine choice."},
                           {"role": "user", "content": "And a second one?"},
                           {"role": "assistant", "content": f"Then {c} again, as it suits any room well."}]}
             for c in ["red", "blue", "green", "teal", "pink", "gold"] * 2]
    write_jsonl(folder / "train.jsonl", chats[:9])
    write_jsonl(folder / "test.jsonl", chats[9:])
    args = _run_args(tiny_model, tmp_path / "c", f"data.source={folder}", "data.messages=messages",
                     "data.template={user}", "data.target={assistant}", "data.label_field=null", "train.epochs=1",
                     "train.batch_size=4", "analysis.k_max=3", "eval.turns=all", "eval.max_new_tokens=8")
    assert main(args) == 0
    run = RunDir(tmp_path / "c")
    asked = ["test-1.1", "test-1", "test-2.1", "test-2", "test-3.1", "test-3"]
    generated = RepliesDir(run.path).read_predictions()
    assert [r["id"] for r in generated if r["model"] == "base"] == asked
    first = next(r for r in generated if r["id"] == "test-1.1" and r["model"] == "base")
    assert first["reference"] == chats[9]["messages"][1]["content"]  # the first reply, asked after the first turn
    measured = HeldOutLossDir(run.path).read_eval_summary()
    assert measured["n"] == 6 and "| Reply chrF vs reference |" in run.report_md.read_text()


def _generated_replies_are_scored_against_the_references(run: RunDir, samples: list[dict], out: str, md: str) -> None:
    """The prose run's held-out replies, generated by base and tuned: each scored by chrF and ROUGE-L against its
    reference, tuned − base paired over rows, said on the console and in the report with its verdict."""
    from sacrebleu.metrics import CHRF
    from tunelab.evaluate.overlap import rouge_l
    view = RepliesDir(run.path)
    summary, rows = view.read_eval_summary(), view.read_predictions()
    assert summary["split"] == "test" and sorted(r["id"] for r in rows if r["model"] == "base") == \
        ["test-1", "test-2", "test-3", "test-4"]  # eval.overlap: every held-out row eval would score, not 5 samples
    said = {(r["id"], r["model"]): r for r in rows}
    assert [said[s["id"], "tuned"]["completion"] for s in samples] == [s["tuned"] for s in samples]
    for r in rows:  # each reply scored as sacrebleu's chrF and the LCS F1 of its words
        assert r["chrf"] == pytest.approx(CHRF().sentence_score(r["completion"], [r["reference"]]).score / 100,
                                          abs=1e-6)
        assert r["rouge_l"] == pytest.approx(rouge_l(r["completion"], r["reference"]), abs=1e-6)
    chrf = summary["overlap"]["chrf"]
    means = [sum(said[f"test-{i}", m]["chrf"] for i in range(1, 5)) / 4 for m in ("base", "tuned")]
    assert chrf["n"] == 4 and chrf["means"] == pytest.approx(means, abs=1e-5)
    assert chrf["delta"] == pytest.approx(means[1] - means[0], abs=1e-5)
    assert f"chrF {means[0]:.3f} → {means[1]:.3f} ({chrf['delta']:+.3f}, 95 % CI" in out
    assert f"| Reply chrF vs reference | {means[0]:.3f} → {means[1]:.3f} |" in md
    assert "## Held-out replies, generated" in md and re.search(
        r"The tuned adapter's generated replies are (closer to|further from|no closer to) the references", md)
    assert not list(view.eval_dir.glob("journal-*.jsonl"))  # finished: its journal is gone
    assert f"tuned (chrF {said['test-1', 'tuned']['chrf']:.3f})" in md  # each sample answer with its score
    definitions = md[md.index("## Definitions"):]  # what was measured is defined, answer accuracy is not
    assert "- Reply chrF = sacrebleu's sentence chrF" in definitions and "- Held-out target loss = " in definitions
    assert "- GSM8K-style accuracy" not in definitions and "Accuracy interval" not in definitions
    assert f"the first 4 test rows), scored against the references from 0 to 1: chrF {means[0]:.3f} → " \
           f"{means[1]:.3f}" in (run.adapter / "README.md").read_text()  # the model card says it too
    from tunelab.status import describe
    assert describe(run)["accuracy"]["chrf_delta"] == chrf["delta"]  # `tunelab ls --json` gives it


def _held_out_replies_are_measured_by_loss(run: RunDir, out: str, md: str, args: list[str], capsys) -> None:
    """The prose run's held-out replies: measured by target loss, reported, kept by a later eval, said by check."""
    held_out = run.read_json(run.eval_dir / "loss" / "summary.json")  # the replies measured by loss instead
    assert held_out["split"] == "test" and held_out["n"] == 4
    assert set(held_out["losses"]) == {"base", "base-2shot", "tuned"}  # eval.fewshot: 2 as chat turns (below)
    d = held_out["loss_difference"]
    assert d["means"] == pytest.approx([held_out["losses"]["base"]["loss"], held_out["losses"]["tuned"]["loss"]],
                                       abs=1e-3) and d["n"] == 4
    assert f"held-out replies (test rows, measured by loss): target loss {d['means'][0]:.3f} → " \
           f"{d['means'][1]:.3f}" in out
    assert f"| Held-out target loss | {d['means'][0]:.3f} → {d['means'][1]:.3f} |" in md
    assert re.search(r"\| (less|more) likely \| test-\d \| Name a colour, please \(\w+\)\. \| \d+\.\d{3} \|", md)
    assert "## Held-out replies, by loss" in md and re.search(r"The fine-tune (made the replies in the held-out rows "
                                                              r"(less|more) likely|did not change)", md)
    assert "Answers not scored (data.target: of 4 test targets" in (run.adapter / "README.md").read_text()
    generated = RepliesDir(run.path).read_eval_summary()["cost"]  # the loss passes and the replies, priced
    assert generated["device_hours"] > 0 and run.eval_cost()["device_hours"] == pytest.approx(
        held_out["cost"]["device_hours"] + generated["device_hours"])
    clusters = [c for c in run.read_json(run.clusters) if c.get("held_out_rows")]  # each row by nearest centroid
    assert sum(c["held_out_rows"] for c in clusters) == 4 and "| held-out rows | held-out loss base → tuned |" in md
    joined = run.read_json(run.eval_clusters)
    rows = [r for r in run.read_jsonl(run.eval_dir / "loss" / "losses.jsonl") if r["model"] == "tuned"]
    for c in clusters:  # each cluster's figure: its rows' token-weighted loss
        mine = [r for r in rows if joined[r["id"]] == c["cluster"]]
        assert c["tuned_held_out_loss"] == pytest.approx(sum(r["loss"] * r["tokens"] for r in mine) /
                                                         sum(r["tokens"] for r in mine), abs=1e-4)
        replied = [r["chrf"] for r in RepliesDir(run.path).read_predictions()
                   if r["model"] == "tuned" and joined[r["id"]] == c["cluster"]]  # and its replies' mean chrF
        assert c["reply_rows"] == len(mine) and c["tuned_reply_chrf"] == pytest.approx(sum(replied) / len(mine),
                                                                                      abs=1e-4)
        assert f"| {c['base_held_out_loss']:.3f} → {c['tuned_held_out_loss']:.3f} | {c['base_reply_chrf']:.3f} → " \
               f"{c['tuned_reply_chrf']:.3f} |" in md
    stamp = (run.eval_dir / "loss" / "losses.jsonl").stat().st_mtime_ns
    assert main(["eval", str(run.path)]) == 0  # asked for by name: measured by loss, what was measured kept
    assert f"target loss {d['means'][0]:.3f} → {d['means'][1]:.3f}" in " ".join(capsys.readouterr().out.split())
    assert (run.eval_dir / "loss" / "losses.jsonl").stat().st_mtime_ns == stamp
    replied = RepliesDir(run.path).predictions.stat().st_mtime_ns
    assert main(["eval", str(run.path), "--only", "base"]) == 0  # the base passes alone: the replies left as they are
    assert RepliesDir(run.path).predictions.stat().st_mtime_ns == replied
    assert main(["eval", str(run.path), "--set", "eval.scoring=none"]) == 2  # turned off: an error naming the key
    assert "eval.scoring: none" in capsys.readouterr().err
    assert main(["export", str(run.path), str(run.path.parent / "best"), "--epoch", "best"]) == 2
    assert "answers are not scored (data.target: of 4 test targets" in capsys.readouterr().err  # best-loss instead
    assert not (run.path.parent / "best").exists()
    assert main(["check", *args[1:-2], "--show", "1"]) == 0  # said before anything runs
    said = " ".join(capsys.readouterr().out.split())
    assert "eval: answers not scored (data.target: of 4 test targets" in said
    assert "scores them anyway)); the held-out replies' target loss is measured instead, and the generated " \
           "replies' chrF and ROUGE-L against them" in said
    stated, short = re.search(r"(\d+) state a final number .*, (\d+) are short",
                              run.read_json(run.eval_skipped)["reason"]).groups()  # the counts auto looked at
    assert f"test targets stating a final number / short answers (no scoring mode suits them): {stated} / {short} " \
           f"of 4" in said and "scoreable answer" not in said
    assert f"| test targets stating a final number / short answers (no scoring mode suits them) | {stated} / " \
           f"{short} of 4 |" in md
    assert main(["check", *args[1:-2], "--show", "1", "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["eval_by_loss"] and checked["eval_examples"]["eval"]["by_loss"]


def _reply_loss(lm, asked: list[int], said: list[int]) -> tuple[float, int]:
    """transformers' summed loss over the reply tokens `said` after the prompt tokens `asked`, and their count."""
    import torch
    with torch.no_grad():
        out = lm(input_ids=torch.tensor([asked + said]), labels=torch.tensor([[-100] * len(asked) + said]))
    return out.loss.item() * len(said), len(said)


def _chat_reply_loss(tok, lm, turns: list[dict], reply: str) -> tuple[float, int]:
    """`_reply_loss` of `reply` as the assistant turn after `turns`, both rendered by the tokenizer's chat template."""
    head = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(turns + [{"role": "assistant", "content": reply}], tokenize=False).rstrip()
    said = tok(whole[len(head):], add_special_tokens=False)["input_ids"]
    return _reply_loss(lm, tok(head)["input_ids"], said + [tok.eos_token_id] * (said[-1] != tok.eos_token_id))


def _shot_turns(shots: list[tuple[str, str]]) -> list[dict]:
    return [t for q, a in shots for t in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def _chat_rows_few_shot_baseline_is_the_loss_after_the_shots_as_turns(run: RunDir, model, turns: list[dict],
                                                                      md: str) -> None:
    """base-2shot of a run on chat rows: transformers' loss on each reply after the first two training rows as
    earlier turns ("Question: …\nAnswer:" and its reply), the row asked the same way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok, lm = AutoTokenizer.from_pretrained(model), AutoModelForCausalLM.from_pretrained(model)
    by_id = {**{f"train-{i + 1}": t for i, t in enumerate(turns[:20])},
             **{f"test-{i + 1}": t for i, t in enumerate(turns[20:])}}
    user, reply = ({i: t["messages"][k]["content"] for i, t in by_id.items()} for k in (0, 1))
    trained = sorted((e["id"] for e in run.read_examples() if e["split"] == "train"), key=lambda i: int(i[6:]))
    shots = _shot_turns([(f"Question: {user[i]}\nAnswer:", reply[i]) for i in trained[:2]])
    held_out = run.read_json(run.eval_dir / "loss" / "summary.json")
    total = tokens = 0
    for r in run.read_jsonl(run.eval_dir / "loss" / "losses.jsonl"):
        if r["model"] == "base-2shot":
            loss, n = _chat_reply_loss(tok, lm, shots + [{"role": "user", "content": f"Question: {user[r['id']]}\n"
                                                                                     "Answer:"}], reply[r["id"]])
            total, tokens = total + loss, tokens + n
    assert held_out["losses"]["base-2shot"]["loss"] == pytest.approx(total / tokens, rel=1e-4)
    assert held_out["fewshot_baseline"]["turns"] and "base-chat" not in held_out["losses"]  # the base is that
    assert "| vs the base model prompted 2-shot (target loss) |" in md and \
        "the shots as earlier chat turns, lm-eval's --fewshot_as_multiturn, eval.fewshot |" in md
    d = held_out["fewshot_baseline"]  # and the model card states it with its interval
    assert f"Tuned − the base model prompted 2-shot (the shots as earlier chat turns, lm-eval's " \
           f"--fewshot_as_multiturn, eval.fewshot): {d['delta']:+.3f} ({d['ci95'][0]:+.3f} to " \
           f"{d['ci95'][1]:+.3f})." in (run.adapter / "README.md").read_text()


def _the_few_shot_baseline_is_the_loss_after_lm_evals_prompt(run: RunDir, held_out: dict, model, rows: list[dict]):
    """base-2shot: transformers' loss on each reply after "Question: q\nAnswer: a\n\n" × 2, "Question: q\nAnswer: "
    (the first two training rows as shots, q the row's field), paired with the tuned adapter; base-chat-2shot:
    the same shots and question as chat turns."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok, lm = AutoTokenizer.from_pretrained(model), AutoModelForCausalLM.from_pretrained(model)
    by_id = {f"train-{i + 1}": r for i, r in enumerate(rows)}
    trained = {e["id"] for e in run.read_examples() if e["split"] == "train"}
    shots = sorted(trained, key=lambda i: int(i.split("-")[1]))[:2]  # the first two training rows of the source
    asks = {i: f"Question: {r['q']}\nAnswer:" for i, r in by_id.items()}  # the row's field, not the template's "\n"
    context = "".join(f"{asks[i]} {by_id[i]['a']}\n\n" for i in shots)
    sums = {"base-2shot": [0.0, 0], "base-chat-2shot": [0.0, 0]}
    turns = _shot_turns([(asks[i], by_id[i]["a"]) for i in shots])  # the same shots as chat turns
    for r in run.read_jsonl(run.eval_dir / "loss" / "losses.jsonl"):
        if r["model"] == "base-2shot":
            loss, n = _reply_loss(lm, tok(f"{context}{asks[r['id']]} ")["input_ids"],
                                  tok(by_id[r["id"]]["a"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        elif r["model"] == "base-chat-2shot":  # eval.chat_baseline with eval.fewshot: lm-eval's multi-turn few-shot
            loss, n = _chat_reply_loss(tok, lm, turns + [{"role": "user", "content": asks[r["id"]]}],
                                       by_id[r["id"]]["a"])
        else:
            continue
        sums[r["model"]] = [sums[r["model"]][0] + loss, sums[r["model"]][1] + n]
    for name, (total, tokens) in sums.items():
        assert held_out["losses"][name]["loss"] == pytest.approx(total / tokens, rel=1e-4)
    assert held_out["fewshot_baseline"]["shots"] == 2 and held_out["fewshot_baseline"]["model"] == "base-2shot"
    assert held_out["chat_fewshot_baseline"]["model"] == "base-chat-2shot" and not held_out["fewshot_baseline"]["turns"]


@pytest.mark.slow
def test_without_a_test_split_the_validation_rows_measured_by_loss_agree_with_the_training_curve(tiny_model, tmp_path,
                                                                                              capsys):
    from conftest import write_jsonl
    from tunelab.status import describe
    rows = [{"q": f"Describe item {i}.", "a": f"Item {i} is a small wooden object that people keep on a shelf.",
             "kind": ["wood", "shelf"][i % 2]} for i in range(30)]
    source = write_jsonl(tmp_path / "items.jsonl", rows)  # one file: no test split
    args = _run_args(tiny_model, tmp_path / "v", f"data.source={source}", "data.template={q}\n", "data.target={a}",
                     "data.label_field=kind", "train.epochs=2", "train.batch_size=4", "eval.samples=0",
                     "eval.chat_baseline=true", "eval.fewshot=2", "analysis.k_max=3")
    assert main(args) == 0
    run = RunDir(tmp_path / "v")
    held_out = run.read_json(run.eval_dir / "loss" / "summary.json")
    chatted = held_out["chat_baseline"]  # the prompting baseline, by loss: each prompt asked as a chat turn
    assert chatted["means"][0] == pytest.approx(held_out["losses"]["base-chat"]["loss"], abs=1e-3)
    said = " ".join(capsys.readouterr().out.split())
    assert f"vs the base model asked through its chat template {chatted['means'][0]:.3f}: " \
           f"{chatted['delta']:+.3f}" in said
    md = run.report_md.read_text()
    assert f"| vs the base model asked through its chat template (target loss) | {chatted['means'][0]:.3f} → " in md
    assert re.search(r"(The fine-tune made the replies in the held-out rows more likely than the base model asked|"
                     r"The base model asked through|The fine-tune and the base model asked)", md)
    _the_few_shot_baseline_is_the_loss_after_lm_evals_prompt(run, held_out, tiny_model, rows)
    _the_replies_of_every_baseline_and_epoch_are_generated(run, said, md)
    _each_epoch_is_paired_with_the_one_before(run, held_out, said, md)
    _each_category_is_paired_apart(run, held_out, md)
    epochs = run.read_epochs()
    val = {e["id"] for e in run.read_examples() if e["split"] == "val"}
    assert held_out["split"] == "validation" and held_out["n"] == len(val)
    losses = held_out["losses"]  # the same rows, another code path: the training loop's validation passes
    assert losses["base"]["loss"] == pytest.approx(epochs[0]["val_loss"], abs=1e-4)
    assert losses["epoch-1"]["loss"] == pytest.approx(epochs[1]["val_loss"], abs=1e-4)
    assert losses["tuned"]["loss"] == pytest.approx(epochs[2]["val_loss"], abs=1e-4)
    assert [e["epoch"] for e in held_out["epochs"]] == [1, 2]
    record = describe(run)
    assert record["accuracy"]["loss"] == pytest.approx(held_out["loss_difference"]["means"])
    capsys.readouterr()
    assert main(["ls", str(tmp_path)]) == 0
    assert f"loss {held_out['loss_difference']['delta']:+.3f}" in capsys.readouterr().out
    from tunelab.cli import _figure_cells
    chrf = record["accuracy"]["chrf_delta"]  # the generated replies' change too, in the same cells
    assert f"chrF {chrf:+.3f}" in _figure_cells(record)[2]
    assert main([*args[:-2], "--set", "train.lr=0.01", "--run-dir", str(tmp_path / "w")]) == 0
    other = RunDir(tmp_path / "w").read_json(tmp_path / "w" / "eval" / "loss" / "summary.json")["losses"]["tuned"]
    assert main(["compare", str(run.path), str(tmp_path / "w"), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    delta = other["loss"] - losses["tuned"]["loss"]  # paired over the same rows: the difference of their means
    assert "## Held-out replies, by loss" in md and re.search(
        rf"\| validation \| loss {losses['tuned']['loss']:.3f} \(n = {held_out['n']}\) \| loss {other['loss']:.3f} "
        rf"\({delta:+.3f}, 95 % CI", md)
    assert re.search(r"\| held_out_loss\.tuned \| ", md)  # in the figures table too
    chrf = [RepliesDir(path).read_eval_summary()["tuned"]["chrf"] for path in (run.path, tmp_path / "w")]
    assert "## Held-out replies, generated" in md and f"| chrF | {chrf[0]:.3f} | {chrf[1]:.3f} (" in md
    assert re.search(rf"\| reply_chrf\.tuned \| {chrf[0]:.4g} \| {chrf[1]:.4g} \|", md)  # in the figures too


def _the_replies_of_every_baseline_and_epoch_are_generated(run: RunDir, said: str, md: str) -> None:
    """The generated replies come from the passes eval would run: base, its prompting baselines (eval.fewshot,
    eval.chat_baseline), each epoch, tuned; tuned is paired with each, each epoch with the one before."""
    replies = RepliesDir(run.path).read_eval_summary()
    passes = ["base", "base-2shot", "base-chat", "base-chat-2shot", "epoch-1", "tuned"]
    assert [name for name in passes if name in replies] == passes and set(replies["versus"]) == set(passes[:-1])
    from collections import Counter
    assert Counter(r["model"] for r in RepliesDir(run.path).read_predictions()) == {name: replies["base"]["n"]
                                                                                    for name in passes}
    assert [(e["previous"], e["model"]) for e in replies["epochs"]] == [("base", "epoch-1"), ("epoch-1", "tuned")]
    shot = replies["versus"]["base-2shot"]["chrf"]
    assert shot["means"] == pytest.approx([replies["base-2shot"]["chrf"], replies["tuned"]["chrf"]], abs=1e-5)
    assert f"vs the base model prompted 2-shot {shot['means'][0]:.3f}: {shot['delta']:+.3f}" in said
    assert re.search(r"reply chrF per epoch: base \d\.\d{3} → epoch 1 \d\.\d{3} \([^)]*\) → epoch 2 \d\.\d{3}", said)
    assert "Per epoch, each against the model before it, chrF: base" in md
    assert "| vs the base model asked through its chat template (reply chrF) | " in md
    assert re.search(r"Epoch 2 vs epoch 1, generated replies: chrF \d\.\d{3} → \d\.\d{3}", md)
    last = replies["epochs"][-1]["chrf"]  # and in the per-epoch table, beside the held-out loss
    assert "| held-out target loss | vs previous epoch | reply chrF | vs previous epoch (chrF) |" in md
    assert re.search(rf"\n\| 2 \| .* \| {last['means'][1]:.3f} \| {last['delta']:+.3f} \({last['ci95'][0]:+.3f}\.\."
                     rf"{last['ci95'][1]:+.3f}\) \| [\d.]+ \| \d+ \|\n", md)


def _each_epoch_is_paired_with_the_one_before(run: RunDir, held_out: dict, said: str, md: str) -> None:
    """Held-out target loss per epoch: each epoch paired with the one before (the first with the base model), in
    the console, the report's per-epoch table, its verdicts and a figure."""
    losses, (first, last) = held_out["losses"], held_out["epochs"]
    assert first["vs_previous"]["model"] == "base" and last["vs_previous"]["model"] == "epoch-1"
    d = last["vs_previous"]  # same rows, same tokens: the paired change is the difference of the two means
    assert d["means"] == pytest.approx([losses["epoch-1"]["loss"], losses["tuned"]["loss"]], abs=1e-4)
    assert d["delta"] == pytest.approx(losses["tuned"]["loss"] - losses["epoch-1"]["loss"], abs=1e-4)
    assert d["ci95"][0] <= d["delta"] <= d["ci95"][1]
    assert f"target loss per epoch: base {losses['base']['loss']:.3f} → epoch 1 {losses['epoch-1']['loss']:.3f} " \
           f"({first['vs_previous']['delta']:+.3f}, CI" in said
    assert re.search(rf"\| 2 \| [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| {losses['tuned']['loss']:.3f} \| "
                     rf"{d['delta']:+.3f} \({d['ci95'][0]:+.3f}\.\.{d['ci95'][1]:+.3f}\) \|", md)
    verdict = {1: "less likely beyond noise", -1: "more likely beyond noise", 0: "no change beyond noise"}[
        (d["ci95"][0] > 0) - (d["ci95"][1] < 0)]
    assert f"Epoch 2 vs epoch 1 on the held-out rows: target loss {d['means'][0]:.3f} → {d['means'][1]:.3f}, " \
           f"{d['delta']:+.3f}, 95 % CI {d['ci95'][0]:+.3f}..{d['ci95'][1]:+.3f}, {d['n']} rows — replies " \
           f"{verdict}." in md
    for figure in ("held_out_loss_per_epoch.png", "reply_overlap_per_epoch.png"):  # the loss, and the replies' chrF
        assert f"(report_files/{figure})" in md and (run.report_files / figure).stat().st_size
    assert "Mean chrF and ROUGE-L of the generated replies against the references: the base model (epoch 0) and " \
           "after each generated epoch, same rows and the baselines' chrF (grey)" in md


def _each_category_is_paired_apart(run: RunDir, held_out: dict, md: str) -> None:
    """data.label_field: the held-out target loss per category, each its rows' token-weighted loss, in a table; a
    category of a handful of rows is listed, not judged (the judged path: test_eval_summary)."""
    from tunelab.data import load_splits
    cfg = run.read_recipe()
    kinds = {e.id: e.label for e in load_splits(cfg.data, cfg.eval).val}  # the rows measured, by their kind
    by = held_out["by_category"]
    assert sorted(r["category"] for r in by["rows"]) == sorted(set(kinds.values())) and by["judged"] == 0
    measured = run.read_jsonl(run.eval_dir / "loss" / "losses.jsonl")
    assert all(r["label"] == kinds[r["id"]] for r in measured)  # each row's category, for compare
    for row in by["rows"]:
        for model, key in (("base", "base_loss"), ("tuned", "tuned_loss")):
            mine = [r for r in measured if r["model"] == model and kinds[r["id"]] == row["category"]]
            assert row[key] == pytest.approx(sum(r["loss"] * r["tokens"] for r in mine) /
                                             sum(r["tokens"] for r in mine), abs=1e-4) and row["n"] == len(mine)
        d = row["difference"]
        assert d["ci"] is None and d["delta"] == pytest.approx(row["tuned_loss"] - row["base_loss"], abs=1e-4)
        assert f"| {row['category']} | {row['n']} | {row['base_loss']:.3f} | {row['tuned_loss']:.3f} | " \
               f"{d['delta']:+.3f} (not judged) |" in md
    assert "| category | rows | base loss | tuned loss | Δ loss |" in md and "so none is judged." in md
    assert "The held-out target loss" not in md  # no verdict on categories too small to judge
    replied = RepliesDir(run.path)  # and the generated replies' chrF per category, likewise
    chrf = replied.read_eval_summary()["by_category"]
    assert sorted(r["category"] for r in chrf["rows"]) == sorted(set(kinds.values())) and chrf["judged"] == 0
    tuned = [r for r in replied.read_predictions() if r["model"] == "tuned"]
    for row in chrf["rows"]:
        mine = [r["chrf"] for r in tuned if kinds[r["id"]] == row["category"]]
        assert row["tuned_chrf"] == pytest.approx(sum(mine) / len(mine), abs=1e-5)
        assert f"| {row['category']} | {row['n']} | {row['base_chrf']:.3f} | {row['tuned_chrf']:.3f} | " in md
    assert "| category | rows | base chrF | tuned chrF | Δ chrF |" in md


@pytest.mark.slow
def test_a_run_with_a_mixed_source_trains_checks_and_reports_each_source(tiny_model, tmp_path, monkeypatch, capsys):
    from conftest import write_jsonl
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    extra = write_jsonl(tmp_path / "colours.jsonl", [{"instruction": f"Name colour {i}.", "output": f"Colour {i}."}
                                                      for i in range(20)])
    mix = f"data.mix=[{{source: {extra}, template: '{{instruction}}\\n', target: '{{output}}', limit: 10, weight: 2}}]"
    args = _run_args(tiny_model, tmp_path / "m", *SMALL_RUN, mix, f"eval.also=[{{source: {extra}}}]")
    assert main(args) == 0
    run = RunDir(tmp_path / "m")
    (colours,) = run.extra_sets()  # its rows scored as they were trained: its entry's template, exact match
    assert colours.read_eval_summary()["scoring"] == "exact"
    assert [p["question"] for p in colours.read_predictions() if p["model"] == "base"] == [
        f"Name colour {i}.\n" for i in range(4)]
    ids = {e["id"] for e in run.read_examples() if e["split"] in ("train", "val")}
    assert len([i for i in ids if i.startswith("colours:")]) == 10 and len(ids) == 40
    trained = Counter((e["id"], e["epoch"]) for e in run.read_examples() if e["split"] == "train")
    assert {n for (i, _), n in trained.items() if i.startswith("colours:")} == {2}  # weight 2: twice an epoch
    summary = run.read_json(run.summary)
    assert len(trained) == 2 * 36 and summary["steps"] == 2 * math.ceil((27 + 2 * 9) / 8)
    assert summary["train_rows_per_epoch"] == 27 + 2 * 9 and summary["train_examples"] == 36
    assert "(4 held out for validation; 45 trained per epoch by the source weights)" in (
        run.path / "adapter" / "README.md").read_text()
    checks = run.read_json(run.data_checks)
    synthetic = sum(o["split"] == "test" and ":" not in o["train_id"] for o in checks["overlap"])
    sources = checks["rows"]["sources"]
    share = sources["colours"].pop("loss_share")  # said before training: the share training then took
    last = [e for e in run.read_examples() if e["split"] == "train" and e["epoch"] == 2]
    assert share == round(sum(e["tokens"] for e in last if e["id"].startswith("colours:"))
                          / sum(e["tokens"] for e in last), 4) == round(1 - sources["synthetic-arith"]["loss_share"], 4)
    del sources["synthetic-arith"]["loss_share"]
    assert synthetic and sources == {  # synthetic problems share 13-gram skeletons; colours none
        "synthetic-arith": {"train": 27, "validation": 3, "test_overlap": synthetic, "weight": 1, "per_epoch": 27},
        "colours": {"train": 9, "validation": 1, "test_overlap": 0, "weight": 2, "per_epoch": 18}}
    md = run.report_md.read_text()
    assert "| Epochs | 2 (45 train rows each, by the source weights; batch 8 × accumulation 1" in md
    assert (f"| colours: train / validation rows, test rows overlapping it | 9 (weight 2: 18 trained per epoch; "
            f"{100 * share:.0f} % of the loss tokens) / 1, 0 |") in md
    assert "## Data mix" in md and re.search(r"\| colours \| 2 \| 18 \| \d+ % \| 1 \| (\d+\.\d{3} → ){2}\d+\.\d{3} \|",
                                            md)
    clusters = run.read_json(run.clusters)  # each cluster's rows by source, in the report's cluster table
    assert sum(sum(c["sources"].values()) for c in clusters) == 40 and all(
        sum(c["sources"].values()) == c["size"] for c in clusters)
    assert "| cluster | name (c-TF-IDF) | size | sources | mean loss |" in md
    capsys.readouterr()
    assert main(["check", "quickstart", "--set", "data.synthetic_rows=30", "--set", mix, "--json", "--show", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)["examples"]  # the first 2 rows of each source, each its own format
    assert [":" in e["id"] for e in shown] == [False, False, True, True] and shown[2]["id"].startswith("colours:")
    colour = shown[2]["segments"]
    assert colour[0]["text"].startswith("Name colour") and not colour[0]["loss"] and colour[1]["loss"]
    assert main(["check", "quickstart", "--set", "data.synthetic_rows=30", "--set", mix]) == 0
    said = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    own, mixed = f"{100 * (1 - share):.0f} % of the loss tokens", f"{100 * share:.0f} % of the loss tokens"
    assert f"sources: synthetic-arith 27 train ({own}) / 3 validation rows" in said
    assert f"; colours 9 train (weight 2: 18 trained per epoch; {mixed}) / 1 validation rows" in said
    assert checks["extra_sets"]["colours"]["overlap_counts"]["exact"] == 10  # the 10 rows the run took from it


@pytest.mark.slow
def test_extra_test_sets_are_scored_apart_reported_and_added_to_a_finished_run(tiny_model, tmp_path, monkeypatch,
                                                                                capsys):
    from conftest import write_jsonl
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"}
                                                   for i in range(9)])
    args = _run_args(tiny_model, tmp_path / "r", *SMALL_RUN, f"eval.also=[{{source: {bench}, limit: 6}}]")
    assert main(args) == 0
    run = RunDir(tmp_path / "r")
    (bench_set,) = run.extra_sets()
    other = bench_set.read_eval_summary()
    assert bench_set.name == "bench" and other["source"] == str(bench) and other["base"]["n"] == 6
    assert [r["epoch"] for r in other["epochs"]] == [1, 2]  # base, each epoch, tuned: as the main eval
    assert {p["id"] for p in bench_set.read_predictions()} == {f"train-{i}" for i in range(1, 7)}
    main_eval = run.read_eval_summary()
    assert "source" not in main_eval and main_eval["base"]["n"] == 4  # the run's own test rows, untouched
    assert "on bench (" in capsys.readouterr().out
    md = run.report_md.read_text()
    assert "## Other test sets" in md and re.search(r"\| bench \| \S+bench\.jsonl \| the run's \| 6 \|", md)
    assert run.read_json(run.data_checks)["extra_sets"]["bench"]["rows"] == 9  # checked for overlap, all its rows
    assert re.search(r"\| eval.also bench \| 9 \| 0 \| 0 \| 0 \|", md)
    assert "GSM8K-style accuracy on bench (flexible-extract)" in md
    import yaml
    meta = yaml.safe_load((run.adapter / "README.md").read_text().split("---")[1])  # the card lists both sets
    datasets = [r["dataset"]["type"] for r in meta["model-index"][0]["results"]]
    assert datasets == ["synthetic:arith", str(bench), "synthetic:arith"]  # own test, eval.also, validation loss
    assert f"| bench | `{bench}` | 6 | " in (run.adapter / "README.md").read_text()
    stamp = bench_set.eval_summary.stat().st_mtime_ns
    assert main(args) == 0 and bench_set.eval_summary.stat().st_mtime_ns == stamp  # resumed: nothing redone
    more = write_jsonl(tmp_path / "more.jsonl", [{"x": i, "y": f"#### {2 * i}"} for i in range(5)])  # fields of its own
    assert main(["eval", str(run.path), "--set", f"eval.also=[{{source: {more}, name: doubles, template: "
                                                  f"'Double {{x}}:\\n', target: '{{y}}'}}]"]) == 0
    assert [v.name for v in run.extra_sets()] == ["bench", "doubles"] and "source" not in run.read_eval_summary()
    assert [p["question"] for p in run.extra_sets()[1].read_predictions() if p["model"] == "base"] == [
        f"Double {i}:\n" for i in range(4)]  # the run's eval.limit
    assert main(["report", str(run.path)]) == 0
    assert re.search(r"\| doubles \| \S+more\.jsonl \| 'Double \{x\}:\\n' \| 4 \|", run.report_md.read_text())
    _a_prose_set_is_measured_by_loss_and_its_replies_scored(run, tmp_path, capsys)
    _bad_extra_sets_are_refused_before_anything_runs(args, more, tmp_path, capsys)


def _a_prose_set_is_measured_by_loss_and_its_replies_scored(run: RunDir, tmp_path: Path, capsys) -> None:
    """An eval.also set of replies no scoring mode suits: its target loss and its generated replies' chrF, on the
    console, in the report's Other test sets and in the model card."""
    from conftest import write_jsonl
    prose = write_jsonl(tmp_path / "prose.jsonl", [{"x": i, "y": f"Doubling {i} gives a number twice as large, as "
                                                    "anyone who counts carefully will find."} for i in range(5)])
    capsys.readouterr()  # replies no scoring mode suits: measured by loss, listed apart
    assert main(["eval", str(run.path), "--set", f"eval.also=[{{source: {prose}, name: prose, template: '{{x}}:\\n', "
                                                  "target: '{y}'}]"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert re.search(r"on prose \(\S+prose\.jsonl, eval\.also, measured by loss\): target loss \d+\.\d{3} → \d+\.\d{3} "
                     r"\([+-]\d+\.\d{3}, 95 % CI", said)
    assert re.search(r"replies to prose \(eval\.also, 4 test rows, generated, against the references\): chrF "
                     r"\d\.\d{3} → \d\.\d{3} \([+-]\d\.\d{3}, 95 % CI", said)  # and its replies themselves
    assert main(["report", str(run.path)]) == 0
    md = run.report_md.read_text()
    assert re.search(r"\| prose \| \S+prose\.jsonl \| '\{x\}:\\n' \| 4 \| \d+\.\d{3} \| \d+\.\d{3} → \d+\.\d{3} \| "
                     r"\d+\.\d{3} \|", md)  # base, per epoch, tuned target loss on the run's eval.limit rows
    card = (run.adapter / "README.md").read_text()  # the model card lists it: by loss, and its replies' chrF
    assert re.search(r"\| prose \| `\S+prose\.jsonl` \| 4 \| \d+\.\d{3} \| \d+\.\d{3} \| [+-]\d+\.\d{3} \(\S+ to \S+\) "
                     r"\| \d\.\d{3} → \d\.\d{3} \([+-]\d\.\d{3}, ", card)
    assert re.search(r"The fine-tune (made the replies in prose (less|more) likely|did not change how likely the "
                     r"replies in prose are) beyond noise: target loss", md)
    assert re.search(r"Epoch 2 vs epoch 1 on prose: target loss \d+\.\d{3} → \d+\.\d{3}, [+-]\d+\.\d{3}, 95 % CI "
                     r"\S+, 4 rows — replies (less likely|more likely|no change) beyond noise", md)  # paired
    chrf = r"\| prose \| 4 \| \d\.\d{3} \| – \| \d\.\d{3} → \d\.\d{3} \| \d\.\d{3} \| [+-]\d\.\d{3} \(\S+\) \| "
    assert re.search(chrf + r"\d\.\d{3} → \d\.\d{3} \| [+-]\d\.\d{3} \(", md)  # its replies: chrF per model; ROUGE-L
    assert re.search(r"The tuned adapter's generated replies to prose are (closer to|further from|no closer to) the "
                     r"references", md)


def _bad_extra_sets_are_refused_before_anything_runs(args: list[str], more: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    bad = [*args[:-2], "--set", f"eval.also=[{{source: {tmp_path / 'nope.jsonl'}}}]", "--run-dir", str(tmp_path / "b")]
    assert main(bad) == 2
    assert "eval.also.0 (" in capsys.readouterr().err and not (tmp_path / "b" / "metrics").exists()
    own = [*args[:-2], "--set", "eval.fewshot=2", "--set", f"eval.also=[{{source: {more}, template: '{{x}}', "
                                                            f"target: '{{y}}'}}]", "--run-dir", str(tmp_path / "b")]
    assert main(own) == 2  # its shots would come from its own train split, and all its rows are scored
    assert f"eval.also.0 ({more}): eval.fewshot_from: eval_source: {more} has 0 rows to take shots from " \
           "apart from the rows scored" in capsys.readouterr().err and not (tmp_path / "b" / "metrics").exists()
    main_set = [*args[:-2], "--set", f"eval.source={more}", "--set", "eval.template={x}", "--set", "eval.target={y}",
                "--set", "eval.fewshot=2", "--set", "eval.fewshot_from=eval_source", "--run-dir", str(tmp_path / "b")]
    assert main(main_set) == 2 and not (tmp_path / "b" / "metrics").exists()  # the main set's shots, too
    assert f"eval.fewshot_from: eval_source: {more} has 0 rows to take shots from" in capsys.readouterr().err


def test_a_bare_recipes_eval_scores_its_extra_test_sets_with_the_base_model(tiny_model, tmp_path, monkeypatch):
    from conftest import write_jsonl
    monkeypatch.setattr("tunelab.evaluate.stage.cache_dir", lambda: tmp_path / "cache")
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}
                                                   for i in range(3)])
    assert main(["eval", "quickstart", "--set", f"model.name={tiny_model}", "--set", "data.synthetic_rows=20",
                 "--set", "data.synthetic_test_rows=3", "--set", "eval.max_new_tokens=4",
                 "--set", f"eval.also=[{{source: {bench}}}]", "--run-dir", str(tmp_path / "b")]) == 0
    (view,) = RunDir(tmp_path / "b").extra_sets()
    summary = view.read_eval_summary()
    assert summary["base"]["n"] == 3 and "tuned" not in summary and summary["source"] == str(bench)
