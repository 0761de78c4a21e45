"""A lean inference forward for Llama-architecture decoders on the CPU: the generation core's fast path.

transformers' Llama forward runs a layer's seven projections as seven matmuls (21 with a LoRA delta kept
factored, model/fold.py), each behind a module call, with about a hundred small operators around them. On a
2-core CPU that is most of a decode step of a few rows. Here, per layer:

- q, k, v and the LoRA down-projections of all three are one matmul, their up-projections one more (one
  block-diagonal matrix: its zero blocks add exact zeros); the same for gate and up; o and down are one matmul
  each plus their deltas;
- bf16 weights are prepacked once for oneDNN (`torch.ops.mkldnn._reorder_linear_weight`), so a matmul of a
  few rows no longer reorders the weight on every call (one row x [576 -> 1536]: 145 -> 39 us, equal results);
- RMSNorm is one fused operator, the boolean attention mask and the RoPE tables are made once per pass.

It computes what transformers' forward computes, with the same weights in the same dtypes (up to summation
order; tested against it). `prepare_lean(model)` builds it once for an inference-only model (`tasktune eval`,
the API and chat without per-request adapters); a model being trained never gets one (its weights change), and
one whose weights changed since is not used (`current`). The fused copies cost the size of the layers' weights
once more (~214 MB in bf16 for SmolLM2-135M).

Measured on SmolLM2-135M with the demo adapter folded in, bf16, 2 threads (minimum of 32 steps, one invocation):
a decode step of one row 50 -> 28 ms, of 16 rows 63 -> 40 ms, of 64 rows 118 -> 91 ms; a 64 x 24-token prefill
is compute-bound either way (~1.2 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tasktune.model.attention import grouped_attention
from tasktune.model.fold import LowRankDelta

LEAN_MODEL_TYPES = frozenset({"llama", "mistral"})
"""Model types whose decoder layers are exactly Llama's (pre-norm RMSNorm, RoPE, SwiGLU, no soft-capping)."""
_ATTRIBUTE = "_tasktune_lean"


def _packable(dtype: torch.dtype) -> bool:
    return (dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass
class FusedProjection:
    """Several projections of one input as one matmul: their weights stacked, then the rows of their LoRA
    down-projections; the up-projections as one block-diagonal matrix."""

    weight: torch.Tensor
    """[outputs + ranks, in], prepacked for oneDNN where `packed`."""
    bias: torch.Tensor | None
    outputs: int
    up: torch.Tensor | None
    """[outputs, ranks]: each projection's (scaled) LoRA up-projection on its own rows and columns."""
    up_bias: torch.Tensor | None
    packed: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            y = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        else:
            y = F.linear(x, self.weight, self.bias)
        if self.up is None:
            return y
        return y[..., :self.outputs] + F.linear(y[..., self.outputs:], self.up, self.up_bias)


def fuse_projections(layers: Sequence[nn.Module], pack: bool) -> FusedProjection:
    """One `FusedProjection` for `layers` (nn.Linear, or model/fold.py's LowRankDelta over one) of one input."""
    bases, deltas = [], []
    for layer in layers:
        if isinstance(layer, LowRankDelta) and type(layer.base) is nn.Linear:
            bases.append(layer.base)
            deltas.append(layer)
        elif type(layer) is nn.Linear:
            bases.append(layer)
            deltas.append(None)
        else:
            raise TypeError(f"{type(layer).__name__} cannot be fused")
    dtype = bases[0].weight.dtype
    outputs = sum(b.out_features for b in bases)
    downs = [d.down for d in deltas if d is not None]
    weight = torch.cat([b.weight.detach() for b in bases] + [d.detach() for d in downs])
    zeros = [torch.zeros(b.out_features, dtype=dtype) for b in bases] + [torch.zeros(d.shape[0], dtype=dtype)
                                                                          for d in downs]
    bias = None
    if any(b.bias is not None for b in bases):
        bias = torch.cat([b.bias.detach() if b.bias is not None else z for b, z in zip(bases, zeros, strict=False)]
                         + zeros[len(bases):])
    up = up_bias = None
    if downs:
        up = torch.zeros((outputs, sum(d.shape[0] for d in downs)), dtype=dtype)
        row = column = 0
        for base, delta in zip(bases, deltas, strict=True):
            if delta is not None:
                rank = delta.down.shape[0]
                up[row:row + base.out_features, column:column + rank] = delta.up.detach()
                column += rank
            row += base.out_features
        if any(d is not None and d.up_bias is not None for d in deltas):
            up_bias = torch.cat([d.up_bias.detach() if d is not None and d.up_bias is not None else z
                                 for d, z in zip(deltas, zeros, strict=False)])
    packed = pack and _packable(dtype)
    if packed:
        weight = torch.ops.mkldnn._reorder_linear_weight(weight)
    return FusedProjection(weight, bias, outputs, up, up_bias, packed)


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: FusedProjection
    o: FusedProjection
    post_norm: torch.Tensor
    gate_up: FusedProjection
    down: FusedProjection


class LeanForward:
    """The decoder stack of a Llama-architecture causal LM as fused matmuls; call it like the model (without
    the output embedding): the last `keep` positions' final hidden states, [rows, keep, hidden]."""

    def __init__(self, model: nn.Module, pack: bool = True):
        inner = model.model
        config = model.config
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm.weight
        self.eps = config.rms_norm_eps
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.is_causal = True  # read by the attention function where a call has no mask
        self.layers = []
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                layer.input_layernorm.weight,
                fuse_projections([attention.q_proj, attention.k_proj, attention.v_proj], pack),
                fuse_projections([attention.o_proj], pack),
                layer.post_attention_layernorm.weight,
                fuse_projections([mlp.gate_proj, mlp.up_proj], pack),
                fuse_projections([mlp.down_proj], pack),
            ))
        self._sources = [p for p in model.parameters()]
        self._versions = self._weight_versions()

    def _weight_versions(self) -> list[tuple[int, int]]:
        return [(p.data_ptr(), p._version) for p in self._sources]

    def current(self) -> bool:
        """Whether the model's weights are still the ones fused (none replaced or changed in place)."""
        return self._weight_versions() == self._versions

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # transformers' LlamaRMSNorm: normalised in float32, cast back, then scaled
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache, keep: int = 1) -> torch.Tensor:
        """input_ids [rows, q] after the cache's columns; attention_mask [rows, columns + q] (1: a real
        token); position_ids [rows, q]; `cache` a transformers DynamicCache (it grows by q columns)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        rows, q = input_ids.shape
        columns = attention_mask.shape[1]
        hidden = self.embed(input_ids)
        cos, sin = self.rotary(hidden, position_ids)
        mask = attention_mask.bool()[:, None, None, :]
        if q > 1:
            mask = mask & torch.ones((q, columns), dtype=torch.bool, device=mask.device).tril(columns - q)
        sizes = [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]
        for index, layer in enumerate(self.layers):
            x = self._norm(hidden, layer.input_norm)
            query, key, value = layer.qkv(x).split(sizes, dim=-1)
            query = query.view(rows, q, self.heads, self.head_dim).transpose(1, 2)
            key = key.view(rows, q, self.kv_heads, self.head_dim).transpose(1, 2)
            value = value.view(rows, q, self.kv_heads, self.head_dim).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            key, value = cache.update(key, value, index)
            attended, _ = grouped_attention(self, query, key, value, mask, scaling=self.head_dim ** -0.5)
            hidden = hidden + layer.o(attended.reshape(rows, q, -1))
            gate, up = layer.gate_up(self._norm(hidden, layer.post_norm)).split(self.intermediate, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        return self._norm(hidden[:, -keep:], self.final_norm)


def lean_support(model: nn.Module) -> str | None:
    """Why `model` cannot have a lean forward, or None when it can."""
    config = getattr(model, "config", None)
    if hasattr(model, "peft_config"):
        return "a peft model (per-request adapters)"
    if getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r}"
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "sliding_window", None) is not None:
        return "activation or sliding window"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp"
    if next(model.parameters()).device.type != "cpu":
        return "not on the CPU"
    if next(model.parameters()).dtype not in (torch.bfloat16, torch.float32):
        return "dtype"
    return None


def available_memory() -> int | None:
    """Bytes the system can still hand out (MemAvailable in /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def prepare_lean(model: nn.Module) -> bool:
    """Build the lean forward of an inference-only model (once; kept on the model); False where the model
    cannot have one (`lean_support`), a projection is not a plain or LoRA-factored Linear, or its fused
    copies would take more than half of the memory still available (a large model keeps transformers'
    forward rather than running out of memory)."""
    if lean_forward(model) is not None:
        return True
    if lean_support(model) is not None:
        return False
    layers = getattr(getattr(model, "model", None), "layers", None)
    size = sum(p.numel() * p.element_size() for p in layers.parameters()) if layers is not None else 0
    available = available_memory()
    if available is not None and 2 * size > available:
        return False
    try:
        lean = LeanForward(model)
    except (TypeError, AttributeError):
        return False
    object.__setattr__(model, _ATTRIBUTE, lean)
    return True


def lean_forward(model: nn.Module) -> LeanForward | None:
    """The model's lean forward (`prepare_lean`) while its weights are the ones fused, else None."""
    lean = getattr(model, _ATTRIBUTE, None)
    if lean is None or not lean.current():
        return None
    return lean
