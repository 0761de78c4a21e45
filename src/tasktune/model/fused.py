"""Training-time replacements for two decoder blocks that keep less for backward, same numbers.

- RMSNorm (Llama family): transformers' version keeps fp32 copies of its input for backward; this one keeps
  the input in its own dtype plus one fp32 scale per row, and recomputes the normalised values in backward.
- SwiGLU MLP: `down(silu(gate(x)) * up(x))` keeps gate(x), silu(gate(x)) and up(x); this one keeps gate(x)
  and up(x) and recomputes the SiLU in backward (selective recomputation where it is cheap).

`use_fused_blocks` swaps the modules of a loaded model in place, before adapters are added: the new modules
own the same parameters under the same names, so state dicts, peft targeting and saved adapters are
unchanged. Only exact matches of the known classes are swapped; anything else is left alone.
"""

from __future__ import annotations

import torch
from torch import nn

RMSNORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "SmolLM3RMSNorm")
"""Norms computing `weight * (x / rms(x)).to(x.dtype)` in fp32 (Gemma's `1 + weight` is not among them)."""
MLP_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "SmolLM3MLP")
"""MLPs computing `down_proj(act_fn(gate_proj(x)) * up_proj(x))`."""


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        normed = x.float() * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_out * normed.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        g = (grad_out * weight).float()
        grad_x = rstd * (g - normed * (g * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


class FusedRMSNorm(nn.Module):
    """RMSNorm with the parameter of the module it replaces."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return _RMSNormFn.apply(hidden_states, self.weight, self.variance_epsilon)


class _SiluMulFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate.float())
        silu = gate.float() * sig
        grad_up = (grad_out.float() * silu).to(up.dtype)
        grad_gate = (grad_out.float() * up.float() * sig * (1 + gate.float() * (1 - sig))).to(gate.dtype)
        return grad_gate, grad_up


class FusedSwiGLU(nn.Module):
    """The MLP with the projections of the module it replaces (same child names)."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(_SiluMulFn.apply(self.gate_proj(x), self.up_proj(x)))


def use_fused_blocks(model: nn.Module) -> int:
    """Swap the known RMSNorm and SwiGLU modules of `model` for the fused ones; returns how many."""
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            kind = type(child).__name__
            if kind in RMSNORM_CLASSES and hasattr(child, "variance_epsilon"):
                swaps.append((parent, name, FusedRMSNorm(child)))
            elif kind in MLP_CLASSES and _is_silu(getattr(child, "act_fn", None)):
                swaps.append((parent, name, FusedSwiGLU(child)))
    for parent, name, module in swaps:
        setattr(parent, name, module)
    return len(swaps)


def _is_silu(act: object) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")
