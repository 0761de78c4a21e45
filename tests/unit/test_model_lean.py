"""The decoder's lean forward (model/lean.py) computes what transformers' Llama forward computes."""

from __future__ import annotations

import copy

import pytest
import torch

from tasktune.config.schema import ModelConfig
from tasktune.model.attention import cpu_attention
from tasktune.model.decode import Decoder, Request
from tasktune.model.fold import LowRankDelta, fold_adapter
from tasktune.model.kv_cache import SPARE_COLUMNS, make_cache
from tasktune.model.lean import LeanForward, lean_forward, lean_support, prepare_lean
from tasktune.model.lean_linear import packable
from tasktune.model.load import load_model
from tasktune.model.prefix_store import common_prefix

# fp32: the lean forward multiplies by concatenated (and, folded, LoRA-fused) weights, so its sums run in
# another order than transformers'; CPUs with other GEMM kernels differ from it by ~1e-5 (seen on CI),
# a padded key left visible by ~1.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _assert_like_transformers(got, expected, reference, dtype):
    """float32: transformers' numbers up to summation order. bf16: at least about as close to the same weights'
    float32 forward (`reference`) as transformers' bf16 forward (`expected`) is: the lean forward's fused
    post-ops round once where transformers rounds twice (the demo adapter's bf16 errors: mean 0.0058 against
    0.0070; the slack is a bf16 rounding step at the model's scale, for other CPUs' kernels), and a padded key
    left visible or a delta left out is off by ~1."""
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
        return
    ours, theirs = (got.float() - reference).abs(), (expected.float() - reference).abs()
    assert ours.mean() <= 1.5 * theirs.mean() + 5e-3, (ours.mean(), theirs.mean())
    assert ours.max() <= 2 * theirs.max() + TOLERANCE[dtype], (ours.max(), theirs.max())


def _biased_llama(tiny_llama_dir):
    """The tiny Llama's config with biases on every projection (random ones), fp32."""
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    config.attention_bias = config.mlp_bias = True
    torch.manual_seed(4)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(std=0.5)
    return model.eval()


def _mistral(tiny_llama_dir):
    """A tiny Mistral (no sliding window) of the tiny Llama's sizes, random weights, fp32."""
    from transformers import AutoConfig, MistralConfig, MistralForCausalLM

    llama = AutoConfig.from_pretrained(tiny_llama_dir)
    config = MistralConfig(vocab_size=llama.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=None)
    torch.manual_seed(5)
    return MistralForCausalLM(config).eval()


def _model(kind: str, dtype: torch.dtype, tiny_llama_dir, tiny_adapter_dir):
    if kind == "mistral":
        return _mistral(tiny_llama_dir).to(dtype)
    if kind == "plain":
        return load_model(ModelConfig(name_or_path=str(tiny_llama_dir)), dtype).eval()
    if kind == "biased":
        return _biased_llama(tiny_llama_dir).to(dtype)
    folded, _ = fold_adapter(load_model(ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(tiny_adapter_dir)),
                                        dtype))
    return folded.eval()


def _hidden(model, ids, mask, positions, cache, keep):
    """transformers' forward: the last `keep` positions' final hidden states."""
    head = model.get_output_embeddings()
    model.set_output_embeddings(torch.nn.Identity())
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                     logits_to_keep=keep).logits
    finally:
        model.set_output_embeddings(head)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["plain", "folded", "biased", "mistral"])
def test_lean_forward_equals_transformers_on_a_padded_prefill_and_decode_steps(kind, dtype, tiny_llama_dir,
                                                                               tiny_adapter_dir):
    model = _model(kind, dtype, tiny_llama_dir, tiny_adapter_dir)
    if kind == "folded":  # the LoRA deltas are fused in, factored where the dtype is bf16
        assert any(isinstance(m, LowRankDelta) for m in model.modules()) == (dtype == torch.bfloat16)
    reference = copy.deepcopy(model).float()  # the same weights in float32
    lean = LeanForward(model)
    packed = packable(dtype)
    assert lean.layers[0].qkv.packed == packed
    # bf16 and no biases: the MLP's SiLU and product run as post-ops; a folded delta is appended to the matmuls
    assert (lean.layers[0].swiglu is not None) == (packed and kind != "biased")
    assert (lean.layers[0].qkv.appended is not None) == (packed and kind == "folded")
    torch.manual_seed(0)
    ids = torch.randint(10, 900, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = mask[1, :1] = 0  # left padding
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    ours, theirs, exact = make_cache([], []), make_cache([], []), make_cache([], [])
    with torch.inference_mode(), cpu_attention(model), cpu_attention(reference):
        expected = _hidden(model, ids, mask, positions, theirs, keep=4)
        got = lean(ids, mask, positions, ours, keep=4)
        assert got.shape == expected.shape == (3, 4, 64)
        _assert_like_transformers(got, expected, _hidden(reference, ids, mask, positions, exact, 4), dtype)
        for step in range(3):  # one token per row, then three at once (a drafted pass)
            width = 1 if step < 2 else 3
            mask = torch.cat([mask, torch.ones(3, width, dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1 + torch.arange(width)
            new = torch.randint(10, 900, (3, width))
            expected = _hidden(model, new, mask, positions, theirs, keep=width)
            _assert_like_transformers(lean(new, mask, positions, ours, keep=width), expected,
                                      _hidden(reference, new, mask, positions, exact, width), dtype)
    real = mask.bool()  # the cache holds the same keys in the real columns, zeros in the padding
    for mine, other, closest in zip(ours.layers, theirs.layers, exact.layers, strict=True):
        by_column = mine.keys.transpose(1, 2)
        expected_keys, closest_keys = other.keys.transpose(1, 2), closest.keys.transpose(1, 2)
        _assert_like_transformers(by_column[real], expected_keys[real], closest_keys[real], dtype)
        assert not by_column[~real].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [True, False])
def test_the_last_layer_computes_only_the_kept_columns_and_caches_every_key(dtype, padded, tiny_llama_dir,
                                                                           tiny_adapter_dir):
    """A prefill that keeps the last column's output (its first token) skips the last layer's attention and
    MLP for the other columns: the same outputs and the same cache as a pass that keeps every column (up to
    the rounding of matmuls with fewer rows), and the next pass reads that cache alike."""
    model = _model("folded", dtype, tiny_llama_dir, tiny_adapter_dir)
    lean = LeanForward(model)
    torch.manual_seed(1)
    ids = torch.randint(10, 900, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    if padded:
        mask[0, :3] = mask[2, :1] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    for keep in (1, 2):
        short, whole = make_cache([], []), make_cache([], [])
        torch.testing.assert_close(lean(ids, mask, positions, short, keep=keep),
                                   lean(ids, mask, positions, whole, keep=7)[:, -keep:])
        for mine, every in zip(short.layers, whole.layers, strict=True):
            torch.testing.assert_close(mine.keys, every.keys)
            torch.testing.assert_close(mine.values, every.values)
    new, longer = torch.randint(10, 900, (3, 2)), torch.cat([mask, torch.ones(3, 2, dtype=torch.long)], dim=1)
    after = positions[:, -1:] + 1 + torch.arange(2)
    torch.testing.assert_close(lean(new, longer, after, short, keep=2), lean(new, longer, after, whole, keep=2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_positions_that_are_not_real_are_left_out_of_the_matmuls(dtype, tiny_llama_dir, tiny_adapter_dir):
    """A row that finished (its new column masked) and the padding of a prefill are not computed: the layers
    see only the real positions; the other rows' outputs are transformers' and the left-out row's are zeros."""
    model = _model("folded", dtype, tiny_llama_dir, tiny_adapter_dir)
    reference = copy.deepcopy(model).float()
    lean = LeanForward(model)
    seen: list[int] = []
    qkv = lean.layers[0].qkv
    lean.layers[0].qkv = lambda x, groups: seen.append(x.shape[0]) or qkv(x, groups)
    torch.manual_seed(1)
    ids = torch.randint(10, 900, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, :2] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    ours, theirs, exact = make_cache([], []), make_cache([], []), make_cache([], [])
    with torch.inference_mode(), cpu_attention(model), cpu_attention(reference):
        _assert_like_transformers(lean(ids, mask, positions, ours), _hidden(model, ids, mask, positions, theirs, 1),
                                  _hidden(reference, ids, mask, positions, exact, 1), dtype)
        assert seen == [16]  # 18 positions, 2 of them padding
        step = torch.tensor([[1], [0], [1]])  # the second row finished: its new column is not real
        mask = torch.cat([mask, step], dim=1)
        new, positions = torch.randint(10, 900, (3, 1)), positions[:, -1:] + 1
        got = lean(new, mask, positions, ours)
        expected = _hidden(model, new, mask, positions, theirs, 1)
        closest = _hidden(reference, new, mask, positions, exact, 1)
    assert seen == [16, 2]
    _assert_like_transformers(got[[0, 2]], expected[[0, 2]], closest[[0, 2]], dtype)
    assert not got[1].any()
    assert not ours.layers[0].keys[1, :, -1].any()  # nothing of it entered the cache


def test_the_decoder_uses_it_and_generates_what_transformers_generates(tiny_llama_dir, tiny_adapter_dir):
    model = _model("folded", torch.float32, tiny_llama_dir, tiny_adapter_dir)
    lean_model = copy.deepcopy(model)
    assert prepare_lean(lean_model) and lean_forward(lean_model) is not None
    torch.manual_seed(3)
    shared = torch.randint(10, 900, (7,)).tolist()
    prompts = [shared + torch.randint(10, 900, (n,)).tolist() for n in (1, 5, 2, 9, 3, 4, 12)]
    limits = [4, 9, 6, 12, 3, 8, 5]
    replies = []
    for m in (model, lean_model):
        decoder = Decoder(m, [5], pad_id=0, max_batch=3, prefix_ids=common_prefix(prompts), draft_tokens=2)
        assert (decoder._lean is not None) == (m is lean_model)
        requests = [Request(p, n) for p, n in zip(prompts, limits, strict=True)]
        decoder.run(requests)
        replies.append([r.generated for r in requests])
    assert replies[0] == replies[1] and any(replies[0])


def test_a_prefill_leaves_the_spare_columns_to_the_decode_steps(tiny_llama_dir):
    """The cache of admitted prompts reserves their width: the first SPARE_COLUMNS decode steps write in place
    (no new buffers, which would copy the whole cache)."""
    model = _model("plain", torch.float32, tiny_llama_dir, None)
    prepare_lean(model)
    torch.manual_seed(6)
    shared = torch.randint(10, 900, (5,)).tolist()
    prompts = [shared + torch.randint(10, 900, (n,)).tolist() for n in (3, 8, 6)]
    decoder = Decoder(model, [5], pad_id=0, max_batch=4, prefix_ids=common_prefix(prompts))
    for prompt in prompts:
        decoder.add(Request(prompt, SPARE_COLUMNS))
    decoder.step()  # the prefill
    layer = decoder.batch.cache.layers[0]
    assert layer.buf_k.shape[2] - layer.length == SPARE_COLUMNS
    buffer = layer.buf_k.data_ptr()
    for _ in range(SPARE_COLUMNS - 1):
        decoder.step()
    assert decoder.batch is None or decoder.batch.cache.layers[0].buf_k.data_ptr() == buffer


def test_the_output_embedding_is_prepacked_for_logits_over_the_whole_vocabulary(tiny_llama_dir):
    """bf16: the decoder's unconstrained logits come from the lean forward's prepacked copy of the output
    embedding, the plain matmul's numbers; fp32 models keep the plain matmul (no copy)."""
    assert LeanForward(_model("plain", torch.float32, tiny_llama_dir, None)).head is None
    if not packable(torch.bfloat16):
        pytest.skip("no oneDNN bf16 here")
    model = _model("plain", torch.bfloat16, tiny_llama_dir, None)
    assert prepare_lean(model)
    lean = lean_forward(model)
    torch.manual_seed(9)
    hidden = torch.randn(3, model.config.hidden_size, dtype=torch.bfloat16)
    plain = torch.nn.functional.linear(hidden, model.lm_head.weight)
    # the same numbers here (AVX512-BF16); another CPU's oneDNN kernels may round a logit the other way
    torch.testing.assert_close(lean.logits(hidden), plain, atol=TOLERANCE[torch.bfloat16], rtol=1e-2)
    assert not torch.allclose(lean.logits(hidden.roll(1, dims=0)), plain)  # it does depend on each row
    prompts = [torch.randint(10, 900, (n,)).tolist() for n in (3, 7, 5)]
    for head in (lean.head, None):
        lean.head = head
        decoder = Decoder(model, [5], pad_id=0, max_batch=3)
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        logits = decoder._lean.logits
        decoder._lean.logits = lambda h, logits=logits, seen=seen: seen.append((h, logits(h))) or seen[-1][1]
        requests = [Request(p, 6) for p in prompts]
        decoder.run(requests)
        del decoder._lean.logits
        assert all(r.generated for r in requests)
        if head is None:
            assert not seen  # without the copy: the plain matmul
        else:  # with it: every unconstrained step's logits come from the copy
            assert len(seen) >= 6
            with torch.inference_mode():
                for h, got in seen:
                    expected = torch.nn.functional.linear(h, model.lm_head.weight)
                    torch.testing.assert_close(got, expected, atol=TOLERANCE[torch.bfloat16], rtol=1e-2)


def test_it_is_not_used_once_the_weights_change(tiny_llama_dir):
    model = _model("plain", torch.float32, tiny_llama_dir, None)
    assert prepare_lean(model)
    lean = lean_forward(model)
    assert lean is not None and prepare_lean(model) and lean_forward(model) is lean  # built once
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(2)
    assert lean_forward(model) is None
    assert Decoder(model, [5], pad_id=0)._lean is None


def test_only_llama_models_on_the_cpu_get_one(tiny_llama_dir):
    other = _model("plain", torch.float32, tiny_llama_dir, None)
    other.config.model_type = "gemma3_text"
    assert "model type" in lean_support(other) and not prepare_lean(other)
    quantized = _model("plain", torch.float32, tiny_llama_dir, None)
    quantized.model.layers[0].self_attn.q_proj = torch.nn.Identity()  # not a Linear: cannot be fused
    assert not prepare_lean(quantized) and lean_forward(quantized) is None


def test_a_model_whose_copies_would_not_fit_keeps_transformers_forward(tiny_llama_dir, monkeypatch):
    import tasktune.model.lean as lean_module

    model = _model("plain", torch.float32, tiny_llama_dir, None)
    size = sum(p.numel() * p.element_size() for p in model.model.layers.parameters())
    monkeypatch.setattr(lean_module, "available_memory", lambda: 2 * size - 1)
    assert not prepare_lean(model) and lean_forward(model) is None
    monkeypatch.setattr(lean_module, "available_memory", lambda: 2 * size)
    assert prepare_lean(model) and lean_forward(model) is not None


def test_the_environment_can_turn_it_off(tiny_llama_dir, monkeypatch):
    model = _model("plain", torch.float32, tiny_llama_dir, None)
    monkeypatch.setenv("TASKTUNE_LEAN", "0")
    assert not prepare_lean(model) and lean_forward(model) is None
    monkeypatch.setenv("TASKTUNE_LEAN", "1")
    assert prepare_lean(model) and lean_forward(model) is not None
