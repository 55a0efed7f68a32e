"""LoRA supervised fine-tuning: one visible loop over transformers + PEFT, writing the run directory.

Why a hand-written loop and not TRL's SFTTrainer: we need per-example losses every epoch, a
validation pass before the first step, token-weighted metrics, and the LM head applied only to
supervised positions (the biggest CPU cost in a small model). See benchmarks/train_throughput.py.

Run as: tunelab train gsm8k-smollm2-135m --set data.source=../shared/data/gsm8k --set data.limit=64 \
            --set train.epochs=2 --run-dir runs/smoke
"""

from __future__ import annotations

import logging
import math
import resource
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab import cost, environment
from tunelab.config import Recipe, to_yaml
from tunelab.data import Splits, load_splits
from tunelab.errors import UserError
from tunelab.models import add_lora, load_model, load_tokenizer, pick_device
from tunelab.progress import bar
from tunelab.rundir import RunDir, atomic_folder
from tunelab.train import checkpoint, distributed, fast_lora
from tunelab.train.batching import Batch, batches, split, tokenize
from tunelab.train.trackers import Trackers

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    epochs: list[dict]  # one row per epoch, epoch 0 = validation before training
    summary: dict


@dataclass
class PassStats:
    """Token-weighted sums over one pass; per-example losses for metrics/examples.jsonl."""
    loss_sum: float = 0.0
    correct: int = 0
    tokens: int = 0  # supervised tokens
    seen: int = 0  # non-pad tokens processed

    def add(self, loss_sum: float, correct: int, tokens: int, seen: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.tokens += tokens
        self.seen += seen

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.tokens, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.tokens, 1)


def train(cfg: Recipe, run: RunDir, splits: Splits | None = None, resume: bool = False) -> TrainResult:
    """Train a LoRA adapter per `cfg`; write config, metrics, adapter, summary and cost to `run`.

    Checkpoints every `train.checkpoint_every` steps and at each epoch end; SIGINT/SIGTERM save one
    before exiting. With `resume`, continues from the run's last checkpoint.

    Raises:
        UserError: bad data, model or run dir (before anything is trained); a non-finite loss or
            gradient (naming the step; the last good checkpoint is kept).
    """
    started = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        _keep_freed_memory()
    d = distributed.setup(device.type, cfg.train.sharding)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    splits = splits or load_splits(cfg.data)
    tok = load_tokenizer(cfg.model)
    train_items, train_cut = tokenize(splits.train, tok, cfg.train.max_length, cfg.train.completion_only)
    val_items, val_cut = tokenize(splits.val, tok, cfg.train.max_length, cfg.train.completion_only)
    if not train_items or not val_items:
        raise UserError(f"data.source: no train or validation example has a supervised token within "
                        f"train.max_length={cfg.train.max_length}")
    if len(train_items) < cfg.train.batch_size:
        raise UserError(f"data.source: {cfg.data.source}: {len(train_items)} train examples, fewer than "
                        f"train.batch_size={cfg.train.batch_size}; lower train.batch_size or add rows")
    start_from = checkpoint.latest(run) if resume else None
    if resume and start_from is None:
        raise UserError(f"--resume {run.path}: no checkpoint to resume from")
    if start_from and (written_by := checkpoint.read_state(start_from).processes) != d.world:
        raise UserError(f"--resume {run.path}: {start_from.name} was written by {written_by} process(es), "
                        f"this is {d.world}; resume with {written_by} so the global batch "
                        f"(train.grad_accum x processes) and the data position stay the same")

    torch.manual_seed(cfg.train.seed)
    model = add_lora(load_model(cfg.model, device), cfg.lora, cfg.train.gradient_checkpointing)
    fast_lora.install(model)
    if d.main:
        run.create()
        if not resume:
            run.write_text(run.config, to_yaml(cfg))
            run.write_json(run.estimate, _estimate(cfg, model, device, train_items, val_items))
        run.write_json(run.environment, {**environment.describe(device), "processes": d.world})
    trackers = Trackers(cfg.train.report_to if d.main else [], run.path)
    net = SupervisedLM(model, _packing(cfg, model, device))
    if d.sharded:
        d.shard(net, model.get_base_model().get_decoder().layers)

    per_step = cfg.train.grad_accum * d.world  # batches per optimizer step, over all ranks
    steps_per_epoch = math.ceil(math.ceil(len(train_items) / cfg.train.batch_size) / per_step)
    total_steps = steps_per_epoch * cfg.train.epochs
    optimizer, scheduler = _optimizer(net, cfg, total_steps)
    pad_id = tok.pad_token_id

    if start_from:
        state = checkpoint.load(start_from, net, optimizer, scheduler)
        log.info("resuming from %s (step %d of %d)", start_from, state.step, total_steps)
    else:
        state = checkpoint.State(processes=d.world)
        val_stats = _validate(net, val_items, splits.val, cfg, pad_id, device, 0, state.example_log, d)
        state.epochs.append(_epoch_row(0, None, val_stats, 0.0, 0))

    def save() -> Path:
        path = checkpoint.save(run, net, optimizer, scheduler, state, cfg.train.keep_checkpoints, d.main)
        d.barrier()
        return path

    with _stop_signals() as stop, bar("train", total=total_steps if d.main else 0) as progress:
        progress.advance(state.step)
        for epoch in range(state.epoch, cfg.train.epochs + 1):
            t0 = time.time() - state.epoch_seconds
            net.train()
            stats = PassStats(**state.epoch_sums)
            epoch_batches = batches(train_items, cfg.train.batch_size, pad_id, cfg.train.seed + epoch,
                                    cfg.train.group_by_length)
            epoch_examples: list = []
            for start in range(state.next_group * per_step, len(epoch_batches), per_step):
                step_batches = epoch_batches[start:start + per_step]
                mine = step_batches[d.rank * cfg.train.grad_accum:(d.rank + 1) * cfg.train.grad_accum]
                try:
                    row = _step(net, mine, sum(b.supervised for b in step_batches), optimizer, scheduler, cfg,
                                device, stats, splits.train, epoch, epoch_examples, d, epoch_batches[0])
                except NonFinite as err:
                    last = checkpoint.latest(run)
                    raise UserError(f"step {state.step + 1}: {err}; training stopped, no update applied. Last good "
                                    f"checkpoint: {last or 'none yet'} (resume with tunelab train --resume "
                                    f"{run.path} after lowering train.lr or fixing the data)") from None
                state.step += 1
                state.next_group += 1
                state.epoch_sums, state.epoch_seconds = stats.__dict__.copy(), time.time() - t0
                row.update(step=state.step, epoch=epoch, seconds=round(state.epoch_seconds, 3))
                if state.step % cfg.train.log_every == 0 or state.step == total_steps:
                    state.step_log.append(row)
                    trackers.log({f"train/{k}": v for k, v in row.items()}, state.step)
                progress.advance(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}",
                                 epoch=f"{epoch}/{cfg.train.epochs}")
                every = cfg.train.checkpoint_every
                if stop.requested or (every and state.step % every == 0 and state.next_group < steps_per_epoch):
                    path = save()
                    if stop.requested:
                        raise KeyboardInterrupt(f"checkpoint saved at {path}; resume with: tunelab train "
                                                f"--resume {run.path}")
            seconds = time.time() - t0
            state.train_seconds += seconds
            state.train_tokens += stats.seen
            state.example_log += d.gather(epoch_examples)
            val_stats = _validate(net, val_items, splits.val, cfg, pad_id, device, epoch, state.example_log, d)
            state.epochs.append(_epoch_row(epoch, stats, val_stats, seconds, stats.seen))
            state.epoch, state.next_group, state.epoch_sums, state.epoch_seconds = epoch + 1, 0, {}, 0.0
            save()
            trackers.log({f"epoch/{k}": v for k, v in state.epochs[-1].items() if v is not None}, state.step)
            log.info("epoch %d: train loss %.4f, val loss %.4f, val token accuracy %.3f", epoch,
                     stats.loss, val_stats.loss, val_stats.accuracy)
    trackers.close()
    adapter = {k.removeprefix("lm."): v for k, v in checkpoint.trainable_state(net).items()}  # all ranks: a gather
    if not d.main:
        return TrainResult(state.epochs, {})

    run.write_jsonl(run.steps, state.step_log)
    run.write_jsonl(run.epochs, state.epochs)
    run.write_jsonl(run.examples, state.example_log)
    _save_adapter(model, adapter, run)
    wall = time.time() - started
    summary = _summary(cfg, state.epochs, splits, train_items, val_items, train_cut + val_cut, wall,
                       state.train_seconds, state.train_tokens)
    if start_from:
        summary["resumed_from"] = str(start_from)
    summary["processes"], summary["sharding"] = d.world, "fsdp" if d.sharded else "none"
    run.write_json(run.summary, summary)
    run.write_json(run.cost, cost.actual(wall, device, cfg.cost.usd_per_hour))
    return TrainResult(state.epochs, summary)


def _packing(cfg: Recipe, model, device: torch.device) -> bool:
    """`train.packing`, or by default: on where attention runs varlen kernels (CUDA + flash attention).

    On CPU a packed row attends through a block-diagonal mask over all its tokens, which costs more
    than the ~1 % padding that length grouping and token-budget slices leave.
    """
    if cfg.train.packing is not None:
        return cfg.train.packing
    impl = getattr(model.get_base_model().config, "_attn_implementation", "") or ""
    return device.type == "cuda" and "flash" in impl


def _keep_freed_memory() -> None:
    """Have glibc keep freed blocks in the process instead of returning them to the OS.

    By default blocks over 32 MB (the (N, V) logits, the largest activations) are mmap'd and
    munmap'd every micro-batch, and the next step pays page faults on fresh zeroed pages: ~2.5 s of
    system time per training minute on this CPU, 3-4 % of the step time (benchmarks/README.md). Peak
    RSS moves by ~2 %. A no-op where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    mallopt(M_MMAP_MAX, 0)  # no mmap'd blocks: everything from the heap
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and the heap is not trimmed back after each step


class NonFinite(Exception):
    """A NaN or infinite loss or gradient norm."""


class _StopFlag:
    requested = False


@contextmanager
def _stop_signals():
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint after the current step and exits."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt("interrupted twice: stopped without a final checkpoint")
        flag.requested = True
        log.warning("%s: saving a checkpoint after this step (press Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


class SupervisedLM(torch.nn.Module):
    """A causal LM whose forward returns the loss on supervised positions only; the module FSDP wraps.

    The LM head runs on the N supervised positions instead of all B*T positions — same loss, a
    fraction of the (B, T, V) logits work and memory. With `pack`, the batch's real tokens are laid
    end to end in one row with position ids restarting per example (no padding at all); transformers
    then keeps examples from attending to each other (flash-attention varlen kernels on CUDA, a
    block-diagonal mask elsewhere) — same per-token loss, tested.
    """

    def __init__(self, lm, pack: bool = False):
        super().__init__()
        self.lm = lm
        self.pack = pack

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor):
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        b, t = input_ids.shape
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): position t predicts token t+1
        rows = torch.arange(b, device=input_ids.device)[:, None].expand(b, t)  # (B, T): example row
        if self.pack:
            # rows are right-padded: each row's real tokens sit at positions 0..n-1
            real = attention_mask.bool()
            positions = torch.arange(t, device=input_ids.device).expand(b, t)[real]  # (L,), L = real tokens
            hidden = base.get_decoder()(input_ids=input_ids[real][None], position_ids=positions[None],
                                        use_cache=False).last_hidden_state[0]  # (L, H)
            targets, rows = targets[real], rows[real]
        else:
            # no attention mask: rows are right-padded, so causal attention alone keeps every real token
            # from seeing padding (pad positions carry no label); SDPA's causal path is ~1 % faster
            hidden = base.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, H)
        keep = targets != -100
        logits = base.get_output_embeddings()(hidden[keep]).float()  # (N, V)
        gold = targets[keep]
        losses = F.cross_entropy(logits, gold, reduction="none")  # (N,)
        correct = logits.detach().argmax(-1) == gold
        return losses, correct, rows[keep]


def forward_tokens(model, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss on supervised positions only: (N,) losses, (N,) correct flags, (N,) example rows.

    `model` is a `SupervisedLM` (sharded or not, packing or not) or a bare (PEFT) causal LM.
    """
    net = model if isinstance(model, SupervisedLM) else SupervisedLM(model)
    return net(batch.input_ids.to(device), batch.labels.to(device), batch.attention_mask.to(device))


def _filler(batch: Batch) -> Batch:
    """One row of `batch`: what a rank with fewer micro-batches forwards (with weight 0) under FSDP."""
    return Batch(batch.index[:1], batch.input_ids[:1], batch.attention_mask[:1], batch.labels[:1], 0, 0)


def _per_example(losses: torch.Tensor, rows: torch.Tensor, batch: Batch) -> list[tuple[int, float, int]]:
    """(example position, mean loss, supervised tokens) for each example in the batch."""
    n = batch.index.shape[0]
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, rows.cpu(), losses.detach().double().cpu())
    counts = torch.bincount(rows.cpu(), minlength=n)
    return [(int(batch.index[i]), float(sums[i] / max(int(counts[i]), 1)), int(counts[i])) for i in range(n)]


def _step(net, group: list[Batch], step_tokens: int, optimizer, scheduler, cfg: Recipe, device,
          stats: PassStats, examples, epoch: int, example_log: list, d: distributed.Dist, filler: Batch) -> dict:
    """One optimizer step over this rank's `group` of micro-batches. The loss is token-weighted over the
    whole step (`step_tokens` supervised tokens on all ranks), so gradients summed over ranks equal
    those of one process seeing every batch."""
    t0 = time.time()
    loss_sum, correct, seen = 0.0, 0, 0
    micro = [mb for big in group for mb in split(big, cfg.train.micro_batch_tokens)]
    count = d.max(len(micro)) if d.sharded else len(micro)  # FSDP: every rank runs as many forwards
    for k in range(count):
        d.sync_gradients(net, k == count - 1)
        if k >= len(micro):
            losses, _, _ = forward_tokens(net, _filler(filler), device)
            (losses.sum() * 0.0).backward()
            continue
        b = micro[k]
        losses, ok, rows = forward_tokens(net, b, device)
        (losses.sum() * d.loss_scale / step_tokens).backward()
        loss_sum += float(losses.detach().sum())
        correct += int(ok.sum())
        seen += b.tokens
        for i, loss, n in _per_example(losses, rows, b):
            example_log.append({"id": examples[i].id, "split": "train", "epoch": epoch, "loss": round(loss, 5),
                                "tokens": n})
    params = [p for p in net.parameters() if p.requires_grad]
    d.sum_grads(params)
    loss_sum, correct, seen = d.sum([loss_sum, correct, seen])
    if not math.isfinite(loss_sum):
        optimizer.zero_grad(set_to_none=True)
        raise NonFinite(f"loss is {loss_sum / step_tokens}")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor over the shards
        grad_norm = grad_norm.full_tensor()
    if not math.isfinite(float(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFinite(f"gradient norm is {float(grad_norm)}")
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    stats.add(loss_sum, int(correct), step_tokens, int(seen))
    seconds = time.time() - t0
    return {"loss": loss_sum / step_tokens, "lr": lr, "grad_norm": float(grad_norm), "tokens": int(seen),
            "supervised_tokens": step_tokens, "tokens_per_second": seen / max(seconds, 1e-9)}


@torch.no_grad()
def _validate(net, items, examples, cfg: Recipe, pad_id: int, device, epoch: int, example_log: list,
              d: distributed.Dist) -> PassStats:
    """Validation pass (no dropout); batches are dealt round-robin to ranks and the sums combined."""
    net.eval()
    loss_sum, correct, tokens, seen, rows_out = 0.0, 0, 0, 0, []
    every = batches(items, cfg.train.batch_size, pad_id, None, True)
    micro = [b for k, big in enumerate(every) if k % d.world == d.rank
             for b in split(big, cfg.train.micro_batch_tokens)]
    for _ in range(d.max(len(micro)) - len(micro) if d.sharded else 0):  # FSDP: as many forwards on every rank
        forward_tokens(net, _filler(every[0]), device)
    for b in micro:
        losses, ok, rows = forward_tokens(net, b, device)
        loss_sum, correct, tokens, seen = loss_sum + float(losses.sum()), correct + int(ok.sum()), \
            tokens + b.supervised, seen + b.tokens
        rows_out += [{"id": examples[i].id, "split": "val", "epoch": epoch, "loss": round(loss, 5), "tokens": n}
                     for i, loss, n in _per_example(losses, rows, b)]
    example_log += d.gather(rows_out)
    loss_sum, correct, tokens, seen = d.sum([loss_sum, correct, tokens, seen])
    stats = PassStats()
    stats.add(loss_sum, int(correct), int(tokens), int(seen))
    return stats


def _epoch_row(epoch: int, train: PassStats | None, val: PassStats, seconds: float, tokens: int) -> dict:
    return {"epoch": epoch,
            "train_loss": None if train is None else round(train.loss, 6),
            "train_token_accuracy": None if train is None else round(train.accuracy, 6),
            "val_loss": round(val.loss, 6), "val_token_accuracy": round(val.accuracy, 6),
            "seconds": round(seconds, 3), "tokens": tokens}


def _estimate(cfg: Recipe, model, device, train_items, val_items) -> dict:
    """The cost estimate made before the first step, from the exact token counts (see tunelab estimate)."""
    config = model.get_base_model().config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    work = cost.flops([len(i.input_ids) for i in train_items], [len(i.input_ids) for i in val_items],
                      cfg.train.epochs, sum(p.numel() for p in model.parameters()), text.num_hidden_layers,
                      text.hidden_size, cfg.train.gradient_checkpointing)
    target = "cpu" if device.type == "cpu" else environment.device_name(device)
    try:
        return cost.estimate(work, target)
    except UserError as err:  # an unknown GPU: keep the work figures, no price
        return {**work, "device": target, "hours": None, "cost_usd": None, "basis": str(err)}


def _optimizer(net, cfg: Recipe, total_steps: int):
    from transformers import get_scheduler
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    name = "constant_with_warmup" if cfg.train.scheduler == "constant" else cfg.train.scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=round(cfg.train.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


def _save_adapter(model, weights: dict, run: RunDir) -> None:
    """Save the PEFT adapter (`weights`: its full trainable tensors) via a temp folder: never half-written."""
    with atomic_folder(run.adapter) as tmp:
        model.save_pretrained(str(tmp), state_dict=weights)


def _summary(cfg: Recipe, epochs: list[dict], splits: Splits, train_items, val_items, truncated: int,
             wall: float, train_seconds: float, train_tokens: int) -> dict:
    first_train, last = epochs[1], epochs[-1]
    return {
        "recipe": cfg.name, "model": cfg.model.name, "data": cfg.data.source, "epochs": cfg.train.epochs,
        "train_examples": len(train_items), "val_examples": len(val_items), "test_examples": len(splits.test),
        "skipped_rows": len(splits.skipped), "truncated_examples": truncated,
        "initial_val_loss": epochs[0]["val_loss"], "final_val_loss": last["val_loss"],
        "first_epoch_train_loss": first_train["train_loss"], "final_train_loss": last["train_loss"],
        "train_loss_improvement_pct": _improvement(first_train["train_loss"], last["train_loss"]),
        "val_loss_improvement_pct": _improvement(epochs[0]["val_loss"], last["val_loss"]),
        "initial_val_token_accuracy": epochs[0]["val_token_accuracy"],
        "final_train_token_accuracy": last["train_token_accuracy"],
        "final_val_token_accuracy": last["val_token_accuracy"],
        "best_val_epoch": min(epochs, key=lambda e: e["val_loss"])["epoch"],
        "wall_seconds": round(wall, 2), "train_seconds": round(train_seconds, 2),
        "train_tokens": train_tokens,
        "train_tokens_per_second": round(train_tokens / max(train_seconds, 1e-9), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _improvement(initial: float, final: float) -> float:
    """Percent fall from `initial` to `final` (positive = better)."""
    return round(100.0 * (initial - final) / initial, 3) if initial else 0.0
