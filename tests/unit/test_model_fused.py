"""The fused RMSNorm / SwiGLU blocks give the same loss and gradients as transformers' own modules."""

from __future__ import annotations

import torch

from tasktune.model.fused import FusedRMSNorm, FusedSwiGLU, use_fused_blocks


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fused_blocks_keep_loss_gradients_and_state_dict(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64)
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    keys = list(model.state_dict())
    plain_loss, plain_grads = _loss_and_grads(model, ids)
    swapped = use_fused_blocks(model)
    assert swapped == 2 * 2 + 1 + 2  # two norms per layer, the final norm, one MLP per layer
    assert isinstance(model.model.norm, FusedRMSNorm) and isinstance(model.model.layers[0].mlp, FusedSwiGLU)
    assert list(model.state_dict()) == keys
    fused_loss, fused_grads = _loss_and_grads(model, ids)
    assert abs(fused_loss - plain_loss) < 1e-9
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        # both norms compute in fp32 inside (as transformers does), so fp32 rounding is the tolerance
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7)


def test_fused_blocks_under_lora_in_bf16_match_closely(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
        if fused:
            use_fused_blocks(model)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_loss_and_grads(model, ids))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) < 2e-2
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name].float(), grad.float(), rtol=0.1, atol=2e-2)
