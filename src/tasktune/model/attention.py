"""Attention for decoding on CPU: short queries against a cache, as plain grouped matmuls.

PyTorch's CPU SDPA kernel (the flash path transformers picks for `sdpa`) is built for long queries. For the
one-token query of a decode step, or the short prompt suffix after a shared prefix, it is up to 9x slower
than two batched matmuls on this machine (measured with `bench/eval_speed.py`'s shapes: 50 rows x 9 heads,
100 cached columns, bf16: 5.4 ms against 0.6 ms per layer). `grouped_attention` handles those shapes and
hands everything else (long queries, dropout, soft-capping, float position biases) to transformers' own
SDPA function; the key/value heads are not repeated for grouped-query attention: the queries of a group
are stacked instead.

`decoding_attention(model)` switches a model to it for the duration of a `with` block; the generation core
(model/decode.py) wraps its forward passes in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

NAME = "tasktune_grouped"
"""The name registered with transformers' attention and mask interfaces."""
MAX_QUERY = 64
"""Queries longer than this go to SDPA (its kernel wins from a few hundred positions on)."""
_registered = False


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query [B, H, q, D], key/value [B, KV, L, D], a boolean mask [B, 1, q, L] (True: attend) or None
    (causal) -> ([B, q, H, D], None), the signature of transformers' attention functions."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, heads, q, dim = query.shape
    kv_heads, columns = key.shape[1], key.shape[2]
    plain = (dropout == 0.0 and q <= MAX_QUERY and heads % kv_heads == 0 and kwargs.get("softcap") is None
             and kwargs.get("position_bias") is None
             and (attention_mask is None or attention_mask.dtype == torch.bool))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    # query head h reads key/value head h // group (transformers' repeat_kv order): stack a group's queries
    scores = torch.matmul(query.reshape(rows, kv_heads, group * q, dim), key.transpose(-1, -2))
    scores = scores.view(rows, kv_heads, group, q, columns).float() * scale
    if attention_mask is None:
        attention_mask = torch.ones((q, columns), dtype=torch.bool, device=query.device).tril(columns - q)
        attention_mask = attention_mask[None, None]
    # a finite fill: a row with nothing to attend (left padding) gets uniform weights, not NaN
    scores = scores.masked_fill(~attention_mask[:, :, None], torch.finfo(torch.float32).min)
    weights = torch.softmax(scores, dim=-1).to(value.dtype).view(rows, kv_heads, group * q, columns)
    out = torch.matmul(weights, value).view(rows, heads, q, dim)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `NAME` known to transformers (an attention function and SDPA's boolean masks)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


@contextmanager
def decoding_attention(model: torch.nn.Module) -> Iterator[None]:
    """Use `grouped_attention` inside the block where the model runs SDPA on the CPU; otherwise unchanged."""
    config = getattr(model, "config", None)
    device = next(model.parameters()).device
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or device.type != "cpu":
        yield
        return
    register()
    configs = _configs(model)
    for c in configs:
        c._attn_implementation = NAME
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
