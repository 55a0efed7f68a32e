"""GSM8K scoring as in lm-evaluation-harness's gsm8k task: strict-match and flexible-extract exact match; exact
match of short answers (`eval.scoring: exact`); and answers read by a regular expression (`eval.scoring: regex`,
lm-eval's regex filter: `<answer>…</answer>` tags by default).

strict-match:     first `#### (\\-?[0-9\\.\\,]+)` in the completion
flexible-extract: last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` in the completion
Both are compared with the reference after removing `,`, `$` and a trailing `.` (and, as lm-eval's
`(?s).*#### ` ignore-regex does, anything up to `#### `). The reference is the number after `####`
in the dataset answer (or its last number when a dataset has no `####`).

Paired statistics over the scored questions live in tunelab/stats.py.

Run as: tunelab eval runs/gsm8k-3ep --limit 200
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from tunelab.data.chat import THINK_END

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
ANSWER_IS = re.compile(r"(?im)^.*the answer is:? *\$?-?[0-9][0-9.,]*\.?\s*\Z")
BARE = re.compile(r"\$?-?[0-9][0-9.,]*")
IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def normalize(text: str | None) -> str | None:
    if text is None:
        return None
    for pattern in IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def answer_of(target: str) -> str:
    """What a reference answer is read from: a reasoning-trace target's text after its last `</think>` (as the answer
    check reads a reply, `after_thinking`), the whole target otherwise."""
    return after_thinking(target, THINK_END)


def states_answer(target: str) -> bool:
    """The target ends in a final answer stated the way math datasets do: a `#### N` line (GSM8K), a last line
    `The answer is N` (MetaMathQA, lm-eval's chain-of-thought shots), or the whole target is one number (in a
    reasoning trace, after its thinking)."""
    target = answer_of(target)
    return bool(STRICT.search(target) or ANSWER_IS.search(target) or BARE.fullmatch(target.strip()))


def extract_strict(completion: str) -> str | None:
    match = STRICT.search(completion)
    return match.group(1) if match else None


def extract_flexible(completion: str) -> str | None:
    matches = FLEXIBLE.findall(completion)
    if not matches:
        return None
    a, b = matches[-1]
    return a or b


def reference_answer(answer: str) -> str | None:
    """The gold number of a dataset answer (after its thinking): after `####`, else its last number."""
    answer = answer_of(answer)
    if "####" in answer:
        return normalize(answer.split("####")[-1])
    return normalize(extract_flexible(answer))


def score(completion: str, reference: str) -> dict:
    """Extracted answers and exact-match flags for one completion."""
    strict, flexible = extract_strict(completion), extract_flexible(completion)
    gold = normalize(reference)
    return {"strict_answer": strict, "flexible_answer": flexible,
            "strict_correct": strict is not None and normalize(strict) == gold,
            "flexible_correct": flexible is not None and normalize(flexible) == gold}


# exact-match scoring of short answers (labels, names, yes/no): the completion's first line against the target ------
SHORT_WORDS = 8  # a short answer: one line of at most this many words
_EDGES = " \t.,;:!?\"'`*()[]"  # stripped from both ends of an answer before comparing


def short_answer(target: str) -> str | None:
    """The reference of exact-match scoring: the whole target (after its thinking), stripped (None when blank)."""
    return answer_of(target).strip() or None


def is_short(target: str) -> bool:
    """One line of at most `SHORT_WORDS` words (after the thinking): an answer exact match can score."""
    text = answer_of(target).strip()
    return bool(text) and "\n" not in text and len(text.split()) <= SHORT_WORDS


def after_thinking(completion: str, end: str | None) -> str:
    """What the answer check reads of a reasoning model's reply: the text after the last `end` (lm-eval's
    think_end_token), its leading whitespace dropped; the whole reply when `end` is None or not in it."""
    return completion.rpartition(end)[2].lstrip() if end and end in completion else completion


def normalize_text(text: str) -> str:
    """Lower case, runs of whitespace as one space, quotes, brackets, bold marks and end punctuation stripped."""
    return " ".join(text.split()).lower().strip(_EDGES)


def answer_line(completion: str) -> str | None:
    """The first non-blank line of a completion: what exact-match scoring reads."""
    return next((line.strip() for line in completion.splitlines() if line.strip()), None)


def score_exact(completion: str, reference: str) -> dict:
    """strict: the answer line equals the reference (both normalised); flexible: the reference occurs in the answer
    line as whole words ("The sentiment is positive." for "positive")."""
    line, gold = answer_line(completion), normalize_text(reference)
    got = normalize_text(line or "")
    return {"strict_answer": line, "flexible_answer": line,
            "strict_correct": line is not None and got == gold,
            "flexible_correct": mentions(got, gold)}


def mentions(line: str, phrase: str) -> bool:
    """`phrase` occurs in `line` as whole words (both normalised): how flexible exact match reads an answer line."""
    return bool(phrase) and re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", line) is not None


# answers read by a regular expression (`eval.scoring: regex`, `eval.answer_pattern`) --------------------------------
ANSWER_TAG = r"<answer>\s*(.*?)\s*</answer>"  # the default pattern: reasoning-format targets' final answer


def regex_answer(match: re.Match) -> str:
    """What a match of an answer pattern reads: its first non-empty group, or the whole match when it has none (as
    lm-eval's regex filter takes a match); "" when its groups are all empty."""
    return next((g for g in match.groups() if g), "") if match.groups() else match.group(0)


def regex_reference(pattern: re.Pattern, target: str) -> str | None:
    """The reference of regex scoring: the answer of the pattern's last match in the target (its final answer), or
    the whole target, stripped, when the pattern does not match it (a bare label the model is asked to tag); in a
    reasoning trace, after its thinking."""
    target = answer_of(target)
    matches = list(pattern.finditer(target))
    return (regex_answer(matches[-1]) if matches else target).strip() or None


def normalize_answer(text: str) -> str:
    """`normalize_text`, and a number also as GSM8K's are (`,`, `$` and a trailing `.` removed): 1,000 = 1000."""
    text = normalize_text(text)
    return normalize(text) if BARE.fullmatch(text) else text


def score_regex(pattern: re.Pattern, completion: str, reference: str) -> dict:
    """strict: the pattern's first match in the completion equals the reference (both `normalize_answer`d, lm-eval's
    group_select 0); flexible: the reference occurs as whole words in its last match (a model that corrects itself,
    or wraps the answer in a sentence)."""
    matches = list(pattern.finditer(completion))
    first, last = (regex_answer(matches[0]), regex_answer(matches[-1])) if matches else (None, None)
    gold = normalize_answer(reference)
    return {"strict_answer": first, "flexible_answer": last,
            "strict_correct": first is not None and normalize_answer(first) == gold,
            "flexible_correct": last is not None and mentions(normalize_answer(last), gold)}


def tool_calls_in(text: str) -> list[str] | None:
    """The tool calls a text makes, in order, each as `name({arguments})` (canonical JSON): every JSON object in
    it (or list of them) with a string `name` and an `arguments` (Hermes', Qwen's and Mistral's key) or `parameters`
    object (Llama 3.1's; JSON text of one is read too), whatever wraps it (`<tool_call>` tags, `[TOOL_CALLS]`); a
    reasoning trace's calls after its thinking. None when it makes none."""
    text, decoder, calls, i = answer_of(text), json.JSONDecoder(), [], 0
    while (i := _next_json(text, i)) >= 0:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        found = [_call(v) for v in (value if isinstance(value, list) else [value])]
        if all(found) and found:
            calls += found
            i = end
        else:
            i += 1
    return calls or None


def _next_json(text: str, start: int) -> int:
    """Where the next `{` or `[` is in `text` from `start` (-1: none)."""
    spots = [j for j in (text.find("{", start), text.find("[", start)) if j >= 0]
    return min(spots, default=-1)


def _call(value) -> str | None:
    """A decoded JSON value as one tool call's canonical JSON (`tool_calls_in`), or None when it is none."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", value.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return f"{value['name']}({json.dumps(_plain_numbers(args), sort_keys=True, ensure_ascii=False)})"


def _plain_numbers(value):
    """JSON values with whole floats as integers (2.0 and 2 are the same argument)."""
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


NO_CALL = "(no tool call)"  # the reference of a reply that calls nothing: the model must not call either


def tool_reference(target: str) -> str:
    """A target's tool calls one per line (`tool_calls_in`), the reference tool scoring compares; NO_CALL when the
    target makes none (a question no tool serves: calling one is wrong, as in Berkeley's irrelevance category)."""
    calls = tool_calls_in(target)
    return "\n".join(calls) if calls else NO_CALL


def score_tool(completion: str, reference: str) -> dict:
    """Tool-call scoring: the calls the completion makes against the reference's, each a name with its arguments
    compared as JSON values — strict = the same calls in the same order; flexible = the same calls in any order (as
    Berkeley's function-calling leaderboard scores parallel calls); a reference of NO_CALL is met by making none. The
    answer read is None only where calls were due and none was made."""
    made, gold = tool_calls_in(completion) or [], [] if reference == NO_CALL else reference.split("\n")
    answer = "\n".join(made) if made else NO_CALL if not gold else None
    return {"strict_answer": answer, "flexible_answer": answer, "strict_correct": made == gold,
            "flexible_correct": sorted(made) == sorted(gold)}


OUTCOMES = {"right": "the same calls (in any order)", "no call": "calls were due and none was made",
            "call not due": "a call made where none was due",
            "wrong tool": "the functions called are not the reference's (another one, one too many or too few)",
            "wrong arguments": "the reference's functions, called with other arguments"}  # a tool-scored reply's


def tool_outcome(answer: str | None, reference: str) -> str:
    """Which of `OUTCOMES` a tool-scored reply is: its calls as `score_tool` read them (None: none made where calls
    were due; NO_CALL) against the reference's."""
    made, gold = ([] if c in (None, NO_CALL) else c.split("\n") for c in (answer, reference))
    if sorted(made) == sorted(gold):
        return "right"
    if not made or not gold:
        return "no call" if not made else "call not due"
    names = [sorted(call.split("(", 1)[0] for call in calls) for calls in (made, gold)]
    return "wrong arguments" if names[0] == names[1] else "wrong tool"


SCORERS = {"numeric": (reference_answer, score), "exact": (short_answer, score_exact),
           "tool": (tool_reference, score_tool)}  # mode: (reference, score)


def scorer(mode: str, pattern: str | None = None) -> tuple[Callable[[str], str | None], Callable[[str, str], dict]]:
    """(the reference of a target, the score of a completion against it) of a scoring mode; regex reads `pattern`
    (`eval.answer_pattern`, None = `ANSWER_TAG`)."""
    if mode == "regex":
        compiled = re.compile(pattern or ANSWER_TAG)
        return partial(regex_reference, compiled), partial(score_regex, compiled)
    return SCORERS[mode]


@dataclass(frozen=True)
class Naming:
    """What the report, the model card and the console call a scoring mode's accuracy and its two variants."""
    accuracy: str  # the figure
    short: str  # in table headers
    strict: str  # the strict variant
    flexible: str  # the lenient variant (the headline)
    definition: str  # the report's definition line

    @property
    def title(self) -> str:
        """`accuracy` starting a sentence or a table row."""
        return self.accuracy[:1].upper() + self.accuracy[1:]


NAMING = {
    "numeric": Naming("GSM8K-style accuracy", "GSM8K acc", "strict-match", "flexible-extract",
                      "GSM8K-style accuracy = exact match of the extracted final number with the reference "
                      "(lm-evaluation-harness gsm8k): strict-match reads the first '#### N'; flexible-extract reads "
                      "the last number in the completion."),
    "exact": Naming("exact-match accuracy", "exact-match acc", "exact line", "answer in line",
                    "Exact-match accuracy = the completion's first non-blank line against the whole target, both "
                    "lower-cased with runs of spaces, quotes, brackets, bold marks and end punctuation removed: exact "
                    "line = equal; answer in line = the target occurs in it as whole words."),
    "regex": Naming("regex-match accuracy", "regex acc", "first match", "answer in last match",
                    "Regex-match accuracy = the answer read by the pattern {pattern} (its first non-empty group) "
                    "against the target's (the whole target where the pattern does not match it), both lower-cased "
                    "with runs of spaces, quotes, brackets, bold marks and end punctuation removed, and numbers "
                    "without ',' and '$': first match = the first match's answer equals it; answer in last match = "
                    "it occurs in the last match's answer as whole words."),
    "tool": Naming("tool-call accuracy", "tool-call acc", "same calls in order", "same calls",
                   "Tool-call accuracy = the tool calls the completion makes (each JSON object with a name and its "
                   "arguments or parameters, whatever wraps it: `<tool_call>` tags, `[TOOL_CALLS]`) against the "
                   "target's, the arguments compared as JSON values: same calls in order = the same calls in the "
                   "same order; same calls = the same calls in any order (parallel calls, as Berkeley's "
                   "function-calling leaderboard scores them); a reply whose reference calls nothing is right when "
                   "it calls nothing either, and its words are measured against the reference's by chrF and "
                   "ROUGE-L (0..1, tuned − base paired over those rows; not judged right or wrong)."),
    "choice": Naming("multiple-choice accuracy", "choice acc", "acc", "acc_norm",
                     "Multiple-choice accuracy = the option the model finds most likely after the prompt (each "
                     "written by eval.choice_target) against the one the target names, as lm-evaluation-harness "
                     "scores multiple_choice tasks; nothing is generated: acc = the highest summed log-likelihood "
                     "of the option's tokens; acc_norm = the highest per character of the option as written."),
}


def naming(evaluation: dict | None) -> Naming:
    """The names of an eval summary's scoring mode (summaries written before modes existed are numeric); regex's
    definition quotes the summary's `answer_pattern`; where passes were read after a reasoning model's thinking
    (eval.think_end), the definition says so, naming them."""
    evaluation = evaluation or {}
    names = NAMING[evaluation.get("scoring", "numeric")]
    definition = names.definition
    if "{pattern}" in definition:
        pattern = evaluation.get("answer_pattern") or ANSWER_TAG
        definition = definition.format(pattern=f"`{pattern}`")  # a code span: * and \ as typed
    thinking = {name: s["think_end"] for name, s in evaluation.items() if isinstance(s, dict) and s.get("think_end")}
    for end in sorted(set(thinking.values())):
        passes = ", ".join(name for name, e in thinking.items() if e == end)
        definition += (f" The replies of {passes} (asked through a chat template that writes a thinking block) are "
                       f"read after their last `{end}` (eval.think_end), as lm-evaluation-harness's think_end_token "
                       "reads them: the thinking before it is not scored, nor does it end a reply.")
    return replace(names, definition=definition)


def flips(before: dict[str, dict], after: dict[str, dict], ids: list[str], metric: str = "flexible") -> dict:
    """Questions `after` newly gets right (gained) and newly gets wrong (lost) compared with `before`,
    each a mapping of question id to its prediction row; ids in the given order."""
    key = f"{metric}_correct"
    return {"gained": [i for i in ids if after[i][key] and not before[i][key]],
            "lost": [i for i in ids if before[i][key] and not after[i][key]]}
