"""The lean forward of a peft model (model/lean.py): each row of a batch takes its own LoRA adapter, as peft's
`adapter_names` does, and one adapter on every row is the folded adapter that `tasktune eval` runs, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_adapter

from tasktune.config.schema import ModelConfig
from tasktune.model.attention import cpu_attention
from tasktune.model.decode import BASE_ADAPTER, Decoder, Request
from tasktune.model.fold import fold_adapter
from tasktune.model.kv_cache import make_cache
from tasktune.model.lean import LeanForward, lean_forward, lean_support, prepare_lean
from tasktune.model.load import load_model
from tasktune.model.prefix_store import common_prefix

# fp32: the lean forward multiplies by concatenated (and, folded, LoRA-fused) weights, so its sums run in
# another order than transformers'; CPUs with other GEMM kernels differ from it by ~1e-5 (seen on CI),
# a padded key left visible by ~1.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def second_adapter_dir(tmp_path_factory, tiny_llama_dir):
    return make_tiny_adapter(tiny_llama_dir, tmp_path_factory.mktemp("lean_b"), seed=2)


def _two_adapters(tiny_llama_dir, first, second, dtype):
    """The tiny Llama with adapters "a" and "b" loaded as peft does for the API (serve/engine.py)."""
    model = load_model(ModelConfig(name_or_path=str(tiny_llama_dir)), dtype)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(first), adapter_name="a", is_trainable=False)
    model.load_adapter(str(second), adapter_name="b", is_trainable=False)
    return model.eval()


def _peft_hidden(model, ids, mask, positions, cache, keep, adapters):
    """peft's forward with one adapter per row: the last `keep` positions' final hidden states."""
    head = model.get_output_embeddings()
    model.set_output_embeddings(torch.nn.Identity())
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                     logits_to_keep=keep, adapter_names=adapters).logits
    finally:
        model.set_output_embeddings(head)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_row_takes_its_own_adapter_as_peft_does(dtype, tiny_llama_dir, tiny_adapter_dir, second_adapter_dir):
    """In float32 against peft's forward with `adapter_names`; in bf16 (where peft computes the deltas in
    float32 and rounds differently) against the same rows run with their adapter on every row, which is the
    folded adapter of `tasktune eval` (next test)."""
    model = _two_adapters(tiny_llama_dir, tiny_adapter_dir, second_adapter_dir, dtype)
    lean = LeanForward(model)
    assert lean.adapters == {"a", "b"}
    adapters = ["a", BASE_ADAPTER, "b", "a"]

    def reference(ids, mask, positions, keep):
        if dtype == torch.float32:
            return _peft_hidden(model, ids, mask, positions, caches["peft"], keep, adapters)
        uniform = {name: lean(ids, mask, positions, caches[name], keep=keep, adapters=[name] * 4)
                   for name in set(adapters)}
        return torch.stack([uniform[name][i] for i, name in enumerate(adapters)])

    caches = {name: make_cache([], []) for name in (*adapters, "peft")}
    torch.manual_seed(0)
    ids = torch.randint(10, 900, (4, 7))
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, :3] = mask[2, :1] = 0  # left padding: positions left out of the matmuls
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    ours = make_cache([], [])
    tolerance = TOLERANCE[dtype]
    with torch.inference_mode(), cpu_attention(model):
        expected = reference(ids, mask, positions, 2)
        got = lean(ids, mask, positions, ours, keep=2, adapters=adapters)
        torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
        # the rows differ by their adapter alone where their tokens are the same
        same = lean(ids[[1, 1, 1]], mask[[1, 1, 1]], positions[[1, 1, 1]], make_cache([], []),
                    adapters=["a", BASE_ADAPTER, "b"])
        assert not torch.equal(same[0], same[1]) and not torch.equal(same[1], same[2])
        for width, running in ((1, [1, 1, 0, 1]), (3, [1, 1, 1, 1])):  # a finished row, then a drafted pass
            step = torch.tensor(running)[:, None].expand(4, width)
            mask = torch.cat([mask, step], dim=1)
            positions = positions[:, -1:] + 1 + torch.arange(width)
            new = torch.randint(10, 900, (4, width))
            expected = reference(new, mask, positions, width)
            got = lean(new, mask, positions, ours, keep=width, adapters=adapters)
            live = [i for i, r in enumerate(running) if r]
            torch.testing.assert_close(got[live], expected[live], atol=tolerance, rtol=tolerance)


def test_one_adapter_on_every_row_is_the_folded_adapter_up_to_bf16_rounding(tiny_llama_dir, tiny_adapter_dir):
    """What `tasktune chat --adapter` runs (a peft model, the adapter named per row) computes what `tasktune eval`
    runs (the adapter folded in as bf16 low-rank factors, model/fold.py). The folded one appends the deltas
    to the matmuls and fuses the MLP's SiLU and product (model/lean_linear.py), so the two round differently:
    both stay within bf16 rounding of the float32 forward of the same weights, where the base model is ~1 off."""
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(tiny_adapter_dir))
    peft_model = load_model(cfg, torch.bfloat16).eval()
    folded, how = fold_adapter(copy.deepcopy(peft_model))
    assert how == "factored"
    name = peft_model.active_adapter
    torch.manual_seed(1)
    ids = torch.randint(10, 900, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, :2] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    real = mask.bool()

    def hidden(model, adapters=None):
        out = LeanForward(model)(ids, mask, positions, make_cache([], []), keep=6, adapters=adapters)
        return out[real].float()

    exact = hidden(copy.deepcopy(folded).float())
    error = {kind: (hidden(model, adapters) - exact).abs().mean().item() for kind, model, adapters in
             (("peft", peft_model, [name] * 3), ("folded", folded, None), ("base", peft_model, [BASE_ADAPTER] * 3))}
    assert max(error["peft"], error["folded"]) < 0.03 < 0.5 < error["base"], error


def test_the_decoder_runs_a_peft_model_through_it_with_the_replies_of_peft(tiny_llama_dir, tiny_adapter_dir,
                                                                            second_adapter_dir):
    model = _two_adapters(tiny_llama_dir, tiny_adapter_dir, second_adapter_dir, torch.float32)
    plain = copy.deepcopy(model)
    assert prepare_lean(model) and lean_forward(model) is not None and lean_forward(plain) is None
    torch.manual_seed(3)
    shared = torch.randint(10, 900, (6,)).tolist()
    prompts = [shared + torch.randint(10, 900, (n,)).tolist() for n in (2, 7, 4, 9, 3)]
    names = ["a", "b", None, BASE_ADAPTER, "b"]  # None: the active adapter
    replies = []
    for m in (plain, model):
        decoder = Decoder(m, [5], pad_id=0, max_batch=3, prefix_ids=common_prefix(prompts))
        assert (decoder._lean is not None) == (m is model)
        requests = [Request(p, 8, adapter=a) for p, a in zip(prompts, names, strict=True)]
        decoder.run(requests)
        replies.append([r.generated for r in requests])
    assert replies[0] == replies[1]
    assert len({tuple(r) for r in replies[1][:2] + replies[1][3:4]}) == 3  # a, b and the base differ


def test_adapters_it_cannot_run_keep_transformers_forward(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    def peft(**kwargs):
        base = load_model(ModelConfig(name_or_path=str(tiny_llama_dir)), torch.float32)
        return get_peft_model(base, LoraConfig(r=2, **kwargs)).eval()

    assert prepare_lean(peft(target_modules=["q_proj", "down_proj"]))  # a LoRA of some projections: fine
    dora = peft(target_modules=["q_proj"], use_dora=True)
    assert not prepare_lean(dora) and lean_forward(dora) is None
    head = peft(target_modules=["q_proj", "lm_head"])
    assert not prepare_lean(head) and lean_forward(head) is None
    saved = peft(target_modules=["q_proj"], modules_to_save=["lm_head"])
    assert "not a LoRA of linear layers only" in lean_support(saved) and not prepare_lean(saved)
