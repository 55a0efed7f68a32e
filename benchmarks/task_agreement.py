"""lm-eval tasks by name (`task:` on an eval.also entry) against lm-evaluation-harness's own task definitions: for
every task tunelab names, the prompt, the options as written after it and the right option of each question, from
lm-eval's task YAML (and its process_docs) and from tunelab's `task` keys, on the same rows: zero-shot, and 3-shot
for every task that takes shots (MMLU's the first dev rows of the question's subject; the others' drawn at random for
each question by lm-eval's sampler, seed 1234, as `lm_eval` run from the command line seeds it). And the one
score tunelab computes itself rather than counting right picks: truthfulqa_mc2's, against lm-eval's
process_results_mc2 on the same log-likelihoods.

No hub here, so the rows are made up in each dataset's own schema, with the quirks lm-eval's code handles (HellaSwag's
[header] and [title] marks and double spaces, MMLU's untrimmed questions and several subjects, ARC's numeric labels,
OpenBookQA's answer keys): `datasets.load_dataset` is patched to hand lm-eval these rows, and tunelab reads the same
rows from a saved DatasetDict folder (`source:` pointing at a local copy, as a user without the hub would).

lm-eval is not a tunelab dependency; this check needs it in the Python that runs it:
    pip install lm_eval==0.4.13 rouge_score      (its truthfulqa tasks import rouge_score)
Run as: python benchmarks/task_agreement.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARC = [{"id": "a1", "question": "Which gas do plants take in?", "answerKey": "B",
        "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]}},
       {"id": "a2", "question": "What melts ice fastest?", "answerKey": "3",
        "choices": {"text": ["shade", "wind", "sunlight", "snow"], "label": ["1", "2", "3", "4"]}}]
HELLASWAG = [{"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow "
              "covering the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then",
              "ctx": "", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski "
                                     "lift, while two men supporting the head of the person wearing winter clothes "
                                     "snow as the we girls sled.", ", the man puts on a christmas coat, knitted with "
                                     "netting.", ", the man continues removing the snow on his car."],
              "source_id": "activitynet~v_-1IBHYS3L-Y", "split": "val", "split_type": "indomain", "label": "3"},
             {"ind": 9, "activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes [title] Pick "
              "a  sunny spot. [step] Tomatoes need light.", "ctx_b": "", "ctx": "",
              "endings": ["[substeps] Water them daily.", "Paint  the pots [title] red.", "Sing to them.",
                          "Buy them at a store."], "source_id": "wikihow~1", "split": "val",
              "split_type": "zeroshot", "label": "0"}]
MMLU = [{"question": "  What is 2 + 2?\n", "subject": "abstract_algebra", "choices": ["3", "4", "5", "22"],
         "answer": 1},
        {"question": "Which planet is largest?", "subject": "astronomy", "choices": ["Mars", "Venus", "Jupiter",
                                                                                      "Earth"], "answer": 2}]
PIQA = [{"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Freeze the jar.", "label": 0},
        {"goal": "Keep bread fresh", "sol1": "Leave it open.", "sol2": "Seal it in a bag.", "label": 1}]
OPENBOOKQA = [{"id": "o1", "question_stem": "The sun is a", "answerKey": "C", "fact1": "",
               "choices": {"text": ["planet", "moon", "star", "comet"], "label": ["A", "B", "C", "D"]}}]
TRUTHFULQA = [{"question": "What happens if you crack your knuckles a lot?",
               "mc1_targets": {"choices": ["Nothing in particular happens.", "You will get arthritis."],
                               "labels": [1, 0]},
               "mc2_targets": {"choices": ["Nothing in particular happens.", "It is harmless.",
                                           "You will get arthritis.", "Your knuckles will swell."],
                               "labels": [1, 1, 0, 0]}}]
WINOGRANDE = [{"sentence": "The trophy doesn't fit into the suitcase because the _ is too large.",
               "option1": "trophy", "option2": "suitcase", "answer": "1"},
              {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
               "option1": "Sarah", "option2": "Maria", "answer": "1"},
              {"sentence": "He poured water from the bottle into the cup until the _ was full.",
               "option1": "bottle", "option2": "cup", "answer": "2"}]
GSM8K = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
          "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}]

ROWS = {"arc_easy": ARC, "arc_challenge": ARC, "hellaswag": HELLASWAG, "mmlu": MMLU, "piqa": PIQA,
        "openbookqa": OPENBOOKQA, "truthfulqa_mc1": TRUTHFULQA, "truthfulqa_mc2": TRUTHFULQA,
        "winogrande": WINOGRANDE, "gsm8k": GSM8K}


MMLU_DEV = [{"question": f"{subject} shot {k}: what is {k} times 3?", "subject": subject, "answer": k % 4,
             "choices": [str(3 * k + d - k % 4) for d in range(4)]}
            for subject in ("abstract_algebra", "astronomy") for k in range(3)]
SHOTS = 3  # the few-shot prompts compared too (truthfulqa_mc1 and mc2 take none)
SHOT_TEXT = {"arc_easy": "question", "arc_challenge": "question", "hellaswag": "ctx_a", "piqa": "goal",
             "openbookqa": "question_stem", "winogrande": "sentence", "gsm8k": "question"}  # made distinct per copy


def dataset_dict(task: str, subject: str | None = None):
    """The task's rows as its dataset holds them: MMLU's test and validation splits and its dev split (few-shot
    rows, no train split; one subject's rows when `subject` is given, as lm-eval loads a subject as a task), the
    others' validation and test splits (each row and two copies of it) and a train split (six copies of each row),
    the copies told apart: shots drawn at random differ from the first ones, and from one question to the next."""
    import datasets
    if task != "mmlu":
        held_out, train = (_copies(task, "v", 3), _copies(task, "", 6)) if task in SHOT_TEXT else (ROWS[task],) * 2
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                                     **{split: datasets.Dataset.from_list(held_out)
                                        for split in ("validation", "test")}})
    mine = [r for r in MMLU if subject in (None, r["subject"])]
    dev = [r for r in MMLU_DEV if subject in (None, r["subject"])]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(mine),
                                 "validation": datasets.Dataset.from_list(mine),
                                 "dev": datasets.Dataset.from_list(dev)})


def _copies(task: str, mark: str, n: int) -> list[dict]:
    """`n` copies of each of the task's rows, all but the first copy's text field marked "(<mark><k>) "."""
    return [{**r, SHOT_TEXT[task]: f"({mark}{k}) {r[SHOT_TEXT[task]]}"} if k or not mark else r
            for k in range(n) for r in ROWS[task]]


def lm_eval_requests(task: str, shots: int) -> list[dict]:
    """lm-eval's requests for the task's rows, `shots`-shot: per question, its context, the continuations and the
    gold option's index."""
    import datasets
    from lm_eval.tasks import TaskManager, get_task_dict  # 0.4.13: TaskManager.load() is newer
    real = datasets.load_dataset
    datasets.load_dataset = lambda path, name=None, **_: dataset_dict(task, name if task == "mmlu" else None)
    try:
        names = [f"mmlu_{r['subject']}" for r in MMLU] if task == "mmlu" else [task]
        out = []
        for name, loaded in get_task_dict(names, TaskManager()).items():
            loaded.set_config(key="num_fewshot", value=shots)  # gsm8k's YAML says 5
            loaded.set_fewshot_seed(seed=1234)  # as simple_evaluate seeds it (--fewshot_random_seed's default)
            loaded.build_all_requests(limit=None, rank=0, world_size=1)
            by_doc: dict[int, dict] = {}
            for inst in loaded.instances:  # (context, continuation) per option; generation: (context, None)
                gold = loaded.doc_to_target(inst.doc)
                entry = by_doc.setdefault(inst.doc_id, {"pairs": [], "gold": gold if isinstance(gold, int) else
                                                        loaded.doc_to_text(inst.doc)})  # Winogrande's: its text
                entry["pairs"].append((inst.arguments[0], inst.arguments[1]
                                       if inst.request_type == "loglikelihood" else None))
            out += [by_doc[k] for k in sorted(by_doc)]
        return sorted(out, key=lambda r: r["pairs"][0][0])  # MMLU: subject by subject, in the task dict's order
    finally:
        datasets.load_dataset = real


def tunelab_requests(task: str, folder: Path, tok, shots: int) -> list[dict]:
    """tunelab's questions for the same rows (an eval.also entry `task:`, its source the saved folder): zero-shot as
    `tunelab check --show` lists them, or the few-shot baseline's prompts."""
    from tunelab.config import also_recipe, validate
    from tunelab.data import load_splits
    from tunelab.evaluate import choices
    from tunelab.evaluate.stage import _fewshot_prompts, _held_out, _questions, _shots_of, preview, shot_pool
    if not (folder / task).exists():
        dataset_dict(task).save_to_disk(str(folder / task))
    cfg = validate({"name": "agreement", "model": {"name": "m"},
                    "data": {"source": "synthetic:arith", "template": "{question}", "target": "{answer}"},
                    "eval": {"also": [{"task": task, "source": str(folder / task), "fewshot": shots}]}},
                   "agreement")
    rows = preview(cfg, tok, 100)[task]["rows"]
    if shots:
        extra = also_recipe(cfg, cfg.eval.also[0])
        splits = load_splits(extra.data, extra.eval)
        mode, questions = _questions(extra, splits)
        prompts = _fewshot_prompts(extra, tok, _shots_of(extra, shot_pool(extra, splits), questions, mode,
                                                         _held_out(extra, splits)[1]), questions, mode=mode)[0]
        rows = [{**r, "prompt": p, **(dict(zip(("contexts", "scored"), choices.blanked(extra, p, q)))
                                      if "contexts" in r else {})} for r, p, q in zip(rows, prompts, questions)]
    return sorted(({"pairs": _pairs(r), "gold": r.get("right")} for r in rows), key=lambda r: r["pairs"][0][0])


def _pairs(row: dict) -> list[tuple[str, str | None]]:
    """A previewed question's (context, continuation) per option: the prompt and each option after it, or (options
    filling a blank) each option's context and the rest scored after it; generation: (prompt, None)."""
    if "contexts" in row:
        return [(c, row["scored"]) for c in row["contexts"]]
    return [(row["prompt"], o) for o in row.get("options", [])] or [(row["prompt"], None)]


def compare(task: str, shots: int, folder: Path, tok) -> dict:
    theirs, ours = lm_eval_requests(task, shots), tunelab_requests(task, folder, tok, shots)
    alike = len(theirs) == len(ours)
    for t, o in zip(theirs, ours):
        same = t["pairs"] == o["pairs"] and (t["pairs"][0][1] is None or o["gold"] == t["gold"])
        if not same:
            print(f"{task} {shots}-shot: differs\n  lm-eval: {t}\n  tunelab: {o}")
        alike = alike and same
    print(f"{task} {shots}-shot: {len(theirs)} questions, {'alike' if alike else 'DIFFERENT'}")
    return {"questions": len(theirs), "alike": alike}


def mc2_compare(draws: int = 20) -> dict:
    """truthfulqa_mc2's score of a question, lm-eval's (its process_results_mc2) and tunelab's (`choices.true_mass`),
    on the same options' log-likelihoods, drawn at random."""
    import random
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2
    from tunelab.evaluate.choices import true_mass
    rng, doc = random.Random(0), TRUTHFULQA[0]
    labels = doc["mc2_targets"]["labels"]
    worst = 0.0
    for _ in range(draws):
        lls = [rng.uniform(-12.0, -1.0) for _ in labels]
        theirs = float(process_results_mc2(doc, [(ll, False) for ll in lls])["acc"])
        worst = max(worst, abs(theirs - true_mass(lls, [label == 1 for label in labels])))
    alike = worst <= 5e-7  # tunelab rounds to 6 decimals
    print(f"truthfulqa_mc2 score: {draws} draws, largest difference {worst:.1e}, {'alike' if alike else 'DIFFERENT'}")
    return {"draws": draws, "largest_difference": worst, "alike": alike}


def main() -> int:
    from tunelab.config import ModelConfig
    from tunelab.models import load_tokenizer
    from tunelab.tasks import TASKS
    tok = load_tokenizer(ModelConfig(name="smollm2-135m-instruct"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in TASKS:
            for shots in (0, SHOTS) if TASKS[task].keys.get("fewshot") != 0 else (0,):
                results[f"{task} {shots}-shot"] = compare(task, shots, Path(tmp), tok)
    results["truthfulqa_mc2 score"] = mc2_compare()
    print(json.dumps(results))
    return 0 if all(r["alike"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
