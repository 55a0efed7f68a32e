"""Multiple-choice scoring (eval.choices) against lm-evaluation-harness on the same questions and model: each option's
log-likelihood, acc and acc_norm, and the wall time of each.

The questions are GSM8K test questions turned into four-option multiple choice (the right final number and three
wrong ones: +1, -1, x2, +10, +5, the first three that differ), written at run time from ../shared/data/gsm8k (never
committed). lm-eval scores them as a task of its own (output_type multiple_choice, doc_to_text "Question:
{{question}}\\nAnswer:", the options after a space), the way its ARC and MMLU-cloze tasks are scored; tunelab scores
them with the same prompt and `eval.choice_target: " {choice}"`. Both on SmolLM2-135M-Instruct, fp32, CPU.

lm-eval is not a tunelab dependency; this check needs it in the Python that runs it:
    pip install lm_eval==0.4.13
Run as: python benchmarks/choice_agreement.py --limit 100
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "Question: {question}\nAnswer:"


def write_set(folder: Path, gsm8k: Path, limit: int) -> None:
    """test.jsonl (the first `limit` GSM8K test questions) and train.jsonl (8 train ones), four options each."""
    from tunelab.evaluate.scoring import reference_answer
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("test", limit), ("train", 8)):
        rows = []
        for k, line in enumerate((gsm8k / f"{split}.jsonl").read_text().splitlines()[:n]):
            row = json.loads(line)
            right = int(float(reference_answer(row["answer"])))
            wrong = [w for w in dict.fromkeys([right + 1, right - 1, right * 2, right + 10, right + 5]) if w != right]
            options = [right, *wrong[:3]]
            random.Random(k).shuffle(options)
            rows.append({"question": row["question"], "choices": [str(o) for o in options],
                         "answer": options.index(right)})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def tunelab_scores(folder: Path, model: str, limit: int) -> tuple[list[dict], float]:
    from tunelab.config import validate
    from tunelab.evaluate.stage import evaluate
    from tunelab.rundir import RunDir
    cfg = validate({"name": "choice-agreement", "model": {"name": model},
                    "data": {"source": str(folder), "template": PROMPT, "target": "{answer}"},
                    "eval": {"choices": "choices", "choice_target": " {choice}", "limit": limit}}, "agreement")
    t0 = time.time()
    result = evaluate(cfg, RunDir(folder / "tunelab-run"), adapter=False)
    print(f"tunelab's scoring pass: {result.summary['base']['seconds']:.1f} s, "
          f"{result.summary['base']['scored_tokens']} tokens forwarded")
    return [p for p in result.predictions if p["model"] == "base"], time.time() - t0


def lm_eval_scores(folder: Path, model_dir: str, limit: int) -> tuple[list[dict], float]:
    import lm_eval
    from lm_eval.tasks import TaskManager
    task = folder / "tasks"
    task.mkdir(exist_ok=True)
    (task / "gsm8k_mc.yaml").write_text(
        "task: tunelab_gsm8k_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'test.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    t0 = time.time()
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32,device=cpu",
                                  tasks=["tunelab_gsm8k_mc"], task_manager=TaskManager(include_path=str(task)),
                                  batch_size=8, limit=limit, log_samples=True)
    samples = sorted(out["samples"]["tunelab_gsm8k_mc"], key=lambda s: s["doc_id"])
    return samples, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    args = ap.parse_args()
    from tunelab.models import resolve
    model = "smollm2-135m-instruct"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gsm8k-mc"
        write_set(folder, Path(args.gsm8k), args.limit)
        ours, our_seconds = tunelab_scores(folder, model, args.limit)
        theirs, their_seconds = lm_eval_scores(folder, resolve(model), args.limit)
    gaps = [abs(a - b[0]) for p, s in zip(ours, theirs) for a, b in zip(p["logliks"], s["filtered_resps"])]
    acc = [sum(p["strict_correct"] for p in ours) / len(ours), sum(s["acc"] for s in theirs) / len(theirs)]
    norm = [sum(p["flexible_correct"] for p in ours) / len(ours), sum(s["acc_norm"] for s in theirs) / len(theirs)]
    same = sum(p["strict_correct"] == bool(s["acc"]) and p["flexible_correct"] == bool(s["acc_norm"])
               for p, s in zip(ours, theirs))
    print(f"{len(ours)} questions, {len(gaps)} options: largest |log-likelihood difference| {max(gaps):.2e}, "
          f"mean {sum(gaps) / len(gaps):.2e}")
    print(f"acc      tunelab {100 * acc[0]:.1f} %  lm-eval {100 * acc[1]:.1f} %")
    print(f"acc_norm tunelab {100 * norm[0]:.1f} %  lm-eval {100 * norm[1]:.1f} %")
    print(f"questions scored alike (acc and acc_norm): {same} / {len(ours)}")
    print(f"wall: tunelab {our_seconds:.1f} s, lm-eval {their_seconds:.1f} s (ratio {their_seconds / our_seconds:.2f})")
    print(json.dumps({"questions": len(ours), "max_loglik_gap": max(gaps), "acc": acc, "acc_norm": norm,
                      "alike": same, "tunelab_s": round(our_seconds, 2), "lm_eval_s": round(their_seconds, 2)}))


if __name__ == "__main__":
    main()
