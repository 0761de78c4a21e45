"""prepare_for_training trains exactly the intended parameters; save_trained round-trips."""

from __future__ import annotations

import pytest
import torch

from tasktune.config.schema import LoraConfig, ModelConfig, TrainConfig
from tasktune.model.adapters import count_parameters, prepare_for_training, save_trained
from tasktune.model.load import load_model


def _tiny(tiny_llama_dir, adapter=None):
    return load_model(ModelConfig(name_or_path=str(tiny_llama_dir), adapter=adapter))


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_lora_trains_only_lora_weights_on_every_linear(tiny_llama_dir):
    model = prepare_for_training(_tiny(tiny_llama_dir), TrainConfig(finetuning="lora"), LoraConfig(r=4))
    names = _trainable(model)
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert 2 * 7 * 2 == len(names)  # 2 layers x 7 linears x (A, B)


def test_lora_target_modules_and_modules_to_save(tiny_llama_dir):
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    model = prepare_for_training(_tiny(tiny_llama_dir), TrainConfig(finetuning="lora"), lora)
    names = _trainable(model)
    assert {n for n in names if "lora_" in n} and all(
        "q_proj" in n or "v_proj" in n for n in names if "lora_" in n
    )
    # lm_head is tied to the embeddings: one trained copy, shared by both (peft ensure_weight_tying)
    assert [n for n in names if "modules_to_save" in n] == [
        "base_model.model.model.embed_tokens.modules_to_save.default.weight"
    ]
    assert type(model.get_base_model().lm_head).__name__ == "ModulesToSaveWrapper"


def test_full_trains_everything(tiny_llama_dir):
    model = prepare_for_training(_tiny(tiny_llama_dir), TrainConfig(finetuning="full"), LoraConfig())
    trainable, total = count_parameters(model)
    assert trainable == total > 0


@pytest.mark.parametrize(("count", "trained_layer"), [(1, 1), (-1, 0), (2, None)])
def test_freeze_trains_only_chosen_layers(tiny_llama_dir, count, trained_layer):
    train = TrainConfig(finetuning="freeze", freeze_trainable_layers=count)
    names = _trainable(prepare_for_training(_tiny(tiny_llama_dir), train, LoraConfig()))
    assert names and all(n.startswith("model.layers.") for n in names)
    layers = {int(n.split(".")[2]) for n in names}
    assert layers == ({0, 1} if trained_layer is None else {trained_layer})


def test_freeze_rejects_more_layers_than_the_model_has(tiny_llama_dir):
    train = TrainConfig(finetuning="freeze", freeze_trainable_layers=3)
    with pytest.raises(ValueError, match="has 2 layers"):
        prepare_for_training(_tiny(tiny_llama_dir), train, LoraConfig())


def test_gradient_checkpointing_lora_still_gets_gradients(tiny_llama_dir):
    train = TrainConfig(finetuning="lora", gradient_checkpointing=True)
    model = prepare_for_training(_tiny(tiny_llama_dir), train, LoraConfig(r=4))
    assert model.get_base_model().is_activation_checkpointing
    ids = torch.tensor([[1, 20, 30, 40]])
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_lora_save_reload_gives_identical_logits(tiny_llama_dir, tiny_adapter_dir):
    ids = torch.tensor([[1, 100, 200, 300, 2]])
    assert (tiny_adapter_dir / "adapter_model.safetensors").is_file()
    assert (tiny_adapter_dir / "adapter_config.json").is_file()
    assert (tiny_adapter_dir / "tokenizer_config.json").is_file()
    with torch.no_grad():
        base = _tiny(tiny_llama_dir)(ids).logits
        first = _tiny(tiny_llama_dir, tiny_adapter_dir)(ids).logits
        second = _tiny(tiny_llama_dir, tiny_adapter_dir)(ids).logits
    assert not torch.allclose(base, first)  # the adapter does something
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_lora_adapter_keeps_training(tiny_llama_dir, tiny_adapter_dir):
    model = _tiny(tiny_llama_dir, tiny_adapter_dir)
    model = prepare_for_training(model, TrainConfig(finetuning="lora"), LoraConfig())
    names = _trainable(model)
    assert names and all("lora_" in n for n in names)
    assert not any("lora_" in n and ".default_1." in n for n, _ in model.named_parameters())  # no stacking


def test_full_save_writes_model_dir(tiny_llama_dir, smol_tokenizer, tmp_path):
    model = prepare_for_training(_tiny(tiny_llama_dir), TrainConfig(finetuning="full"), LoraConfig())
    out = save_trained(model, smol_tokenizer, tmp_path, "full")
    assert out == tmp_path / "model"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    reloaded = load_model(ModelConfig(name_or_path=str(out)))
    ids = torch.tensor([[1, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits)
