"""Attention on the CPU: short queries against a cache as plain grouped matmuls; long ones through SDPA with
one additive mask per forward pass and no repeated key/value heads.

PyTorch's CPU SDPA kernel (the flash path transformers picks for `sdpa`) is built for long queries. For the
one-token query of a decode step, or the short prompt suffix after a shared prefix, it is up to 9x slower
than two batched matmuls on this machine (measured with `bench/eval_speed.py`'s shapes: 50 rows x 9 heads,
100 cached columns, bf16: 5.4 ms against 0.6 ms per layer). `grouped_attention` handles those shapes and
hands long queries (prompts, training rows) to PyTorch's SDPA kernel; the key/value heads are not repeated
for grouped-query attention: the queries of a group are stacked instead.

For long queries with a boolean mask (packed training rows, padded prompts), PyTorch's CPU SDPA turns the
mask into a float mask of the query's dtype on every call and keeps that copy for backward: one
[rows, 1, L, L] tensor per layer (126 MB over 30 layers for 2 x 1024 packed tokens, measured with
autograd's saved tensors). Here the additive mask is made once per forward pass and shared by every layer;
key/value heads go to the kernel unrepeated (`enable_gqa`), so backward keeps 3 of SmolLM2's 9 heads' worth
of keys and values (94 MB less on the same rows). Same kernel, same mask values, same numbers.

`cpu_attention(model)` switches a model to it for the duration of a `with` block; the generation core
(model/decode.py) and the training loss (train/step.py) wrap their forward passes in it. Soft-capping,
float position biases and other devices keep transformers' own SDPA function.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

NAME = "tasktune_grouped"
"""The name registered with transformers' attention and mask interfaces (short queries as grouped matmuls)."""
SDPA_NAME = "tasktune_sdpa"
"""The same for training: every query length through SDPA with a shared mask and unrepeated key/value heads."""
MAX_QUERY = 64
"""Queries longer than this go to SDPA (its kernel wins from a few hundred positions on)."""
_registered = False
_shared_mask: tuple[weakref.ref, torch.dtype, float, torch.Tensor] | None = None
"""The last boolean mask seen and its additive form (the layers of one forward pass get the same mask)."""


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query [B, H, q, D], key/value [B, KV, L, D], a boolean mask [B, 1, q, L] (True: attend) or None
    (causal, unless the module or call says otherwise) -> ([B, q, H, D], None), the signature of
    transformers' attention functions."""
    rows, heads, q, dim = query.shape
    kv_heads, columns = key.shape[1], key.shape[2]
    plain = (dropout == 0.0 and q <= MAX_QUERY and heads % kv_heads == 0 and kwargs.get("softcap") is None
             and kwargs.get("position_bias") is None
             and (attention_mask is None or attention_mask.dtype == torch.bool))
    if not plain:
        return shared_mask_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    # a cache with spare columns hands over strided views; oneDNN's bf16 matmul would copy them itself, more
    # slowly (it transposes keys): 64 rows x 94 columns, keys and values of one layer 414 -> 252 us
    key, value = key.contiguous(), value.contiguous()
    # query head h reads key/value head h // group (transformers' repeat_kv order): stack a group's queries
    scores = torch.matmul(query.reshape(rows, kv_heads, group * q, dim), key.transpose(-1, -2))
    if attention_mask is None:
        attention_mask = torch.ones((q, columns), dtype=torch.bool, device=query.device)
        attention_mask = (attention_mask.tril(columns - q) if _causal(module, kwargs) else attention_mask)[None, None]
    # scale and mask in one operator (the mask as 0 / a finite minimum, made once per forward pass): a row with
    # nothing to attend (left padding) gets uniform weights, not NaN; the values equal float, scale, fill
    bias = additive_mask(attention_mask, torch.float32, torch.finfo(torch.float32).min)[:, :, None]
    scores = torch.add(bias, scores.view(rows, kv_heads, group, q, columns), alpha=scale)
    weights = torch.softmax(scores, dim=-1).to(value.dtype).view(rows, kv_heads, group * q, columns)
    out = torch.matmul(weights, value).view(rows, heads, q, dim)
    return out.transpose(1, 2).contiguous(), None


def shared_mask_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """PyTorch's SDPA with the forward pass's shared additive mask and unrepeated key/value heads; what it
    does not cover (soft-capping, position biases, other devices) goes to transformers' SDPA function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = additive_mask(attention_mask, query.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(_causal(module, kwargs) and attention_mask is None and query.shape[2] > 1),
        enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _causal(module: torch.nn.Module, kwargs: dict[str, Any]) -> bool:
    """The call's `is_causal`, else the module's (decoders), else True; encoders set it False."""
    causal = kwargs.get("is_causal")
    return getattr(module, "is_causal", True) if causal is None else causal


def additive_mask(mask: torch.Tensor, dtype: torch.dtype, fill: float = float("-inf")) -> torch.Tensor:
    """`mask` (True: attend) as 0 / `fill` in `dtype` (-inf: what SDPA makes of a boolean mask); the same
    tensor again for the same mask object, so the layers of one forward pass share one copy."""
    global _shared_mask
    if (_shared_mask is not None and _shared_mask[0]() is mask and _shared_mask[1] == dtype
            and _shared_mask[2] == fill):
        return _shared_mask[3]
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, fill)
    _shared_mask = (weakref.ref(mask), dtype, fill, additive)
    return additive


def register() -> None:
    """Make `NAME` and `SDPA_NAME` known to transformers (attention functions and SDPA's boolean masks)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    AttentionInterface.register(SDPA_NAME, shared_mask_attention)
    AttentionMaskInterface.register(SDPA_NAME, sdpa_mask)
    _registered = True


@contextmanager
def cpu_attention(model: torch.nn.Module, short_queries: bool = True) -> Iterator[None]:
    """Inside the block, where the model runs SDPA on the CPU: `grouped_attention` (short_queries, for
    decoding against a cache) or `shared_mask_attention` (training); otherwise unchanged."""
    configs = _configs(model) if next(model.parameters()).device.type == "cpu" else []
    if not configs:
        yield
        return
    register()
    for c in configs:
        c._attn_implementation = NAME if short_queries else SDPA_NAME
    try:
        yield
    finally:
        for c in configs:
            c._attn_implementation = "sdpa"


def _configs(model: torch.nn.Module) -> list[Any]:
    """Every distinct config object the model's modules read (a wrapper and its inner model may hold copies)."""
    found: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
            found[id(config)] = config
    return list(found.values())
