"""The train stage: LoRA supervised fine-tuning in one visible loop over transformers + PEFT.

Why a hand-written loop and not TRL's SFTTrainer: we need per-example losses every epoch, a
validation pass before the first step, token-weighted metrics, and the LM head applied only to
supervised positions (the biggest CPU cost in a small model). See benchmarks/train_throughput.py.

Writes config.yaml, estimate.json, environment.json, metrics/, checkpoints/, adapter/, summary.json
and cost.json of the run directory (tunelab/rundir.py).

Run as: tunelab train gsm8k-smollm2-135m --set data.source=../shared/data/gsm8k --set data.limit=64 \
            --set train.epochs=2 --run-dir runs/smoke
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab import card, cost, distributed, environment, memory
from tunelab.config import Recipe, to_yaml
from tunelab.data import Example, Splits, load_splits, scored_rows
from tunelab.data.checks import left_untrained, markers, markers_line, untrained_line, untrained_tokens
from tunelab.errors import UserError
from tunelab.handoff import hub_id
from tunelab.models import (add_lora, continued_adapter, load_model, load_start, load_tokenizer, pick_device,
                            start_untrained_rows)
from tunelab.progress import bar
from tunelab.rundir import RunDir, atomic_folder, last_improvement, lowest_pass
from tunelab.train import checkpoint, fast_lora
from tunelab.train.batching import Batch, Tokenized, Weights, batches, split, tokenize_splits, tokenize_with, weights
from tunelab.train.forward import PassStats, SupervisedLM, filler, forward_tokens, loss_pass, per_example
from tunelab.train.runtime import NonFinite, micro_batch_tokens, stop_signals, tune_for
from tunelab.trackers import Trackers

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    epochs: list[dict]  # one row per epoch, epoch 0 = validation before training
    summary: dict | None  # None on ranks other than the main process (it alone writes)


@dataclass
class Loop:
    """What a training run holds while it runs; the loop's helpers take it instead of a dozen arguments."""
    cfg: Recipe
    run: RunDir
    d: distributed.Dist
    device: torch.device
    splits: Splits
    train_items: list[Tokenized]
    val_items: list[Tokenized]
    truncated: int  # examples cut by train.max_length
    pad_id: int
    model: Any  # the PEFT model
    net: SupervisedLM  # the module that trains (FSDP-sharded when d.sharded)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: checkpoint.State
    resumed_from: Path | None
    steps_per_epoch: int
    micro_tokens: int  # padded tokens per forward (runtime.micro_batch_tokens)
    best: dict | None = None  # the lowest validation pass's weights while no other folder will hold them
    shown: Any = None  # `advance(rows, split, total)`: where a loss pass shows its progress (`_shown_in`)
    weights: Weights | None = None  # data.weight / data.mix weights (None: each train row once per epoch)

    @property
    def per_step(self) -> int:
        """Batches per optimizer step, over all ranks."""
        return self.cfg.train.grad_accum * self.d.world

    @property
    def epochs(self) -> int:
        """Epochs planned: train.epochs, or those train.max_steps reaches into (the last one cut short)."""
        return cost.planned(self.cfg.train, self.steps_per_epoch)[0]

    @property
    def total_steps(self) -> int:
        return cost.planned(self.cfg.train, self.steps_per_epoch)[1]

    def inside_epoch(self) -> bool:
        """The step just taken neither ends its epoch nor the run (train.max_steps): the points where
        train.val_every and train.checkpoint_every act (an epoch's end is validated and checkpointed anyway)."""
        return self.state.epoch_step < self.steps_per_epoch and self.state.step < self.total_steps


def done(run: RunDir) -> bool:
    """The train stage has finished: its summary and adapter are written."""
    return run.summary.exists() and run.has_adapter()


def train(cfg: Recipe, run: RunDir, resume: bool = False) -> TrainResult:
    """Train a LoRA adapter per `cfg`; write config, metrics, adapter, summary and cost to `run`.

    Checkpoints every `train.checkpoint_every` steps and at each epoch end; SIGINT/SIGTERM save one
    before exiting. With `resume`, continues from the run's last checkpoint.

    Raises:
        UserError: bad data, model or run dir (before anything is trained); a non-finite loss or
            gradient (naming the step; the last good checkpoint is kept).
    """
    started = time.time()
    loop = _start(cfg, run, resume)
    state = loop.state
    trackers = Trackers(cfg.train.report_to if loop.d.main else [], run, cfg.model_dump(mode="json"))
    with stop_signals() as stop, bar("train", total=loop.total_steps if loop.d.main else 0) as progress:
        progress.advance(state.step)
        loop.shown = _shown_in(progress, loop.d.world, counted=False)
        for epoch in range(state.epoch, loop.epochs + 1):
            if out_of_patience(cfg, state):
                _log_stop(loop)
                break
            t0 = time.time() - state.epoch_seconds
            stats, examples = _train_epoch(loop, epoch, stop, progress, trackers)
            _end_epoch(loop, epoch, stats, examples, time.time() - t0)
            trackers.log({f"epoch/{k}": v for k, v in state.epochs[-1].items() if v is not None}, state.step)
    trackers.close()
    _save_adapter(loop, run.adapter)
    if loop.d.main and loop.best and lowest_pass(state.val_log)["step"] != state.step:
        _save_adapter(loop, run.best_loss_adapter, loop.best)
    if not loop.d.main:
        return TrainResult(state.epochs, None)
    return TrainResult(state.epochs, _write_outputs(loop, time.time() - started))


def _compile_layers(model) -> None:
    """torch.compile every decoder layer in place (parameter names, saving and resume unchanged). Layers share one
    forward, so they share compiled code; dynamic shapes, since batch lengths vary."""
    n = model.config.get_text_config().num_hidden_layers
    layers = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n), [])
    for layer in layers:
        layer.compile(dynamic=True)
    (log.info if layers else log.warning)("train.compile: %d decoder layers compiled on first use", len(layers))


def _start(cfg: Recipe, run: RunDir, resume: bool) -> Loop:
    """Data, model, optimizer and loop state, from scratch (with the epoch-0 validation) or a checkpoint."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    tune_for(device)
    d = distributed.setup(device.type, cfg.train.sharding)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    splits = load_splits(cfg.data, cfg.eval)
    tok = load_tokenizer(cfg.model)
    train_items, val_items, truncated = tokenize_splits(cfg, splits, tok)
    plan = weights(cfg, splits.train, train_items)
    rows = plan.rows if plan else len(train_items)
    if rows < cfg.train.batch_size:
        raise UserError(f"data.source: {cfg.data.source}: {rows} train examples"
                        + (" per epoch under the source weights" if plan else "") + ", fewer than "
                        f"train.batch_size={cfg.train.batch_size}; lower train.batch_size or add rows")
    start_from = _checkpoint_to_resume(run, d) if resume else None
    continued = None if start_from else continued_adapter(cfg.model, cfg.lora)  # a checkpoint holds the weights

    torch.manual_seed(cfg.train.seed)
    model = add_lora(load_model(cfg.model, device), cfg.lora, cfg.train.gradient_checkpointing, tok,
                     cfg.model.added_tokens)
    _starting_weights(cfg, model, tok, train_items, d.main, resume, continued)
    fast_lora.install(model)
    if cfg.train.neftune_alpha:  # transformers' NEFTune hook: noisy input embeddings in training mode only
        from transformers.integrations.neftune import activate_neftune
        activate_neftune(model, cfg.train.neftune_alpha)
    if cfg.train.compile:
        _compile_layers(model)
    if d.main:
        run.create()
        if not resume:
            run.write_text(run.config, to_yaml(cfg))
            if continued:
                run.keep_start_adapter(continued)
            run.write_json(run.estimate, _estimate(cfg, device, train_items, val_items, plan, d.world))
        run.write_json(run.environment, {**environment.describe(device), "processes": d.world})
    net = SupervisedLM(model, _packing(cfg, model, device))
    if d.sharded:
        d.shard(net, model.get_base_model().get_decoder().layers)
    steps_per_epoch = cost.steps_per_epoch(rows, cfg.train.batch_size, cfg.train.grad_accum * d.world)
    optimizer, scheduler = _optimizer(model, net, cfg, cost.planned(cfg.train, steps_per_epoch)[1])
    loop = Loop(cfg, run, d, device, splits, train_items, val_items, truncated, tok.pad_token_id, model, net,
                optimizer, scheduler, checkpoint.State(processes=d.world), start_from, steps_per_epoch,
                micro_batch_tokens(cfg.train.micro_batch_tokens, device, model.get_base_model().config),
                weights=plan)
    if start_from:
        loop.state, loop.best = checkpoint.load(start_from, net, optimizer, scheduler)
        log.info("resuming from %s (step %d of %d)", start_from, loop.state.step, loop.total_steps)
    else:
        with bar("before training: losses", total=len(val_items) + len(familiarity_rows(cfg, splits))) as progress:
            loop.shown = _shown_in(progress, d.world, counted=True)
            val, seconds = _validate_logged(loop, 0)
            loop.state.epochs.append(_epoch_row(0, None, val, 0.0, seconds))
            _test_losses(loop, tok)
    return loop


def _starting_weights(cfg: Recipe, model, tok, train_items: list[Tokenized], main: bool, resume: bool,
                      continued: Path | None) -> None:
    """The trained weights before the first step: the continued adapter's (lora.continue_from); and in a new run (a
    resume's checkpoint holds them all), a warning (the main process) when the training rows use tokens whose
    embedding rows the base model never trained and the recipe leaves them so, or write chat markers the tokenizer
    splits (or leave an added token out), and, unless an adapter was continued (its rows are what it learnt), the
    rows of those tokens the recipe trains started from the mean trained row (`models.start_untrained_rows`)."""
    if continued:
        log.info("continuing the adapter in %s", continued)
        load_start(model, continued)
    if resume:
        return
    if main and left_untrained(found := untrained_tokens(cfg, tok, train_items)):
        log.warning("%s", untrained_line(found))  # tokens LoRA cannot teach the model
    if main and (line := markers_line(markers(cfg, tok, train_items))):
        log.warning("%s", line)
    if not continued and (started := start_untrained_rows(model, {i for t in train_items for i in t.input_ids})):
        log.info("embedding rows of %s start from the mean trained row: untrained in the base model",
                 ", ".join(tok.convert_ids_to_tokens(started)))


def _shown_in(progress, world: int, counted: bool):
    """`advance(rows, split, total)` for the loss passes: the rows measured so far in `progress`'s info column;
    `counted`: the bar counts rows (before training), not optimizer steps (the train bar, left at its step)."""
    done: dict[str, int] = {}

    def advance(rows: int, split: str, total: int) -> None:
        done[split] = min(done.get(split, 0) + rows * world, total)
        progress.advance(rows * world if counted else 0, **{split: f"{done[split]}/{total} rows"})
        done[split] %= total  # the next pass of this split counts from 0
    return advance


def _checkpoint_to_resume(run: RunDir, d: distributed.Dist) -> Path:
    """The run's last checkpoint, checked (before the model loads) to be resumable by this many processes."""
    start_from = checkpoint.latest(run)
    if start_from is None:
        raise UserError(f"--resume {run.path}: no checkpoint to resume from")
    if (written_by := checkpoint.read_state(start_from).processes) != d.world:
        raise UserError(f"--resume {run.path}: {start_from.name} was written by {written_by} process(es), "
                        f"this is {d.world}; resume with {written_by} so the global batch "
                        f"(train.grad_accum x processes) and the data position stay the same")
    return start_from


def stale_epochs(epochs: list[dict], threshold: float = 0.0) -> int:
    """Epochs (or validation passes: rows of metrics/validation.jsonl) since the last improvement of the validation
    loss by more than `threshold` (rundir.last_improvement): what `train.early_stopping_patience` counts. Decided
    from the rows alone, so a resumed run decides the same."""
    return len(epochs) - 1 - last_improvement([e["val_loss"] for e in epochs], threshold)


def patience_rows(cfg: Recipe, state: checkpoint.State) -> list[dict]:
    """The validation rows `train.early_stopping_patience` counts: each epoch end's (epoch 0 first), or with
    train.early_stopping_on=validation every validation pass's."""
    return state.val_log if cfg.train.early_stopping_on == "validation" else state.epochs


def out_of_patience(cfg: Recipe, state: checkpoint.State) -> bool:
    """`train.early_stopping_patience` passes (or epochs) in a row have not improved the validation loss."""
    patience = cfg.train.early_stopping_patience or math.inf
    return stale_epochs(patience_rows(cfg, state), cfg.train.early_stopping_threshold) >= patience


def _log_stop(loop: Loop) -> None:
    cfg, state = loop.cfg, loop.state
    rows = patience_rows(cfg, state)
    stale = stale_epochs(rows, cfg.train.early_stopping_threshold)
    reference, passes = rows[len(rows) - 1 - stale], rows is state.val_log
    log.info("early stopping at step %d of %d (epoch %d of %d): validation loss not more than %g below %s's for "
             "%d %s", state.step, loop.total_steps, state.epoch - 1, loop.epochs,
             cfg.train.early_stopping_threshold,
             f"step {reference['step']}" if passes else f"epoch {reference['epoch']}", stale,
             "validation pass(es)" if passes else "epoch(s)")


def _train_epoch(loop: Loop, epoch: int, stop, progress, trackers) -> tuple[PassStats, list[dict]]:
    """The optimizer steps of one epoch not yet taken; checkpoints on schedule and when a stop is requested."""
    cfg, state, t0 = loop.cfg, loop.state, time.time() - loop.state.epoch_seconds
    loop.net.train()
    stats = PassStats(**state.epoch_sums)
    epoch_batches = batches(loop.train_items, cfg.train.batch_size, loop.pad_id, cfg.train.seed + epoch,
                            cfg.train.group_by_length, loop.weights)
    examples: list[dict] = list(state.epoch_examples) if loop.d.main else []  # a resumed epoch's rows so far
    for start in range(state.epoch_step * loop.per_step, len(epoch_batches), loop.per_step):
        if state.step == loop.total_steps:  # train.max_steps: the epoch ends here (a resume may start here too)
            break
        row = _guarded_step(loop, epoch_batches[start:start + loop.per_step], stats, epoch, examples,
                            epoch_batches[0])
        state.step += 1
        state.epoch_step += 1
        state.epoch_sums, state.epoch_seconds = stats.__dict__.copy(), time.time() - t0
        row.update(step=state.step, epoch=epoch, seconds=round(state.epoch_seconds, 3))
        if state.step % cfg.train.log_every == 0 or state.step == loop.total_steps:
            state.step_log.append(row)
            trackers.log({f"train/{k}": v for k, v in row.items()}, state.step)
        progress.advance(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}",
                         epoch=f"{epoch}/{loop.epochs}")
        if cfg.train.val_every and state.step % cfg.train.val_every == 0 and loop.inside_epoch():
            val, seconds = _validate_logged(loop, epoch, epoch_end=False)
            t0 += seconds  # training time excludes validation
            loop.net.train()
            trackers.log({"val/loss": val.loss, "val/token_accuracy": val.accuracy}, state.step)
            if cfg.train.early_stopping_on == "validation" and out_of_patience(cfg, state):
                state.val_log.pop()  # the epoch ends here: its end's pass, the same weights, logs every row's loss
                break
            if cfg.train.keep_step_adapters:  # accuracy during the epoch: eval scores it (before the checkpoint)
                _save_adapter(loop, loop.run.step_adapter(state.step))
        every = cfg.train.checkpoint_every
        if stop.requested or (every and state.step % every == 0 and loop.inside_epoch()):
            state.epoch_examples = list(loop.d.gather(examples))  # kept with the checkpoint: a resume logs them once
            path = _save(loop)
            if stop.requested:
                raise KeyboardInterrupt(f"checkpoint saved at {path}; resume with: tunelab train --resume "
                                        f"{loop.run.path}")
    return stats, examples


def _end_epoch(loop: Loop, epoch: int, stats: PassStats, examples: list[dict], seconds: float) -> None:
    """Validate, record the epoch row and per-example losses, checkpoint."""
    state = loop.state
    state.train_seconds += seconds
    state.train_tokens += stats.real_tokens
    state.example_log += loop.d.gather(examples)
    val, val_seconds = _validate_logged(loop, epoch)
    state.epochs.append(_epoch_row(epoch, stats, val, seconds, val_seconds))
    state.epoch, state.epoch_step, state.epoch_sums, state.epoch_seconds = epoch + 1, 0, {}, 0.0
    state.epoch_examples = []
    if loop.cfg.train.keep_epoch_adapters:
        _save_adapter(loop, loop.run.epoch_adapter(epoch))  # before the checkpoint: a resume rewrites it
    _save(loop)
    log.info("epoch %d: train loss %.4f, val loss %.4f, val token accuracy %.3f", epoch, stats.loss, val.loss,
             val.accuracy)


def _save(loop: Loop) -> Path:
    """A checkpoint, and the curves so far in metrics/ (a long run can be watched on disk while it trains)."""
    path = checkpoint.save(loop.run, loop.net, loop.optimizer, loop.scheduler, loop.state,
                           loop.cfg.train.keep_checkpoints, loop.d.main, loop.best)
    if loop.d.main:
        _write_curves(loop)
    loop.d.barrier()
    return path


def _write_curves(loop: Loop) -> None:
    """metrics/steps.jsonl, epochs.jsonl and validation.jsonl: every row the loop state holds."""
    run, state = loop.run, loop.state
    run.write_jsonl(run.steps, state.step_log)
    run.write_jsonl(run.epochs, state.epochs)
    run.write_jsonl(run.validation, state.val_log)


def _guarded_step(loop: Loop, step_batches: list[Batch], stats: PassStats, epoch: int, examples: list[dict],
                  first: Batch) -> dict:
    try:
        return _step(loop, step_batches, stats, epoch, examples, first)
    except NonFinite as err:
        last = checkpoint.latest(loop.run)
        raise UserError(f"step {loop.state.step + 1}: {err}; training stopped, no update applied. Last good "
                        f"checkpoint: {last or 'none yet'} (resume with tunelab train --resume "
                        f"{loop.run.path} after lowering train.lr or fixing the data)") from None


def _step(loop: Loop, step_batches: list[Batch], stats: PassStats, epoch: int, examples: list[dict],
          first: Batch) -> dict:
    """One optimizer step: this rank takes its `grad_accum` of the step's batches. The loss is token-weighted
    over the whole step (supervised tokens on all ranks), so gradients summed over ranks equal those of one
    process seeing every batch. `first` is the epoch's first batch, whose first row FSDP's fillers forward."""
    t0 = time.time()
    cfg, d = loop.cfg, loop.d
    mine = step_batches[d.rank * cfg.train.grad_accum:(d.rank + 1) * cfg.train.grad_accum]
    step_supervised = sum(b.supervised for b in step_batches)
    loss_sum, correct, real = 0.0, 0, 0
    micro = [mb for big in mine for mb in split(big, loop.micro_tokens)]
    count = d.max(len(micro)) if d.sharded else len(micro)  # FSDP: every rank runs as many forwards
    for k in range(count):
        d.sync_gradients(loop.net, k == count - 1)
        if k >= len(micro):
            losses, _, _ = forward_tokens(loop.net, filler(first), loop.device)
            (losses.sum() * 0.0).backward()
            continue
        b = micro[k]
        losses, ok, rows = forward_tokens(loop.net, b, loop.device)
        (losses.sum() * d.loss_scale / step_supervised).backward()
        loss_sum += float(losses.detach().sum())
        correct += int(ok.sum())
        real += b.real_tokens
        examples += [{"id": loop.splits.train[i].id, "split": "train", "epoch": epoch, "loss": round(loss, 5),
                      "tokens": n} for i, loss, n in per_example(losses, rows, b)]
    loss_sum, correct, real = d.sum([loss_sum, correct, real])
    grad_norm, lr = _apply_update(loop, loss_sum, step_supervised)
    stats.add(loss_sum, int(correct), step_supervised, int(real))
    seconds = time.time() - t0
    return {"loss": loss_sum / step_supervised, "lr": lr, "grad_norm": grad_norm, "tokens": int(real),
            "supervised_tokens": step_supervised, "tokens_per_second": real / max(seconds, 1e-9)}


def _apply_update(loop: Loop, loss_sum: float, step_supervised: int) -> tuple[float, float]:
    """Sum gradients over ranks, refuse a non-finite loss or gradient, clip, step. Returns (grad norm, lr).

    Raises:
        NonFinite: the step's loss or gradient norm is NaN or infinite (no update applied).
    """
    params = [p for p in loop.net.parameters() if p.requires_grad]
    loop.d.sum_grads(params)
    if not math.isfinite(loss_sum):
        loop.optimizer.zero_grad(set_to_none=True)
        raise NonFinite(f"loss is {loss_sum / step_supervised}")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, loop.cfg.train.max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor over the shards
        grad_norm = grad_norm.full_tensor()
    if not math.isfinite(float(grad_norm)):
        loop.optimizer.zero_grad(set_to_none=True)
        raise NonFinite(f"gradient norm is {float(grad_norm)}")
    lr = loop.scheduler.get_last_lr()[0]
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), lr


def _validate_logged(loop: Loop, epoch: int, epoch_end: bool = True) -> tuple[PassStats, float]:
    """A validation pass recorded in the validation log (metrics/validation.jsonl); returns it and its seconds.
    `epoch_end`: also each row's loss in the example log (the data map and paired tests use them)."""
    t0 = time.time()
    val = _validate(loop, epoch, epoch_end)
    seconds = time.time() - t0
    row = {"step": loop.state.step, "epoch": epoch, "epoch_end": epoch_end, "val_loss": round(val.loss, 6),
           "val_token_accuracy": round(val.accuracy, 6), "val_seconds": round(seconds, 3)}
    loop.state.val_log.append(row)
    if lowest_pass(loop.state.val_log) is row:
        loop.best = _weights_to_keep(loop, row)
    return val, seconds


def _weights_to_keep(loop: Loop, lowest: dict) -> dict | None:
    """The weights of a new lowest validation pass, held (and checkpointed) until the run ends, when they go to
    adapters/best-loss/; None when no folder needs them: before training, or at an epoch end whose adapter is kept.
    Every rank calls this (gathering is a collective); processes other than the main one get {}."""
    if lowest["step"] == 0 or (lowest["epoch_end"] and loop.cfg.train.keep_epoch_adapters):
        return None
    return {k: v.detach().clone() for k, v in checkpoint.trainable_state(loop.net).items()}  # copies, not views


def _validate(loop: Loop, epoch: int, log_rows: bool = True) -> PassStats:
    """Validation pass (no dropout): the validation rows' losses, each row's in the example log when `log_rows`."""
    return _loss_pass(loop, loop.val_items, loop.splits.val, "val", epoch, log_rows)


def _test_losses(loop: Loop, tok) -> None:
    """Before training: the base model's loss on the test rows the eval stage will score (its `eval.limit`),
    each row's in the example log as split "test", epoch 0 — set against the validation rows' (the report's
    familiarity check: a test set the base model saw in pretraining has the lower loss). Only for data.source's own
    test split: another source's rows (eval.source) differ from the training data anyway."""
    rows = familiarity_rows(loop.cfg, loop.splits)
    items, _ = tokenize_with(loop.cfg, rows, tok)
    if items:
        _loss_pass(loop, items, rows, "test", 0, True)


def familiarity_rows(cfg: Recipe, splits: Splits) -> list[Example]:
    """The test rows whose base-model loss the familiarity check compares with the validation rows': the
    `eval.limit` of data.source's own test split that eval scores (`data.scored_rows`; none when eval.source or
    eval.split scores other rows, or when the run continues an adapter)."""
    if cfg.eval.source or cfg.eval.split != "test" or cfg.lora.continue_from:  # epoch 0 is not the base model then
        return []
    return scored_rows(splits.test, cfg.eval, cfg.data.seed)


def _loss_pass(loop: Loop, items: list[Tokenized], examples: list[Example], split_name: str, epoch: int,
               log_rows: bool) -> PassStats:
    """Losses of `items` (tokenized `examples`) without dropout, each row's in the example log when `log_rows`."""
    loop.net.eval()
    shown = None if loop.shown is None else lambda n: loop.shown(n, split_name, len(items))
    stats, rows = loss_pass(loop.net, items, examples, split_name, epoch, loop.cfg.train.batch_size, loop.pad_id,
                            loop.micro_tokens, loop.device, loop.d, shown)
    if log_rows:
        loop.state.example_log += rows
    return stats


def _epoch_row(epoch: int, train: PassStats | None, val: PassStats, seconds: float, val_seconds: float) -> dict:
    return {"epoch": epoch,
            "train_loss": None if train is None else round(train.loss, 6),
            "train_token_accuracy": None if train is None else round(train.accuracy, 6),
            "val_loss": round(val.loss, 6), "val_token_accuracy": round(val.accuracy, 6),
            "seconds": round(seconds, 3), "tokens": 0 if train is None else train.real_tokens,
            "val_seconds": round(val_seconds, 3), "val_tokens": val.real_tokens}


def _save_adapter(loop: Loop, path: Path, weights: dict | None = None) -> None:
    """The adapter as it is now (or with `weights`, trainable_state's), in PEFT format (with the tokenizer where the
    recipe changes it: `ModelConfig.own_tokenizer`), written whole (never half-written). Without `weights` every
    rank calls this: under FSDP they are gathered from the shards; the main process writes."""
    weights = {k.removeprefix("lm."): v for k, v in (weights or checkpoint.trainable_state(loop.net)).items()}
    if loop.d.main:
        with atomic_folder(path) as tmp:
            # save_embedding_layers off: after model.added_tokens grew the embeddings PEFT would otherwise add whole
            # matrices; the new rows travel as trainable token rows or lora.modules_to_save's copies already
            loop.model.save_pretrained(str(tmp), state_dict=weights, save_embedding_layers=False)
            if loop.cfg.model.own_tokenizer:  # the recipe's chat template and tokens travel with the adapter
                load_tokenizer(loop.cfg.model).save_pretrained(str(tmp))
            if base := hub_id(loop.cfg.model):  # not the local cache path PEFT recorded: loadable anywhere
                card.set_base_model(tmp, base)


def _write_outputs(loop: Loop, wall: float) -> dict:
    """Metrics, summary and cost of a finished run (main process only); returns the summary."""
    run, state = loop.run, loop.state
    _write_curves(loop)
    run.write_jsonl(run.examples, state.example_log)
    summary = _summary(loop, wall)
    run.write_json(run.summary, summary)
    run.write_json(run.cost, cost.actual(wall, loop.device, loop.cfg.cost.usd_per_hour, loop.d.world))
    card.write(run)
    return summary


def _estimate(cfg: Recipe, device, train_items, val_items, plan: Weights | None, processes: int) -> dict:
    """The cost estimate made before the first step, from the exact token counts (as tunelab estimate); on CUDA the
    peak memory on this GPU, with a warning when it does not fit."""
    target = "cpu" if device.type == "cpu" else environment.device_name(device)
    estimate = cost.estimate_or_unpriced(cost.recipe_work(cfg, train_items, val_items, plan, processes), target)
    if device.type == "cuda":  # this GPU's own memory, its share of the weights under FSDP
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        if warning := memory.on_this_gpu(estimate, total):
            log.warning(warning)
    return estimate


def _optimizer(model, net, cfg: Recipe, total_steps: int):
    """AdamW over the adapter weights (with train.loraplus_lr_ratio, PEFT's LoRA+ parameter groups: B at lr x
    ratio; with train.embedding_lr, lora.modules_to_save's and lora.trainable_tokens' weights at that rate) and the
    learning-rate schedule;
    `model` is the PEFT model inside `net` (same parameters)."""
    from transformers import get_scheduler
    if cfg.train.loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer
        optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=cfg.train.lr,
                                              loraplus_lr_ratio=cfg.train.loraplus_lr_ratio,
                                              loraplus_weight_decay=cfg.train.weight_decay)
    else:
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.embedding_lr is not None:  # embedding weights (lora.modules_to_save, lora.trainable_tokens): a group
        # of their own at this rate
        whole = [p for n, p in net.named_parameters()
                 if p.requires_grad and (".modules_to_save." in n or ".token_adapter." in n)]
        taken = {id(p) for p in whole}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in taken]
        optimizer.add_param_group({"params": whole, "lr": cfg.train.embedding_lr,
                                   "weight_decay": cfg.train.weight_decay})
    name = "constant_with_warmup" if cfg.train.scheduler == "constant" else cfg.train.scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps(cfg, total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


def warmup_steps(cfg: Recipe, total_steps: int) -> int:
    """The schedule's linear warmup in optimizer steps: train.warmup_steps, else train.warmup_ratio of `total_steps`
    to the nearest step (TrainingArguments.get_warmup_steps rounds up: one step more at most), never more than the
    steps."""
    ratio = round(cfg.train.warmup_ratio * total_steps)
    return min(cfg.train.warmup_steps if cfg.train.warmup_steps is not None else ratio, total_steps)


def _summary(loop: Loop, wall: float) -> dict:
    cfg, state = loop.cfg, loop.state
    summary = {
        **data_figures(cfg, loop.splits, loop.train_items, loop.val_items, loop.truncated),
        "epochs_planned": loop.epochs, "steps_per_epoch": loop.steps_per_epoch,
        "warmup_steps": warmup_steps(cfg, loop.total_steps),
        **({"max_steps": cfg.train.max_steps} if cfg.train.max_steps else {}),
        "early_stopping_patience": cfg.train.early_stopping_patience,
        "early_stopping_threshold": cfg.train.early_stopping_threshold,
        "early_stopping_on": cfg.train.early_stopping_on,
        "steps": state.step, "steps_planned": loop.total_steps,
        **({"train_rows_per_epoch": loop.weights.rows} if loop.weights else {}),  # data.weight, data.mix weights
        **({"best_val_step": lowest_pass(state.val_log)["step"]}
           if cfg.train.val_every else {}),
        **({"best_loss_adapter": True} if loop.run.best_loss_adapter.is_dir() else {}),  # adapters/best-loss/
        **loss_figures(state.epochs),
        "wall_seconds": round(wall, 2), "train_seconds": round(state.train_seconds, 2),
        "train_tokens": state.train_tokens,
        "train_tokens_per_second": round(state.train_tokens / max(state.train_seconds, 1e-9), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if loop.device.type == "cuda":
        summary["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(loop.device) / 2**20, 1)
    if loop.resumed_from:
        summary["resumed_from"] = str(loop.resumed_from)
    summary["processes"], summary["sharding"] = loop.d.world, "fsdp" if loop.d.sharded else "none"
    return summary


def data_figures(cfg: Recipe, splits: Splits, train_items: list, val_items: list, truncated: int) -> dict:
    """The summary's figures of the data a run was measured on: its recipe, model and rows per split."""
    rows = len({it.index for it in train_items})  # a plain-text row trained in windows (data.chunk) counts once
    return {"recipe": cfg.name, "model": cfg.model.name, "data": cfg.data.source,
            "train_examples": rows, "val_examples": len({it.index for it in val_items}),
            **({"train_windows": len(train_items)} if len(train_items) > rows else {}),
            "test_examples": len(splits.test), "test_source": cfg.eval.source or cfg.data.source,
            "skipped_rows": len(splits.skipped), "deduplicated_rows": splits.deduplicated,
            "truncated_examples": truncated}


def loss_figures(epochs: list[dict]) -> dict:
    """The summary's loss and token-accuracy figures from the epoch rows (epoch 0 = before training)."""
    first_train, last = epochs[1], epochs[-1]
    return {
        "epochs": last["epoch"],
        "initial_val_loss": epochs[0]["val_loss"], "final_val_loss": last["val_loss"],
        "first_epoch_train_loss": first_train["train_loss"], "final_train_loss": last["train_loss"],
        # one epoch has no first-to-last change: None (shown as —), not a measured 0 %
        "train_loss_improvement_pct": _improvement(first_train["train_loss"], last["train_loss"])
        if len(epochs) > 2 else None,
        "val_loss_improvement_pct": _improvement(epochs[0]["val_loss"], last["val_loss"]),
        "initial_val_token_accuracy": epochs[0]["val_token_accuracy"],
        "final_train_token_accuracy": last["train_token_accuracy"],
        "final_val_token_accuracy": last["val_token_accuracy"],
        "best_val_epoch": min(epochs, key=lambda e: e["val_loss"])["epoch"],
    }


def _improvement(initial: float, final: float) -> float:
    """Percent fall from `initial` to `final` (positive = better)."""
    return round(100.0 * (initial - final) / initial, 3) if initial else 0.0


def _packing(cfg: Recipe, model, device: torch.device) -> bool:
    """`train.packing`, or by default: on where attention runs varlen kernels (CUDA + flash attention).

    On CPU a packed row attends through a block-diagonal mask over all its tokens, which costs more
    than the ~1 % padding that length grouping and token-budget slices leave.
    """
    if cfg.train.packing is not None:
        return cfg.train.packing
    impl = getattr(model.get_base_model().config, "_attn_implementation", "") or ""
    return device.type == "cuda" and "flash" in impl
