"""The FSDP / DeepSpeed code paths of the loop, on one CPU process with accelerate's sharded state stood in for:
saves from a full state dict, DeepSpeed's set-up, and one engine step per optimizer step."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from accelerate import DistributedType
from accelerate.state import GradientState

from tasktune.config.schema import LoraConfig, ModelConfig, TrainConfig
from tasktune.model.adapters import prepare_for_training, save_trained
from tasktune.model.load import load_model, load_tokenizer
from tasktune.train.distributed import configure_plugins, micro_batch, save_output


def _accelerator(kind: DistributedType, state_dict=None, ds_config=None):
    return SimpleNamespace(
        distributed_type=kind, is_main_process=True, num_processes=2, gradient_state=GradientState(),
        get_state_dict=lambda model: state_dict, unwrap_model=lambda model: model, wait_for_everyone=lambda: None,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config or {})),
        no_sync=None)


def test_sharded_save_writes_the_adapter_from_the_full_state_dict(tiny_llama_dir, tmp_path):
    """Under FSDP / ZeRO-3 the model's own tensors are shards: the adapter must come from get_state_dict."""
    from safetensors.torch import load_file

    cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    model = prepare_for_training(load_model(cfg), TrainConfig(finetuning="lora"), LoraConfig(r=4, alpha=8))
    full = {k: torch.full_like(v, 0.25) if "lora_B" in k else v.clone() for k, v in model.state_dict().items()}
    save_output(save_trained, _accelerator(DistributedType.FSDP, full), model, load_tokenizer(cfg), tmp_path, "lora")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    b = [v for k, v in saved.items() if "lora_B" in k]
    assert b and all(torch.equal(v, torch.full_like(v, 0.25)) for v in b)  # from the state dict, not the model
    assert all(float(p.abs().sum()) == 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_deepspeed_plugin_is_set_up_for_the_loop():
    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}
    configure_plugins(_accelerator(DistributedType.DEEPSPEED, ds_config=config),
                      TrainConfig(batch_size=3, grad_accum=4, max_grad_norm=0.5))
    assert config["train_micro_batch_size_per_gpu"] == 3 and config["gradient_accumulation_steps"] == 1
    assert config["train_batch_size"] == 6 and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_engine_steps_only_on_the_last_micro_batch():
    """accelerate's DeepSpeed backward steps the engine whenever sync_gradients is set: only the last micro-batch."""
    accelerator = _accelerator(DistributedType.DEEPSPEED)
    seen = []
    for k in range(3):
        with micro_batch(accelerator, None, last=k == 2):
            seen.append(accelerator.gradient_state.sync_gradients)
    assert seen == [False, False, True]
    assert accelerator.gradient_state.sync_gradients  # restored for whatever runs next
