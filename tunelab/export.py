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
from tunelab.rundir import BEST_LOSS, RunDir, atomic_folder


def export(run: RunDir, out: Path, adapter_only: bool = False, fmt: str = "hf", quant: str = "f16",
           epoch: int | str | None = None) -> Path:
    """Write the run's model to `out` (must not exist); returns the folder.

    `fmt` hf: loadable by `AutoModelForCausalLM.from_pretrained(out)`; gguf: `out/<recipe>-<quant>.gguf` and an
    Ollama `Modelfile`. `adapter_only` copies the PEFT adapter instead of merging. `epoch`: `chosen_epoch`'s
    adapter (adapters/epoch-N or adapters/best-loss) instead of the final one.

    Raises:
        UserError: no adapter in the run (or none kept for `epoch`), `out` already exists, an unsupported model for
            GGUF, disk full.
    """
    source = adapter_folder(run, epoch)
    if out.exists():
        raise UserError(f"{out}: already exists; choose a new output folder")
    if fmt not in ("hf", "gguf"):
        raise UserError(f"--format: {fmt!r}; choose hf or gguf")
    if run.summary.exists():
        card.write(run)  # the card of the run as it is now (it travels with every export)
    with atomic_folder(out) as tmp:
        if adapter_only:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            _card_into(run, tmp, epoch)
            return out
        import torch
        from tunelab.handoff import hub_id
        from tunelab.models import load_adapter, load_model, load_tokenizer
        cfg = run.read_recipe()
        model = load_adapter(load_model(cfg.model.model_copy(update={"load_in_4bit": False, "dtype": "float32"}),
                                        torch.device("cpu")), source, merge=True)
        tok = load_tokenizer(cfg.model)
        if fmt == "gguf":
            from tunelab.gguf_export import modelfile, write_gguf
            name = f"{cfg.name}-{quant}.gguf"
            write_gguf(model, tok, tmp / name, quant, cfg.name, hub_id(cfg.model))
            (tmp / "Modelfile").write_text(modelfile(name, cfg.data.template, cfg.data.chat_template))
        else:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        _card_into(run, tmp, epoch)
    return out


def chosen_epoch(run: RunDir, epoch: str | None) -> int | str | None:
    """`--epoch`: None (the final adapter), a trained epoch's number, `best` (the best epoch by answer accuracy
    in eval/summary.json) or `best-loss` (the validation pass with the lowest loss: for data no scoring mode
    suits, or an early-stopped run); the last epoch is the final adapter, so None too. Returns what
    `RunDir.kept_adapter` takes: None, an epoch's number, "best-loss" for adapters/best-loss/ (a pass no other
    folder holds), or "step-N" for train.keep_step_adapters' adapters/step-N/.

    Raises:
        UserError: not a number, best or best-loss; an epoch the run did not train; best before the run was
            evaluated; best-loss when no pass's validation loss beat the base model's.
    """
    if epoch is None:
        return None
    summary = run.read_summary() or {}
    trained = summary.get("epochs")
    if epoch == BEST_LOSS and trained:
        number = _lowest_adapter(run)
    elif epoch == "best":
        best = (run.read_eval_summary() or {}).get("best_epoch")
        skipped = run.read_optional(run.eval_skipped)
        if not best and skipped and not run.eval_summary.exists():
            raise UserError(f"--epoch best: {run.path}'s answers are not scored ({skipped['reason']}), so no epoch is "
                            "best by accuracy; --epoch best-loss takes the lowest validation loss")
        if not best:
            raise UserError(f"--epoch best: {run.path} has no best epoch yet (eval/summary.json names it): "
                            f"tunelab eval {run.path} scores every kept epoch's adapter")
        number = best["epoch"]
    elif epoch.isdigit() and trained and 1 <= int(epoch) <= trained:
        number = int(epoch)
    elif epoch.startswith("step-") and epoch.removeprefix("step-").isdigit() and \
            int(epoch.removeprefix("step-")) in run.step_adapters():  # train.keep_step_adapters' adapter
        number = epoch
    else:
        steps = ", ".join(f"step-{n}" for n in run.step_adapters())
        raise UserError(f"--epoch: {epoch!r}; choose best, best-loss or an epoch from 1 to "
                        f"{trained or 'the last trained'}" + (f", or a kept step's adapter ({steps})" if steps else ""))
    return None if number == trained else number


def _lowest_adapter(run: RunDir) -> int | str:
    """`--epoch best-loss`: the adapter holding the lowest validation pass's weights (`RunDir.lowest_adapter`)."""
    lowest, kept = run.lowest_adapter()
    if lowest["epoch"] == 0:
        raise UserError(f"--epoch best-loss: no validation pass of {run.path} has a loss below the base model's "
                        "(before training); there is no adapter to prefer")
    if kept is None:
        run.require(run.best_loss_adapter, f"adapters/best-loss (the lowest validation pass: step {lowest['step']}): "
                                           "the run kept none")
    return kept


def adapter_folder(run: RunDir, epoch: int | str | None) -> Path:
    """The folder of the run's final adapter, or of `chosen_epoch`'s: epoch N's or the lowest validation pass's.

    Raises:
        UserError: the run has no adapter yet, or kept none for that epoch.
    """
    run.require(run.adapter_config, "adapter: train first (tunelab train)")
    return run.require(run.kept_adapter(epoch), f"epoch-{epoch} adapter: train.keep_epoch_adapters was off") \
        if epoch else run.adapter


def _card_into(run: RunDir, folder: Path, epoch: int | str | None) -> None:
    """The model card of the exported adapter (the final one's, or `chosen_epoch`'s) as `folder`/README.md."""
    if epoch:
        (folder / "README.md").write_text(card.render(run, epoch))
    elif (run.adapter / "README.md").is_file():
        shutil.copyfile(run.adapter / "README.md", folder / "README.md")


def next_commands(run: RunDir, out: Path, fmt: str, adapter_only: bool,
                  epoch: int | str | None = None) -> list[tuple[str, str]]:
    """What a user runs next with the export at `out` (of `chosen_epoch`'s adapter, or the final one)."""
    from tunelab import handoff
    pairs = handoff.for_run(run, upload=out, merged=out if fmt == "hf" and not adapter_only else None, epoch=epoch)
    if fmt == "gguf" and not adapter_only:
        cfg = run.read_recipe()
        gguf = next(out.glob("*.gguf"))
        pairs = [("run it with llama.cpp", f"llama-cli -m {gguf.resolve()} -p 'Instruction: ...\\nResponse: ' -n 256"),
                 ("register it with Ollama, then chat", f"cd {out.resolve()} && ollama create {cfg.name} -f Modelfile "
                                                         f"&& ollama run {cfg.name}")] + pairs[-1:]
    return pairs
