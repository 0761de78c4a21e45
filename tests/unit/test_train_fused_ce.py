"""The fused output-projection cross-entropy equals the plain logits path: loss and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tasktune.train.fused_ce import linear_cross_entropy_sum
from tasktune.train.step import IGNORE, shifted_targets, summed_loss


@pytest.mark.parametrize("chunk", [3, 1024])
@pytest.mark.parametrize("train_weight", [False, True])
def test_fused_matches_plain_cross_entropy(chunk, train_weight):
    torch.manual_seed(0)
    hidden = torch.randn(17, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, dtype=torch.float64, requires_grad=train_weight)
    targets = torch.randint(0, 50, (17,))
    fused = linear_cross_entropy_sum(hidden, weight, targets, chunk=chunk)
    (fused * 0.5).backward()
    fused_grads = hidden.grad.clone(), (weight.grad.clone() if train_weight else None)
    hidden.grad = None
    weight.grad = None
    plain = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (plain * 0.5).backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-12)
    assert torch.allclose(fused_grads[0], hidden.grad, atol=1e-12)
    if train_weight:
        assert torch.allclose(fused_grads[1], weight.grad, atol=1e-12)


def _plain_summed_loss(model, batch):
    targets = shifted_targets(batch["labels"])
    keep = targets != IGNORE
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    return F.cross_entropy(logits[keep], targets[keep], reduction="sum")


def test_summed_loss_on_a_model_equals_the_logits_path(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64)
    ids = torch.randint(0, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :4] = IGNORE
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(12).repeat(2, 1)}
    fused = summed_loss(model, batch)
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = _plain_summed_loss(model, batch)
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-10)
    for name, param in model.named_parameters():
        assert torch.allclose(fused_grads[name], param.grad, atol=1e-10), name
