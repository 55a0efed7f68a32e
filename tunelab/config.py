"""Typed recipe schema: the sections, their defaults, their validation and `--set` overrides.

A recipe is YAML with the sections below. Every problem in a recipe (unknown key, wrong type,
out-of-range value) is collected and reported at once, naming each key.

Run as: tunelab recipes            # lists the built-in recipes
        tunelab show-recipe quickstart --set train.epochs=1
"""

from __future__ import annotations

import difflib
import importlib.resources
import logging
import re
import string
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab import tasks
from tunelab.errors import UserError

log = logging.getLogger(__name__)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SPECIAL_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")
TEMPLATES = importlib.resources.files("tunelab") / "templates"  # chat templates by name (Axolotl's, see NOTICE)


def template_names() -> list[str]:
    """The chat templates model.chat_template takes by name: chatml, llama3, ..."""
    return sorted(p.name[:-6] for p in TEMPLATES.iterdir() if p.name.endswith(".jinja"))


class SpecialTokens(Section):
    """model.special_tokens: the tokenizer's special roles, each a token that is already one or that
    model.added_tokens adds (Axolotl's special_tokens, a tokenizer's add_special_tokens)."""
    bos_token: str | None = Field(None, description="the token that begins a sequence; None = the tokenizer's")
    eos_token: str | None = Field(None, description="the token that ends a reply: appended to each training target, "
                                  "and generation stops at it (and at the model's own EOS): <|im_end|> for ChatML "
                                  "on a base model; None = the tokenizer's")
    pad_token: str | None = Field(None, description="padding; None = the tokenizer's, else its EOS")
    unk_token: str | None = Field(None, description="the unknown token; None = the tokenizer's")
    additional_special_tokens: list[str] = Field([], description="more tokens marked special: left out of decoded "
                                                 "replies (a chat template's markers)")

    def named(self) -> list[str]:
        """Every token it names: the roles set, then the additional ones."""
        roles = [getattr(self, role) for role in SPECIAL_ROLES]
        return [t for t in roles if t is not None] + self.additional_special_tokens


class ModelConfig(Section):
    name: str = Field(description="hub id, local HF folder, .gguf file, or alias (smollm2-135m-instruct)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = float32 on CPU, bfloat16 on CUDA")
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit NF4 base weights (bitsandbytes, CUDA only)")
    attn_implementation: str | None = Field(None, description="e.g. sdpa or flash_attention_2; None = library default")
    trust_remote_code: bool = Field(False, description="allow model code from the hub")
    hub_id: str | None = Field(None, description="the model's Hub id, written as base_model in the model card and "
                                                 "adapter_config.json; None = model.name when it is one, or the "
                                                 "original of an alias")
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random = weights drawn from the model's config, nothing downloaded but the "
                                  "config and tokenizer (speed, memory and cost checks: they do not depend on the "
                                  "weights)")
    chat_template: str | None = Field(None, description="a Jinja chat template in place of the tokenizer's (TRL's "
                                      "chat_template_path, Axolotl's chat_template_jinja), for a base model whose "
                                      "tokenizer has none, or another format: the template's text, a .jinja file "
                                      "holding it, or the name of one tunelab ships, Axolotl's text of the same "
                                      "name (alpaca, chatml, deepseek_v3, gemma, gemma3, llama3, llama4, mistral_v1, "
                                      "mistral_v7_tekken, phi_3, phi_35, phi_4, qwen3, qwen_25; read when "
                                      "the recipe is read; the run's config.yaml keeps the text). Its turn markers "
                                      "must be tokens of the tokenizer (model.added_tokens; tunelab check flags "
                                      "split ones). Saved with each adapter (its tokenizer files) and the exports; "
                                      "None = the tokenizer's own")
    added_tokens: list[str] = Field([], description="new tokens added to the tokenizer, in this order (their ids "
                                    "follow its last one), each never split: the chat template's markers a base "
                                    "model lacks (<|im_start|>, <|im_end|> for ChatML on Mistral-7B-v0.1), tool or "
                                    "reasoning tags (Axolotl's tokens, LLaMA-Factory's add_tokens and "
                                    "add_special_tokens). The embedding grows to the tokenizer's length where it has "
                                    "fewer rows, each new row starting at the mean of the trained rows; their rows "
                                    "train (added to lora.trainable_tokens unless lora.modules_to_save trains the "
                                    "embeddings whole). Kept in decoded replies unless model.special_tokens names "
                                    "them; [] = none")
    vocab_multiple_of: int | None = Field(None, ge=1, description="when model.added_tokens grow the embeddings, "
                                          "round their rows up to a multiple of this (LLaMA-Factory's 64, "
                                          "Axolotl's resize_token_embeddings_to_32x: 32; matrix multiplies run "
                                          "faster on such sizes); None = the tokenizer's length")
    special_tokens: SpecialTokens = Field(default_factory=SpecialTokens, description="the tokenizer's special "
                                          "tokens: its roles (eos_token, ...) and additional_special_tokens")

    @field_validator("chat_template")
    @classmethod
    def _template_text(cls, v: str | None) -> str | None:
        """The template's text (a shipped one's by name, read from a .jinja file), parsed as Jinja to refuse a
        broken one now."""
        if v is None:
            return None
        if v in template_names():
            return (TEMPLATES / f"{v}.jinja").read_text()
        if "{" not in v:  # no tag nor expression: a file's path
            path = Path(v).expanduser()
            if not path.is_file():
                raise ValueError(f"{v}: no such file, nor a template tunelab ships ({', '.join(template_names())}); "
                                 "a .jinja file, the template's text or one of those names")
            v = path.read_text()
        import jinja2
        try:
            jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(v)
        except jinja2.TemplateSyntaxError as err:
            raise ValueError(f"not a Jinja template: line {err.lineno}: {err.message}") from None
        return v

    @property
    def own_tokenizer(self) -> bool:
        """The recipe changes the tokenizer (its chat template, tokens or special tokens), so it is saved with each
        adapter and export, and whatever loads the adapter reads it from there."""
        return bool(self.chat_template or self.added_tokens or self.special_tokens.named())

    @field_validator("added_tokens")
    @classmethod
    def _distinct_tokens(cls, v: list[str]) -> list[str]:
        seen = set()
        for token in v:
            if not token.strip():
                raise ValueError("a token cannot be empty or blank")
            if token in seen:
                raise ValueError(f"{token}: listed twice")
            seen.add(token)
        return v


FORMAT_KEYS = ("template", "target", "messages", "optional_fields", "template_if_empty")


def _conversation_turns(raw: Any) -> Any:
    """With `messages`, the rendered turns are the conversation's last user and assistant turns unless `template` /
    `target` say otherwise."""
    if isinstance(raw, dict) and raw.get("messages"):
        raw = {"template": "{user}", "target": "{assistant}", **raw}
    return raw


class RowFormat(Section):
    """How one more source's rows are rendered (a data.mix or eval.also entry): data's templates where it sets none."""
    template: str | None = Field(None, description="None = data.template")
    target: str | None = Field(None, description="None = data.target")
    messages: str | None = Field(None, description="its conversation field (needs data.chat_template)")
    optional_fields: list[str] | None = Field(None, description="None = data's, unless the entry sets a template, "
                                              "target or messages (then none)")
    template_if_empty: dict[str, str] | None = Field(None, description="as optional_fields")

    @model_validator(mode="before")
    @classmethod
    def _conversations_default(cls, raw: Any) -> Any:
        return _conversation_turns(raw)


class MixSource(RowFormat):
    """One more source of training rows (`data.mix`): its train split (or its first `limit` rows of it) is split
    into train and validation rows like data.source's, rendered with its own templates (data's by default); its ids
    are prefixed with its name. Its test split is scored only as an eval.also set."""
    source: str = Field(description="any data.source form")
    config: str | None = Field(None, description="hub dataset config name")
    name: str | None = Field(None, description="how ids and the report name it; None = the file or dataset name")
    limit: int | None = Field(None, ge=1, description="use only its first N train rows")
    weight: float = Field(1.0, gt=0, le=100, description="how often each of its train rows is trained per epoch, "
                          "as data.weight")


class DataConfig(Section):
    source: str = Field(description="hub id, local dir with train/test files, one jsonl/json/csv/parquet file, "
                                    "or synthetic:arith")
    config: str | None = Field(None, description="hub dataset config name (e.g. main for openai/gsm8k)")
    template: str = Field(description="prompt with {field} placeholders; \\n in --set means a newline; with "
                          "data.target and data.messages unset (or null), read from the first train row's fields: "
                          "messages or conversations (a conversation: data.messages), prompt + completion (TRL's), "
                          "instruction + input + output (Axolotl's alpaca prompt), question + answer (the flagship "
                          "prompt), text (every token trained); tunelab check --show 3 prints the rows so written")
    target: str = Field(description="completion with {field} placeholders; the loss is taken on it; read from the "
                        "rows with data.template")
    chat_template: bool = Field(False, description="write each row as a user turn (template) and an assistant turn "
                                "(target) with the tokenizer's chat template, for instruct models; eval prompts "
                                "and few-shot shots the same way")
    messages: str | None = Field(None, description="field holding a conversation (a list of {role, content} turns, "
                                 "or ShareGPT's {from, value} with from human / gpt / system), or fields joined by "
                                 "+ whose turns follow one another (TRL's conversational prompt / completion rows: "
                                 "prompt+completion): its last assistant turn is the target, the turns before it the "
                                 "prompt; an assistant turn's reasoning_content (or reasoning, or thinking) is "
                                 "trained as a think block before its content; assistant turns may make tool calls "
                                 "(tool_calls; ShareGPT's function_call) answered by tool turns (observation), and a "
                                 "row's tools field (the function schemas) is handed to the chat template; implies "
                                 "chat_template, and template / target default to {user} / {assistant}")
    system_prompt: str | None = Field(None, description="with chat_template: a system turn written before every row "
                                      "(conversation rows that have one keep their own)")
    history_loss: bool = Field(True, description="conversations (data.messages): also train on the assistant turns "
                               "before the last (as Axolotl and LLaMA-Factory do); false = the last turn only")
    optional_fields: list[str] = Field([], description="placeholders that may be missing or empty in a row "
                                       "(Alpaca's input): they render as nothing, and a template paragraph (a line, "
                                       "in a template without blank lines) whose placeholders are all such empty "
                                       "fields is left out with its line break")
    template_if_empty: dict[str, str] = Field({}, description="another prompt for rows that leave a field of "
                                              "data.template (the key) missing or empty, which makes that field "
                                              "optional: Alpaca's preamble without the input, {input: '...'}; the "
                                              "first listed field that is empty picks the prompt")
    label_field: str | None = Field(None, description="category column kept for analysis (never trained on)")
    chunk: bool = Field(True, description="plain-text rows (an empty prompt: the text format) longer than "
                        "train.max_length are split into consecutive train.max_length windows, each trained and "
                        "measured (HF run_clm's blocks, within a row; Axolotl's completion type) and their losses "
                        "merged per row; false = truncated, as rows with a prompt always are")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of train rows held out for validation")
    limit: int | None = Field(None, ge=2, description="use only the first N source train rows")
    weight: float = Field(1.0, gt=0, le=100, description="how often each train row of data.source is trained per "
                          "epoch (with data.mix, each source's weight sets its share): 2 = twice, 0.5 = a seeded "
                          "half of its rows, drawn afresh each epoch (2.5 = twice, and half once more); validation "
                          "rows are measured once either way")
    seed: int = Field(0, description="seed of the train/validation split")
    skip_bad_rows: bool = Field(False, description="skip malformed rows with a counted warning instead of failing")
    synthetic_rows: int = Field(2000, ge=2, description="synthetic:arith train rows")
    synthetic_test_rows: int = Field(200, ge=0, description="synthetic:arith test rows")
    dedup: Literal["none", "exact", "near"] = Field("none", description="drop duplicate train rows before the split: "
                                                    "exact (same normalised text) or near (also MiniLM cosine >= "
                                                    "data.near_threshold)")
    near_threshold: float = Field(0.9, gt=0, le=1, description="MiniLM cosine at or above which two questions are "
                                  "near-duplicates (data checks and dedup); GSM8K test vs train peaks at 0.896")
    mix: list[MixSource] = Field([], description="more sources of training rows, each {source, and optionally "
                                 "config, name, template, target, messages, optional_fields, template_if_empty, "
                                 "limit, weight}: each one's train rows are split by data.val_fraction and "
                                 "data.seed and added to data.source's, rendered with its own templates (data's by "
                                 "default), ids prefixed name:; its test rows are scored when eval.also names the "
                                 "same source (written in its format); the report gives each source's validation "
                                 "loss per epoch")

    @model_validator(mode="before")
    @classmethod
    def _conversations_default(cls, raw: Any) -> Any:
        """With `messages`, the rendered turns are the conversation's last user and assistant turns, chat-formatted."""
        if isinstance(raw, dict) and raw.get("messages"):
            raw = {"chat_template": True, **_conversation_turns(raw)}
        return raw

    @property
    def plain_text(self) -> bool:
        """Rows written as plain text, nothing before the target (TRL's language modeling): every token trained,
        nothing asked."""
        return not self.template and not self.messages and not self.chat_template


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="rank: higher = more capacity and memory")
    alpha: float = Field(32, gt=0, description="scaling numerator: update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or all-linear (every Linear but the LM head)")
    use_rslora: bool = Field(False, description="rank-stabilised LoRA (PEFT's use_rslora): the update is scaled by "
                                                "alpha / sqrt(r), not alpha / r, so higher ranks keep learning")
    use_dora: bool = Field(False, description="DoRA (PEFT's use_dora): each adapted weight also learns a magnitude "
                                              "per output feature, apart from the direction; merged like LoRA for "
                                              "eval and export; vLLM serves it only merged. Steps are slower (PEFT's "
                                              "DoRA forward): 1.4x LoRA's time at lora.dropout 0, 2x with dropout, "
                                              "where the base matmul runs twice (the estimate counts it)")
    modules_to_save: list[str] = Field([], description="modules trained whole beside the adapters and saved in them "
                                       "(PEFT's modules_to_save; Axolotl's lora_modules_to_save, LLaMA-Factory's "
                                       "additional_target), each named as PEFT matches them, by the end of the "
                                       "module's path: e.g. [embed_tokens, lm_head], to teach tokens the base model "
                                       "never learnt (a chat template's); each must name a module the LoRA targets "
                                       "do not adapt. With tied input and output embeddings both train as one "
                                       "(PEFT's ensure_weight_tying). Costs a copy of each in memory and 16 bytes "
                                       "per weight of optimizer state (the estimate counts them); vLLM serves such "
                                       "an adapter only merged; [] = the adapters alone")
    trainable_tokens: list[str | int] = Field([], description="tokens whose input and output embedding rows train "
                                              "beside the adapters, each a token as the tokenizer writes it "
                                              "(<|im_start|>) or its id (PEFT's trainable_token_indices): a few rows "
                                              "instead of whole matrices (lora.modules_to_save), for a chat "
                                              "template's tokens the base model never trained (tunelab check finds "
                                              "them); vLLM serves such an adapter only merged; [] = none")
    continue_from: str | None = Field(None, description="an earlier LoRA adapter this run keeps training instead of "
                                      "starting new ones (Axolotl's lora_model_dir, LLaMA-Factory's "
                                      "adapter_name_or_path): a PEFT adapter folder, a tunelab run directory (its "
                                      "adapter/), or a hub id; its r, alpha, target modules, modules to save, "
                                      "rsLoRA and DoRA must equal lora.*. Copied to adapters/start/; epoch 0 is this "
                                      "adapter, and eval scores it beside the base model; None = new adapters")

    @property
    def method(self) -> str:
        """The adapter's kind as the report and the model card name it."""
        scaling = "alpha / sqrt(r) scaling" if self.use_rslora else ""
        return ("DoRA" + (f" ({scaling})" if scaling else "")) if self.use_dora else ("rsLoRA" if scaling else "LoRA")


class TrainConfig(Section):
    epochs: int = Field(3, ge=1, description="passes over the training split")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps to train, in place of train.epochs "
                                  "(Trainer's max_steps): the data repeats for as many epochs as the steps need and "
                                  "the last one ends at the step (validated, its adapter kept, marked partial); the "
                                  "schedule spans these steps; None = train.epochs whole epochs")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay on the adapter weights")
    loraplus_lr_ratio: float | None = Field(None, ge=1, description="LoRA+ (PEFT's create_loraplus_optimizer; "
                                            "Axolotl's and LLaMA-Factory's loraplus_lr_ratio): the B matrices (and "
                                            "DoRA's magnitudes) learn at train.lr x this, the A matrices at train.lr; "
                                            "the paper suggests 16; None = one learning rate")
    embedding_lr: float | None = Field(None, gt=0, description="the peak learning rate of the weights "
                                       "lora.modules_to_save trains whole and of lora.trainable_tokens' rows "
                                       "(Axolotl's embedding_lr, Unsloth's embedding_learning_rate), on the "
                                       "adapters' schedule; None = train.lr")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps with linear warmup, to the nearest "
                                "step (transformers rounds up)")
    warmup_steps: int | None = Field(None, ge=0, description="optimizer steps of linear warmup, in place of "
                                     "train.warmup_ratio (TrainingArguments' and Axolotl's warmup_steps); None = "
                                     "train.warmup_ratio of the steps")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    max_length: int = Field(512, ge=8, description="tokens per example; longer ones are truncated and counted")
    completion_only: bool = Field(True, description="loss on the target only (false = whole sequence)")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    seed: int = Field(0, description="seed of LoRA init, dropout and data order")
    log_every: int = Field(1, ge=1, description="optimizer steps between step-log lines")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding, same loss)")
    micro_batch_tokens: int | None = Field(None, ge=0, description="split batches into slices of at most this "
                                           "many padded tokens (same loss, capped activation memory); 0 = never "
                                           "split; None = 512 on CPU, on CUDA what the free memory holds")
    packing: bool | None = Field(None, description="lay a batch's examples end to end, no padding (same loss); "
                                 "None = on with CUDA + flash attention, off on CPU (where it is slower)")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune, transformers' hook (TRL's "
                                        "neftune_noise_alpha; the paper used 5): while training, uniform noise "
                                        "within +-alpha/sqrt(L*d) on the input embeddings, L the batch row's "
                                        "length (padded or packed, as transformers computes it), d the hidden "
                                        "size; never in validation or eval; None = off")
    compile: bool = Field(False, description="torch.compile each decoder layer: fused kernels and fewer launches "
                          "(for GPUs, where eager training is launch-bound); a minute or more of compiling first; "
                          "not with sharding=fsdp")
    val_every: int = Field(0, ge=0, description="optimizer steps between extra validation passes inside an "
                           "epoch (TRL's eval_steps), for a validation curve finer than epochs "
                           "(metrics/validation.jsonl); each epoch's end is validated anyway, and the lowest pass's "
                           "adapter is kept (adapters/best-loss/ when it falls between epoch ends); 0 = epoch ends "
                           "only")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop training once this many epochs in a "
                                                "row (validation passes: see train.early_stopping_on) end with a "
                                                "validation loss not below the lowest before them (epoch 0, before "
                                                "training, counts); the final adapter is the last epoch trained, the "
                                                "lowest validation pass's stays in adapters/epoch-N (or "
                                                "adapters/best-loss/); None = run every epoch")
    early_stopping_threshold: float = Field(0.0, ge=0, description="for train.early_stopping_patience, an epoch "
                                            "improves only when its validation loss ends more than this below the "
                                            "last one that improved (epoch 0 first; HF's early_stopping_threshold, "
                                            "Keras' min_delta); 0 = any decrease counts")
    early_stopping_on: Literal["epoch", "validation"] = Field(
        "epoch", description="what train.early_stopping_patience counts: epoch = epoch ends; validation = every "
        "validation pass, train.val_every's inside epochs too (TRL's EarlyStoppingCallback with eval_steps), so "
        "training stops at the pass that spends the patience, inside an epoch: that epoch's adapter and the final "
        "one are its weights there")
    checkpoint_every: int = Field(50, ge=0, description="optimizer steps between checkpoints (0 = epoch ends only)")
    keep_epoch_adapters: bool = Field(True, description="save each epoch's adapter in adapters/epoch-N/ (accuracy "
                                      "per epoch); false = only the final adapter/ (and the lowest validation "
                                      "pass's, adapters/best-loss/)")
    keep_step_adapters: bool = Field(False, description="with train.val_every: also save the adapter at each "
                                     "validation pass inside an epoch (adapters/step-N/), which eval scores beside "
                                     "each epoch's (eval.epochs: all): accuracy during an epoch, for runs of one or "
                                     "a few long epochs; each costs an eval pass")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (oldest deleted)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when one is visible, else CPU")
    sharding: Literal["none", "fsdp"] = Field("none", description="with several processes: none = each holds the "
                                              "whole model; fsdp = shard weights, gradients, optimizer state (FSDP2)")
    threads: int | None = Field(None, ge=1, description="CPU threads; None = all cores")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list,
                                                              description="optional experiment trackers")


class ChecksConfig(Section):
    ngram: int = Field(13, ge=3, description="words in a shared run that flags test overlap (lm-eval uses 13)")


class CostConfig(Section):
    usd_per_hour: float | None = Field(None, ge=0, description="price of the device; None = built-in table")


FIELD_ITEM = re.compile(r"([A-Za-z_]\w*)(?:\[[^\[\]]+\])*")  # a field, or an item of one: {choices[0]}


def field_of(placeholder: str) -> str | None:
    """The field a template placeholder reads: `choices` of {choices[0]} (an item of a list field, or a key of a
    dict field: {choices[text]}); None when it names none."""
    match = FIELD_ITEM.fullmatch(placeholder)
    return match.group(1) if match else None


def asks_each_row(template: str | None) -> str | None:
    """A prompt baseline's template (eval.prompt_baseline, an eval.also entry's), checked: it parses as a `{field}`
    template and names a field (else every question would be asked the same text).

    Raises:
        ValueError: why not (pydantic names the key).
    """
    if template is None:
        return template
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"{err} (write {{{{ and }}}} for a literal brace)") from None
    if bad := [name for name in names if field_of(name) is None]:
        raise ValueError(f"placeholder {{{bad[0]}}} is not a field name")
    if not names:
        raise ValueError("names no field, so every question would be asked the same text; write {prompt} (the "
                         "prompt as the run writes it) or a field such as {question} where the question goes")
    return template


def writes_option(template: str) -> str:
    """A choice_target (eval.choice_target, an eval.also entry's), checked: it names {choice} or {letter}, else
    every option would be written the same.

    Raises:
        ValueError: why not (pydantic names the key).
    """
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"{err} (write {{{{ and }}}} for a literal brace)") from None
    if not names & {"choice", "letter"}:
        raise ValueError("names neither {choice} (the option's text) nor {letter} (its letter), so every option "
                         "would be written the same")
    return template


class ExtraTestSet(RowFormat):
    """One more test set scored by the eval stage (`eval.also`), as eval.source would score it, rendered with its
    own templates when it sets them (else a data.mix entry's of the same source, else data's)."""
    task: str | None = Field(None, description=f"an lm-eval task by name ({', '.join(tasks.TASKS)}): its dataset, "
                             "split, prompt and options as lm-eval writes them (the other keys, where the entry does "
                             "not set them itself; source: a local copy), its rows prepared as lm-eval's "
                             "process_docs prepares them; None = none")
    source: str = Field(description="any data.source form")
    config: str | None = Field(None, description="hub dataset config name")
    name: str | None = Field(None, description="its folder eval/also/<name>/; None = the file or dataset name")
    limit: int | None = Field(None, ge=1, description="questions to score; None = eval.limit")
    limit_from: Literal["first", "random"] | None = Field(None, description="as eval.limit_from; None = eval's")
    split: Literal["test", "validation"] = Field("test", description="its split scored (validation: for a set whose "
                                                 "test split is unlabelled)")
    fewshot: int | None = Field(None, ge=0, description="its few-shot baseline's shots; None = eval.fewshot")
    label_field: str | None = Field(None, description="its category column (as eval.label_field); None = "
                                    "data.label_field's, where its rows have it")
    prompt_baseline: str | None = Field(None, description="its prompt baseline, as eval.prompt_baseline (a template "
                                        "of its rows' fields and {prompt}); None = none")
    choices: str | list[str] | None = Field(None, description="its options' field or fields, as eval.choices: the set "
                                            "is scored by multiple choice; None = not")
    choice_target: str = Field("{choice}", description="as eval.choice_target")
    choice_blank: str | None = Field(None, description="as eval.choice_blank; None = the options follow the prompt")
    choice_labels: str | None = Field(None, description="as eval.choice_labels; None = the target names the one right "
                                      "option")
    description: str | None = Field(None, description="as eval.description; None = none")
    fewshot_same_category: bool = Field(False, description="as eval.fewshot_same_category (its label_field's)")
    fewshot_sampler: Literal["first_n", "random"] | None = Field(None, description="as eval.fewshot_sampler; None = "
                                                                 "eval's")

    @model_validator(mode="before")
    @classmethod
    def _task_keys(cls, raw: Any) -> Any:
        return tasks.expanded(raw, tuple(cls.model_fields))

    @field_validator("prompt_baseline")
    @classmethod
    def _asks_each_row(cls, v: str | None) -> str | None:
        return asks_each_row(v)

    @field_validator("choice_target")
    @classmethod
    def _writes_option(cls, v: str) -> str:
        return writes_option(v)


class OtherModel(Section):
    """Another model eval asks the run's questions (`eval.models`)."""
    name: str = Field(description="hub id, local HF folder, .gguf file, or alias")
    chat_template: bool | None = Field(None, description="ask through its chat template; None = when it has one; "
                                       "false = the run's prompt as plain text (a model fine-tuned on the run's "
                                       "format, merged)")

    @model_validator(mode="before")
    @classmethod
    def _named(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw


class EvalConfig(Section):
    split: Literal["test", "validation"] = Field("test", description="held-out rows to score: data.source's test "
                                                 "or validation rows; with eval.source, that source's test or "
                                                 "validation split (a benchmark whose test split is unlabelled: "
                                                 "HellaSwag, PIQA)")
    task: str | None = Field(None, description=f"score an lm-eval task ({', '.join(tasks.TASKS)}) as eval.source: "
                             "its dataset, split, prompt and options as lm-eval writes them (the eval keys not set "
                             "here; eval.source: a local copy), its rows prepared as lm-eval prepares them, its "
                             "few-shot shots its own (eval.fewshot_from: eval_source); None = none")
    source: str | None = Field(None, description="score another dataset's questions instead of data.source's held-out "
                               "rows (train on one set, measure on a benchmark): read like data.source and rendered "
                               "with the same data.template and data.target; its eval.split (test by default), or "
                               "all its rows when it has none; None = data.source's")
    config: str | None = Field(None, description="hub dataset config name of eval.source")
    label_field: str | None = Field(None, description="eval.source's category column (a benchmark's subject or "
                                    "type): accuracy per category on its questions, as data.label_field gives on "
                                    "data's; None = data.label_field's, where its rows have it")
    template: str | None = Field(None, description="eval.source's prompt, for a source whose fields are not data's "
                                 "(GSM8K's {question} for a model trained on {instruction}); None = data.template")
    target: str | None = Field(None, description="eval.source's completion, the reference answer; None = data.target")
    messages: str | None = Field(None, description="eval.source's conversation field (needs data.chat_template); "
                                 "template / target then default to {user} / {assistant}")
    optional_fields: list[str] | None = Field(None, description="as data.optional_fields, for eval.source's "
                                              "templates; None = data's, unless eval sets a template, target or "
                                              "messages (then none)")
    template_if_empty: dict[str, str] | None = Field(None, description="as data.template_if_empty, for eval.source's "
                                                     "template; None = as eval.optional_fields")
    limit: int | None = Field(200, ge=1, description="questions to score (None = all)")
    limit_from: Literal["first", "random"] = Field(
        "first", description="which eval.limit questions: the first ones, or as many drawn at random (seeded by "
        "data.seed, kept in the source's order), for a set stored in an order such as by subject (MMLU's all)")
    turns: Literal["last", "all"] = Field(
        "last", description="which replies of a held-out conversation (data.messages) are scored: last = its final "
        "reply (the row's target); all = every assistant reply, each asked after the turns before it (a tool call "
        "and the answer written from its result, each turn of a chat), as one question each: the row's id for its "
        "last reply, <id>.<n> for its n-th; eval.limit counts conversations")
    max_new_tokens: int = Field(256, ge=1, description="most tokens generated per answer (exact scoring stops "
                                                       "sooner: see eval.scoring)")
    batch_size: int = Field(0, ge=0, description="rows decoded together (continuous-batching slots); 0 = automatic "
                                                 "(CPU 48; CUDA from free memory)")
    epochs: Literal["last", "all"] | None = Field(None, description="adapters to score: the final one, or every "
                                                  "kept epoch's and adapters/best-loss/; None = all for runs that "
                                                  "trained <= 5 epochs, else last")
    fewshot: int = Field(0, ge=0, description="also score the base model N-shot, lm-eval's GSM8K format (0 = off; "
                         "with data.chat_template the shots are earlier turns); a set measured by loss gets the base "
                         "model's target loss after the N shots")
    fewshot_from: Literal["data", "eval_source"] = Field(
        "data", description="the few-shot baseline's shots: data = the first N training rows (what prompting with "
        "your own data gets); eval_source = the first N rows of eval.source's train split, else its dev split "
        "(MMLU's), else its validation split, as lm-eval picks a task's shots (the benchmark measured the way "
        "lm-eval measures it)")
    fewshot_same_category: bool = Field(
        False, description="each question's few-shot shots are the first N of its own category (eval.label_field, "
        "else data.label_field), as lm-eval takes MMLU's from the question's subject; false = the same first N for "
        "every question")
    fewshot_sampler: Literal["first_n", "random"] = Field(
        "first_n", description="how each question's few-shot shots are picked from those rows: first_n = the first "
        "N, the same for every question (lm-eval's first_n sampler, MMLU's; one shared prefix, computed once); "
        "random = lm-eval's default sampler (ARC, HellaSwag, GSM8K, ...): N drawn for each question in the scored "
        "split's order by one random.Random(eval.fewshot_seed), so each question is asked after the shots lm-eval "
        "asks it after (sets measured by loss take the first N)")
    fewshot_seed: int = Field(1234, description="eval.fewshot_sampler random's seed (lm-eval's --fewshot_random_seed, "
                              "1234 by default)")
    description: str | None = Field(
        None, description="lm-eval's task description: a template of the row's fields written once before each "
        "prompt of the scored set, before the few-shot shots (MMLU's 'The following are multiple choice questions "
        "(with answers) about {subject}.'); through a chat template, as the system turn; not before "
        "eval.prompt_baseline's prompts (its own); None = none")
    chat_baseline: bool = Field(False, description="also score the base model asked through its chat template "
                                "(the rendered data.template as the user turn, zero-shot: lm-eval's "
                                "--apply_chat_template), what simply asking an instruct model gets; with eval.fewshot "
                                "also N-shot, the shots as earlier turns (--fewshot_as_multiturn); for runs whose "
                                "prompts are plain text (with data.chat_template the base passes are already that); "
                                "a set measured by loss gets the base model's target loss asked those ways")
    prompt_baseline: str | None = Field(
        None, description="also score the base model asked with this prompt instead, zero-shot: a template of the "
        "scored rows' fields and {prompt} (the prompt as the run writes it), e.g. '{prompt}\\n\\nThink step by "
        "step, then write the final number after \"####\".' — what asking the base model in words gets (an "
        "instruction, the answer format); through its chat template (the user turn) when the run asks that way "
        "(data.chat_template or eval.chat_baseline), else as plain text; the run's own test rows (an eval.also set "
        "takes its own, its entry's prompt_baseline); a set measured by loss gets the base model's target loss asked "
        "this way")
    models: list[OtherModel] = Field([], description="other models asked the same questions, each scored beside "
                                     "the base model and compared with the tuned adapter, paired (is a bigger model, "
                                     "or the one in production, as good without this fine-tune?): each a hub id, a "
                                     "local folder (a merged tunelab export) or an alias, or {name, chat_template}; "
                                     "asked zero-shot, through its own chat template when it has one (the run's "
                                     "prompt as the user turn, as eval.chat_baseline asks; with data.chat_template "
                                     "the run's turns, system turn and tools), else with the run's prompt as plain "
                                     "text; the run's own test rows, scored by their answers (numeric, exact, regex, "
                                     "tool) or, where no answer check suits them, their replies' chrF; their answers "
                                     "cached as the base model's are")
    think_end: str | None = Field(None, description="a reasoning model's end-of-thinking marker (lm-eval's "
                                  "think_end_token): in a reply asked through the chat template (or an adapter's, "
                                  "where at least half the scored targets are reasoning traces holding it), the stop "
                                  "rule and the answer check read only the text after its last occurrence; before it, "
                                  "only the EOS and eval.max_new_tokens end the reply (the report keeps the whole "
                                  "reply). "
                                  "None = </think> when the chat template writes it between its generation prompt "
                                  "and a reply (Qwen3's; DeepSeek-R1's prompt opens the thinking), and </think> for "
                                  "the adapters' replies when the scored targets are traces holding it (their "
                                  "reference answers are read after it either way); '' = none")
    pass_at_k: int = Field(0, ge=0, description="also answer each of the run's scored questions k times by sampling "
                           "(eval.temperature, eval.top_p, eval.sample_seed), the base model and the final adapter: "
                           "pass@1 (the mean share of right answers), pass@k (a right answer among the k) and maj@k "
                           "(the most frequent answer right: self-consistency), tuned − base paired over questions; "
                           "takes about k greedy passes' time each (0 = off)")
    temperature: float = Field(0.6, gt=0, le=2, description="eval.pass_at_k's sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="eval.pass_at_k's nucleus: each token is drawn from the "
                         "smallest set of most likely tokens whose probability reaches it (1 = all)")
    sample_seed: int = Field(0, description="eval.pass_at_k's seed: each answer's generator starts from it and the "
                             "answer's index, so a rerun draws the same answers")
    overlap: bool = Field(True, description="when no scoring mode suits the data: the models eval would score (base, "
                          "its prompting baselines, each epoch's adapter, adapters/best-loss, tuned) answer the "
                          "held-out rows (eval.limit), greedily until EOS or eval.max_new_tokens, and each reply is "
                          "scored against its reference by chrF and ROUGE-L, tuned − each paired over rows; likewise "
                          "each eval.also set no scoring mode suits (false = only the base and tuned replies of the "
                          "eval.samples shown, none for eval.also sets)")
    samples: int = Field(5, ge=0, description="when no scoring mode suits the data: the first N held-out prompts "
                         "with the base model's and the tuned adapter's replies, shown in the report side by side "
                         "(0 = none)")
    scoring: Literal["auto", "numeric", "exact", "regex", "tool", "choice", "none"] = Field(
        "auto", description="numeric = exact match of the final number (GSM8K-style) on the held-out rows whose target "
        "has one; exact = the completion's first line against the whole target (labels, names, yes/no); regex = the "
        "answer eval.answer_pattern reads in the completion against the one it reads in the target (or the whole "
        "target, where it does not match); tool = the tool calls the completion makes (JSON objects with a name and "
        "arguments) against the target's; choice = multiple choice by log-likelihood, nothing generated (see "
        "eval.choices); none = no eval stage; auto = choice when eval.choices is set, else tool when >= 25 % of the "
        "targets make tool calls (the others scored on calling none, and their words by chrF), else regex when >= "
        "90 % of the targets match eval.answer_pattern, else numeric when >= 90 % state a final answer ('#### N', "
        "'The answer is N', a bare number), else exact when >= 90 % are short (one line, <= 8 words), else none")
    choices: str | list[str] | None = Field(
        None, description="multiple-choice scoring (lm-eval's multiple_choice tasks: MMLU, ARC, HellaSwag, PIQA): "
        "the field holding each row's options (a list; ARC's {text, label}), or the fields that each hold one "
        "(PIQA's [sol1, sol2]); every option is written after the prompt (eval.choice_target) and the one the model "
        "finds most likely is its answer, against the option the rendered target names: ARC's label, a 0-based "
        "index (MMLU's answer), a letter (A = the first) or an option's text; acc = by summed log-likelihood, "
        "acc_norm = per character (lm-eval's); templates may index a field: {choices[0]}; None = off")
    choice_target: str = Field(
        "{choice}", description="how eval.choices writes each option after the prompt: {choice} its text, {letter} "
        "its letter (A, B, …), and the row's fields; e.g. ' {letter}' after a prompt listing the options and ending "
        "'Answer:' (MMLU's format)")
    choice_blank: str | None = Field(
        None, description="the mark each option fills in the prompt instead of following it (Winogrande's _): each "
        "option is written in its place, and what is scored after it is the rest of the question (after a space): "
        "lm-eval's partial scoring; acc_norm is acc there (the same text follows every option); plain-text prompts "
        "only (no chat template: the chat baseline passes skip the set); a row without the mark is not scored; "
        "None = the options follow the prompt")
    choice_labels: str | None = Field(
        None, description="a field holding each option's label in the options' order, 1 (or true) for a true option "
        "and 0 for a false one (TruthfulQA's mc2 labels): a question may have several true options, the target is "
        "not read; acc and acc_norm count the option picked right when it is a true one, and mc2 is the probability "
        "the model gives the true options, normalised over all of them (lm-eval's truthfulqa_mc2 acc), each pass's "
        "mean and tuned − base paired; a row whose labels do not match its options or name no true one is not "
        "scored; None = the target names the one right option")
    answer_pattern: str | None = Field(
        None, description="regex scoring's regular expression (Python re; lm-eval's regex filter): its first "
        "non-empty group, or the whole match, is the answer; strict = the first match equals the reference, flexible "
        "= the reference occurs as whole words in the last match; zero-shot answers stop once a match's line is "
        "complete; None = '<answer>\\s*(.*?)\\s*</answer>' (reasoning-format tags)")
    also: list[ExtraTestSet] = Field([], description="more test sets, each {source or task (an lm-eval task by "
                                     "name: arc_challenge, mmlu, hellaswag, ..., which fills the other keys the "
                                     "entry leaves unset), and optionally config, name, split, limit, limit_from, "
                                     "fewshot, prompt_baseline, choices, choice_target, choice_blank, choice_labels, "
                                     "description, "
                                     "fewshot_same_category, fewshot_sampler, label_field, template, target, "
                                     "messages, optional_fields, template_if_empty}, scored after the main one the way "
                                     "eval.source is (its split, or all its rows), rendered with its own "
                                     "templates (else those of the data.mix entry of the same source, else "
                                     "data's; a set naming choices is scored by multiple choice): the base model and "
                                     "each epoch's adapter on the same questions, paired, in eval/also/<name>/; the "
                                     "report gives each one's change (a general benchmark: did the fine-tune cost it "
                                     "anything?); a set whose answers no scoring mode suits (prose, chat replies) "
                                     "is measured by target loss instead, and its replies generated and scored by "
                                     "chrF and ROUGE-L as eval.overlap scores the run's own (in "
                                     "eval/also/<name>/replies/)")

    @model_validator(mode="before")
    @classmethod
    def _conversations_default(cls, raw: Any) -> Any:
        return _conversation_turns(raw)

    @model_validator(mode="before")
    @classmethod
    def _task_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("task") is not None:
            raw = {"fewshot_from": "eval_source", **raw}
        return tasks.expanded(raw, tuple(cls.model_fields))

    @field_validator("prompt_baseline")
    @classmethod
    def _asks_each_row(cls, v: str | None) -> str | None:
        return asks_each_row(v)

    @field_validator("choice_target")
    @classmethod
    def _writes_option(cls, v: str) -> str:
        return writes_option(v)

    @field_validator("answer_pattern")
    @classmethod
    def _pattern_compiles(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            re.compile(v)
        except re.error as err:
            raise ValueError(f"not a regular expression: {err}") from None
        if not v or re.compile(v).fullmatch(""):
            raise ValueError("matches the empty text, so it would find an answer in every completion")
        return v


class AnalysisConfig(Section):
    embedder: str = Field("minilm", description="minilm (all-MiniLM-L6-v2), model (the run's own model), "
                                                 "or a sentence-transformers path")
    k: int | None = Field(None, ge=2, description="KMeans clusters; None = best silhouette in k_range")
    k_min: int = Field(2, ge=2, description="fewest KMeans clusters tried when analysis.k is None")
    k_max: int = Field(12, ge=2, description="most KMeans clusters tried when analysis.k is None")
    outlier_share: float = Field(0.02, gt=0, lt=1, description="share of rows listed as outliers")
    max_rows: int | None = Field(None, ge=2, description="analyse at most N training rows")


class ReportConfig(Section):
    title: str | None = Field(None, description="report title; None = recipe name")


class Recipe(Section):
    name: str = Field("recipe", description="recipe name, used in reports and default run dirs")
    description: str = ""
    model: ModelConfig
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("name")
    @classmethod
    def _name_is_path_safe(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("must be a non-empty name without '/'")
        return v


RECIPES = importlib.resources.files("tunelab") / "recipes"


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe names mapped to their one-line descriptions."""
    out = {}
    for path in sorted(RECIPES.iterdir(), key=lambda p: p.name):
        if path.name.endswith(".yaml"):
            raw = yaml.safe_load(path.read_text()) or {}
            out[path.name[:-5]] = raw.get("description", "")
    return out


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by built-in name or path, apply `key=value` overrides, validate it all at once.

    Raises:
        UserError: listing every problem with its dotted key.
    """
    builtin = RECIPES / f"{name_or_path}.yaml"
    if builtin.is_file():
        source, text = name_or_path, builtin.read_text()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"{name_or_path}: no such recipe; built-in recipes are: {', '.join(builtin_recipes())}")
        source, text = str(path), path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{source}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe is a mapping of sections, got {type(raw).__name__}")
    from tunelab.convert import TRAINERS, is_trainer_config, translate, which
    if is_trainer_config(raw):  # an Axolotl, LLaMA-Factory or TRL config: the recipe tunelab convert writes
        trainer = TRAINERS[which(source, raw)]
        raw, notes = translate(source, raw)
        log.warning("%s (%s config): read as the recipe tunelab convert writes from it; %d keys not carried over "
                    "exactly (tunelab convert %s lists them)", source, trainer, len(notes), source)
    problems = apply_overrides(raw, overrides or [])
    if not problems:
        from tunelab.data.formats import fill
        fill(raw.get("data"))  # no data.template / target / messages: the rows' format, as TRL reads it
    return validate(raw, source, problems)


def validate(raw: dict, source: str, problems: list[str] | None = None) -> Recipe:
    """Validate a raw recipe dict; raise one UserError listing every problem (plus `problems` given)."""
    problems = list(problems or [])
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        problems += [_describe(e) for e in err.errors()]
    if recipe is not None and recipe.train.compile and recipe.train.sharding == "fsdp":
        problems.append("train.compile: not with train.sharding=fsdp (compile the unsharded model, or turn one off)")
    if recipe is not None and recipe.data.messages and not recipe.data.chat_template:
        problems.append("data.chat_template: must be true with data.messages (a conversation is written by the "
                        "tokenizer's chat template)")
    if recipe is not None and recipe.data.system_prompt is not None and not recipe.data.chat_template:
        problems.append("data.system_prompt: needs data.chat_template: true (a system turn is written by the "
                        "tokenizer's chat template)")
    if recipe is not None and recipe.train.early_stopping_on == "validation" and not (
            recipe.train.early_stopping_patience and recipe.train.val_every):
        problems.append("train.early_stopping_on: validation counts validation passes inside epochs; it needs "
                        "train.early_stopping_patience and train.val_every (the steps between passes)")
    if recipe is not None and recipe.train.early_stopping_threshold and not recipe.train.early_stopping_patience:
        problems.append("train.early_stopping_threshold: needs train.early_stopping_patience (the number of epochs "
                        "without such an improvement that stops training)")
    if recipe is not None and recipe.model.added_tokens and not recipe.lora.modules_to_save:
        new = [t for t in recipe.model.added_tokens if t not in recipe.lora.trainable_tokens]
        recipe.lora.trainable_tokens = recipe.lora.trainable_tokens + new  # their rows train, a few rows apiece
    if recipe is not None and recipe.train.embedding_lr is not None and not (recipe.lora.modules_to_save or
                                                                             recipe.lora.trainable_tokens):
        problems.append("train.embedding_lr: the rate of the embedding weights lora.modules_to_save and "
                        "lora.trainable_tokens train, and they name none")
    if recipe is not None and recipe.eval.label_field and not recipe.eval.source:
        problems.append("eval.label_field: needs eval.source (data.source's own rows take their category from "
                        "data.label_field)")
    if recipe is not None and recipe.eval.config and not recipe.eval.source:
        problems.append("eval.config: names a config of eval.source, which is not set")
    if recipe is not None and recipe.eval.chat_baseline and recipe.data.chat_template:
        problems.append("eval.chat_baseline: the run's prompts go through the chat template already "
                        "(data.chat_template), so its base pass is that baseline; drop eval.chat_baseline")
    if recipe is not None and recipe.eval.answer_pattern and recipe.eval.scoring not in ("auto", "regex"):
        problems.append(f"eval.answer_pattern: read only by eval.scoring regex or auto (got eval.scoring "
                        f"{recipe.eval.scoring})")
    if recipe is not None and recipe.eval.pass_at_k == 1:
        problems.append("eval.pass_at_k: 1 samples one answer per question, too few for pass@k or a majority vote; "
                        "set 2 or more (or 0: off)")
    if recipe is not None:
        problems += _models_problems(recipe) + _step_problems(recipe.train)
    if recipe is not None and recipe.eval.fewshot_from == "eval_source" and not recipe.eval.source:
        problems.append("eval.fewshot_from: eval_source takes the shots from eval.source's train split, and "
                        "eval.source is not set")
    if recipe is not None:
        problems += (_template_problems(recipe.data) + _mix_problems(recipe.data) + _eval_format_problems(recipe)
                     + _also_problems(recipe) + _choice_problems(recipe.eval) + _blank_problems(recipe))
    if recipe is not None and recipe.analysis.k_min > recipe.analysis.k_max:
        problems.append(f"analysis.k_min: must be <= analysis.k_max ({recipe.analysis.k_max}) "
                        f"(got {recipe.analysis.k_min})")
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise UserError(f"{source}: {len(problems)} {noun}\n" + "\n".join(f"  {p}" for p in problems))
    return recipe


def _step_problems(train: TrainConfig) -> list[str]:
    """train.keep_step_adapters keeps the adapters of the validation passes inside epochs: there must be some."""
    if train.keep_step_adapters and not train.val_every:
        return ["train.keep_step_adapters: saves the adapter at the validation passes inside epochs, and "
                "train.val_every (the steps between them) is 0"]
    return []


def _models_problems(recipe: "Recipe") -> list[str]:
    """eval.models: each another model than the run's, named once."""
    problems, seen = [], set()
    for i, name in enumerate(m.name for m in recipe.eval.models):
        if name == recipe.model.name:
            problems.append(f"eval.models.{i}: {name!r} is model.name, whose base passes are scored already")
        elif name in seen:
            problems.append(f"eval.models.{i}: {name!r} is listed twice")
        seen.add(name)
    return problems


def _choice_problems(ev: EvalConfig) -> list[str]:
    """Multiple-choice scoring: eval.scoring choice names its options (eval.choices), and options are not set for
    another mode or beside sampled answers (eval.pass_at_k), which it cannot score."""
    problems = []
    if ev.scoring == "choice" and not ev.choices:
        problems.append("eval.scoring: choice needs eval.choices (the field holding each row's options)")
    if ev.choices and ev.scoring not in ("auto", "choice"):
        problems.append(f"eval.choices: read only by eval.scoring choice or auto (got eval.scoring {ev.scoring})")
    if ev.choices and ev.pass_at_k:
        problems.append("eval.pass_at_k: samples answers, and multiple-choice scoring (eval.choices) generates none; "
                        "drop one of them")
    return problems


def _blank_problems(recipe: "Recipe") -> list[str]:
    """A set whose options fill a blank (choice_blank) or are labelled (choice_labels) names its options, and a
    blank's prompts are plain text: they are cut at the blank, which a chat template's turn would not end at."""
    problems = []
    for key, fmt in [("eval", recipe.eval), *((f"eval.also.{i}", e) for i, e in enumerate(recipe.eval.also))]:
        if fmt.choice_labels and not fmt.choices:
            problems.append(f"{key}.choice_labels: labels each option, and {key}.choices names none")
        if not fmt.choice_blank:
            continue
        if not fmt.choices:
            problems.append(f"{key}.choice_blank: the options fill the blank, and {key}.choices names none")
        if recipe.data.chat_template:
            problems.append(f"{key}.choice_blank: scores the text after the blank, and data.chat_template writes "
                            "each prompt inside a chat turn; score this set in a run without data.chat_template")
        if fmt.prompt_baseline:
            problems.append(f"{key}.prompt_baseline: its prompts would not be cut at the blank (choice_blank); "
                            "drop one of them")
    return problems


def _mix_problems(data: DataConfig) -> list[str]:
    """Each `data.mix` entry's templates, as `_template_problems` checks data's; its name unique among the
    sources (data.source's included); a conversation field only in a chat-formatted run."""
    from tunelab.data.sources import short_name
    problems, names = [], {short_name(data.source): "data.source"}
    for i, entry in enumerate(data.mix):
        key = f"data.mix.{i}"
        problems += _format_problems(data, entry, key)
        name = entry.name or short_name(entry.source)
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            problems.append(f"{key}.name: {name!r} must be letters, digits, - _ or . (it prefixes row ids)")
        elif name in names:
            problems.append(f"{key}.name: {name!r} is also {names[name]}'s name; give one of them a name")
        names.setdefault(name, key)
    return problems


def _format_problems(data: DataConfig, fmt: RowFormat | EvalConfig, key: str) -> list[str]:
    """The templates a data.mix or eval.also entry (or eval, for eval.source) sets, checked as data's are
    (`_template_problems`); a conversation field only in a chat-formatted run."""
    problems = []
    if any(getattr(fmt, k) is not None for k in FORMAT_KEYS):
        problems += _template_problems(formatted(data, fmt), key)
    if fmt.messages and not data.chat_template:
        problems.append(f"{key}.messages: needs data.chat_template: true (a conversation is written by the "
                        "tokenizer's chat template)")
    return problems


def _eval_format_problems(recipe: "Recipe") -> list[str]:
    """eval's templates: for eval.source's rows only, checked as data's; and the few-shot baseline's shots in the
    format of the questions they precede."""
    ev = recipe.eval
    given = [k for k in FORMAT_KEYS if getattr(ev, k) is not None]
    if given and not ev.source:
        return [f"eval.{given[0]}: sets how eval.source's rows are written, and eval.source is not set (data.source's "
                f"test rows are written with data.{given[0]})"]
    problems = _format_problems(recipe.data, ev, "eval")
    if not problems and ev.fewshot and ev.fewshot_from == "data" and own_format(recipe.data, ev):
        problems.append("eval.fewshot_from: data takes the shots from the training rows, written in data's format, "
                        "not eval's; set eval.fewshot_from: eval_source (eval.source's train rows) or eval.fewshot: 0")
    if ev.description and not ev.source:
        problems.append("eval.description: is written before eval.source's prompts, and eval.source is not set")
    return problems + _category_shots_problems(recipe.data, ev, "eval")


def _category_shots_problems(data: DataConfig, fmt: "EvalConfig | ExtraTestSet", key: str) -> list[str]:
    """fewshot_same_category takes each question's shots from its category: the set needs a category column."""
    if fmt.fewshot_same_category and not (fmt.label_field or data.label_field):
        return [f"{key}.fewshot_same_category: takes each question's shots from its own category, and no category "
                f"column is named; set {key}.label_field"]
    return []


def also_names(ev: EvalConfig) -> list[str]:
    """Each `eval.also` test set's name (its folder eval/also/<name>/): its `name`, or its file's or dataset's."""
    from tunelab.data.sources import short_name
    return [entry.name or short_name(entry.source) for entry in ev.also]


def _also_problems(recipe: "Recipe") -> list[str]:
    """Each `eval.also` test set's name: usable as a folder name, and unique; the templates it sets, checked as
    data's."""
    problems, names = [], {}
    for i, name in enumerate(also_names(recipe.eval)):
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            problems.append(f"eval.also.{i}.name: {name!r} must be letters, digits, - _ or . (it names a folder)")
        elif name in names:
            problems.append(f"eval.also.{i}.name: {name!r} is also eval.also.{names[name]}'s name; give one of "
                            "them a name")
        names.setdefault(name, i)
        problems += _format_problems(recipe.data, recipe.eval.also[i], f"eval.also.{i}")
        problems += _category_shots_problems(recipe.data, recipe.eval.also[i], f"eval.also.{i}")
    return problems


def also_recipe(cfg: "Recipe", entry: ExtraTestSet) -> "Recipe":
    """The recipe that scores one `eval.also` test set: `cfg` with eval.source (and config, limit) set to it and its
    rows' format: the entry's own, else that of the data.mix entry reading the same source (its rows are scored
    the way they were trained), else data's. A set in a format of its own takes its few-shot shots from its own
    train split (the training rows are in another). eval.scoring regex scores a set as auto does (regex where its
    targets match eval.answer_pattern): a benchmark's `#### N` targets are numbers, not tagged answers; so does
    choice, unless the entry names its own options (`choices`: then it is scored by multiple choice). A set is
    asked its own prompt baseline, not eval.prompt_baseline (written for the run's own rows), and not sampled
    (eval.pass_at_k)."""
    trained = [m for m in cfg.data.mix if (m.source, m.config) == (entry.source, entry.config)]
    fmt = entry if entry.model_fields_set & set(FORMAT_KEYS) or not trained else trained[0]
    own = {k: getattr(fmt, k) for k in FORMAT_KEYS}
    ev = cfg.eval.model_copy(update={"source": entry.source, "config": entry.config, "split": entry.split, "also": [],
                                     "task": entry.task,
                                     "prompt_baseline": entry.prompt_baseline,  # its own: its rows' fields
                                     "models": [],  # other models: on the run's own questions
                                     "pass_at_k": 0,  # k sampled passes: the run's own questions only
                                     "limit": entry.limit or cfg.eval.limit, "label_field": entry.label_field, **own,
                                     "limit_from": entry.limit_from or cfg.eval.limit_from,
                                     "fewshot": cfg.eval.fewshot if entry.fewshot is None else entry.fewshot,
                                     "choices": entry.choices, "choice_target": entry.choice_target,
                                     "choice_blank": entry.choice_blank, "choice_labels": entry.choice_labels,
                                     "description": entry.description,
                                     "fewshot_same_category": entry.fewshot_same_category,
                                     "fewshot_sampler": entry.fewshot_sampler or cfg.eval.fewshot_sampler,
                                     "scoring": "choice" if entry.choices else "auto"
                                     if cfg.eval.scoring in ("regex", "choice") else cfg.eval.scoring})
    if own_format(cfg.data, ev):
        ev = ev.model_copy(update={"fewshot_from": "eval_source"})
    return cfg.model_copy(update={"eval": ev})


def categories_from(cfg: "Recipe") -> str | None:
    """Where the rows the eval stage scores take their category from, as the report names it: "eval.label_field
    (subject)" when eval.source has its own column, else "data.label_field (family)" when data names one, else
    None."""
    if cfg.eval.label_field:
        return f"eval.label_field ({cfg.eval.label_field})"
    return f"data.label_field ({cfg.data.label_field})" if cfg.data.label_field else None


def formatted(data: DataConfig, fmt: RowFormat | EvalConfig) -> DataConfig:
    """`data` rendering rows as `fmt` (a data.mix or eval.also entry, or eval for eval.source) sets: its template,
    target and messages where it sets them, data's where not. A format of its own (a template, target or messages
    set) keeps none of data's optional fields unless it sets them too."""
    own = {k: getattr(fmt, k) for k in FORMAT_KEYS if getattr(fmt, k) is not None}
    if own.keys() & {"template", "target", "messages"}:
        own = {"optional_fields": [], "template_if_empty": {}, "messages": fmt.messages, **own}
    if label := getattr(fmt, "label_field", None):  # eval.label_field: the scored set's own category column
        own["label_field"] = label
    return data.model_copy(update={"mix": [], **own})


def own_format(data: DataConfig, fmt: RowFormat | EvalConfig) -> bool:
    """`fmt` renders rows otherwise than `data` does."""
    rendered = formatted(data, fmt)
    return any(getattr(rendered, k) != getattr(data, k) for k in FORMAT_KEYS)


def mixed(data: DataConfig, entry: MixSource) -> DataConfig:
    """`data` as it reads one `data.mix` entry: its source, config and limit (never data's), and the templates it
    sets (data's where not)."""
    return formatted(data, entry).model_copy(update={"source": entry.source, "config": entry.config,
                                                      "limit": entry.limit, "weight": entry.weight})


def _template_problems(data: DataConfig, section: str = "data") -> list[str]:
    """`data.template`, `data.target` and each of `data.template_if_empty` parse as `{field}` templates; each of
    `data.optional_fields` is one of their placeholders (a typo would otherwise leave a required field required
    and the optional one unused), and each key of `data.template_if_empty` one of `data.template`'s. `section`:
    where the keys are named (a data.mix entry's)."""
    problems, used = [], {}
    templates = {"data.template": data.template, "data.target": data.target,
                 **{f"data.template_if_empty.{k}": v for k, v in data.template_if_empty.items()}}
    templates = {section + name[4:]: t for name, t in templates.items()}
    for key, template in templates.items():
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as err:
            problems.append(f"{key}: {err} (write {{{{ and }}}} for a literal brace)")
            continue
        problems += [f"{key}: placeholder {{{name}}} is not a field name" for name in names if field_of(name) is None]
        used[key] = {field_of(name) for name in names}
    if not problems:
        every = set().union(*used.values())
        problems += [f"{section}.optional_fields: {name!r} is not a placeholder of {section}.template or "
                     f"{section}.target (placeholders: {', '.join(sorted(every)) or 'none'})"
                     for name in data.optional_fields if name not in every]
        problems += [f"{section}.template_if_empty: {name!r} is not a placeholder of {section}.template "
                     f"(placeholders: {', '.join(sorted(used[section + '.template'])) or 'none'})"
                     for name in data.template_if_empty if name not in used[section + ".template"]]
    return problems


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key{_did_you_mean([str(p) for p in error['loc']])}"
    if error["type"] == "missing":
        if key in ("data.template", "data.target"):  # the other one is set: both, or neither (read from the rows)
            return (f"{key}: required with data.{'target' if key == 'data.template' else 'template'} (or leave both "
                    "unset: the format is then read from the source's rows)")
        return f"{key}: required"
    msg = error["msg"].replace("Input should be", "must be").replace("Value error, ", "")
    return f"{key}: {msg} (got {error.get('input')!r})"


def apply_overrides(raw: dict, overrides: list[str]) -> list[str]:
    """Apply `dotted.key=value` overrides in place; values are parsed as YAML (typed).

    `\\n` in a value means a newline (so templates can be given on the command line).
    Returns the problems found (malformed override, key not in the schema).
    """
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item}: expected dotted.key=value")
            continue
        parts = key.split(".")
        if not _schema_has(parts):
            problems.append(f"--set {key}: no such key in the recipe schema{_did_you_mean(parts)}")
            continue
        value = _parse_value(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            if part.isdigit():  # an entry of a list of sections: data.mix.0.limit
                if not isinstance(node, list) or int(part) >= len(node) or not isinstance(node[int(part)], dict):
                    problems.append(f"--set {key}: the recipe has no {'.'.join(parts[:i + 1])} (its {parts[i - 1]} "
                                    f"has {len(node) if isinstance(node, list) else 0} entries)")
                    break
                node = node[int(part)]
                continue
            if not isinstance(node.get(part), (dict, list)) or (parts[i + 1].isdigit() != isinstance(node[part], list)):
                node[part] = [] if parts[i + 1].isdigit() else {}
            node = node[part]
        else:
            node[parts[-1]] = value
    return problems


def _parse_value(text: str) -> Any:
    """YAML scalars and lists are typed (`3`, `1e-4`, `null`, `[a, b]`); anything else is the text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None if text.strip() else text
    if value is None and text.strip() not in ("null", "~", "None"):
        value = text
    if isinstance(value, (str, dict)):
        quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
        value = (text[1:-1] if quoted else text).replace("\\n", "\n")
    return _newlines(value) if isinstance(value, list) else value


def _newlines(value: Any) -> Any:
    """`\\n` in the strings of a YAML list (data.mix and eval.also entries' templates) as a newline."""
    if isinstance(value, str):
        return value.replace("\\n", "\n")
    if isinstance(value, list):
        return [_newlines(v) for v in value]
    return {k: _newlines(v) for k, v in value.items()} if isinstance(value, dict) else value


def _schema_has(parts: list[str]) -> bool:
    model: Any = Recipe
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        model = fields[part].annotation
        if get_origin(model) is dict and i == len(parts) - 2:
            return True  # one entry of a mapping: data.template_if_empty.input
        if get_origin(model) is list and i < len(parts) - 2 and parts[i + 1].isdigit():
            (model,) = get_args(model)  # one entry of a list of sections: data.mix.0.limit
            return isinstance(model, type) and issubclass(model, BaseModel) and _schema_has_in(model, parts[i + 2:])
        if i < len(parts) - 1 and not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
    return True


def _did_you_mean(parts: list[str]) -> str:
    """' (did you mean train.scheduler?)' for a key the recipe schema lacks (`parts`, dotted; a list entry's index a
    part of its own): its first part no section has, spelt as a key of that section (difflib's ratio >= 0.75); ''
    when no key is that close."""
    section: Any = Recipe
    for i, part in enumerate(parts):
        if part.isdigit():
            continue  # an entry of a list of sections: data.mix.0.limt
        fields = getattr(section, "model_fields", {})
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.75)
            return f" (did you mean {'.'.join([*parts[:i], close[0], *parts[i + 1:]])}?)" if close else ""
        section = fields[part].annotation
        section = next((a for a in get_args(section) if isinstance(a, type) and issubclass(a, BaseModel)), section)
    return ""


def _schema_has_in(model: type[BaseModel], parts: list[str]) -> bool:
    """`parts` name a field of `model` (one level: a data.mix entry's keys are plain values)."""
    return len(parts) == 1 and parts[0] in model.model_fields


def to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML, every default spelled out (saved as the run's config.yaml)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def reference() -> str:
    """Markdown recipe reference generated from the schema (README and `tunelab recipes --reference`)."""
    lines = []
    for section, info in Recipe.model_fields.items():
        model = info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        lines.append(f"\n**`{section}`**\n")
        lines.append("| key | default | meaning |\n|---|---|---|")
        lines += _reference_rows(section, model)
    return "\n".join(lines) + "\n"


def _reference_rows(prefix: str, model: type[BaseModel]) -> list[str]:
    """One table row per key, a nested section's keys under its own dotted name (model.special_tokens.eos_token);
    a | in a meaning (<|im_end|>) escaped, so the table keeps its columns."""
    rows = []
    for key, f in model.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            rows += _reference_rows(f"{prefix}.{key}", f.annotation)
            continue
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        rows.append(f"| `{prefix}.{key}` | `{default}` | {(f.description or '').replace('|', chr(92) + '|')} |")
    return rows
