"""Make a model trainable for one finetuning method (lora | full | freeze), and save what was trained."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tasktune.config.schema import LoraConfig, TrainConfig

LAYER_PATHS = (
    "model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "transformer.blocks"
)
"""Where decoder layer lists live, tried in order (Llama/Mistral/Qwen/Gemma, OPT, GPT-2, NeoX, MPT)."""


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a causal LM (looked up through a PeftModel wrapper too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for dotted in LAYER_PATHS:
        module = base
        for attr in dotted.split("."):
            module = getattr(module, attr, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(
        f"finetuning=freeze: cannot find the decoder layers of {type(base).__name__} "
        f"(looked for {', '.join(LAYER_PATHS)}); use finetuning=lora or full"
    )


def _freeze_all_but(model: nn.Module, count: int) -> None:
    layers = decoder_layers(model)
    if count == 0 or abs(count) > len(layers):
        raise ValueError(
            f"train.freeze_trainable_layers={count}: must be within 1..{len(layers)} (last layers) "
            f"or -{len(layers)}..-1 (first layers); the model has {len(layers)} layers"
        )
    model.requires_grad_(False)
    chosen = layers[-count:] if count > 0 else layers[:-count]
    for layer in chosen:
        layer.requires_grad_(True)


def _peft_config(lora: LoraConfig, tied: bool):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    targets = lora.target_modules
    return PeftLoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        modules_to_save=lora.modules_to_save,
        # a trained copy of a tied lm_head/embedding stays tied (peft >= 0.18)
        **({"ensure_weight_tying": True} if tied else {}),
    )


def _enable_checkpointing(model: nn.Module, method: str) -> None:
    """Recompute activations in backward (non-reentrant), on a plain transformers model."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    if method != "full":  # frozen embeddings: checkpointed blocks still need an input that carries grad
        model.enable_input_require_grads()


def prepare_for_training(model: nn.Module, train: TrainConfig, lora: LoraConfig) -> nn.Module:
    """Set what `train.finetuning` trains; returns the model to train (a PeftModel for lora).

    A PeftModel (loaded with `model.adapter`) keeps training its adapter with lora, and has it merged into
    the weights first with full or freeze.
    """
    from peft import PeftModel, get_peft_model

    train.check()
    method = train.finetuning
    if isinstance(model, PeftModel) and method != "lora":
        model = model.merge_and_unload()
    if train.gradient_checkpointing:
        _enable_checkpointing(model.get_base_model() if isinstance(model, PeftModel) else model, method)
    if method == "full":
        model.requires_grad_(True)
    elif method == "freeze":
        _freeze_all_but(model, train.freeze_trainable_layers)
    elif isinstance(model, PeftModel):
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name or "modules_to_save" in name)
    else:
        lora.check()
        tied = bool(getattr(model.config, "tie_word_embeddings", False) and lora.modules_to_save)
        model = get_peft_model(model, _peft_config(lora, tied))
    model.train()
    trainable, total = count_parameters(model)
    share = 100 * trainable / total
    print(f"{method}: trainable params {trainable:,} / {total:,} ({share:.2f}%)", flush=True)
    return model


def save_trained(model: nn.Module, tokenizer, out_dir: str | Path, finetuning: str) -> Path:
    """lora -> out_dir/adapter/ (adapter safetensors + config), else out_dir/model/; tokenizer in both.

    Pass the unwrapped model (accelerate's `unwrap_model`). Returns the directory written.
    """
    target = Path(out_dir) / ("adapter" if finetuning == "lora" else "model")
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target
