"""Make a model trainable for one finetuning method (lora | full | freeze), and save what was trained."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tasktune.config.errors import UserError
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


ADAPTER_METHODS = ("lora", "qlora")
"""train.finetuning values that train (and save) an adapter."""
CONVERTED_INIT = "_tasktune_initial_adapter"
"""Attribute holding a PiSSA/OLoRA adapter's initial weights, for saving it converted to a plain LoRA."""


def variant_options(lora: LoraConfig) -> dict:
    """peft LoraConfig arguments of lora.variant (dora, rslora, pissa, olora; lora: none)."""
    return {
        "lora": {},
        "dora": {"use_dora": True},
        "rslora": {"use_rslora": True},
        "pissa": {"init_lora_weights": "pissa"},
        "olora": {"init_lora_weights": "olora"},
    }[lora.variant]


def linear_names(model: nn.Module) -> list[str]:
    """Names (last part) of the linear layers of the decoder blocks: what "all-linear" means in peft."""
    layers = decoder_layers(model)
    return sorted({name.rsplit(".", 1)[-1] for name, module in layers.named_modules()
                   if isinstance(module, nn.Linear) or type(module).__name__.startswith("Linear")} - {""})


def _peft_config(lora: LoraConfig, tied: bool, task_type: str = "CAUSAL_LM", model: nn.Module | None = None):
    from peft import LoraConfig as PeftLoraConfig

    targets = lora.target_modules
    if targets == ["all-linear"] and lora.layers_to_transform is not None and model is not None:
        targets = linear_names(model)  # peft takes layers_to_transform only with explicit names
    return PeftLoraConfig(
        task_type=task_type,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        modules_to_save=lora.modules_to_save,
        layers_to_transform=lora.layers_to_transform,
        # a trained copy of a tied lm_head/embedding stays tied (peft >= 0.18)
        **({"ensure_weight_tying": True} if tied else {}),
        **variant_options(lora),
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


def prepare_for_training(model: nn.Module, train: TrainConfig, lora: LoraConfig,
                         task_type: str = "CAUSAL_LM") -> nn.Module:
    """Set what `train.finetuning` trains; returns the model to train (a PeftModel for lora / qlora).
    task_type: peft's task type of a new adapter (SEQ_CLS for a reward model: its head is trained in full).

    A PeftModel (loaded with `model.adapter`) keeps training its adapter with lora, and has it merged into
    the weights first with full or freeze.
    """
    from peft import PeftModel, get_peft_model

    train.check()
    method = train.finetuning
    if isinstance(model, PeftModel) and method not in ADAPTER_METHODS:
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
        if method == "qlora" and lora.variant in ("pissa", "olora"):
            raise ValueError(f"lora.variant={lora.variant} rewrites the base weights: it cannot be used with "
                             "train.finetuning=qlora (a quantized base); use lora, dora or rslora")
        tied = bool(getattr(model.config, "tie_word_embeddings", False) and lora.modules_to_save)
        model = get_peft_model(model, _peft_config(lora, tied, task_type, model))
        if lora.variant in ("pissa", "olora"):
            setattr(model, CONVERTED_INIT, {k: v.detach().clone() for k, v in model.state_dict().items()
                                            if "lora_" in k})
    model.train()
    trainable, total = count_parameters(model)
    share = 100 * trainable / total
    print(f"{method}: trainable params {trainable:,} / {total:,} ({share:.2f}%)", flush=True)
    return model


def _save_converted(model: nn.Module, target: Path, state_dict: dict | None) -> None:
    """A PiSSA/OLoRA adapter saved as the plain LoRA (rank 2r) that turns the ORIGINAL base into the trained
    model (peft's path_initial_model_for_weight_conversion), so peft alone loads it on the untouched base."""
    import tempfile

    initial = getattr(model, CONVERTED_INIT)
    config = model.peft_config["default"]
    with tempfile.TemporaryDirectory() as tmp:
        trained = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
        init_mode = config.init_lora_weights
        try:  # write the initial adapter (as if freshly made) for peft to subtract
            model.load_state_dict(initial, strict=False)
            config.init_lora_weights = True
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            config.init_lora_weights = init_mode
            model.load_state_dict(trained, strict=False)
        model.save_pretrained(target, safe_serialization=True, path_initial_model_for_weight_conversion=tmp,
                              **({"state_dict": state_dict} if state_dict is not None else {}))


def save_trained(model: nn.Module, tokenizer, out_dir: str | Path, finetuning: str,
                 state_dict: dict | None = None) -> Path:
    """lora/qlora -> out_dir/adapter/ (adapter safetensors + config), else out_dir/model/; tokenizer in both.

    Pass the unwrapped model (accelerate's `unwrap_model`) and, for FSDP / DeepSpeed ZeRO-3, the full
    `state_dict` from `accelerator.get_state_dict` (the unwrapped model's own tensors are shards there).
    Returns the directory written.
    """
    target = Path(out_dir) / ("adapter" if finetuning in ADAPTER_METHODS else "model")
    target.mkdir(parents=True, exist_ok=True)
    if hasattr(model, CONVERTED_INIT):
        _save_converted(model, target, state_dict)
    else:
        model.save_pretrained(target, safe_serialization=True,
                              **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(target)
    return target


class AdapterMismatchError(UserError, ValueError):
    """An adapter that was trained on another base model than the one it is loaded on."""


def _same_model(a: str, b: str) -> bool:
    """Names of one model: equal, or the same last path component (a hub id, a local copy, a registry name)."""
    def norm(name: str) -> str:
        return Path(str(name).rstrip("/\\")).name.lower()

    return a == b or norm(a) == norm(b)


def check_adapter_base(adapter_dir: str | Path, base_names: list[str]) -> None:
    """Refuse an adapter whose `base_model_name_or_path` names none of `base_names` (the configured model name
    and the directory it resolved to): an adapter on the wrong base gives wrong output without any error."""
    import json

    config_file = Path(adapter_dir) / "adapter_config.json"
    try:
        trained_on = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as err:
        raise AdapterMismatchError(f"{config_file}: unreadable adapter config ({err})") from None
    if not trained_on or any(_same_model(str(trained_on), str(name)) for name in base_names if name):
        return
    raise AdapterMismatchError(
        f"adapter {adapter_dir} was trained on {trained_on!r}, not on {base_names[0]!r}: set model.name_or_path to "
        f"that base (if it is the same model under another name, fix base_model_name_or_path in {config_file.name})"
    )
