"""A lean inference forward for Llama-architecture decoders on the CPU: the generation core's fast path.

transformers' Llama forward runs a layer's seven projections as seven matmuls (21 with a LoRA delta kept
factored, model/fold.py), each behind a module call, with about a hundred small operators around them. On a
2-core CPU that is most of a decode step of a few rows. Here, per layer:

- q, k and v are one matmul, gate and up another (model/lean_linear.py); a LoRA delta kept factored adds
  one small matmul per group (all its down-projections stacked), whose outputs are appended to the input of
  the main one, the up-projections being its extra columns; in bf16 the residual sums, the SiLU and the gate
  x up product are the matmuls' oneDNN post-ops;
- a peft model's LoRA adapters (the API's and chat's `--adapter`s) stay apart, one such pair of matmuls per
  adapter, each over the positions of the rows that name it (S-LoRA's idea on a small scale): rows of
  different adapters share the base matmuls of one pass, as peft's per-row `adapter_names` does, without
  peft's per-layer loop over adapters and casts;
- bf16 weights are prepacked once for oneDNN (`torch.ops.mkldnn._reorder_linear_weight`), so a matmul of a
  few rows no longer reorders the weight on every call (one row x [576 -> 1536]: 145 -> 39 us, equal results);
  the output embedding too, for the decoder's logits over the whole vocabulary (`logits`);
- RMSNorm is one operator call, RoPE rotates queries and keys in one pass, the boolean attention mask and the
  RoPE tables are made once per pass;
- only real positions are computed: the left padding of a batched prefill (a quarter of the demo evaluation's
  first 64 x 24 prefill) and rows that finished but still ride in the batch are left out of every matmul.

It computes what transformers' forward computes, with the same weights in the same dtypes (up to summation
order in float32; in bf16 the post-ops round once where transformers rounds twice, tested to stay as close
to the float32 forward as transformers' bf16 forward). `prepare_lean(model)` builds it once for an
inference-only model (`tasktune eval`, chat, the API); a model being trained never gets one (its weights
change), and one whose weights changed since is not used (`current`). The fused copies cost the size of the
layers' weights and the output embedding once more (~270 MB in bf16 for SmolLM2-135M).

Measured on SmolLM2-135M with the demo adapter folded in, bf16, 2 threads (minimum of 32 steps, one invocation):
a decode step of one row 50 -> 28 ms, of 16 rows 63 -> 40 ms, of 64 rows 118 -> 91 ms. The demo evaluation's
first prefill (64 rows, 1,165 real tokens in 64 x 24 positions) takes ~1.05 s, about 70 % of it matmuls at
~410 GFLOP/s, the bf16 peak of 2 cores here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tasktune.model.attention import MAX_QUERY, grouped_attention
from tasktune.model.lean_linear import FusedProjection, SwiGLU, fuse_projections, fuse_swiglu, packable
from tasktune.model.request import BASE_ADAPTER

LEAN_MODEL_TYPES = frozenset({"llama", "mistral"})
"""Model types whose decoder layers are exactly Llama's (pre-norm RMSNorm, RoPE, SwiGLU, no soft-capping)."""
_ATTRIBUTE = "_tasktune_lean"
OFF_SWITCH = "TASKTUNE_LEAN"
"""Set to 0, models keep transformers' forward (to compare with it, or to rule the lean forward out)."""


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: FusedProjection
    o: FusedProjection
    post_norm: torch.Tensor
    gate_up: FusedProjection | None  # None where `swiglu` serves every row
    down: FusedProjection
    swiglu: SwiGLU | None


class LeanForward:
    """The decoder stack of a Llama-architecture causal LM as fused matmuls; call it like the model (without
    the output embedding): the last `keep` positions' final hidden states, [rows, keep, hidden]."""

    def __init__(self, model: nn.Module, pack: bool = True):
        self.adapters = frozenset(_lora_adapters(model))
        """The peft adapters a row may name (`forward`'s `adapters`); empty for a plain model."""
        causal = model.get_base_model() if self.adapters else model
        inner = causal.model
        config = causal.config
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm.weight
        self.eps = config.rms_norm_eps
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.is_causal = True  # read by the attention function where a call has no mask
        self.layers = []
        fused: set[int] = set()
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            groups = [[attention.q_proj, attention.k_proj, attention.v_proj], [attention.o_proj],
                      [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]]
            qkv, o, down = (fuse_projections(groups[n], pack, sorted(self.adapters)) for n in (0, 1, 3))
            swiglu = None if self.adapters else fuse_swiglu(mlp.gate_proj, mlp.up_proj, pack)
            gate_up = fuse_projections(groups[2], pack, sorted(self.adapters)) if swiglu is None else None
            self.layers.append(_Layer(layer.input_layernorm.weight, qkv, o, layer.post_attention_layernorm.weight,
                                      gate_up, down, swiglu))
            fused.update(id(module) for group in groups for module in group)
        if any(hasattr(m, "lora_A") and id(m) not in fused for m in causal.modules()):
            raise TypeError("a LoRA adapter on layers other than the attention and MLP projections")
        head = causal.get_output_embeddings()
        self.head = None
        """The output embedding's weight prepacked for oneDNN (`logits`), or None (not bf16, a bias, no oneDNN)."""
        if pack and type(head) is nn.Linear and head.bias is None and packable(head.weight.dtype):
            self.head = torch.ops.mkldnn._reorder_linear_weight(head.weight.detach())
        self._sources = [p for p in model.parameters()]
        self._versions = self._weight_versions()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, vocab] logits of bf16 final hidden states [rows, hidden] from the prepacked output embedding
        (`self.head`, not None): the same numbers as the plain matmul, without oneDNN reordering the 28M-weight
        matrix on every call (one row: 5.0 -> 1.4 ms on 2 threads, 7.0 -> 4.1 ms on one)."""
        return torch.ops.mkldnn._linear_pointwise(hidden, self.head, None, "none", [], "")

    def serves(self, adapters: Sequence[str]) -> bool:
        """Whether every row's adapter is one of `self.adapters` or the base model (BASE_ADAPTER)."""
        return all(name in self.adapters or name == BASE_ADAPTER for name in adapters)

    def _groups(self, adapters: Sequence[str] | None, rows: int, q: int,
                real: torch.Tensor | None) -> list[tuple[str, torch.Tensor | None]]:
        """(adapter, the computed positions of the rows that name it, None when all do) per adapter in use."""
        if not adapters:
            return []
        names = [name for name in dict.fromkeys(adapters) if name in self.adapters]
        if len(set(adapters)) == 1:
            return [(name, None) for name in names]
        if real is None:
            row_of = torch.arange(rows).repeat_interleave(q)
        else:
            row_of = torch.div(real, q, rounding_mode="floor")
        groups = []
        for name in names:
            index = torch.tensor([a == name for a in adapters])[row_of].nonzero().squeeze(1)
            if index.numel():
                groups.append((name, index))
        return groups

    def _weight_versions(self) -> list[tuple[int, int]]:
        return [(p.data_ptr(), p._version) for p in self._sources]

    def current(self) -> bool:
        """Whether the model's weights are still the ones fused (none replaced or changed in place)."""
        return self._weight_versions() == self._versions

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # transformers' LlamaRMSNorm: normalised in float32, cast back, then scaled
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype).mul_(weight)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # transformers' apply_rotary_pos_emb, the same operations in the same dtype
        half = x.shape[-1] // 2
        return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache, keep: int = 1, adapters: Sequence[str] | None = None) -> torch.Tensor:
        """input_ids [rows, q] after the cache's columns; attention_mask [rows, columns + q] (1: a real
        token); position_ids [rows, q]; `cache` a transformers DynamicCache (it grows by q columns); `adapters`:
        each row's peft adapter (one of `self.adapters`, or BASE_ADAPTER), None: the model's own weights only.

        Only the positions whose new columns are real are computed (`_real_positions`): the left padding of a
        prefill, the right padding of a drafted pass and the rows that finished and ride along are left out of
        the matmuls. They enter the attention and the cache as zeros (masked), and their outputs are zeros."""
        rows, q = input_ids.shape
        columns = attention_mask.shape[1]
        real = _real_positions(attention_mask[:, -q:])
        ids, positions = input_ids.reshape(-1), position_ids.reshape(-1)
        if real is not None:
            ids, positions = ids[real], positions[real]
        groups = self._groups(adapters, rows, q, real)
        hidden = self.embed(ids)  # [positions, hidden]: one row per computed position
        cos, sin = self.rotary(hidden, positions[None])
        cos, sin = cos[0, :, None], sin[0, :, None]  # [positions, 1, head_dim]: broadcast over heads
        mask = attention_mask.bool()[:, None, None, :]
        if q > 1:
            mask = mask & torch.ones((q, columns), dtype=torch.bool, device=mask.device).tril(columns - q)
        masks: dict[int, torch.Tensor] = {}  # the mask widened to the cache buffers' columns (free ones masked)
        query_heads, all_heads = self.heads, self.heads + 2 * self.kv_heads
        width = q  # the columns of each row the layer computes outputs for
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(self._norm(hidden, layer.input_norm), groups).view(-1, all_heads, self.head_dim)
            rotated = qkv[:, :query_heads + self.kv_heads]
            rotated.copy_(self._rope(rotated, cos, sin))  # queries and keys in one pass, in place
            if real is not None:  # back to [rows * q] positions, zeros where nothing was computed
                qkv = qkv.new_zeros((rows * q, all_heads, self.head_dim)).index_copy_(0, real, qkv)
            query, key, value = qkv.view(rows, q, all_heads, self.head_dim).transpose(1, 2).split(
                [query_heads, self.kv_heads, self.kv_heads], dim=1)
            key, value = cache.update(key, value, index)
            layer_mask = mask
            if q <= MAX_QUERY and hasattr(cache.layers[index], "whole"):  # no copy of the cache per layer
                key, value = cache.layers[index].whole()
                layer_mask = masks.get(key.shape[2])
                if layer_mask is None:
                    free = mask.new_zeros((*mask.shape[:-1], key.shape[2] - mask.shape[-1]))
                    layer_mask = masks[key.shape[2]] = torch.cat([mask, free], dim=-1)
            if index == len(self.layers) - 1 and keep < q and all(at is None for _, at in groups):
                # the last layer's outputs are read at the kept columns only (every key and value is cached)
                query, layer_mask = query[:, :, -keep:], layer_mask[..., -keep:, :]
                hidden, real = _last_columns(hidden, real, rows, q, keep)
                width = keep
            attended, _ = grouped_attention(self, query, key, value, layer_mask, scaling=self.head_dim ** -0.5)
            attended = attended.reshape(rows * width, -1)
            if real is not None:
                attended = attended.index_select(0, real)
            if layer.o.packed and not groups:  # the residual sums as the matmuls' post-ops
                hidden = layer.o.add_to(attended, hidden)
            else:
                hidden.add_(layer.o(attended, groups))  # in place: no fresh buffer per layer
            normed = self._norm(hidden, layer.post_norm)
            if layer.swiglu is not None:
                hidden = layer.down.add_to(layer.swiglu(normed), hidden)
            else:
                gate, up = layer.gate_up(normed, groups).split(self.intermediate, dim=-1)
                hidden.add_(layer.down(F.silu(gate).mul_(up), groups))
        if real is not None:
            hidden = hidden.new_zeros((rows * width, hidden.shape[-1])).index_copy_(0, real, hidden)
        return self._norm(hidden.view(rows, width, -1)[:, -keep:], self.final_norm)


def _real_positions(new_columns: torch.Tensor) -> torch.Tensor | None:
    """Flat indices (row * q + column) of the positions whose new column is real ([rows, q] mask), or None
    when all are (nothing to leave out)."""
    flat = new_columns.reshape(-1).bool()
    if bool(flat.all()):
        return None
    return flat.nonzero().squeeze(1)


def _last_columns(hidden: torch.Tensor, real: torch.Tensor | None, rows: int, q: int, keep: int
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The hidden states of the computed positions among each row's last `keep` of `q` columns, and their flat
    indices (row * keep + column; None when every position is computed)."""
    if real is None:
        return hidden.view(rows, q, -1)[:, -keep:].reshape(rows * keep, -1), None
    kept = real % q >= q - keep
    index = real[kept]
    return hidden[kept], torch.div(index, q, rounding_mode="floor") * keep + index % q - (q - keep)


def _lora_adapters(model: nn.Module) -> list[str]:
    """The names of a peft model's adapters (`lean_support` checked they are LoRAs); [] for a plain model."""
    return list(getattr(model, "peft_config", {}))


def lean_support(model: nn.Module) -> str | None:
    """Why `model` cannot have a lean forward, or None when it can."""
    config = getattr(model, "config", None)
    for name, adapter in getattr(model, "peft_config", {}).items():
        if getattr(adapter, "peft_type", None) != "LORA" or getattr(adapter, "modules_to_save", None):
            return f"peft adapter {name!r} is not a LoRA of linear layers only"
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
    cannot have one (`lean_support`), TASKTUNE_LEAN=0 turns it off, a projection is not a plain or LoRA
    Linear (or the LoRA is on other layers), or its fused copies would take more than half of the memory
    still available (a large model keeps transformers' forward rather than running out of memory)."""
    if lean_forward(model) is not None:
        return True
    if os.environ.get(OFF_SWITCH, "1") == "0" or lean_support(model) is not None:
        return False
    causal = model.get_base_model() if hasattr(model, "peft_config") else model
    layers = getattr(getattr(causal, "model", None), "layers", None)
    size = sum(p.numel() * p.element_size() for p in layers.parameters()) if layers is not None else 0
    head = causal.get_output_embeddings()
    if isinstance(head, nn.Linear) and packable(head.weight.dtype):  # its prepacked copy (`LeanForward.head`)
        size += head.weight.numel() * head.weight.element_size()
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
