"""The peak GPU memory estimate (`tunelab.memory`): exact counts from the config, the micro-batch slices tunelab cuts
on a smaller GPU, what does not fit and which setting makes it fit, and where the estimate is shown."""

import dataclasses
import json

import pytest

from tunelab import memory
from tunelab.config import LoraConfig, ModelConfig
from tunelab.models import adapted_counts

# mistralai/Mistral-7B-v0.1's config.json (its shapes are what memory depends on)
MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
GIB = 2**30


@pytest.fixture(scope="module")
def mistral_folder(tmp_path_factory, smollm2_dir):
    """Mistral-7B's config (nothing is built but on the meta device) beside SmolLM2's tokenizer (a recipe reads rows
    with it; the memory counts come from the config)."""
    from transformers import AutoTokenizer
    folder = tmp_path_factory.mktemp("mistral-7b")
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(MISTRAL_7B))
    return folder


@pytest.fixture(scope="module")
def mistral(mistral_folder):
    return adapted_counts(ModelConfig(name=str(mistral_folder)), LoraConfig(r=16, target_modules="all-linear"))


def _workload(counts, **change):
    w = memory.Workload(**counts, largest=16 * 330, longest=420, checkpointing=False, dropout=True, four_bit=False,
                        dtype_bytes=2, micro_batch_tokens=None)
    return dataclasses.replace(w, **change)


def test_counts_from_the_config_are_the_loaded_models(tiny_model):
    """Parameters, 4-bit-packed linear weights and the adapter's trainable weights, counted on the meta device, equal
    those of the model loaded and wrapped by PEFT."""
    from tunelab.models import add_lora, load_model
    import torch
    lora = LoraConfig(r=8, use_dora=True)
    counts = adapted_counts(ModelConfig(name=str(tiny_model)), lora)
    model = load_model(ModelConfig(name=str(tiny_model)), torch.device("cpu"))
    out = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not out)
    params = sum(p.numel() for p in model.parameters())
    peft = add_lora(model, lora)
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert (counts["params"], counts["quantised"], counts["trainable"]) == (params, linear, trainable)
    assert counts["layers"] == 2 and counts["hidden"] == 32


def test_mistral_7b_fits_an_h200_whole_a_24_gb_card_in_slices_and_a_16_gb_card_only_with_a_setting(mistral):
    """The seed's model: 7.24 B weights in bf16 (13.5 GiB) and r=16 on every linear layer (41.9 M weights at 16 bytes
    each); batches of 16 GSM8K rows (~5,300 padded tokens) go through whole on an H200, are cut on a 24 GB card into
    the slices the free memory holds, and a 16 GB card needs gradient checkpointing (or 4-bit loading)."""
    assert (mistral["params"], mistral["trainable"]) == (7_241_732_096, 41_943_040)
    w = _workload(mistral)
    assert w.weight_bytes / GIB == pytest.approx(13.49, abs=0.01)
    h200 = memory.on_device(w, 141)
    tensors = w.weight_bytes + 41_943_040 * 16 + 16 * 330 * 4096 * 32 * 64
    assert h200["fits"] and h200["slice_tokens"] is None and h200["allocated_gib"] == round(tensors / GIB, 3)
    assert "batches in slices" not in memory.describe(h200, 141)
    l4 = memory.on_device(w, 24)
    free = 24 * GIB - w.weight_bytes - memory.CONTEXT_BYTES
    assert l4["fits"] and l4["slice_tokens"] == int(0.8 * free / (100 * 4096 * 32)) < 16 * 330
    assert l4["peak_gib"] <= 0.95 * 24 and f"slices of ≤{l4['slice_tokens']:,} tokens" in memory.describe(l4, 24)
    t4 = memory.on_device(w, 16)
    assert not t4["fits"] and t4["fix"]["setting"] == "train.gradient_checkpointing=true" and t4["fix"]["fits"]
    assert "does not fit" in memory.describe(t4, 16) and "fits with train.gradient_checkpointing=true" in \
        memory.describe(t4, 16)
    assert memory.on_device(_workload(mistral, checkpointing=True), 16)["fits"]


def test_the_h200_peaks_it_was_calibrated_on_are_reproduced(mistral):
    """benchmarks/gpu_check.py on an H200 (benchmarks/README.md): batches of 16 GSM8K rows, the largest padded to
    512 tokens, whole; torch.cuda.max_memory_allocated 78.4 GiB with LoRA dropout 0.05 and 61.0 GiB without."""
    for dropout, measured in ((True, 78.4), (False, 61.0)):
        m = memory.peak(_workload(mistral, largest=16 * 512, longest=512, dropout=dropout), 141)
        assert m["allocated_gib"] == pytest.approx(measured, abs=0.5) and m["slice_tokens"] is None


def test_4_bit_loading_packs_the_linear_layers_and_settings_fix_in_order(mistral):
    w = _workload(mistral, four_bit=True)
    embeddings = mistral["params"] - mistral["quantised"]  # input and output embeddings, norms: bf16
    assert w.weight_bytes == pytest.approx(mistral["quantised"] * 4.127 / 8 + embeddings * 2, rel=1e-4)
    assert w.weight_bytes / GIB < 4.0  # a 7B model in under 4 GiB
    long_rows = _workload(mistral, largest=8 * 4096, longest=4096)  # rows of 4,096 tokens: one row alone is 51 GiB
    assert memory.on_device(long_rows, 141)["fits"]
    small = memory.on_device(long_rows, 24)
    assert not small["fits"] and small["fix"]["setting"] == "train.gradient_checkpointing=true"
    none = memory.on_device(_workload(mistral, largest=8 * 32768, longest=32768), 16)
    assert none["fix"] is None and "train.sharding=fsdp" in memory.describe(none, 16)


def test_micro_batch_tokens_set_in_the_recipe_is_the_slice(mistral):
    assert memory.peak(_workload(mistral, micro_batch_tokens=1000), 141)["slice_tokens"] == 1000
    assert memory.peak(_workload(mistral, micro_batch_tokens=0), 24)["slice_tokens"] is None  # 0: never split
    assert memory.peak(_workload(mistral, micro_batch_tokens=100), 141)["slice_tokens"] == 420  # a row at the least


def test_a_gpu_runs_report_sets_its_peak_memory_against_the_estimate(tiny_recipe, tmp_path):
    """A run's estimate.json carries the memory workload; priced on a GPU it gives the peak there, which the report's
    Overview states beside the measured peak (a CPU run here, given the figures a CUDA run writes) and an observation
    compares."""
    from tunelab import cost
    from tunelab.config import validate
    from tunelab.report import write_report
    from tunelab.rundir import RunDir
    from tunelab.train import train
    run = RunDir(tmp_path / "run")
    train(validate({**tiny_recipe, "train": {**tiny_recipe["train"], "epochs": 1}}, "tiny"), run)
    work = run.read_json(run.estimate)
    assert work["device"] == "cpu" and "gpu_memory" not in work and work["memory"]["trainable"] > 0
    on_l4 = cost.estimate(work, "L4")
    assert on_l4["gpu_memory"] == memory.on_device(memory.Workload(**work["memory"]), 24)
    run.write_json(run.estimate, on_l4)
    summary = run.read_json(run.summary)
    measured = 3 * on_l4["gpu_memory"]["allocated_gib"] * 1024
    assert measured > 0
    run.write_json(run.summary, {**summary, "peak_gpu_memory_mib": measured})
    write_report(run)
    text = run.report_md.read_text()
    assert f"peak GPU memory {measured / 1024:.1f} GiB)" in text  # Wall time
    assert f"; peak GPU memory ~{on_l4['gpu_memory']['peak_gib']:.1f} of 24 GiB |" in text  # Estimate before training
    assert "3.00× the" in text and "estimated before training on the L4's 24 GiB" in text


def test_check_says_when_a_recipe_does_not_fit_the_gpu_and_strict_fails_on_it(mistral_folder, gsm8k, tmp_path,
                                                                              capsys):
    """`tunelab check --device`: the verdict names the GPU the recipe does not fit and the setting that makes it fit;
    --strict exits 1 on it (on rows with no test overlap); the train stage's own check on its GPU (`on_this_gpu`)
    gives the warning it logs."""
    from conftest import write_jsonl
    from tunelab.cli import main
    for split, n in (("train", 40), ("test", 20)):
        write_jsonl(tmp_path / f"{split}.jsonl", (gsm8k / f"{split}.jsonl").read_text().splitlines()[:n])
    base = ["check", "quickstart", "--set", f"model.name={mistral_folder}", "--set", f"data.source={tmp_path}",
            "--set", "data.limit=null", "--set", "data.label_field=null", "--json"]
    assert main([*base, "--device", "T4", "--strict"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert "on the T4: does not fit: ~" in result["verdict"] and "fits with train.gradient_checkpointing=true" in \
        result["verdict"]
    assert main([*base, "--device", "H200", "--strict"]) == 0  # the same recipe on 141 GiB
    result = json.loads(capsys.readouterr().out)
    assert result["estimate"]["gpu_memory"]["fits"] and "does not fit" not in result["verdict"]
    plain = [a for a in base if a != "--json"]
    assert main([*plain, "--device", "L4", "--gpus", "2", "--set", "train.sharding=fsdp"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "estimate on 2 × L4 (" in said and "of device time, linear scaling assumed)" in said
    assert "peak GPU memory ~" in said and " of 24 GiB" in said
    estimate = dict(result["estimate"])
    assert memory.on_this_gpu(estimate, 79.6) is None and estimate["memory_gib"] == 79.6
    warning = memory.on_this_gpu(estimate, 15.6)
    assert warning.startswith("peak GPU memory estimated for this run does not fit: ~") and "of 15.6 GiB" in warning
    assert not estimate["gpu_memory"]["fits"]


def test_several_gpus_share_the_time_and_under_fsdp_the_weights(mistral):
    """--gpus N: N processes, one GPU each. Without sharding each GPU holds the whole model, so 2 T4s fit no more
    than one (and FSDP is named as a fix); under train.sharding=fsdp each holds half the weights and adapter state
    plus the two layers gathered whole while they compute."""
    one = _workload(mistral, largest=8 * 420)
    two = dataclasses.replace(one, processes=2)
    assert memory.peak(two, 16) == memory.peak(one, 16) and not memory.peak(two, 16)["fits"]
    assert memory.on_device(one, 16)["fix"]["setting"] == "train.gradient_checkpointing=true"
    sharded = dataclasses.replace(two, sharded=True)
    assert sharded.resident_bytes == pytest.approx(
        (one.weight_bytes + mistral["trainable"] * 16) / 2 + 2 * one.weight_bytes / 32)
    assert memory.peak(sharded, 16)["fits"] and not memory.peak(dataclasses.replace(one, sharded=True), 16)["fits"]
    wide = dataclasses.replace(two, largest=8 * 4096, longest=4096)  # long rows: only sharding + checkpointing fits
    assert memory.on_device(wide, 24)["fix"]["setting"] == "train.gradient_checkpointing=true"
    longer = dataclasses.replace(wide, longest=20000, largest=8 * 20000)  # checkpointing alone no longer fits
    assert memory.on_device(longer, 24)["fix"]["setting"] == "train.gradient_checkpointing=true and train.sharding=fsdp"
    assert memory.on_device(dataclasses.replace(longer, processes=1), 24)["fix"]["setting"] == \
        "train.gradient_checkpointing=true and model.load_in_4bit=true"  # one GPU: nothing to shard over
