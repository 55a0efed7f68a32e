"""The supervised forward: loss on target positions only, and the token-weighted sums of a pass.

    losses, correct, rows = forward_tokens(model, batch, device)   # (N,) each, N = supervised tokens

Run as: tunelab train quickstart          (every training and validation forward goes through here)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab.rundir import merge_rows
from tunelab.train.batching import IGNORE, Batch, Tokenized, batches, split


@dataclass
class PassStats:
    """Token-weighted sums over one pass (an epoch's training or one validation pass)."""
    loss_sum: float = 0.0  # summed per-token loss (nats)
    correct: int = 0  # supervised tokens whose argmax prediction was right
    supervised_tokens: int = 0  # tokens that carry loss
    real_tokens: int = 0  # non-pad tokens processed (prompt + target): what tokens/s counts

    def add(self, loss_sum: float, correct: int, supervised_tokens: int, real_tokens: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.supervised_tokens += supervised_tokens
        self.real_tokens += real_tokens

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.supervised_tokens, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.supervised_tokens, 1)


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
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)  # (B, T): position t predicts token t+1
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
        keep = targets != IGNORE
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


def per_example(losses: torch.Tensor, rows: torch.Tensor, batch: Batch) -> list[tuple[int, float, int]]:
    """(example position, mean loss, supervised tokens) for each example in the batch."""
    n = batch.index.shape[0]
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, rows.cpu(), losses.detach().double().cpu())
    counts = torch.bincount(rows.cpu(), minlength=n)
    return [(int(batch.index[i]), float(sums[i] / max(int(counts[i]), 1)), int(counts[i])) for i in range(n)]


def filler(batch: Batch) -> Batch:
    """One row of `batch`: what a rank with fewer micro-batches forwards (with weight 0) under FSDP."""
    return Batch(batch.index[:1], batch.input_ids[:1], batch.attention_mask[:1], batch.labels[:1], 0, 0)


@torch.no_grad()
def loss_pass(net, items: list[Tokenized], examples: list, split_name: str, epoch: int, batch_size: int, pad_id: int,
              micro_tokens: int, device: torch.device, d=None, advance=None) -> tuple[PassStats, list[dict]]:
    """Losses of `items` (tokenized `examples`) under `net` as it is (call net.eval() for no dropout): the pass's
    token-weighted sums over all ranks, and each row's {id, split, epoch, loss, tokens} gathered from all ranks.
    Under `d` (distributed.Dist) batches are dealt round-robin to ranks. `advance(n)`, when given, is called with
    the rows of each micro-batch this rank has measured (a progress bar's)."""
    from tunelab.distributed import Dist
    d = d or Dist()
    stats, rows_out = PassStats(), []
    every = batches(items, batch_size, pad_id, None, True)
    micro = [b for k, big in enumerate(every) if k % d.world == d.rank for b in split(big, micro_tokens)]
    for _ in range(d.max(len(micro)) - len(micro) if d.sharded else 0):  # FSDP: as many forwards on every rank
        forward_tokens(net, filler(every[0]), device)
    for b in micro:
        losses, ok, rows = forward_tokens(net, b, device)
        stats.add(float(losses.sum()), int(ok.sum()), b.supervised, b.real_tokens)
        rows_out += [{"id": examples[i].id, "split": split_name, "epoch": epoch, "loss": round(loss, 5),
                      "tokens": n} for i, loss, n in per_example(losses, rows, b)]
        if advance is not None:
            advance(int(b.index.shape[0]))
    total = PassStats()
    loss_sum, correct, supervised, real = d.sum([stats.loss_sum, stats.correct, stats.supervised_tokens,
                                                 stats.real_tokens])
    total.add(loss_sum, int(correct), int(supervised), int(real))
    return total, merge_rows(d.gather(rows_out))  # a plain-text row measured in windows: one record
