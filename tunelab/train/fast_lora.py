"""A leaner training forward for PEFT's LoRA Linear layers: one addmm adds the scaled LoRA product.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: the scale and the add are two extra
passes over the (tokens, out_features) output in forward and one more in backward, in all 7 LoRA
layers of every block. `addmm(base(x), lora_A(dropout(x)), B^T, alpha=scaling)` folds both into the
GEMM that computes the LoRA product. Same math (tested equal to PEFT's forward), same PEFT modules
and weights (saving, merging and loading are PEFT's); ~4 % less time per training step on CPU
(benchmarks/README.md). Under a bf16 base the fp32 adapter weights are cast to bf16 for the product (as
autocast would), where PEFT casts every activation to fp32. Anything but plain single-adapter LoRA falls back
to PEFT's own forward.

Run as: part of `tunelab train` (installed on the training model only).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def install(model) -> int:
    """Give every PEFT LoRA Linear in `model` the lean forward; returns how many layers got it."""
    from peft.tuners.lora.layer import Linear
    count = 0
    for module in model.modules():
        if type(module) is Linear:  # not subclasses (quantized layers keep PEFT's forward)
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    base, names = self.base_layer, self.active_adapters
    plain = (not args and not kwargs and not self.disable_adapters and not self.merged and not self.lora_variant
             and len(names) == 1 and names[0] in self.lora_A and type(base) is torch.nn.Linear
             and not self.fan_in_fan_out and x.dtype == base.weight.dtype)
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    name = names[0]
    rows = x.reshape(-1, x.shape[-1])  # (N, in)
    # PEFT keeps the adapter in fp32 under a bf16 base: its (r, in) and (out, r) weights are cast to the
    # activations' dtype (cheap, and autograd casts their gradients back), not the (N, in) activations to fp32
    a, b = (w.weight.to(x.dtype) for w in (self.lora_A[name], self.lora_B[name]))
    low = F.linear(self.lora_dropout[name](rows), a)  # (N, r)
    out = torch.addmm(F.linear(rows, base.weight, base.bias), low, b.t(), alpha=self.scaling[name])
    # (N, out) = base + scaling * low @ B^T
    return out.view(*x.shape[:-1], out.shape[-1])
