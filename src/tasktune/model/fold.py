"""Fold a loaded LoRA adapter into a plain model for inference without losing it to bf16 rounding.

Merging an adapter into bf16 weights (`merge_and_unload`) rounds W + BA to 8 significant bits: for the
adapters tasktune trains, 37-70 % of the delta's norm is lost that way (median over the layers of the demo
and DPO adapters), so a bf16-merged model is not the model that was trained. In float32 the merge is exact
enough and costs nothing per token; in a low-precision dtype each adapted Linear keeps its delta as two
low-rank factors instead (`LowRankDelta`), two small matmuls with none of peft's per-layer casts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LowRankDelta(nn.Module):
    """A Linear plus a low-rank delta kept factored: `base(x) + up(down(x))`, `up` already scaled."""

    def __init__(self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, up_bias: torch.Tensor | None):
        super().__init__()
        self.base = base
        dtype = base.weight.dtype
        self.down = nn.Parameter(down.to(dtype), requires_grad=False)
        self.up = nn.Parameter(up.to(dtype), requires_grad=False)
        self.up_bias = None if up_bias is None else nn.Parameter(up_bias.to(dtype), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (code that reads `.weight` for its shape or dtype keeps working)."""
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.down), self.up, self.up_bias)


def lora_factors(layer: nn.Module, name: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(down, scaled up, up bias) in float32 of adapter `name` of a peft LoRA Linear (None: its one active
    adapter), or None where the layer is not a plain LoRA Linear holding it (DoRA, merged, fan-in-fan-out)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if type(layer) is not LoraLinear or not isinstance(layer.base_layer, nn.Linear):
        return None
    if layer.fan_in_fan_out or layer.merged:
        return None
    if name is None:
        active = layer.active_adapters
        if len(active) != 1:
            return None
        name = active[0]
    if getattr(layer, "use_dora", {}).get(name) or name not in layer.lora_A:
        return None
    scale = layer.scaling[name]
    down, up = layer.lora_A[name], layer.lora_B[name]
    bias = None if up.bias is None else up.bias.detach().float() * scale
    return down.weight.detach().float(), up.weight.detach().float() * scale, bias


def fold_adapter(model: nn.Module) -> tuple[nn.Module, str]:
    """The plain model (no peft wrapper) computing what `model`, a PeftModel with one adapter, computes;
    returns (model, how): `merged` in float32, `factored` in a low-precision dtype (every adapted Linear a
    `LowRankDelta`), `merged (...)` where a layer cannot be factored (DoRA, embeddings, fan-in-fan-out)."""
    from peft.tuners.lora.layer import LoraLayer

    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        return model.merge_and_unload(), "merged"
    lora_layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    factors = {name: lora_factors(module) for name, module in lora_layers.items()}
    if not lora_layers or any(f is None for f in factors.values()):
        return model.merge_and_unload(), "merged (a layer peft cannot keep factored here; bf16 rounding applies)"
    prefix = "base_model.model."
    plain = model.unload()
    for name, (down, up, bias) in factors.items():
        path = name.removeprefix(prefix)
        parent_path, _, attr = path.rpartition(".")
        parent = plain.get_submodule(parent_path) if parent_path else plain
        setattr(parent, attr, LowRankDelta(getattr(parent, attr), down, up, bias))
    return plain, "factored"



def delta_lost_to_rounding(model: nn.Module, dtype: torch.dtype) -> float:
    """Median over the LoRA Linear layers of `model` (a PeftModel, not merged yet) of the share of the
    adapter's delta that merging it into `dtype` weights rounds away: |round(W+D) - round(W) - D| / |D|.
    0.0 when no layer changes anything."""
    losses = []
    for layer in model.modules():
        if lora_factors(layer) is None:
            continue
        weight = layer.base_layer.weight.detach().float()
        delta = layer.get_delta_weight(layer.active_adapters[0]).detach().float()
        size = delta.norm()
        if size == 0:
            continue
        kept = (weight + delta).to(dtype).float() - weight.to(dtype).float()
        losses.append(((kept - delta).norm() / size).item())
    return float(torch.tensor(losses).median()) if losses else 0.0
