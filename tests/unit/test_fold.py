"""Folding a LoRA adapter for inference keeps its delta in bf16, where a bf16 merge rounds most of it away."""

from __future__ import annotations

import pytest
import torch

from tasktune.config.schema import LoraConfig, ModelConfig, TrainConfig
from tasktune.model.adapters import prepare_for_training, save_trained
from tasktune.model.fold import LowRankDelta, delta_lost_to_rounding, fold_adapter
from tasktune.model.load import load_model, load_tokenizer


def _small_adapter(model_dir, out, variant: str = "lora"):
    """An adapter whose delta is small next to the weights, as a trained one is: a bf16 merge loses much of it."""
    cfg = ModelConfig(name_or_path=str(model_dir))
    model = prepare_for_training(load_model(cfg), TrainConfig(finetuning="lora"),
                                 LoraConfig(r=4, alpha=8, variant=variant))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=3e-4)
    return save_trained(model, load_tokenizer(cfg), out, "lora")


def _relative_error(delta: torch.Tensor, true_delta: torch.Tensor) -> float:
    return ((delta - true_delta).norm() / true_delta.norm()).item()


def test_bf16_fold_keeps_the_delta_that_a_bf16_merge_loses(tiny_llama_dir, tmp_path):
    adapter = _small_adapter(tiny_llama_dir, tmp_path / "adapter")
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(adapter))
    reference = load_model(cfg, torch.float32)  # peft, unmerged, fp32: the delta each weight should get
    folded, how = fold_adapter(load_model(cfg, torch.bfloat16))
    merged = load_model(cfg, torch.bfloat16).merge_and_unload()
    assert how == "factored" and not hasattr(folded, "peft_config")
    checked = 0
    for name, module in folded.named_modules():
        if not isinstance(module, LowRankDelta):
            continue
        true_delta = reference.get_submodule(f"base_model.model.{name}").get_delta_weight("default")
        base = module.base.weight.float()
        folded_delta = module.up.float() @ module.down.float()
        merged_delta = merged.get_submodule(name).weight.float() - base
        assert torch.equal(module.base.weight, reference.get_submodule(f"base_model.model.{name}.base_layer")
                           .weight.bfloat16())
        assert _relative_error(folded_delta, true_delta) < 0.01, name
        # what `tasktune eval` scored before: a bf16 merge, a different model from the trained one
        assert _relative_error(merged_delta, true_delta) > 0.2, name
        checked += 1
    assert checked == 14  # 2 layers x 7 projections (all-linear)


def test_fp32_fold_merges_and_matches_the_adapter(tiny_llama_dir, tmp_path):
    adapter = _small_adapter(tiny_llama_dir, tmp_path / "adapter")
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(adapter))
    reference = load_model(cfg, torch.float32)
    folded, how = fold_adapter(load_model(cfg, torch.float32))
    assert how == "merged"
    assert not any(isinstance(m, LowRankDelta) for m in folded.modules())
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        assert torch.allclose(folded(ids).logits, reference(ids).logits, atol=1e-5)


@pytest.mark.parametrize("variant", ["dora"])
def test_layers_that_cannot_stay_factored_are_merged_and_say_so(tiny_llama_dir, tmp_path, variant):
    adapter = _small_adapter(tiny_llama_dir, tmp_path / "adapter", variant)
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(adapter))
    folded, how = fold_adapter(load_model(cfg, torch.bfloat16))
    assert how.startswith("merged (") and "bf16 rounding" in how
    assert not hasattr(folded, "peft_config")


def test_a_low_precision_export_says_how_much_of_the_adapter_it_rounds_away(tiny_llama_dir, tmp_path):
    from tasktune.export.run import ExportOptions, export_model, format_summary

    adapter = _small_adapter(tiny_llama_dir, tmp_path / "adapter")
    bf16 = export_model(ExportOptions(model=str(tiny_llama_dir), adapter=str(adapter), out=tmp_path / "bf16",
                                      dtype="bfloat16"))
    assert bf16["adapter_delta_lost"] > 0.2 and "round away" in format_summary(bf16)
    fp32 = export_model(ExportOptions(model=str(tiny_llama_dir), adapter=str(adapter), out=tmp_path / "fp32"))
    assert "adapter_delta_lost" not in fp32 and "round away" not in format_summary(fp32)
    base = load_model(ModelConfig(name_or_path=str(tiny_llama_dir)), torch.float32)
    assert delta_lost_to_rounding(base, torch.bfloat16) == 0.0  # nothing changed: nothing to lose
