"""`tunelab convert`: an Axolotl config as a tunelab recipe — the same settings, rows written as Axolotl writes them,
every key not carried over exactly named, and what would train differently refused."""

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import write_jsonl
from tunelab.cli import main
from tunelab.config import load_recipe, validate
from tunelab.convert import convert
from tunelab.data import load_splits
from tunelab.errors import UserError

# Axolotl's examples/mistral/lora.yml (its keys and values), the dataset a local Alpaca file
MISTRAL_LORA = """\
base_model: mistralai/Mistral-7B-v0.1
model_type: MistralForCausalLM
tokenizer_type: LlamaTokenizer
load_in_8bit: true
load_in_4bit: false
datasets:
  - path: {data}
    type: alpaca
dataset_prepared_path: last_run_prepared
val_set_size: 0.1
output_dir: ./outputs/lora-out
adapter: lora
lora_model_dir:
sequence_len: 8192
sample_packing: true
pad_to_sequence_len: true
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
lora_target_modules:
  - gate_proj
  - q_proj
wandb_project:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 1
optimizer: adamw_bnb_8bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: auto
tf32: false
gradient_checkpointing: true
logging_steps: 1
attention: flash
loss_watchdog_threshold: 5.0
warmup_steps: 10
evals_per_epoch: 4
weight_decay: 0.0
special_tokens:
"""

# how Axolotl's AlpacaPrompter (instruct style) writes a row with and without an input
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers."
              "\n\n### Input:\n2 and 3\n\n### Response:\n")
WITHOUT_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\nName a prime.\n\n### Response:\n")


def _alpaca(tmp_path):
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a prime.", "input": "", "output": "7"}] * 10
    return write_jsonl(tmp_path / "alpaca.jsonl", rows)


def _config(tmp_path, text: str, **data) -> str:
    path = tmp_path / "axolotl.yml"
    path.write_text(text.format(**data))
    return str(path)


def test_axolotls_mistral_lora_example_converts_with_every_difference_named(tmp_path):
    raw, notes = convert(_config(tmp_path, MISTRAL_LORA, data=_alpaca(tmp_path)))
    assert raw["name"] == "lora-out" and raw["model"] == {"name": "mistralai/Mistral-7B-v0.1",
                                                          "load_in_4bit": False,
                                                          "attn_implementation": "flash_attention_2"}
    assert raw["lora"] == {"r": 32, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}
    assert raw["train"] == {"epochs": 1, "batch_size": 2, "grad_accum": 4, "lr": 0.0002, "weight_decay": 0.0,
                            "max_length": 8192, "gradient_checkpointing": True, "packing": True,
                            "scheduler": "cosine", "warmup_steps": 10}
    assert raw["data"]["val_fraction"] == 0.1
    said = {n.split(":")[0]: n for n in notes}
    assert set(said) == {"load_in_8bit", "val_set_size", "optimizer", "sequence_len", "output_dir",
                         "dataset_prepared_path", "model_type", "tokenizer_type", "pad_to_sequence_len",
                         "logging_steps", "loss_watchdog_threshold", "evals_per_epoch"}  # empty, false: no word
    assert "differs" in said["load_in_8bit"] and "differs" in said["optimizer"] and "not needed" in said["output_dir"]


def test_alpaca_rows_are_written_as_axolotl_writes_them(tmp_path):
    raw, _ = convert(_config(tmp_path, MISTRAL_LORA, data=_alpaca(tmp_path)))
    recipe = load_recipe(_write(tmp_path, raw))
    rows = load_splits(recipe.data)
    prompts = {e.target: e.prompt for e in rows.train + rows.val}
    assert prompts == {"5": WITH_INPUT, "7": WITHOUT_INPUT}


def test_a_response_axolotl_starts_with_a_word_start_piece_is_noted_for_such_a_tokenizer(tmp_path, mistral_dir,
                                                                                          tiny_model):
    """Axolotl tokenizes an Alpaca response alone (LLaMA-Factory each turn): under Mistral-7B-v0.1's SentencePiece
    tokenizer it starts with a word-start piece (▁) the text does not have, which tunelab does not train; the notes
    say so for such a local tokenizer, and not for SmolLM2's byte-level one."""
    text = "base_model: {model}\nadapter: lora\ndatasets:\n  - path: {data}\n    type: alpaca\n"
    _, notes = convert(_config(tmp_path, text, model=mistral_dir, data=_alpaca(tmp_path)))
    assert notes == ["datasets: differs: Axolotl tokenizes each response alone, and this tokenizer starts a text "
                     "with a word-start piece (▁The after \"### Response:\\n\", where the text reads The); tunelab "
                     "tokenizes a reply as it continues its prompt, as the text reads and generation sees it"]
    assert convert(_config(tmp_path, text, model=tiny_model, data=_alpaca(tmp_path)))[1] == []
    folder = _llamafactory_data(tmp_path)
    factory = f"model_name_or_path: {mistral_dir}\nstage: sft\ndataset: identity\ndataset_dir: {folder}\n"
    said = [n for n in convert(_config(tmp_path, factory))[1] if n.startswith("datasets: differs")]
    assert said == [notes[0].replace("Axolotl tokenizes each response alone", "LLaMA-Factory tokenizes each turn "
                                     "alone").replace('"### Response:\\n"', "the assistant header")]


def test_a_user_defined_format_becomes_the_template_of_the_fields_it_names(tmp_path, gsm8k):
    text = """\
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
adapter: qlora
load_in_4bit: true
datasets:
  - path: {data}
    type:
      system_prompt: "Solve it {{carefully}}."
      system_format: "<s>{{system}}\\n"
      field_instruction: question
      field_output: answer
      format: "[INST] {{instruction}} {{input}} [/INST]"
      no_input_format: "[INST] {{instruction}} [/INST]"
num_epochs: 3
seed: 7
train_on_inputs: true
"""
    raw, notes = convert(_config(tmp_path, text, data=gsm8k / "train.jsonl"))
    assert raw["data"]["template"] == "<s>Solve it {{carefully}}.\n[INST] {question} {input} [/INST]"
    assert raw["data"]["template_if_empty"] == {"input": "<s>Solve it {{carefully}}.\n[INST] {question} [/INST]"}
    assert raw["data"]["target"] == "{answer}" and raw["data"]["seed"] == raw["train"]["seed"] == 7
    assert raw["model"]["load_in_4bit"] is True and raw["train"]["completion_only"] is False and notes == []
    first = json.loads((gsm8k / "train.jsonl").read_text().splitlines()[0])
    recipe = load_recipe(_write(tmp_path, raw), ["data.limit=20"])
    rows = load_splits(recipe.data)
    row = next(e for e in rows.train + rows.val if e.id == "train-1")  # the file's first line
    assert row.prompt == f"<s>Solve it {{carefully}}.\n[INST] {first['question']} [/INST]"


def test_a_format_axolotl_never_uses_is_said_and_not_used(tmp_path, gsm8k):
    text = """\
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
adapter: lora
datasets:
  - path: {data}
    type:
      field_instruction: question
      field_output: answer
      format: "Q: {{instruction}}\\nA: "
"""
    raw, notes = convert(_config(tmp_path, text, data=gsm8k / "train.jsonl"))
    # GSM8K rows have no input field: Axolotl writes every one by no_input_format, whose default is "{instruction} "
    assert raw["data"]["template"] == "{question} " and "template_if_empty" not in raw["data"]
    assert notes == ["datasets.0.type.format: 'Q: {instruction}\\nA: ': not used: Axolotl writes rows without an "
                     "input by no_input_format ('{instruction} ', its default), as this recipe does; set "
                     "no_input_format in Axolotl to have format used"]


def test_axolotl_completion_text_trains_every_token(tmp_path):
    data = write_jsonl(tmp_path / "texts.jsonl", [{"content": f"Once upon a time {i}."} for i in range(10)])
    text = "base_model: m\nadapter: lora\ndatasets:\n  - path: {data}\n    type: completion\n    field: content\n"
    raw, notes = convert(_config(tmp_path, text, data=data))
    assert (raw["data"]["template"], raw["data"]["target"]) == ("", "{content}")
    assert notes == ["datasets.0.type: completion: differs: Axolotl cuts a text longer than sequence_len into "
                     "several rows; tunelab truncates it (tunelab check counts them)"]
    rows = load_splits(load_recipe(_write(tmp_path, raw)).data)
    assert {e.prompt for e in rows.train} == {""} and "Once upon a time 0." in {e.target for e in rows.train + rows.val}


def test_conversations_take_the_tokenizers_chat_template_or_the_configs_own(tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", [{"conversations": [{"from": "human", "value": "hi"},
                                                                     {"from": "gpt", "value": "hello"}]}] * 10)
    text = """\
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
adapter: lora
datasets:
  - path: {data}
    type: chat_template
    shards: 4
    field_messages: conversations
    message_property_mappings: {{role: from, content: value}}
default_system_message: Be brief.
"""
    raw, notes = convert(_config(tmp_path, text, data=data))
    assert raw["data"]["messages"] == "conversations" and raw["data"]["chat_template"] is True
    assert notes == ["datasets.0.shards: 4: not carried over (no tunelab equivalent)"]  # a dataset's keys count too
    assert raw["data"]["system_prompt"] == "Be brief." and "chat_template" not in raw["model"]
    jinja = "{% for m in messages %}{{ m.content }}{% endfor %}"  # Axolotl's own template: model.chat_template
    braced = jinja.replace("{", "{{").replace("}", "}}")  # _config formats the text
    own = f"chat_template: jinja\nchat_template_jinja: '{braced}'\n"
    raw, notes = convert(_config(tmp_path, text + own, data=data))
    assert raw["model"]["chat_template"] == jinja and validate(raw, "c").model.chat_template == jinja
    assert notes[1:] == ["chat_template: jinja: differs: the template writes nothing after a reply; tunelab trains "
                         "the eos_token after the last one (where generation stops), Axolotl does not"]
    with pytest.raises(UserError, match=r"chat_template: jinja: chat_template_jinja \(the template\) is not set"):
        convert(_config(tmp_path, text + "chat_template: jinja\n", data=data))


def test_the_turns_thinking_axolotl_hands_the_template_is_the_field_tunelab_reads_or_refused(tmp_path):
    """Axolotl hands each turn's reasoning_content (field_thinking; message_property_mappings' template_thinking_key)
    to the chat template; tunelab reads a turn's reasoning_content, reasoning or thinking as its think block."""
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                {"role": "assistant", "content": "hello"}]}] * 10)
    base = f"base_model: HuggingFaceTB/SmolLM2-135M-Instruct\nadapter: lora\ndatasets:\n  - path: {data}\n" \
           "    type: chat_template\n"
    for keys in ("", "    field_thinking: thinking\n",
                 "    message_property_mappings: {role: role, content: content, reasoning_content: reasoning}\n",
                 "    template_thinking_key: thoughts\n    message_property_mappings: {role: role, content: content, "
                 "thoughts: reasoning_content}\n"):
        (tmp_path / "a.yml").write_text(base + keys)
        raw, notes = convert(str(tmp_path / "a.yml"))
        assert raw["data"]["messages"] == "messages" and not any("thinking" in n for n in notes), keys
    for keys, field in (("    field_thinking: thoughts\n", "thoughts"),
                        ("    message_property_mappings: {role: role, content: content, reasoning_content: cot}\n",
                         "cot")):
        (tmp_path / "a.yml").write_text(base + keys)
        with pytest.raises(UserError, match=f"datasets.0: a turn's thinking in '{field}': tunelab reads it from "
                                            "reasoning_content, reasoning, thinking"):
            convert(str(tmp_path / "a.yml"))
    (tmp_path / "a.yml").write_text(base + "    field_tools: tools\n")  # Axolotl's default: the field read
    assert convert(str(tmp_path / "a.yml"))[0]["data"]["messages"] == "messages"
    (tmp_path / "a.yml").write_text(base + "    field_tools: functions\n")
    with pytest.raises(UserError, match="datasets.0.field_tools: 'functions': tunelab hands a row's 'tools' field"):
        convert(str(tmp_path / "a.yml"))


CHATS = """\
base_model: {model}
adapter: lora
datasets:
  - path: {data}
    type: chat_template
    field_messages: conversations
    message_property_mappings: {{role: from, content: value}}
"""


def _chats(tmp_path, model, extra: str = "", dataset: str = "") -> str:
    """An Axolotl config of ShareGPT conversations (type chat_template) for `model`, `extra` keys after it and
    `dataset` keys in its dataset."""
    data = write_jsonl(tmp_path / "chats.jsonl", [{"conversations": [{"from": "human", "value": "hi"},
                                                                     {"from": "gpt", "value": "hello"}]}] * 10)
    path = tmp_path / "axolotl.yml"
    path.write_text(CHATS.format(model=model, data=data).replace("    field_messages", dataset + "    field_messages")
                    + extra)
    return str(path)


def test_axolotls_named_chat_templates_become_model_chat_template_with_the_end_marker_it_leaves_untrained_noted(
        tmp_path, smollm2_dir):
    """chat_template: chatml as model.chat_template: chatml, which reads as Axolotl's text of that name; llama3 ends
    a reply with <|eot_id|>, not SmolLM2's eos_token: Axolotl leaves it untrained (or trains it alone, eot_tokens),
    tunelab trains it and the eos_token after it, and says so — unless special_tokens makes it the eos_token. A hub
    model not at hand: the note says what it depends on."""
    raw, notes = convert(_chats(tmp_path, smollm2_dir, "chat_template: chatml\n"))
    assert raw["model"]["chat_template"] == "chatml" and notes == []  # SmolLM2's eos_token is <|im_end|>
    template = validate(raw, "c").model.chat_template
    assert template.startswith("{% if not add_generation_prompt is defined %}") and "'<|im_end|>'" in template
    raw, notes = convert(_chats(tmp_path, smollm2_dir, "chat_template: llama3\n"))
    assert raw["model"]["chat_template"] == "llama3"
    assert notes == ["chat_template: llama3: differs: tunelab trains the template's end-of-turn marker "
                     "(<|eot_id|>) and, after the last reply, the eos_token; Axolotl trains "
                     "neither. special_tokens: {eos_token: <|eot_id|>} makes the two one"]
    _, notes = convert(_chats(tmp_path, smollm2_dir, "chat_template: llama3\neot_tokens: [<|eot_id|>]\n"))
    assert "; Axolotl trains the marker up to <|eot_id|> (eot_tokens)." in notes[0]
    tokens = "chat_template: llama3\nspecial_tokens: {eos_token: <|eot_id|>}\ntokens: [<|start_header_id|>]\n"
    raw, notes = convert(_chats(tmp_path, smollm2_dir, tokens))
    assert raw["model"]["added_tokens"] == ["<|eot_id|>", "<|start_header_id|>"]
    assert not [n for n in notes if n.startswith("chat_template")]
    raw, notes = convert(_chats(tmp_path, "meta-llama/Meta-Llama-3-8B", "chat_template: llama3\n"))
    assert notes[0].startswith("chat_template: llama3: differs (unless <|eot_id|> is meta-llama/Meta-Llama-3-8B's "
                               "eos_token): ")
    mistral = convert(_chats(tmp_path, "mistralai/Mistral-7B-v0.1", "chat_template: mistral_v1\n"))  # ends a
    # reply with {{ eos_token }}: no note
    assert mistral[0]["model"]["chat_template"] == "mistral_v1" and mistral[1] == []
    # qwen3's generation prompt opens an empty think block; Axolotl leaves its close untrained, tunelab trains it
    raw, notes = convert(_chats(tmp_path, smollm2_dir, "chat_template: qwen3\n"))
    assert raw["model"]["chat_template"] == "qwen3"
    assert notes == ["chat_template: qwen3: differs: the template writes '</think>\\n\\n' between the generation "
                     "prompt and the last reply; tunelab trains it, as generation writes it, Axolotl does not"]


def test_a_chat_template_tunelab_does_not_ship_or_two_different_ones_are_refused_naming_the_key(tmp_path):
    mistral = "mistralai/Mistral-7B-v0.1"
    with pytest.raises(UserError, match=r"axolotl.yml: chat_template: 'vicuna': tunelab converts Axolotl's chat "
                                        r"templates alpaca, chatml, deepseek_v3, gemma, gemma3, llama3, llama4, "
                                        r"mistral_v1, mistral_v7_tekken, phi_3, phi_35, phi_4, qwen3, qwen_25, "
                                        r"tokenizer_default and jinja"):
        convert(_chats(tmp_path, mistral, "chat_template: vicuna\n"))
    with pytest.raises(UserError, match=r"datasets.0: gemma: differs from chat_template's chatml; tunelab writes "
                                        r"every source of a run with one chat template"):
        convert(_chats(tmp_path, mistral, "chat_template: chatml\n", dataset="    chat_template: gemma\n"))
    own = _chats(tmp_path, mistral, dataset="    chat_template: chatml\n")  # a dataset's own
    assert convert(own)[0]["model"]["chat_template"] == "chatml"
    strict = ("{% if messages[0]['role'] != 'system' %}{{ raise_exception('no system turn') }}{% endif %}"
              "{% for m in messages %}{{ m.content }}<|end|>{% endfor %}")  # refuses the note's probe turns
    raw, notes = convert(_chats(tmp_path, mistral, f"chat_template: jinja\nchat_template_jinja: \"{strict}\"\n"))
    assert raw["model"]["chat_template"] == strict and notes == []


def test_tokenizer_default_fallback_takes_the_named_template_only_for_a_tokenizer_without_one(tmp_path, tiny_model):
    from transformers import AutoTokenizer
    bare = tmp_path / "bare"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    tok.save_pretrained(bare)
    (bare / "config.json").write_text((tiny_model / "config.json").read_text())
    fallback = "chat_template: tokenizer_default_fallback_chatml\n"
    raw, _ = convert(_chats(tmp_path, tiny_model, fallback))
    assert "chat_template" not in raw["model"]  # SmolLM2's tokenizer has its own
    raw, _ = convert(_chats(tmp_path, bare, fallback))
    assert raw["model"]["chat_template"] == "chatml"


def test_trls_chat_template_path_becomes_model_chat_template_and_another_tokenizers_is_refused(tmp_path, tiny_model):
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "hello"}]}] * 4)
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    raw, notes = convert(_trl_config(tmp_path, tiny_model, chats, f"chat_template_path: {template}\n"))
    assert raw["model"]["chat_template"] == str(template) and not [n for n in notes if "chat_template" in n]
    assert validate(raw, "c").model.chat_template == template.read_text()  # the file's text
    with pytest.raises(UserError, match="chat_template_path: .*tunelab takes a Jinja template file"):
        convert(_trl_config(tmp_path, tiny_model, chats, f"chat_template_path: {tiny_model}\n"))  # a tokenizer


@pytest.mark.parametrize("old, new, refused", [
    ("adapter: lora", "adapter:", "adapter: None: tunelab trains LoRA adapters"),
    ("type: alpaca", "type: input_output", "datasets.0.type: 'input_output': tunelab converts alpaca, chat_template"),
    ("type: alpaca", "type: alpaca\n    split: test", "datasets.0.split: 'test': tunelab trains on a source's train"),
])
def test_what_would_train_differently_is_refused_naming_the_key(tmp_path, old, new, refused):
    path = _config(tmp_path, MISTRAL_LORA.replace(old, new), data=_alpaca(tmp_path))
    with pytest.raises(UserError, match=re.escape(refused)):
        convert(path)


def test_any_command_takes_a_trainer_config_where_a_recipe_goes(tmp_path, caplog, capsys):
    config = _config(tmp_path, MISTRAL_LORA, data=_alpaca(tmp_path))
    raw, notes = convert(config)
    with caplog.at_level("WARNING"):
        direct = load_recipe(config, ["train.epochs=2"])  # --set applies on top, as on any recipe
    assert direct.model_dump() == load_recipe(_write(tmp_path, raw), ["train.epochs=2"]).model_dump()
    assert f"(Axolotl config): read as the recipe tunelab convert writes from it; {len(notes)} keys" in caplog.text
    assert main(["show-recipe", config]) == 0 and "lora-out" in capsys.readouterr().out


def test_convert_writes_a_recipe_that_loads_and_says_what_it_left(tmp_path, capsys):
    config = _config(tmp_path, MISTRAL_LORA, data=_alpaca(tmp_path))
    out = tmp_path / "recipe.yaml"
    assert main(["convert", config, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "optimizer: 'adamw_bnb_8bit': differs" in err
    text = out.read_text()
    assert text.startswith(f"# tunelab recipe converted from {config} (Axolotl)") and "#   load_in_8bit" in text
    assert load_recipe(str(out)).lora.r == 32
    assert main(["convert", config, "-o", str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", config]) == 0  # no -o: the recipe on stdout
    assert yaml.safe_load(capsys.readouterr().out)["train"]["grad_accum"] == 4
    (tmp_path / "bad.yml").write_text("- a list\n")
    assert main(["convert", str(tmp_path / "bad.yml")]) == 2


def _write(tmp_path, raw: dict) -> str:
    path = tmp_path / "converted.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


# LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml (its keys and values), its datasets in a local folder
LLAMA3_LORA_SFT = """\
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
dataset: identity,alpaca_en_demo
dataset_dir: {data}
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
"""


def _llamafactory_data(tmp_path, info=None):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "identity.json").write_text(json.dumps([{"instruction": "hi", "input": "", "output": "Hello."}] * 10))
    write_jsonl(folder / "alpaca_en_demo.jsonl", [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
                                                  {"instruction": "Name a prime.", "input": "", "output": "7"}] * 10)
    (folder / "dataset_info.json").write_text(json.dumps(info or {
        "identity": {"file_name": "identity.json"}, "alpaca_en_demo": {"file_name": "alpaca_en_demo.jsonl"}}))
    return folder


def test_llamafactorys_llama3_example_converts_with_its_defaults_written_out(tmp_path):
    folder = _llamafactory_data(tmp_path)
    raw, notes = convert(_config(tmp_path, LLAMA3_LORA_SFT, data=folder))
    assert raw["name"] == "sft" and raw["description"].endswith("(LLaMA-Factory) by tunelab convert")
    assert raw["model"] == {"name": "meta-llama/Meta-Llama-3-8B-Instruct", "trust_remote_code": True,
                            "chat_template": "llama3",  # LLaMA-Factory's llama3: the same text, <|eot_id|> as EOS
                            "special_tokens": {"eos_token": "<|eot_id|>", "additional_special_tokens": ["<|eom_id|>"]}}
    assert raw["lora"] == {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}  # its defaults
    assert raw["train"] == {"epochs": 3, "batch_size": 1, "grad_accum": 8, "lr": 0.0001, "warmup_ratio": 0.1,
                            "weight_decay": 0.0, "max_grad_norm": 1.0, "max_length": 2048, "completion_only": True,
                            "gradient_checkpointing": True, "seed": 42, "scheduler": "cosine",
                            "checkpoint_every": 500}  # save_steps
    data = raw["data"]
    assert data["source"] == str(folder / "identity.json") and data["mix"][0]["source"].endswith("alpaca_en_demo.jsonl")
    assert data["chat_template"] is True and data["limit"] == 1000 and data["seed"] == 42
    said = {n.split(":")[0]: n for n in notes}
    assert {"val_size", "cutoff_len"} <= set(said) and "chat template" not in said
    assert said["template"].startswith("template: <|eot_id|>, <|eom_id|>: LLaMA-Factory adds these")  # a hub id
    assert "all of them" in said["val_size"] and "not needed" in said["output_dir"]
    recipe = load_recipe(_write(tmp_path, raw), ["data.mix=[]", f"data.source={folder / 'alpaca_en_demo.jsonl'}"])
    rows = load_splits(recipe.data)
    # LLaMA-Factory's user turn: the instruction, then the input on its own line when there is one
    assert {e.target: e.prompt for e in rows.train + rows.val} == {"5": "Add.\n2 and 3", "7": "Name a prime."}


@pytest.mark.slow
def test_llamafactory_templates_of_the_same_text_become_model_chat_template(tmp_path, smollm2_dir):
    """LLaMA-Factory's chatml, qwen and llama3 templates become tunelab's of the same text, the first stop word the
    EOS (LLaMA-Factory's replace_eos) and a local tokenizer given the stop words it lacks; rows then read as
    LLaMA-Factory's template writes them (qwen's default system turn, llama3's headers). A hub model's tokenizer is
    not read; another name is noted, naming those converted."""
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize_with
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "chats.jsonl", [{"conversations": [{"from": "human", "value": "hi"},
                                                            {"from": "gpt", "value": "hello"}]}] * 10)
    (folder / "dataset_info.json").write_text(json.dumps({"chats": {"file_name": "chats.jsonl",
                                                                    "formatting": "sharegpt"}}))

    def converted(model, template: str, extra: str = ""):
        return convert(_config(tmp_path, f"model_name_or_path: {model}\nstage: sft\nfinetuning_type: lora\n"
                                         f"dataset: chats\ndataset_dir: {folder}\ntemplate: {template}\n{extra}"))

    def first_row(raw: dict) -> str:
        recipe = load_recipe(_write(tmp_path, raw))
        tok = load_tokenizer(recipe.model)
        items, _ = tokenize_with(recipe, load_splits(recipe.data).train[:1], tok)
        return tok.decode(items[0].input_ids)

    raw, notes = converted(smollm2_dir, "qwen")
    assert raw["model"] == {"name": str(smollm2_dir), "chat_template": "qwen_25",
                            "special_tokens": {"eos_token": "<|im_end|>"}}  # SmolLM2 has <|im_end|>: none added
    assert [n for n in notes if n.startswith("chat template: differs")] and not [n for n in notes
                                                                                 if n.startswith("template")]
    assert first_row(raw) == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                              "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
                              "hello<|im_end|>")
    raw, notes = converted(smollm2_dir, "llama3")
    assert raw["model"]["added_tokens"] == ["<|eot_id|>", "<|eom_id|>"] and raw["model"]["chat_template"] == "llama3"
    assert not [n for n in notes if n.startswith("chat template")]  # nothing follows llama3's <|eot_id|>
    assert first_row(raw) == ("<|im_start|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                              "<|start_header_id|>assistant<|end_header_id|>\n\nhello<|eot_id|>")
    raw, notes = converted(smollm2_dir, "qwen3")  # a reasoning template: its empty think block, placed otherwise
    assert raw["model"]["chat_template"] == "qwen3"
    assert [n for n in notes if n.startswith("template: qwen3: differs") and "earlier replies" in n]
    assert first_row(raw) == ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
                              "hello<|im_end|>")
    _, notes = converted(smollm2_dir, "qwen3", "enable_thinking: false\n")
    assert [n for n in notes if n.startswith("enable_thinking: false: differs")]
    raw, _ = converted(smollm2_dir, "qwen3_nothink")
    assert raw["model"]["chat_template"] == "chatml"
    assert first_row(raw) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>"
    raw, notes = converted("Qwen/Qwen2.5-7B", "chatml")  # offline: loading its tokenizer would fail
    assert [n for n in notes if n.startswith("template: <|im_end|>, <|im_start|>:") and "model.added_tokens" in n]
    assert raw["model"] == {"name": "Qwen/Qwen2.5-7B", "chat_template": "chatml", "special_tokens": {
        "eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]}}
    raw, notes = converted(smollm2_dir, "mistral")
    assert "chat_template" not in raw["model"] and "special_tokens" not in raw["model"]
    assert [n for n in notes if n.startswith("template: 'mistral': differs")
                                                        and "chatml, qwen, qwen3, qwen3_nothink, llama3" in n]


def test_the_modules_a_config_trains_whole_become_lora_modules_to_save(tmp_path, tiny_model):
    """Axolotl's and TRL's lora_modules_to_save and LLaMA-Factory's additional_target (comma-separated) become
    lora.modules_to_save, without a note: PEFT's modules_to_save, the same training; Axolotl's embedding_lr_scale
    (or embedding_lr), their rate, train.embedding_lr."""
    axolotl = MISTRAL_LORA.replace("lora_model_dir:", "lora_modules_to_save:\n  - embed_tokens\n  - lm_head")
    raw, notes = convert(_config(tmp_path, axolotl, data=_alpaca(tmp_path)))
    assert raw["lora"]["modules_to_save"] == ["embed_tokens", "lm_head"] and not [n for n in notes if "save" in n]
    for extra, rate in (("embedding_lr_scale: 0.5\n", 0.0001), ("embedding_lr: 1.0e-5\n", 1e-5)):
        raw, notes = convert(_config(tmp_path, axolotl + extra, data=_alpaca(tmp_path)))  # learning_rate 0.0002
        assert raw["train"]["embedding_lr"] == pytest.approx(rate) and not [n for n in notes if "embedding" in n]
    raw, notes = convert(_config(tmp_path, LLAMA3_LORA_SFT + "additional_target: embed_tokens, lm_head\n",
                                 data=_llamafactory_data(tmp_path)))
    assert raw["lora"]["modules_to_save"] == ["embed_tokens", "lm_head"] and not [n for n in notes if "target" in n]
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "hello"}]}] * 4)
    raw, notes = convert(_trl_config(tmp_path, tiny_model, chats, "lora_modules_to_save: [lm_head]\n"))
    assert raw["lora"]["modules_to_save"] == ["lm_head"] and not [n for n in notes if "save" in n]
    assert validate(raw, "converted").lora.modules_to_save == ["lm_head"]  # a recipe tunelab runs


def test_the_adapter_a_config_keeps_training_becomes_lora_continue_from(tmp_path):
    """Axolotl's lora_model_dir and LLaMA-Factory's adapter_name_or_path (one adapter, trained on as it is) become
    lora.continue_from; several adapters, or a new one over them, which LLaMA-Factory merges into the base weights
    first, are refused naming the key."""
    axolotl = _config(tmp_path, MISTRAL_LORA.replace("lora_model_dir:", "lora_model_dir: outputs/old"),
                      data=_alpaca(tmp_path))
    raw, notes = convert(axolotl)
    assert raw["lora"]["continue_from"] == "outputs/old" and not [n for n in notes if "lora_model_dir" in n]
    folder = _llamafactory_data(tmp_path)
    raw, notes = convert(_config(tmp_path, LLAMA3_LORA_SFT + "adapter_name_or_path: saves/first\n", data=folder))
    assert raw["lora"]["continue_from"] == "saves/first" and not [n for n in notes if "adapter" in n]
    for extra in ("adapter_name_or_path: saves/a,saves/b\n",
                  "adapter_name_or_path: saves/a\ncreate_new_adapter: true\n"):
        with pytest.raises(UserError, match="adapter_name_or_path: saves/a.*merges these into the base weights"):
            convert(_config(tmp_path, LLAMA3_LORA_SFT + extra, data=folder))


@pytest.mark.parametrize("strategy", ["interleave_under", "interleave_over"])
def test_llamafactory_interleaving_becomes_the_weights_that_give_each_dataset_its_rows(tmp_path, strategy):
    from collections import Counter
    from datasets import Dataset, interleave_datasets
    folder = _llamafactory_data(tmp_path)  # identity 10 rows, alpaca_en_demo 20
    config = (f"model_name_or_path: m\nstage: sft\ndataset: identity,alpaca_en_demo\ndataset_dir: {folder}\n"
              f"mix_strategy: {strategy}\nmax_samples: 16\n")
    raw, notes = convert(_config(tmp_path, config))
    data = raw["data"]  # each dataset cut to max_samples, as LLaMA-Factory cuts each one
    assert data["limit"] == 16 and data["mix"][0]["limit"] == 16
    rows = [Dataset.from_dict({"s": ["identity"] * 10}), Dataset.from_dict({"s": ["alpaca"] * 16})]
    merged = interleave_datasets(rows, seed=42, stopping_strategy="first_exhausted" if strategy.endswith("under")
                                 else "all_exhausted")  # what LLaMA-Factory's merge_dataset trains on
    drawn = Counter(merged["s"])
    assert [data["weight"], data["mix"][0]["weight"]] == [round(drawn["identity"] / 10, 4),
                                                         round(drawn["alpaca"] / 16, 4)]
    assert any(n.startswith(f"mix_strategy: '{strategy}'") and "afresh each epoch" in n for n in notes)
    probs = config + "interleave_probs: 0.2,0.8\n"  # expected rows: 0.8 × min(10 / 0.2, 16 / 0.8) = 16 alpaca
    raw, _ = convert(_config(tmp_path, probs.replace("interleave_over", "interleave_under")))
    assert [raw["data"]["weight"], raw["data"]["mix"][0]["weight"]] == [0.4, 1]
    load_recipe(_write(tmp_path, raw))  # the weights are a valid recipe
    with pytest.raises(UserError, match=r"interleave_probs: '0.5': one probability above 0 per dataset \(2\)"):
        convert(_config(tmp_path, config + "interleave_probs: '0.5'\n"))
    raw, notes = convert(_config(tmp_path, config.replace(strategy, "concat")))
    assert "weight" not in raw["data"] and not any("mix_strategy" in n for n in notes)  # concat: as tunelab mixes


def test_sharegpt_datasets_become_conversations_and_what_differs_is_refused(tmp_path):
    folder = _llamafactory_data(tmp_path, {
        "chats": {"file_name": "chats.jsonl", "formatting": "sharegpt",
                  "columns": {"messages": "messages"},
                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                           "assistant_tag": "assistant"}},
        "with_system": {"file_name": "identity.json", "columns": {"system": "system"}},
        "calls": {"file_name": "chats.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages",
                                                                                   "tools": "tools"}},
        "own_calls": {"file_name": "chats.jsonl", "formatting": "sharegpt", "tags": {"function_tag": "call"}},
        "functions": {"file_name": "chats.jsonl", "formatting": "sharegpt", "columns": {"tools": "functions"}}})
    write_jsonl(folder / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hello"}]}] * 10)
    config = "model_name_or_path: m\nstage: sft\ndataset: {name}\ndataset_dir: {data}\nmask_history: true\n"
    raw, _ = convert(_config(tmp_path, config, data=folder, name="chats"))
    assert raw["data"]["messages"] == "messages" and raw["data"]["history_loss"] is False
    with pytest.raises(UserError, match=re.escape("with_system: columns system / history, or tools other than")):
        convert(_config(tmp_path, config, data=folder, name="with_system"))
    raw, _ = convert(_config(tmp_path, config, data=folder, name="calls"))  # tools: the field tunelab reads
    assert raw["data"]["messages"] == "messages"
    with pytest.raises(UserError, match=re.escape("functions: columns system / history, or tools other than")):
        convert(_config(tmp_path, config, data=folder, name="functions"))
    with pytest.raises(UserError, match=re.escape("function_call / observation)")):
        convert(_config(tmp_path, config, data=folder, name="own_calls"))
    with pytest.raises(UserError, match=re.escape("dataset: 'missing' is not in")):
        convert(_config(tmp_path, config, data=folder, name="missing"))
    (folder / "dataset_info.json").write_text("{not json")
    with pytest.raises(UserError, match=re.escape("dataset_info.json: not valid JSON")):
        convert(_config(tmp_path, config, data=folder, name="chats"))
    with pytest.raises(UserError, match="stage: dpo, finetuning_type: lora: tunelab converts supervised LoRA"):
        convert(_config(tmp_path, config.replace("stage: sft", "stage: dpo"), data=folder, name="chats"))
    with pytest.raises(UserError, match="not an Axolotl config"):
        convert(_config(tmp_path, "model: x\n"))


# TRL: `trl sft --config` keys; the dataset is a local file in each test
def _trl_config(tmp_path, tiny_model, data, extra: str = "") -> str:
    text = (f"model_name_or_path: {tiny_model}\ndataset_name: {data}\nuse_peft: true\nlearning_rate: 2.0e-4\n"
            f"num_train_epochs: 2\nper_device_train_batch_size: 4\noutput_dir: out/smol-sft\nreport_to: none\n{extra}")
    path = tmp_path / "sft.yaml"
    path.write_text(text)
    return str(path)


def _trl_tokenized(tiny_model, rows: list[dict], **settings) -> list[tuple[list[int], list[int]]]:
    """Each row's input ids and labels as TRL's SFTTrainer prepares them (its own dataset preparation)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    args = SFTConfig(output_dir=str(tiny_model.parent / "trl-out"), report_to=[], bf16=False, use_cpu=True,
                     dataloader_num_workers=0, **settings)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args,
                         train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(tiny_model))
    return [(r["input_ids"], r["labels"]) for r in trainer.train_dataset]


def _ours(tmp_path, raw) -> list[tuple[int, list[int], list[int]]]:
    from tunelab.models import load_tokenizer
    from tunelab.train.batching import tokenize_with
    recipe = load_recipe(_write(tmp_path, raw))
    rows = load_splits(recipe.data)
    examples = rows.train + rows.val
    items, _ = tokenize_with(recipe, examples, load_tokenizer(recipe.model))
    return [(int(e.id.rsplit("-", 1)[1]) - 1, item.input_ids, item.labels) for e, item in zip(examples, items)]


@pytest.mark.parametrize("kind", ["prompt-completion", "text"])
@pytest.mark.slow
def test_trl_rows_convert_to_the_tokens_and_labels_trl_trains(tmp_path, tiny_model, kind):
    rows = ([{"prompt": f"Q: {i} + {i}?\nA:", "completion": f" {2 * i}"} for i in range(20)] if kind != "text" else
            [{"text": f"Once upon a time there were {i} bears."} for i in range(20)])
    raw, notes = convert(_trl_config(tmp_path, tiny_model, write_jsonl(tmp_path / "rows.jsonl", rows)))
    assert raw["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    assert raw["train"]["lr"] == 0.0002 and raw["train"]["scheduler"] == "linear" and raw["train"]["seed"] == 42
    assert any(n.startswith("lora_target_modules: not set: PEFT's default for llama") for n in notes)
    theirs = _trl_tokenized(tiny_model, rows)
    ours = _ours(tmp_path, raw)
    assert len(ours) == 20 and all((ids, labels) == theirs[i] for i, ids, labels in ours)  # every row, exactly


def test_trl_conversations_train_every_token_as_trl_does_and_what_differs_is_said(tmp_path, tiny_model):
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
            for i in range(20)]
    raw, notes = convert(_trl_config(tmp_path, tiny_model, write_jsonl(tmp_path / "chats.jsonl", rows)))
    assert raw["data"]["messages"] == "messages" and raw["train"]["completion_only"] is False  # TRL's default
    theirs = _trl_tokenized(tiny_model, rows)
    for i, ids, labels in _ours(tmp_path, raw):
        trl_ids, trl_labels = theirs[i]  # TRL keeps, and trains, the newline the template writes after the reply
        assert trl_ids[:-1] == ids and trl_labels[:-1] == labels and trl_labels[-1] == trl_ids[-1]
    assert any(n.startswith("chat template: differs: TRL also trains") for n in notes)
    raw, _ = convert(_trl_config(tmp_path, tiny_model, tmp_path / "chats.jsonl", "assistant_only_loss: true\n"))
    assert raw["train"]["completion_only"] is True


@pytest.mark.slow
def test_trl_tool_calling_conversations_with_a_tools_column_train_as_trl_trains_them(tmp_path, tiny_model):
    """TRL hands a `tools` column to the chat template; with Qwen2.5's template (which writes tools), rows of a call,
    its result and the answer train the same tokens as TRL's SFTTrainer prepares them, but for the newline after."""
    import shutil
    from transformers import AutoTokenizer
    from tunelab.config import ModelConfig
    model = tmp_path / "tiny-qwen-template"
    shutil.copytree(tiny_model, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = ModelConfig(name="x", chat_template="qwen_25").chat_template
    tok.save_pretrained(model)
    weather = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}
    def call(i: int) -> dict:
        return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": f"City{i}"}}}

    rows = [{"messages": [{"role": "user", "content": f"Warm in City{i}?"},
                          {"role": "assistant", "content": "", "tool_calls": [call(i)]},
                          {"role": "tool", "content": f"{i} C"},
                          {"role": "assistant", "content": f"It is {i} C."}], "tools": [weather]} for i in range(20)]
    raw, _ = convert(_trl_config(tmp_path, model, write_jsonl(tmp_path / "calls.jsonl", rows)))
    assert raw["data"]["messages"] == "messages"
    theirs = _trl_tokenized(model, rows)
    ours = _ours(tmp_path, raw)
    assert len(ours) == 20
    for i, ids, labels in ours:
        trl_ids, trl_labels = theirs[i]  # TRL keeps, and trains, the newline the template writes after the reply
        assert trl_ids[:-1] == ids and trl_labels[:-1] == labels and trl_labels[-1] == trl_ids[-1]
        assert "get_weather" in tok.decode(ids[:len(ids) // 2]) and f"City{i}" in tok.decode(ids)


def test_trl_conversational_prompt_completion_rows_train_the_completion_as_trl_does(tmp_path, tiny_model):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hi {i}"},
                        {"role": "assistant", "content": "hello"}, {"role": "user", "content": f"and {i} + 1?"}],
             "completion": [{"role": "assistant", "content": f"{i + 1}."}]} for i in range(20)]
    raw, notes = convert(_trl_config(tmp_path, tiny_model, write_jsonl(tmp_path / "pc.jsonl", rows)))
    assert raw["data"]["messages"] == "prompt+completion" and raw["data"]["history_loss"] is False
    assert raw["train"]["completion_only"] is True  # TRL's completion_only_loss default for prompt-completion rows
    theirs = _trl_tokenized(tiny_model, rows)
    ours = _ours(tmp_path, raw)
    assert len(ours) == 20
    for i, ids, labels in ours:
        trl_ids, trl_labels = theirs[i]  # the same tokens and loss, but for the newline TRL trains after the reply
        assert trl_ids[:-1] == ids and trl_labels[:-1] == labels and trl_labels[-1] == trl_ids[-1]
        assert sum(label != -100 for label in labels) < len(ids) // 4  # the last reply alone, not the earlier turn
    assert any("a completion of several turns is trained on its last assistant turn only" in n for n in notes)
    raw, _ = convert(_trl_config(tmp_path, tiny_model, tmp_path / "pc.jsonl", "completion_only_loss: false\n"))
    assert raw["train"]["completion_only"] is False


def test_a_trl_dataset_mixture_becomes_data_mix_with_the_rows_trl_concatenates(tmp_path, tiny_model):
    from trl import DatasetMixtureConfig, get_dataset
    from trl.scripts.utils import DatasetConfig
    folder = tmp_path / "arith"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": f"Q: {i} + {i}?\nA:", "completion": f" {2 * i}", "id": i}
                                         for i in range(20)])
    more = write_jsonl(tmp_path / "echo.jsonl", [{"prompt": f"Say {i}.\n", "completion": f" {i}!"} for i in range(10)])
    text = (f"model_name_or_path: {tiny_model}\nuse_peft: true\nlora_target_modules: all-linear\n"
            f"datasets:\n  - path: {folder}\n    columns: [prompt, completion]\n  - path: json\n"
            f"    data_files: {more}\ntest_split_size: 0.2\ndataset_name: ignored/set\n")
    raw, notes = convert(_config(tmp_path, text))
    data = raw["data"]
    assert (data["source"], data["mix"], data["template"], data["val_fraction"]) == (
        str(folder), [{"source": str(more)}], "{prompt}", 0.2)
    assert any(n.startswith("dataset_name: 'ignored/set': not used") for n in notes)
    assert any(n.startswith("test_split_size: 0.2: differs") for n in notes)
    mixture = [DatasetConfig(path=str(folder), columns=["prompt", "completion"]),
               DatasetConfig(path="json", data_files=str(more))]
    theirs = get_dataset(DatasetMixtureConfig(datasets=mixture))
    recipe = load_recipe(_write(tmp_path, raw))
    rows = load_splits(recipe.data)  # every row TRL concatenates, each once, rendered as TRL's prompt + completion
    ours = sorted((e.prompt, e.target) for e in rows.train + rows.val)
    assert ours == sorted((r["prompt"], r["completion"]) for part in theirs.values() for r in part)
    assert len(ours) == 30
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "hello"}]}] * 4)
    for extra, message in [(f"  - path: {chats}\n", r"datasets: their rows have different formats"),
                           ("  - path: x\n    split: test\n", r"datasets.2: split / data_dir: tunelab trains on"),
                           ("  - path: json\n    data_files: [a.jsonl, b.jsonl]\n", r"datasets.2.data_files: \["
                            r"'a.jsonl', 'b.jsonl'\]: converted as one json")]:
        with pytest.raises(UserError, match=message):
            convert(_config(tmp_path, text.replace("test_split_size", extra + "test_split_size")))


def test_a_trl_config_that_would_train_differently_is_refused(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "rows.jsonl", [{"question": "q", "answer": "a"}] * 4)
    with pytest.raises(UserError, match=r"its rows have \['answer', 'question'\]; TRL reads `messages`"):
        convert(_trl_config(tmp_path, tiny_model, data))
    with pytest.raises(UserError, match="use_peft: not set: tunelab trains LoRA adapters"):
        convert(_config(tmp_path, f"model_name_or_path: {tiny_model}\ndataset_name: {data}\n"))


def test_max_steps_overrides_the_epochs_in_every_trainers_config(tmp_path, tiny_model):
    """Trainer's max_steps (TRL, LLaMA-Factory, Axolotl) is train.max_steps; a fractional epoch count, which only
    max_steps makes trainable here, passes with it and is refused without it."""
    axolotl = MISTRAL_LORA.replace("num_epochs: 1", "num_epochs: 0.5\nmax_steps: 40")
    raw, notes = convert(_config(tmp_path, axolotl, data=_alpaca(tmp_path)))
    assert raw["train"]["max_steps"] == 40 and raw["train"]["epochs"] == 1 and not any("max_steps" in n for n in notes)
    with pytest.raises(UserError, match=r"num_epochs: 0.5: .*train.max_steps"):
        convert(_config(tmp_path, MISTRAL_LORA.replace("num_epochs: 1", "num_epochs: 0.5"), data=_alpaca(tmp_path)))
    factory = LLAMA3_LORA_SFT.replace("num_train_epochs: 3.0", "num_train_epochs: 2.5\nmax_steps: 120")
    raw, _ = convert(_config(tmp_path, factory, data=_llamafactory_data(tmp_path)))
    assert raw["train"]["max_steps"] == 120 and raw["train"]["epochs"] == 2
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "q", "completion": "a"}] * 4)
    raw, _ = convert(_trl_config(tmp_path, tiny_model, data, "max_steps: 100\n"))
    assert raw["train"]["max_steps"] == 100
    raw, _ = convert(_trl_config(tmp_path, tiny_model, data, "max_steps: -1\n"))  # Trainer's "not set"
    assert "max_steps" not in raw["train"]
    with pytest.raises(UserError, match=r"num_train_epochs: 1.5: .*max_steps"):
        convert(_trl_config(tmp_path, tiny_model, data, "num_train_epochs: 1.5\n"))  # the later key counts


def test_the_validation_and_checkpoint_cadence_carries_over_where_it_means_the_same(tmp_path, tiny_model):
    """eval_steps under eval_strategy steps is train.val_every, save_steps train.checkpoint_every, save_total_limit
    train.keep_checkpoints; evaluation per epoch (tunelab's own) or a share of the run stays a note. Axolotl
    validates every eval_steps, and its early stopping then counts those passes (train.early_stopping_on)."""
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "q", "completion": "a"}] * 4)
    raw, notes = convert(_trl_config(tmp_path, tiny_model, data, "eval_strategy: steps\neval_steps: 25\n"
                                     "save_steps: 100\nsave_total_limit: 3\n"))
    train = raw["train"]
    assert (train["val_every"], train["checkpoint_every"], train["keep_checkpoints"]) == (25, 100, 3)
    assert not any(n.startswith(("eval_steps", "save_steps", "save_total_limit")) for n in notes)
    for extra in ("eval_strategy: epoch\neval_steps: 25\n", "eval_strategy: steps\neval_steps: 0.1\n"):
        raw, notes = convert(_trl_config(tmp_path, tiny_model, data, extra))
        assert "val_every" not in raw["train"] and any(n.startswith("eval_steps") for n in notes)
    axolotl = MISTRAL_LORA.replace("evals_per_epoch: 4", "eval_steps: 20\nearly_stopping_patience: 3")
    raw, notes = convert(_config(tmp_path, axolotl, data=_alpaca(tmp_path)))
    assert (raw["train"]["val_every"], raw["train"]["early_stopping_on"]) == (20, "validation")
    assert not any(n.startswith("early_stopping_patience") for n in notes)
    raw, notes = convert(_config(tmp_path, MISTRAL_LORA.replace("evals_per_epoch: 4", "early_stopping_patience: 3"),
                                 data=_alpaca(tmp_path)))
    assert "early_stopping_on" not in raw["train"] and any("counts passes, as Axolotl does" in n for n in notes)


def test_warmup_steps_carry_over_as_steps_and_a_fraction_below_one_as_a_ratio(tmp_path, tiny_model):
    """TrainingArguments' warmup_steps (transformers 5: a whole number of steps, or below 1 a share of them) is
    train.warmup_steps or train.warmup_ratio; Axolotl's (the Axolotl example above) is train.warmup_steps."""
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "q", "completion": "a"}] * 4)
    for given, want in (("warmup_steps: 25\n", {"warmup_steps": 25, "warmup_ratio": 0.0}),
                        ("warmup_steps: 0.05\n", {"warmup_ratio": 0.05}),
                        ("warmup_ratio: 0.1\n", {"warmup_ratio": 0.1})):
        raw, notes = convert(_trl_config(tmp_path, tiny_model, data, given))
        assert {k: v for k, v in raw["train"].items() if k.startswith("warmup")} == want
        assert not [n for n in notes if "warmup" in n]


def _axolotl_tokens(tok, special: dict, tokens: list, extra: list):
    """Axolotl's tokenizer loader (axolotl.loaders.tokenizer.load_tokenizer) as it adds tokens: each special role,
    then `tokens`, then additional_special_tokens."""
    from transformers import AddedToken
    for role, value in special.items():
        tok.add_special_tokens({role: AddedToken(value, rstrip=False, lstrip=False, normalized=False)})
    tok.add_tokens([AddedToken(t, rstrip=False, lstrip=False, normalized=False) for t in tokens])
    tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


@pytest.mark.slow
def test_tokens_a_config_adds_become_model_added_tokens_with_the_ids_its_trainer_gives(tmp_path, tiny_model):
    """Axolotl's special_tokens and tokens, and LLaMA-Factory's add_tokens and add_special_tokens, become
    model.added_tokens (those the tokenizer lacks, in the order each trainer adds them) and model.special_tokens
    (the roles that change): tunelab's tokenizer then writes and reads text as the trainer's does, new ids
    included. Axolotl's 32x rounding and LLaMA-Factory's 64 rows and embeddings trained whole carry over."""
    from transformers import AutoTokenizer

    from tunelab.models import load_tokenizer
    text = "<|im_start|><|q|>2+2<|tool|>4<|end|><|r|>"
    axolotl = (MISTRAL_LORA.replace("base_model: mistralai/Mistral-7B-v0.1", f"base_model: {tiny_model}")
               .replace("special_tokens:\n", "special_tokens:\n  bos_token: <|im_start|>\n  eos_token: <|end|>\n"
                        "  additional_special_tokens: [<|tool|>]\ntokens: [<|q|>, <|end|>]\n"
                        "resize_token_embeddings_to_32x: true\n"))
    raw, notes = convert(_config(tmp_path, axolotl, data=_alpaca(tmp_path)))
    assert raw["model"]["added_tokens"] == ["<|end|>", "<|q|>", "<|tool|>"]  # <|im_start|> is SmolLM2's own BOS
    assert raw["model"]["special_tokens"] == {"eos_token": "<|end|>", "additional_special_tokens": ["<|tool|>"]}
    assert raw["model"]["vocab_multiple_of"] == 32 and [n for n in notes if n.startswith("tokens:")]
    ours = load_tokenizer(validate(raw, "converted").model)
    theirs = _axolotl_tokens(AutoTokenizer.from_pretrained(tiny_model), {"bos_token": "<|im_start|>",
                                                                         "eos_token": "<|end|>"},
                             ["<|q|>", "<|end|>"], ["<|tool|>"])
    assert ours(text)["input_ids"] == theirs(text)["input_ids"] and len(ours) == len(theirs)
    assert ours.eos_token_id == theirs.eos_token_id
    ids = ours(text)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True) == "<|q|>2+24<|r|>"

    llamafactory = LLAMA3_LORA_SFT.replace("model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct",
                                           f"model_name_or_path: {tiny_model}")
    raw, notes = convert(_config(tmp_path, llamafactory + "add_tokens: <|q|>,<|r|>\nadd_special_tokens: <|end|>\n",
                                 data=_llamafactory_data(tmp_path)))
    # template: llama3 adds its stop words after them: <|eot_id|> as EOS (replace_eos), <|eom_id|> special
    assert raw["model"]["added_tokens"] == ["<|q|>", "<|r|>", "<|end|>", "<|eot_id|>", "<|eom_id|>"]
    assert raw["model"]["special_tokens"] == {"eos_token": "<|eot_id|>",
                                              "additional_special_tokens": ["<|end|>", "<|eom_id|>"]}
    assert raw["model"]["vocab_multiple_of"] == 64 and raw["lora"]["modules_to_save"] == ["embed_tokens", "lm_head"]
    ours = load_tokenizer(validate(raw, "converted").model)
    theirs = AutoTokenizer.from_pretrained(tiny_model)  # LLaMA-Factory's patch_tokenizer, then its template's fix
    theirs.add_tokens(["<|q|>", "<|r|>"], special_tokens=False)
    theirs.add_tokens(["<|end|>"], special_tokens=True)
    theirs.add_special_tokens({"eos_token": "<|eot_id|>"})
    theirs.add_special_tokens({"additional_special_tokens": ["<|eom_id|>"]}, replace_extra_special_tokens=False)
    text += "<|eot_id|><|eom_id|>"
    ids = ours(text)["input_ids"]
    assert ids == theirs(text)["input_ids"] and len(ours) == len(theirs) and ours.eos_token_id == theirs.eos_token_id
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    with pytest.raises(UserError, match="special_tokens.sep_token: tunelab sets bos_token"):
        convert(_config(tmp_path, axolotl.replace("  bos_token:", "  sep_token:"), data=_alpaca(tmp_path)))
