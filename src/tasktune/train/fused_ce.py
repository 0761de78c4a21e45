"""Cross-entropy of the output projection without keeping the logits: computed chunk by chunk, with the
gradient taken in the forward pass.

`logits = hidden @ W.T` over a 49k-262k vocabulary is the largest tensor of a training step (SmolLM2, 2 x 1024
tokens: 350 MB of fp32 logits kept for backward, plus as much again for their gradient). Because the loss is
the end of the graph, d loss / d logits = softmax - one_hot is known as soon as a chunk's logits are, so each
chunk's gradients for `hidden` (and `W`, when it is trained) are computed right away and the chunk's logits are
freed; backward only scales them by the incoming gradient. The idea is Liger-Kernel's fused linear
cross-entropy; this is a plain-PyTorch version.

`final_hidden_states` runs the model through its own forward (so DDP/FSDP wrappers and adapters see a normal
call) with no logits kept, and reads the final norm's output with a forward hook.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ROWS = 256
"""Target positions per chunk: the chunk's fp32 logits are CHUNK_ROWS x vocabulary x 4 bytes."""

FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma3_text", "gemma3", "phi3", "olmo2")
"""Model types whose logits are exactly lm_head(final norm output): no soft-capping, scaling or bias."""


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Forward: the summed loss, with the gradients for hidden and weight computed chunk by chunk and kept;
    backward: those gradients times the incoming one."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                weight_dtype: torch.dtype) -> torch.Tensor:
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 logits for bf16/fp16 inputs
        grad_weight = torch.zeros_like(weight, dtype=acc) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            t = targets[start : start + chunk]
            logits = (h @ weight.T).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            grad = grad.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = grad @ weight
            if grad_weight is not None:
                grad_weight += (grad.T @ h).to(acc)
        ctx.weight_dtype = weight_dtype
        ctx.save_for_backward(grad_hidden if grad_hidden is not None else torch.empty(0),
                              grad_weight if grad_weight is not None else torch.empty(0))
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_output.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """sum_i CE(hidden[i] @ weight.T, targets[i]), without keeping the [rows, vocab] logits.

    Under autocast the matmuls run in the autocast dtype, as `lm_head` would.
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _FusedLinearCrossEntropy.apply(hidden.to(dtype), weight.to(dtype), targets, chunk, weight.dtype)


def final_norm_and_head(base: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(final norm, lm_head) of a Hugging Face causal LM whose logits are lm_head(norm(...)), else None."""
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FUSED_MODEL_TYPES or getattr(config, "final_logit_softcapping", None):
        return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if head is None or norm is None or getattr(head, "bias", None) is not None:
        return None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or is_sharded_parameter(weight):
        return None
    return norm, head


def is_sharded_parameter(weight: torch.Tensor) -> bool:
    """A ZeRO-3 partition or an FSDP2 shard: whole only inside its module's forward, so the fused loss, which
    reads lm_head's weight directly, cannot use it (the loss then goes through lm_head at the target positions)."""
    from torch.distributed.tensor import DTensor

    return hasattr(weight, "ds_id") or isinstance(weight, DTensor)


def final_hidden_states(model: torch.nn.Module, norm: torch.nn.Module, inputs: dict[str, Any],
                        keep: torch.Tensor) -> torch.Tensor:
    """The final norm's output at the `keep` positions, [n, hidden], from a normal forward of `model`
    (wrappers included) that computes no logits."""
    captured: list[torch.Tensor] = []
    handle = norm.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        model(**inputs, logits_to_keep=torch.zeros_like(keep))
    finally:
        handle.remove()
    return captured[-1][keep]
