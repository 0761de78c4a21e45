"""The `pref` section: options of the preference stages (train.stage = dpo | orpo | simpo | kto | rm)."""

from __future__ import annotations

from dataclasses import dataclass

from tasktune.config.errors import ConfigError, one_of

STAGES = ("sft", "dpo", "orpo", "simpo", "kto", "rm")
"""train.stage values: sft (default) and the preference stages."""


@dataclass
class PreferenceConfig:
    beta: float = 0.1
    """DPO/KTO: strength of the pull towards the reference model; ORPO: weight of the odds-ratio term (lambda);
    SimPO: reward scale."""
    loss_type: str = "sigmoid"
    """DPO loss: sigmoid (DPO) | ipo | hinge."""
    label_smoothing: float = 0.0
    """DPO/SimPO (sigmoid): share of pairs assumed to be mislabelled (conservative DPO, 0 = off)."""
    simpo_gamma: float = 0.5
    """SimPO: target reward margin."""
    desirable_weight: float = 1.0
    """KTO: weight of the losses of desirable (kto_tag true) answers."""
    undesirable_weight: float = 1.0
    """KTO: weight of the losses of undesirable (kto_tag false) answers."""

    def check(self) -> None:
        if self.beta <= 0:
            raise ConfigError("pref.beta must be positive")
        one_of("pref", "loss_type", self.loss_type, ("sigmoid", "ipo", "hinge"))
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError("pref.label_smoothing must be within [0, 0.5)")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise ConfigError("pref.desirable_weight and pref.undesirable_weight must be positive")
