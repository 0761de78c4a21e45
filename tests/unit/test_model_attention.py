"""CPU attention for training rows: one shared additive mask and unrepeated key/value heads, same numbers."""

from __future__ import annotations

import pytest
import torch

from tasktune.model.attention import cpu_attention, grouped_attention
from tasktune.train.step import _summed_loss, summed_loss


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa")


def _packed_batch() -> dict[str, torch.Tensor]:
    """Two rows of 80 tokens, each holding three packed examples (position ids restart), targets on all."""
    torch.manual_seed(1)
    ids = torch.randint(10, 900, (2, 80))
    positions = torch.cat([torch.arange(n) for n in (30, 20, 30)]).repeat(2, 1)
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": positions}


def _saved(loss: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Tensors that the graph's attention nodes keep for backward, by name."""
    found: dict[str, list[torch.Tensor]] = {"mask": [], "key": []}
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "ScaledDotProduct" in type(node).__name__:
            found["mask"].append(node._saved_attn_mask)
            found["key"].append(node._saved_key)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return found


def test_packed_rows_share_one_mask_and_keep_unrepeated_keys_with_the_same_loss_and_grads(tiny):
    batch = _packed_batch()
    results = []
    for loss_fn in (_summed_loss, summed_loss):  # transformers' SDPA path, then ours
        tiny.zero_grad()
        loss = loss_fn(tiny, batch)
        saved = _saved(loss)
        loss.backward()
        grads = [p.grad.clone() for p in tiny.parameters()]
        results.append((loss.detach(), grads, saved))
    (loss_hf, grads_hf, saved_hf), (loss_ours, grads_ours, saved_ours) = results
    layers = tiny.config.num_hidden_layers
    assert len(saved_hf["mask"]) == len(saved_ours["mask"]) == layers
    # transformers: each layer converts the boolean mask again; ours: one tensor for every layer
    assert len({m.data_ptr() for m in saved_hf["mask"]}) == layers
    assert len({m.data_ptr() for m in saved_ours["mask"]}) == 1
    assert all(k.shape[1] == tiny.config.num_attention_heads for k in saved_hf["key"])
    assert all(k.shape[1] == tiny.config.num_key_value_heads for k in saved_ours["key"])
    torch.testing.assert_close(loss_ours, loss_hf, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(grads_ours, grads_hf, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_the_context_restores_the_models_attention(tiny):
    with cpu_attention(tiny):
        assert tiny.config._attn_implementation != "sdpa"
    assert tiny.config._attn_implementation == "sdpa"


class _Encoder(torch.nn.Module):
    is_causal = False


@pytest.mark.parametrize("columns", [12, 100])  # the grouped matmuls, then SDPA
def test_a_bidirectional_layer_without_a_mask_attends_everywhere(columns):
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 4, columns, 8), torch.randn(2, 2, columns, 8), torch.randn(2, 2, columns, 8)
    out, _ = grouped_attention(_Encoder(), query, key, value, None)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key.repeat_interleave(2, 1),
                                                                value.repeat_interleave(2, 1))
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_prompts_longer_than_the_short_query_path_decode_as_generate_does(tiny):
    from tasktune.model.decode import Decoder, Request
    from tasktune.model.prefix_store import common_prefix

    tiny.eval()
    torch.manual_seed(3)
    shared = torch.randint(10, 900, (90,)).tolist()  # the prefix pass and two prompts go to SDPA (> 64 tokens)
    prompts = [shared + torch.randint(10, 900, (n,)).tolist() for n in (1, 70, 2, 100)]
    expected = []
    for prompt in prompts:
        out = tiny.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            max_new_tokens=6, do_sample=False, eos_token_id=5, pad_token_id=5)
        new = out[0, len(prompt):].tolist()
        expected.append(new[: new.index(5)] if 5 in new else new)
    for prefix in (common_prefix(prompts), []):
        decoder = Decoder(tiny, [5], pad_id=0, max_batch=4, prefix_ids=prefix)
        requests = [Request(p, 6) for p in prompts]
        decoder.run(requests)
        assert [r.generated for r in requests] == expected
