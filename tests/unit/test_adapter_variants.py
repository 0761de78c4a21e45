"""Adapter variants (LoRA, DoRA, rsLoRA, PiSSA, OLoRA), modules_to_save / layers_to_transform, LoRA+ and QLoRA:
each saved adapter loads with peft alone and merges (tasktune export) to the same logits as the trained model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tasktune.config.schema import LoraConfig, ModelConfig, TrainConfig
from tasktune.export.merge import load_merged
from tasktune.model.adapters import prepare_for_training, save_trained
from tasktune.model.kbit import kbit_problem
from tasktune.model.load import load_model, load_tokenizer
from tasktune.train.optim import build_optimizer, build_scheduler

IDS = torch.tensor([[1, 17, 250, 33, 4001, 12, 9, 2], [5, 6, 7, 8, 9, 10, 11, 12]])


def _train_a_little(model, steps: int = 3) -> None:
    """A few AdamW steps of next-token loss on fixed ids: the adapter moves away from its initial value."""
    optimizer = build_optimizer(model, TrainConfig(learning_rate=2e-2))
    model.train()
    for _ in range(steps):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def _peft_alone(base_dir, adapter_dir) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


@pytest.mark.parametrize("variant", ["lora", "dora", "rslora", "pissa", "olora"])
def test_variant_saves_an_adapter_peft_loads_and_export_merges(tiny_llama_dir, tmp_path, variant):
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, variant=variant)
    model = prepare_for_training(load_model(cfg), TrainConfig(finetuning="lora"), lora)
    _train_a_little(model)
    trained = _logits(model)
    adapter = save_trained(model, load_tokenizer(cfg), tmp_path, "lora")

    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["use_dora"] == (variant == "dora") and saved["use_rslora"] == (variant == "rslora")
    if variant in ("pissa", "olora"):  # converted: a plain LoRA of rank 2r on the untouched base
        assert saved["r"] == 2 * lora.r and saved["init_lora_weights"] is True
    loaded = _logits(_peft_alone(tiny_llama_dir, adapter))
    merged_model, _ = load_merged(str(tiny_llama_dir), str(adapter))
    merged = _logits(merged_model)
    base = _logits(load_model(cfg))
    assert not torch.allclose(trained, base, atol=1e-3), "training must have changed the model"
    torch.testing.assert_close(loaded, trained, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(merged, trained, atol=2e-4, rtol=1e-4)


def test_layers_to_transform_and_modules_to_save(tiny_llama_dir, tmp_path):
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, layers_to_transform=[1], modules_to_save=["norm"])
    model = prepare_for_training(load_model(cfg), TrainConfig(finetuning="lora"), lora)
    _train_a_little(model)
    adapter = save_trained(model, load_tokenizer(cfg), tmp_path, "lora")
    keys = list(load_file(adapter / "adapter_model.safetensors"))
    lora_keys = [k for k in keys if "lora_" in k]
    assert lora_keys and all(".layers.1." in k for k in lora_keys)
    assert any("model.norm" in k for k in keys if "lora_" not in k), keys
    torch.testing.assert_close(_logits(_peft_alone(tiny_llama_dir, adapter)), _logits(model), atol=2e-4, rtol=1e-4)


def test_lora_plus_gives_b_matrices_their_own_learning_rate(tiny_llama_dir):
    model = prepare_for_training(load_model(ModelConfig(name_or_path=str(tiny_llama_dir))),
                                 TrainConfig(finetuning="lora"), LoraConfig(r=4, alpha=8))
    tc = TrainConfig(learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="constant")
    optimizer = build_optimizer(model, tc, plus_ratio=16.0)
    names = {id(p): n for n, p in model.named_parameters()}
    b_groups = [g for g in optimizer.param_groups if all("lora_B" in names[id(p)] for p in g["params"])]
    assert len(b_groups) == 1 and b_groups[0]["lr"] == pytest.approx(16e-3)
    n_b = sum(1 for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
    assert len(b_groups[0]["params"]) == n_b
    others = [g["lr"] for g in optimizer.param_groups if g is not b_groups[0]]
    assert others and all(lr == pytest.approx(1e-3) for lr in others)
    scheduler = build_scheduler(optimizer, tc, total_steps=10)
    scheduler.step()
    assert sorted(scheduler.get_last_lr()) == pytest.approx(sorted(g["lr"] for g in optimizer.param_groups))


QLORA_SKIP = kbit_problem()


@pytest.mark.skipif(QLORA_SKIP is not None, reason=f"QLoRA needs bitsandbytes: {QLORA_SKIP}")
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_qlora_adapter_merges_into_a_full_precision_base(tiny_llama_dir, tmp_path, quantization):
    from tasktune.model.kbit import load_quantized

    cfg = ModelConfig(name_or_path=str(tiny_llama_dir), quantization=quantization)
    base = load_quantized(cfg, compute_dtype=torch.float32)
    quantized = [type(m).__name__ for m in base.modules() if "Linear" in type(m).__name__ and "bitsandbytes" in
                 type(m).__module__]
    assert quantized, "the base must hold bitsandbytes layers"
    model = prepare_for_training(base, TrainConfig(finetuning="qlora"), LoraConfig(r=4, alpha=8, dropout=0.0))
    _train_a_little(model, steps=2)
    adapter = save_trained(model, load_tokenizer(cfg), tmp_path, "qlora")
    trained_lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    saved = load_file(adapter / "adapter_model.safetensors")
    assert len(saved) == len(trained_lora) and all(float(v.abs().sum()) > 0 for k, v in saved.items() if "lora_B" in k)
    # the adapter applies to the fp32 base with peft alone, and export merges it to the same logits
    unmerged = _logits(_peft_alone(tiny_llama_dir, adapter))
    merged_model, _ = load_merged(str(tiny_llama_dir), str(adapter))
    torch.testing.assert_close(_logits(merged_model), unmerged, atol=2e-4, rtol=1e-4)
    # and the quantized model it was trained on computes nearly the same function
    qlogits = _logits(model)
    agree = (qlogits.argmax(-1) == unmerged.argmax(-1)).float().mean()
    assert agree >= 0.5, f"quantized vs fp32 predictions agree on {agree:.0%} of positions"


@pytest.mark.skipif(QLORA_SKIP is not None, reason=f"QLoRA needs bitsandbytes: {QLORA_SKIP}")
def test_qlora_keeps_gradients_through_the_base_after_an_evaluation(tiny_llama_dir):
    """bitsandbytes packs 4-bit weights for its CPU inference kernel at the first eval-mode forward (on AVX512-BF16
    CPUs, like this one) and that kernel has no backward: after a training-time evaluation no gradient would pass
    through a base layer, and the first layer's adapter would get none. The same step must give the same
    gradients with or without an evaluation before it."""
    from tasktune.model.kbit import load_quantized

    def first_layer_grads(evaluate_first: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        base = load_quantized(ModelConfig(name_or_path=str(tiny_llama_dir), quantization="nf4"),
                              compute_dtype=torch.bfloat16)
        model = prepare_for_training(base, TrainConfig(finetuning="qlora"), LoraConfig(r=4, alpha=8, dropout=0.0))
        if evaluate_first:
            model.eval()
            _logits(model)
        model.train()
        model(input_ids=IDS, labels=IDS).loss.backward()
        return {n: p.grad.float().clone() for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n}

    fresh, after_eval = first_layer_grads(False), first_layer_grads(True)
    assert fresh and all(float(g.abs().sum()) > 0 for g in fresh.values())
    for name, grad in fresh.items():
        torch.testing.assert_close(after_eval[name], grad, msg=f"{name}: gradient changed by an evaluation")


def test_qlora_refuses_pissa(tiny_llama_dir):
    with pytest.raises(ValueError, match="cannot be used with train.finetuning=qlora"):
        prepare_for_training(load_model(ModelConfig(name_or_path=str(tiny_llama_dir))),
                             TrainConfig(finetuning="qlora"), LoraConfig(variant="pissa"))


def test_qlora_error_is_clear_without_bitsandbytes(tiny_llama_dir, monkeypatch):
    import tasktune.model.kbit as kbit

    monkeypatch.setattr(kbit, "kbit_problem", lambda: "bitsandbytes is not importable (test)")
    with pytest.raises(kbit.KbitUnavailableError, match="train.finetuning=qlora needs bitsandbytes.*finetuning=lora"):
        kbit.load_quantized(ModelConfig(name_or_path=str(tiny_llama_dir)))
