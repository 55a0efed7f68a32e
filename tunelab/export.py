"""Export a run: the merged model (HF safetensors + tokenizer), one GGUF file for llama.cpp / Ollama, or just
the PEFT adapter; each with the run's model card as README.md.

Run as: tunelab export runs/smoke out/smoke-merged
        tunelab export runs/smoke out/smoke-gguf --format gguf --quant q8_0
        tunelab export runs/smoke out/smoke-adapter --adapter-only
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab import card
from tunelab.errors import UserError
from tunelab.rundir import RunDir, atomic_folder


def export(run: RunDir, out: Path, adapter_only: bool = False, fmt: str = "hf", quant: str = "f16") -> Path:
    """Write the run's model to `out` (must not exist); returns the folder.

    `fmt` hf: loadable by `AutoModelForCausalLM.from_pretrained(out)`; gguf: `out/<recipe>-<quant>.gguf` and an
    Ollama `Modelfile`. `adapter_only` copies the PEFT adapter instead of merging.

    Raises:
        UserError: no adapter in the run, `out` already exists, an unsupported model for GGUF, disk full.
    """
    run.require(run.adapter_config, "adapter: train first (tunelab train)")
    if out.exists():
        raise UserError(f"{out}: already exists; choose a new output folder")
    if fmt not in ("hf", "gguf"):
        raise UserError(f"--format: {fmt!r}; choose hf or gguf")
    if run.summary.exists():
        card.write(run)  # the card of the run as it is now (it travels with every export)
    with atomic_folder(out) as tmp:
        if adapter_only:
            shutil.copytree(run.adapter, tmp, dirs_exist_ok=True)
            return out
        import torch
        from tunelab.handoff import hub_id
        from tunelab.models import load_adapter, load_model, load_tokenizer
        cfg = run.read_recipe()
        model = load_adapter(load_model(cfg.model.model_copy(update={"load_in_4bit": False, "dtype": "float32"}),
                                        torch.device("cpu")), run.adapter, merge=True)
        tok = load_tokenizer(cfg.model)
        if fmt == "gguf":
            from tunelab.gguf_export import modelfile, write_gguf
            name = f"{cfg.name}-{quant}.gguf"
            write_gguf(model, tok, tmp / name, quant, cfg.name, hub_id(cfg.model))
            (tmp / "Modelfile").write_text(modelfile(name, cfg.data.template, cfg.data.chat_template))
        else:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        if (run.adapter / "README.md").is_file():
            shutil.copyfile(run.adapter / "README.md", tmp / "README.md")
    return out


def next_commands(run: RunDir, out: Path, fmt: str, adapter_only: bool) -> list[tuple[str, str]]:
    """What a user runs next with the export at `out`."""
    from tunelab import handoff
    pairs = handoff.for_run(run, upload=out, merged=out if fmt == "hf" and not adapter_only else None)
    if fmt == "gguf" and not adapter_only:
        cfg = run.read_recipe()
        gguf = next(out.glob("*.gguf"))
        pairs = [("run it with llama.cpp", f"llama-cli -m {gguf.resolve()} -p 'Instruction: ...\\nResponse: ' -n 256"),
                 ("register it with Ollama, then chat", f"cd {out.resolve()} && ollama create {cfg.name} -f Modelfile "
                                                         f"&& ollama run {cfg.name}")] + pairs[-1:]
    return pairs
