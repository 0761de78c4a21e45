"""The preference stages (train.stage = dpo | orpo | simpo | kto | rm) as a `Route` of the one training loop.

The reference of DPO / KTO: with an adapter (lora / qlora) the model itself with its adapter disabled; when
training continues an adapter (`model.adapter`, e.g. DPO after SFT) a frozen copy of that adapter, loaded
as "ref" (a few MB, not a second model); with full / freeze a second, frozen copy of the model.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tasktune.config.schema import Config, ConfigError
from tasktune.data.preference import build_preference_data, collate_kto, collate_pairs
from tasktune.model.adapters import ADAPTER_METHODS, prepare_for_training, save_trained
from tasktune.model.load import load_model, resolve_model_dir, weight_dtype
from tasktune.train import preference as losses
from tasktune.train.route import Route, _build_causal_lm

REF_ADAPTER = losses.REF_ADAPTER


class Reference:
    """Where the reference log-probs come from (see the module docstring)."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None

    def __call__(self, device: torch.device) -> torch.nn.Module | None:
        """The separate reference model (moved to `device`), or None: the policy's own adapter switch."""
        if self.model is not None and next(self.model.parameters()).device != device:
            self.model.to(device)
        return self.model


def _build_policy(cfg: Config, reference: Reference) -> torch.nn.Module:
    stage, method = cfg.train.stage, cfg.train.finetuning
    if stage == "rm":
        return _build_reward_model(cfg)
    model = _build_causal_lm(cfg)
    if stage in ("dpo", "kto"):
        if method not in ADAPTER_METHODS:
            reference.model = load_model(cfg.model).requires_grad_(False).eval()
        elif cfg.model.adapter:
            model.load_adapter(cfg.model.adapter, adapter_name=REF_ADAPTER, is_trainable=False)
            model.set_adapter("default")
            for name, param in model.named_parameters():
                param.requires_grad_(("lora_" in name or "modules_to_save" in name) and f".{REF_ADAPTER}." not in name)
    return model


def _build_reward_model(cfg: Config) -> torch.nn.Module:
    """A sequence-classification model with one output (the reward); with an adapter its head is trained in full."""
    from transformers import AutoModelForSequenceClassification

    if cfg.train.finetuning == "qlora" or cfg.model.adapter:
        raise ConfigError("train.stage=rm supports finetuning=lora | full | freeze on a base model (no model.adapter)")
    source = resolve_model_dir(cfg.model.name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=1, dtype=weight_dtype(cfg.model), local_files_only=True,
        attn_implementation=cfg.model.attn_implementation, trust_remote_code=cfg.model.trust_remote_code)
    if model.config.pad_token_id is None:
        from tasktune.model.load import load_tokenizer

        model.config.pad_token_id = load_tokenizer(cfg.model).pad_token_id
    return prepare_for_training(model, cfg.train, cfg.lora, task_type="SEQ_CLS")


def _pair_loss(cfg: Config, reference: Reference, stats: losses.RewardStats, model, batch) -> torch.Tensor:
    stage = cfg.train.stage
    if stage == "rm":
        return losses.rm_loss(model, batch, stats)
    ref = reference(batch["input_ids"].device)
    if stage == "kto":
        return losses.kto_loss(cfg.pref, model, batch, stats, ref)
    return losses.pair_loss(stage, cfg.pref, model, batch, stats, ref)


def _save(model: torch.nn.Module, tokenizer: Any, out: Path, finetuning: str, **kwargs: Any) -> Path:
    """save_trained, without the frozen "ref" adapter (peft writes every adapter it holds, others in subfolders)."""
    target = save_trained(model, tokenizer, out, finetuning, **kwargs)
    shutil.rmtree(target / REF_ADAPTER, ignore_errors=True)
    return target


def preference_route(cfg: Config) -> Route:
    """The Route of cfg.train.stage (dpo | orpo | simpo | kto | rm)."""
    cfg.pref.check()
    stage = cfg.train.stage
    if cfg.task.method == "head":
        raise ConfigError(f"train.stage={stage} trains a causal LM (or a reward head): unset task.method=head")
    kto = stage == "kto"
    reference, stats = Reference(), losses.RewardStats()
    return Route(
        build_model=partial(_build_policy, reference=reference),
        build_data=lambda c, tok, out: build_preference_data(c.data, tok, out, kto=kto),
        collate=collate_kto if kto else collate_pairs,
        summed_loss=partial(_pair_loss, cfg, reference, stats),
        count_targets=lambda batch: int(batch["input_ids"].shape[0] if kto else batch["input_ids"].shape[0] // 2),
        save=_save,
        step_metrics=stats.read,
    )
