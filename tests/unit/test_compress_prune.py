"""Pruning pieces: Wanda's per-row and 2:4 masks, magnitude sparsity, and the layer-dropping selection on a
model where one layer is the identity."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tasktune.compress.prune import (
    angular_distance,
    choose_layers_to_drop,
    drop_layers,
    magnitude_prune,
    prunable_linears,
    sparsity_of,
    wanda_mask,
    wanda_prune,
)


def _llama(layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


def _calibration(n: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randint(0, 300, (1, 10)) for _ in range(n)]


def test_wanda_mask_prunes_the_lowest_scores_of_each_row():
    weight = torch.tensor([[1.0, -4.0, 2.0, 0.5], [3.0, 1.0, -1.0, 8.0]])
    norms = torch.tensor([1.0, 0.1, 1.0, 1.0])  # scores row 0: 1, 0.4, 2, 0.5 -> drop columns 1 and 3
    assert wanda_mask(weight, norms, 0.5).tolist() == [[True, False, True, False], [True, False, False, True]]
    wide = torch.randn(6, 16)
    mask = wanda_mask(wide, torch.rand(16), 0.5, n_of_m=(2, 4))
    assert torch.all(mask.reshape(6, 4, 4).sum(-1) == 2)  # exactly 2 kept in every group of 4
    with pytest.raises(ValueError, match="divisible"):
        wanda_mask(torch.randn(2, 6), torch.ones(6), 0.5, n_of_m=(2, 4))


def test_magnitude_and_wanda_reach_the_sparsity_and_leave_the_head_alone():
    model = _llama(2)
    head = model.lm_head.weight.clone()
    magnitude_prune(model, 0.3)
    assert sparsity_of(model) == pytest.approx(0.3, abs=0.01)
    model = _llama(2)
    wanda_prune(model, _calibration(), 0.25)
    assert sparsity_of(model) == pytest.approx(0.25, abs=0.01)
    for module in prunable_linears(model).values():  # per output row, not per layer
        per_row = (module.weight == 0).float().mean(1)
        assert torch.allclose(per_row, torch.full_like(per_row, int(module.in_features * 0.25) / module.in_features))
    assert torch.equal(model.lm_head.weight, head)


def test_the_identity_layer_is_the_one_dropped():
    model = _llama(4)
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: its output equals its input
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    dropped, distances = choose_layers_to_drop(model, _calibration(), 1)
    assert dropped == [2]
    assert distances[2] == pytest.approx(0.0, abs=1e-4) and min(distances[:2] + distances[3:]) > 1e-3
    ids = _calibration(1)[0]
    with torch.no_grad():
        before = model(ids).logits
    drop_layers(model, dropped)
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-4, atol=1e-4)  # identity gone, same outputs
        model.generate(ids, max_new_tokens=3, do_sample=False)  # KV-cache slots renumbered


def test_a_dropped_model_saves_and_loads_with_plain_transformers(tmp_path):
    model = _llama(3)
    dropped, _ = choose_layers_to_drop(model, _calibration(), 2)
    assert len(dropped) == 2 and dropped[1] == dropped[0] + 1
    drop_layers(model, dropped)
    model.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = _calibration(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="drop 1..0"):
        choose_layers_to_drop(loaded, _calibration(), 1)


def test_angular_distance_bounds():
    a = torch.randn(5, 8)
    assert angular_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert angular_distance(a, -a) == pytest.approx(1.0, abs=1e-6)
    assert angular_distance(a, 3 * a) == pytest.approx(0.0, abs=1e-6)
