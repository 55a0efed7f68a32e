"""benchmarks/gpu_check.py: its CPU dry run (--tiny) goes through every part of the GPU check, so the prepared
check cannot rot while no GPU is at hand; and what the check builds its model from (Mistral-7B-v0.1's tokenizer)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel() -> Path:
    wheels = sorted((ROOT / ".venv" / "share").glob("mistral_common-*.whl"))
    if not wheels:
        pytest.fail("no mistral-common wheel in .venv/share: run make setup")
    return wheels[0]


def test_model_folder_has_mistral_7b_config_and_tokenizer(tmp_path):
    from transformers import AutoConfig, AutoTokenizer
    check = _check_module()
    folder = check.model_folder(tmp_path, tiny=False, wheel=_wheel())
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.intermediate_size,
            config.num_key_value_heads, config.vocab_size) == ("mistral", 32, 4096, 14336, 8, 32000)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("Response: 72").input_ids
    assert len(tok) == 32000 and ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert tok.convert_ids_to_tokens(ids)[-2:] == ["7", "2"]  # Llama/Mistral sentencepiece: one token per digit
    with pytest.raises(SystemExit, match="no mistral-common wheel"):
        check.model_folder(tmp_path, tiny=True, wheel=tmp_path / "missing.whl")


@pytest.mark.slow
def test_gpu_check_dry_run_measures_every_part(gsm8k, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--gsm8k", str(gsm8k),
                           "--mistral-wheel", str(_wheel()), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["errors"] == {}
    assert result["gpu_tests"]["failed"] == result["gpu_tests"]["error"] == 0  # all skipped without CUDA
    tps = result["tokens_per_second"]
    assert set(tps) == {"tunelab", "trl_default", "trl_no_checkpointing", "tunelab_lora_dropout_0"} and min(tps.values()) > 0
    assert result["profile"]["train_step_seconds"] > 0 and (tmp_path / "profile_train.txt").is_file()
    assert result["ratio_vs_trl_best"] == pytest.approx(tps["tunelab"] / max(tps["trl_default"],
                                                                             tps["trl_no_checkpointing"]), rel=1e-2)
    assert 0 < result["mfu"]["tunelab"] < 2
    assert result["decode"]["tokens"] == 4 * 8 or 0 < result["decode"]["tokens"] < 4 * 8  # <= 8 new tokens each
    seed = result["seed"]  # all 7,473 GSM8K train rows through Mistral's tokenizer: 90 % train, 10 % validate
    assert 7 < seed["train_tokens_per_epoch"] / seed["val_tokens"] < 11
    assert seed["measured_usd"] == pytest.approx(seed["measured_hours"] * seed["usd_per_hour"], abs=2e-3)
    assert seed["estimate_over_measured"] == pytest.approx(seed["estimate_hours"] / seed["measured_hours"], rel=2e-2)
    compiled = result["compile"]  # the next design, run last: the same training with train.compile=true
    assert compiled["errors"] == {} and set(compiled["tokens_per_second"]) == {"tunelab", "tunelab_compile"}
    assert compiled["steady_tokens_per_second"]["tunelab_compile"] > 0 and 0 < compiled["steady_mfu"]["tunelab"] < 2
    log = (tmp_path / "gpu_check.log").read_text()
    assert "seed experiment on cpu" in log and "ratio: tunelab / TRL" in log
