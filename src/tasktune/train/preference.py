"""Preference losses as pure functions of sequence log-probs, and the batch losses the preference routes use.

DPO (sigmoid with label smoothing, IPO, hinge), ORPO, SimPO and KTO follow TRL's definitions (tests compare
them to TRL's own code); the reward model (rm) uses the pairwise loss -log sigmoid(r_chosen - r_rejected).
Every batch loss returns the SUM of per-example losses (the loop divides by the examples of the whole step)
and adds the step's rewards to a `RewardStats`, logged as rewards/chosen, rejected, accuracy, margin.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F

from tasktune.config.preference import PreferenceConfig

IGNORE = -100


# ---- pure losses ---------------------------------------------------------------------------------------------
def dpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               cfg: PreferenceConfig, chosen_tokens: torch.Tensor | None = None,
               rejected_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from summed log-probs of policy and reference.

    sigmoid: -(1-e) log s(b d) - e log s(-b d) (conservative DPO; e = label_smoothing); ipo: (d_avg - 1/2b)^2 on
    per-token averaged log-ratios (TRL's normalisation); hinge: relu(1 - b d).
    """
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta, beta = chosen_ratio - rejected_ratio, cfg.beta
    if cfg.loss_type == "sigmoid":
        eps = cfg.label_smoothing
        losses = -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps
    elif cfg.loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the answer token counts")
        avg = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (avg - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * delta)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_losses(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(-beta log s(log odds ratio) per pair, chosen rewards, rejected rewards) from per-token AVERAGE log-probs.
    The full ORPO loss adds the chosen answers' NLL."""
    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    return -beta * F.logsigmoid(log_odds), beta * chosen_avg.detach(), beta * rejected_avg.detach()


def simpo_losses(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, cfg: PreferenceConfig
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO: -log s(b (avg_c - avg_r) - gamma) (with label smoothing as in TRL's CPO trainer); no reference."""
    logits = (chosen_avg - rejected_avg) - cfg.simpo_gamma / cfg.beta
    eps = cfg.label_smoothing
    losses = -F.logsigmoid(cfg.beta * logits) * (1 - eps) - F.logsigmoid(-cfg.beta * logits) * eps
    return losses, cfg.beta * chosen_avg.detach(), cfg.beta * rejected_avg.detach()


def kto_losses(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor,
               cfg: PreferenceConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weighted per-example losses, desirable rewards, undesirable rewards); kl: the (detached, >= 0) estimate
    of KL(policy || reference) from mismatched prompt/answer pairs. Losses are ordered desirable first."""
    ratio = logps - ref_logps
    chosen, rejected = ratio[desirable], ratio[~desirable]
    chosen_losses = 1 - torch.sigmoid(cfg.beta * (chosen - kl))
    rejected_losses = 1 - torch.sigmoid(cfg.beta * (kl - rejected))
    losses = torch.cat([cfg.desirable_weight * chosen_losses, cfg.undesirable_weight * rejected_losses])
    return losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach()


def pairwise_rm_losses(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss of a reward model: -log s(r_chosen - r_rejected) per pair."""
    return -F.logsigmoid(chosen - rejected)


# ---- rewards logged per step ---------------------------------------------------------------------------------
class RewardStats:
    """Sums of the rewards seen since the last `read` (training batches only)."""

    def __init__(self) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64)  # chosen sum, n, rejected sum, n, correct pairs, pairs

    def add(self, chosen: torch.Tensor, rejected: torch.Tensor, paired: bool = True) -> None:
        chosen, rejected = chosen.detach().double().cpu(), rejected.detach().double().cpu()
        correct = float((chosen > rejected).sum()) if paired else 0.0
        self.sums += torch.tensor([float(chosen.sum()), chosen.numel(), float(rejected.sum()), rejected.numel(),
                                   correct, chosen.numel() if paired else 0])

    def read(self, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, float]:
        """rewards/chosen, rejected (means), accuracy (share of pairs with chosen > rejected), margin (mean
        chosen - mean rejected), summed over processes by `reduce`; then starts again from zero."""
        sums = reduce(self.sums.float()).double().cpu()
        self.sums.zero_()
        out = {}
        if sums[1] > 0:
            out["rewards/chosen"] = float(sums[0] / sums[1])
        if sums[3] > 0:
            out["rewards/rejected"] = float(sums[2] / sums[3])
        if sums[1] > 0 and sums[3] > 0:
            out["rewards/margin"] = out["rewards/chosen"] - out["rewards/rejected"]
        if sums[5] > 0:
            out["rewards/accuracy"] = float(sums[4] / sums[5])
        return {k: round(v, 5) for k, v in out.items()}


# ---- model side ----------------------------------------------------------------------------------------------
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP / DeepSpeed wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


@cache
def _accepts_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each row's target tokens, target count per row); labels are IGNORE outside answers.
    Logits are computed only where a target is (`logits_to_keep` as a mask) when the model accepts it."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    keep = targets != IGNORE
    inputs = {"input_ids": input_ids, "use_cache": False}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    inner = unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if _accepts_logits_to_keep(type(inner)):
        logits = model(**inputs, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.shape[-1])
    else:
        logits = model(**inputs).logits[keep]
    token_logps = torch.gather(logits.float().log_softmax(-1), 1, targets[keep].unsqueeze(1)).squeeze(1)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, rows, token_logps), keep.sum(-1)


REF_ADAPTER = "ref"
"""Name of a frozen copy of the starting adapter, the reference when training continues an adapter."""


@contextmanager
def reference_mode(model: torch.nn.Module, ref_model: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """The reference policy under no_grad: `ref_model` when given; else the model with its frozen "ref" adapter
    active when it has one (training continues an adapter); else the model with its adapter disabled (no second
    copy in memory when training LoRA)."""
    with torch.no_grad():
        if ref_model is not None:
            yield ref_model
            return
        inner = unwrap(model)
        if not hasattr(inner, "disable_adapter"):
            raise ValueError("a reference model is needed: the trained model has no adapter to disable")
        was_training = inner.training
        inner.eval()  # no dropout in the reference pass
        try:
            if REF_ADAPTER in inner.peft_config:
                flags = [(p, p.requires_grad) for p in inner.parameters()]
                inner.set_adapter(REF_ADAPTER)
                try:
                    yield inner
                finally:
                    inner.set_adapter("default")
                    for param, flag in flags:
                        param.requires_grad_(flag)
            else:
                with inner.disable_adapter():
                    yield inner
        finally:
            inner.train(was_training)


def _split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = t.shape[0] // 2
    return t[:half], t[half:]


def pair_loss(stage: str, cfg: PreferenceConfig, model: torch.nn.Module, batch: dict[str, torch.Tensor],
              stats: RewardStats | None, ref_model: torch.nn.Module | None = None) -> torch.Tensor:
    """Summed loss of a batch of pairs (chosen rows, then rejected rows) for stage dpo | orpo | simpo."""
    logps, counts = sequence_logps(model, batch["input_ids"], batch["labels"], batch.get("position_ids"))
    chosen, rejected = _split(logps)
    n_chosen, n_rejected = _split(counts)
    if stage == "dpo":
        with reference_mode(model, ref_model) as ref:
            ref_logps, _ = sequence_logps(ref, batch["input_ids"], batch["labels"], batch.get("position_ids"))
        ref_chosen, ref_rejected = _split(ref_logps)
        losses, r_chosen, r_rejected = dpo_losses(chosen, rejected, ref_chosen, ref_rejected, cfg,
                                                  n_chosen, n_rejected)
        total = losses.sum()
    else:
        chosen_avg, rejected_avg = chosen / n_chosen.clamp(min=1), rejected / n_rejected.clamp(min=1)
        if stage == "orpo":
            losses, r_chosen, r_rejected = orpo_losses(chosen_avg, rejected_avg, cfg.beta)
            nll = -chosen.sum() / n_chosen.sum().clamp(min=1)  # the chosen answers' mean token NLL
            total = losses.sum() + nll * chosen.shape[0]
        else:
            losses, r_chosen, r_rejected = simpo_losses(chosen_avg, rejected_avg, cfg)
            total = losses.sum()
    if stats is not None and model.training:
        stats.add(r_chosen, r_rejected)
    return total


def kto_loss(cfg: PreferenceConfig, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             stats: RewardStats | None, ref_model: torch.nn.Module | None = None) -> torch.Tensor:
    """Summed KTO loss of a batch of single answers with kto_label, and their mismatched KL rows (kl_*)."""
    logps, _ = sequence_logps(model, batch["input_ids"], batch["labels"], batch.get("position_ids"))
    with torch.no_grad():
        kl_logps, _ = sequence_logps(model, batch["kl_input_ids"], batch["kl_labels"], batch.get("kl_position_ids"))
    with reference_mode(model, ref_model) as ref:
        ref_logps, _ = sequence_logps(ref, batch["input_ids"], batch["labels"], batch.get("position_ids"))
        ref_kl, _ = sequence_logps(ref, batch["kl_input_ids"], batch["kl_labels"], batch.get("kl_position_ids"))
    kl = (kl_logps - ref_kl).mean().detach().clamp(min=0)
    losses, r_chosen, r_rejected = kto_losses(logps, ref_logps, batch["kto_label"], kl, cfg)
    if stats is not None and model.training:
        stats.add(r_chosen, r_rejected, paired=False)
    return losses.sum()


def reward_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One scalar per row: the sequence-classification head (num_labels=1), which transformers reads at the
    row's last non-padding token (as it will when the reward model is used later)."""
    out = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), use_cache=False)
    return out.logits.squeeze(-1).float()


def rm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], stats: RewardStats | None) -> torch.Tensor:
    """Summed pairwise loss of a reward model over a batch of pairs; accuracy = share with r_chosen > r_rejected."""
    chosen, rejected = _split(reward_scores(model, batch))
    if stats is not None and model.training:
        stats.add(chosen, rejected)
    return pairwise_rm_losses(chosen, rejected).sum()
