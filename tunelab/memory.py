"""Peak GPU memory of a LoRA training run, estimated before it runs: the base weights as loaded, the adapter with
its gradient and AdamW state, and the activations of the largest forward — bytes per padded token, hidden unit and
layer as measured on an H200 — over the micro-batch slices tunelab cuts to fit the memory left
(`train.runtime.micro_batch_tokens`). Whether a recipe fits a GPU, and when it does not, which setting makes it fit.

Run as: tunelab estimate gsm8k-mistral-7b --device L4
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GIB = 2**30
CONTEXT_BYTES = 0.5 * GIB  # the CUDA context and allocator slack outside the tensors (assumed, not measured)
ADAPTER_BYTES = 16  # per trainable weight: fp32 value, gradient and AdamW's two moments
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8  # bitsandbytes NF4 with double quantisation, per packed weight
# activation bytes per padded token, hidden unit and layer in a LoRA forward + backward, bf16: measured on an H200
# (benchmarks/gpu_check.py, 2026-11-28: Mistral-7B, r=16 on all linear layers, the largest batch 16 rows x 512
# tokens; peaks of 78.4 GiB with LoRA dropout 0.05, 61.0 GiB without, less the weights and the adapter state).
# Mistral's MLP is 3.5x its hidden size; a wider one needs more (not measured).
ACTIVATION_BYTES = {"dropout": 64, "no dropout": 47}
CHECKPOINTED_BYTES = 2  # gradient checkpointing: each layer's bf16 input kept, per token and hidden unit
USABLE = 0.95  # share of a GPU's memory a run may count on (the rest: allocator fragmentation; assumed)
# settings that lower the peak, tried in this order: those that keep the weights as they are first (slower steps,
# or traffic between GPUs: sharding needs several), then 4-bit weights (another model, in a sense)
FIXES = (("train.gradient_checkpointing=true", {"checkpointing": True}),
         ("train.sharding=fsdp", {"sharded": True}),
         ("train.gradient_checkpointing=true and train.sharding=fsdp", {"checkpointing": True, "sharded": True}),
         ("model.load_in_4bit=true", {"four_bit": True}),
         ("train.gradient_checkpointing=true and model.load_in_4bit=true", {"checkpointing": True, "four_bit": True}))
GATHERED_LAYERS = 2  # FSDP2: the layer computing gathered whole, the next prefetched (counted, not measured)


@dataclass(frozen=True)
class Workload:
    """What a run's peak GPU memory depends on (`workload` builds it from a recipe)."""
    params: int  # every weight of the base model
    quantised: int  # those 4-bit loading packs (the linear layers but the output embedding)
    trainable: int  # the adapter's
    layers: int
    hidden: int
    largest: int  # padded tokens of the largest batch of an epoch, before any split
    longest: int  # tokens of the longest row (a slice holds one row at the least)
    checkpointing: bool
    dropout: bool  # lora.dropout > 0: a dropped-out copy of each adapted layer's input is kept too
    four_bit: bool
    dtype_bytes: int  # of the weights 4-bit loading does not pack: bf16 (model.dtype auto on CUDA) 2, float32 4
    micro_batch_tokens: int | None  # train.micro_batch_tokens (None: sized to the memory left, as on CUDA)
    processes: int = 1  # one per GPU
    sharded: bool = False  # train.sharding=fsdp: weights and adapter state split over the processes

    @property
    def shards(self) -> int:
        return self.processes if self.sharded and self.processes > 1 else 1

    @property
    def weight_bytes(self) -> float:
        """The base weights on the GPU: as model.dtype loads them, or NF4 for the linear layers with
        model.load_in_4bit."""
        if self.four_bit:
            return self.quantised * NF4_BYTES + (self.params - self.quantised) * self.dtype_bytes
        return float(self.params * self.dtype_bytes)

    @property
    def resident_bytes(self) -> float:
        """The weights and adapter state one GPU holds: all of them, or under FSDP its share plus the layers
        gathered whole while they compute."""
        whole = self.weight_bytes + self.trainable * ADAPTER_BYTES
        if self.shards == 1:
            return whole
        return whole / self.shards + GATHERED_LAYERS * self.weight_bytes / self.layers

    @property
    def token_bytes(self) -> int:
        """Activation bytes per padded token in a forward and backward; with gradient checkpointing each layer's
        input is kept and one layer's activations live at a time (counted, not measured)."""
        layer = ACTIVATION_BYTES["dropout" if self.dropout else "no dropout"]
        if self.checkpointing:
            return self.hidden * (self.layers * CHECKPOINTED_BYTES + layer)
        return self.hidden * self.layers * layer


def workload(cfg, counts: dict, train_items: list, weights=None, processes: int = 1) -> Workload:
    """The `Workload` of recipe `cfg` on its tokenized train rows (`counts`: `models.adapted_counts`; `weights`: the
    source weights' plan; `processes`: one per GPU), the batches as the first epoch draws them."""
    from tunelab.train.batching import batches
    plan = batches(train_items, cfg.train.batch_size, 0, cfg.train.seed + 1, cfg.train.group_by_length, weights)
    return Workload(counts["params"], counts["quantised"], counts["trainable"], counts["layers"], counts["hidden"],
                    largest=max((b.input_ids.numel() for b in plan), default=0),
                    longest=max((len(i.input_ids) for i in train_items), default=0),
                    checkpointing=cfg.train.gradient_checkpointing, dropout=cfg.lora.dropout > 0,
                    four_bit=cfg.model.load_in_4bit,
                    dtype_bytes=4 if cfg.model.dtype == "float32" else 2,
                    micro_batch_tokens=cfg.train.micro_batch_tokens, processes=processes,
                    sharded=cfg.train.sharding == "fsdp")


def peak(w: Workload, memory_gib: float) -> dict:
    """The peak on a GPU of `memory_gib`: `peak_gib` (the CUDA context included), `allocated_gib` (what
    torch.cuda.max_memory_allocated would say: the tensors alone), `fits` (within USABLE of the memory), and
    `slice_tokens` when batches are split (the padded tokens a forward then takes at most), as
    `train.runtime.micro_batch_tokens` sizes them from the memory free once the weights are loaded."""
    from tunelab.train.runtime import cuda_slice_tokens
    total = memory_gib * GIB
    if w.micro_batch_tokens is None:  # sized from what is free once this GPU's share of the weights is loaded
        cap = cuda_slice_tokens(max(total - w.weight_bytes / w.shards - CONTEXT_BYTES, 0), w.hidden, w.layers)
    else:
        cap = w.micro_batch_tokens or w.largest  # 0: never split
    tokens = min(w.largest, max(cap, w.longest))
    tensors = w.resident_bytes + tokens * w.token_bytes
    need = tensors + CONTEXT_BYTES
    return {"peak_gib": round(need / GIB, 3), "allocated_gib": round(tensors / GIB, 3), "fits": need <= USABLE * total,
            "slice_tokens": tokens if tokens < w.largest else None}


def on_device(w: Workload, memory_gib: float) -> dict:
    """`peak`, and for a run that does not fit, `fix`: the first of FIXES (gradient checkpointing, FSDP sharding
    over several GPUs, 4-bit loading, and pairs of them) that makes it fit, with its peak (None when none does)."""
    out = peak(w, memory_gib)
    if not out["fits"]:
        out["fix"] = None
        for setting, change in FIXES:
            changed = replace(w, **change)
            if changed.shards == w.shards and "sharded" in change:
                continue  # one process: nothing to shard over
            if changed != w and (tried := peak(changed, memory_gib))["fits"]:
                out["fix"] = {"setting": setting, **tried}
                break
    return out


def describe(m: dict, memory_gib: float) -> str:
    """An `on_device` result in words: "~74.1 of 141 GiB", with the slices or the fix."""
    if m["fits"]:
        return f"~{m['peak_gib']:.1f} of {memory_gib:g} GiB" + (
            f", batches in slices of ≤{m['slice_tokens']:,} tokens" if m["slice_tokens"] else "")
    fix = m["fix"]
    return f"does not fit: ~{m['peak_gib']:.1f} of {memory_gib:g} GiB; " + (
        f"fits with {fix['setting']} (~{fix['peak_gib']:.1f} GiB)" if fix else
        "no setting here fits it (gradient checkpointing, 4-bit loading, FSDP over these GPUs): a larger GPU, or "
        "more of them with train.sharding=fsdp")


def on_this_gpu(estimate: dict, memory_gib: float) -> str | None:
    """Set `estimate`'s peak GPU memory (`gpu_memory`, `memory_gib`) on the GPU a run trains on, of `memory_gib`
    (the table's size may not be this card's); the warning to log before the first step when it does not fit, or
    None."""
    m = on_device(Workload(**estimate["memory"]), memory_gib)
    estimate.update(gpu_memory=m, memory_gib=round(memory_gib, 1))
    return None if m["fits"] else (f"peak GPU memory estimated for this run {describe(m, round(memory_gib, 1))}: "
                                   "it may run out of memory")
