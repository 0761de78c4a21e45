"""Knowledge-distillation losses, and the summed loss of the logit-distillation route of the training loop.

Per target token, with student logits s and teacher logits t softened by the temperature T
(p = softmax(t / T), q = softmax(s / T)):

    forward_kl   KL(p || q) = sum p (log p - log q)          (mode covering; Hinton et al. 2015)
    reverse_kl   KL(q || p) = sum q (log q - log p)          (mode seeking; MiniLLM)
    jsd          beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
                 (TRL GKD's generalized JSD: beta -> 0 is forward KL, beta -> 1 reverse KL, in the limit)

multiplied by T^2 so that the gradient scale does not shrink with the temperature. The route's loss is
`alpha * KD + (1 - alpha) * CE`, both summed over the target tokens (the loop divides by their count);
alpha = 0 is the SFT loss itself (`train.step.summed_loss`); the teacher is then not run at all.

Teacher logits come from the teacher model on the fly (`no_grad`, same inputs), or from a cache of its
top-k log-probabilities (`TopKCache`, computed once, saved to disk): student and teacher are then both
renormalised over the teacher's top-k tokens, as axolotl's KD plugin does with its cached log-probs.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from tasktune.train.step import IGNORE, shifted_targets, summed_loss

KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")


@dataclass(frozen=True)
class KDSettings:
    loss: str = "forward_kl"
    """forward_kl | reverse_kl | jsd."""
    alpha: float = 0.5
    """Weight of the KD term; 1 - alpha weighs the cross-entropy on the reference tokens."""
    temperature: float = 1.0
    """Softens both distributions; the KD term is multiplied by temperature^2."""
    beta: float = 0.5
    """jsd: weight of the teacher in the mixture (0 < beta < 1)."""

    def check(self) -> None:
        if self.loss not in KD_LOSSES:
            raise ValueError(f"KD loss {self.loss!r}: expected one of {', '.join(KD_LOSSES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"KD alpha={self.alpha}: must be within [0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"KD temperature={self.temperature}: must be positive")
        if self.loss == "jsd" and not 0.0 < self.beta < 1.0:
            raise ValueError(f"KD beta={self.beta}: must be within (0, 1) for jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities (0 log 0 = 0)."""
    return (log_p.exp() * (log_p - log_q)).nan_to_num(0.0).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token (rows of the last dimension), times temperature^2."""
    log_q = F.log_softmax(student_logits.float() / temperature, -1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, -1)
    return _kl(log_p, log_q) * temperature**2


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(student || teacher) per token, times temperature^2."""
    log_q = F.log_softmax(student_logits.float() / temperature, -1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, -1)
    return _kl(log_q, log_p) * temperature**2


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """beta KL(teacher || m) + (1 - beta) KL(student || m), m = beta teacher + (1 - beta) student; times T^2."""
    log_q = F.log_softmax(student_logits.float() / temperature, -1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, -1)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    return (beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)) * temperature**2


def kd_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kd: KDSettings) -> torch.Tensor:
    """The divergence `kd.loss` for each row of [N, V] logits."""
    if kd.loss == "forward_kl":
        return forward_kl(student_logits, teacher_logits, kd.temperature)
    if kd.loss == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, kd.temperature)
    return generalized_jsd(student_logits, teacher_logits, kd.beta, kd.temperature)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Summed -sum_c target_c log softmax(logits)_c over the rows: cross-entropy on a teacher's label
    distribution (equal to the hard-label cross-entropy when the targets are one-hot)."""
    return -(target_probs.float() * F.log_softmax(logits.float(), -1)).sum()


# ---- the route's loss ----------------------------------------------------------------------------------


@cache
def _accepts_logits_to_keep(owner: type) -> bool:
    return "logits_to_keep" in inspect.signature(owner.forward).parameters


def _hf_class(model: torch.nn.Module) -> type:
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return type(model)


def target_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """[N, V] logits at the N positions `keep` marks (row-major order), computing only those where the model
    takes `logits_to_keep` as a mask (as `train.step.summed_loss` does)."""
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    for key in ("position_ids", "attention_mask"):
        if batch.get(key) is not None:
            inputs[key] = batch[key]
    if _accepts_logits_to_keep(_hf_class(model)):
        logits = model(**inputs, logits_to_keep=keep).logits
        return logits.reshape(-1, logits.shape[-1])
    return model(**inputs).logits[keep]


class TopKCache:
    """The teacher's top-k log-probabilities at every target token of every training unit, by unit index.

    Built once (`build`), saved with torch.save, so a second epoch or a second run needs no teacher."""

    def __init__(self, k: int, entries: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.k = k
        self.entries = entries or {}
        """unit index -> (log-probs [n_targets, k] float16, token ids [n_targets, k] int32)."""

    @classmethod
    def build(cls, teacher: torch.nn.Module, units: list[dict], k: int, collate, pad_id: int,
              batch_size: int = 4) -> TopKCache:
        found = cls(k)
        teacher.eval()
        device = next(teacher.parameters()).device
        with torch.no_grad():
            for start in range(0, len(units), batch_size):
                chunk = units[start : start + batch_size]
                batch = {key: value.to(device) for key, value in collate(chunk, pad_id).items()}
                keep = shifted_targets(batch["labels"]) != IGNORE
                logprobs = F.log_softmax(target_logits(teacher, batch, keep).float(), -1)
                values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
                counts = keep.sum(1).tolist()
                for unit, part_values, part_ids in zip(chunk, values.split(counts), ids.split(counts), strict=True):
                    found.entries[int(unit["kd_index"])] = (part_values.half().cpu(), part_ids.int().cpu())
        return found

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"k": self.k, "entries": self.entries}, path)
        return path

    @classmethod
    def load(cls, path: Path) -> TopKCache:
        data = torch.load(path, weights_only=True)
        return cls(data["k"], data["entries"])

    def for_batch(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs, ids) of the units `indices`, concatenated in batch order."""
        parts = [self.entries[int(i)] for i in indices.tolist()]
        values = torch.cat([p[0] for p in parts]).float().to(device)
        return values, torch.cat([p[1] for p in parts]).long().to(device)


def distill_summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], kd: KDSettings,
                        teacher: torch.nn.Module | None = None, topk: TopKCache | None = None) -> torch.Tensor:
    """alpha * sum of KD over the target tokens + (1 - alpha) * sum of their cross-entropies.

    The teacher (same vocabulary) runs under no_grad on the same inputs, or its cached top-k is used."""
    if kd.alpha == 0:  # the SFT loss itself, teacher not run
        return summed_loss(model, batch)
    targets = shifted_targets(batch["labels"])
    keep = targets != IGNORE
    logits = target_logits(model, batch, keep).float()
    ce = F.cross_entropy(logits, targets[keep], reduction="sum")
    if topk is not None:
        teacher_logprobs, ids = topk.for_batch(batch["kd_index"], logits.device)
        kd_sum = kd_per_token(logits.gather(-1, ids), teacher_logprobs, kd).sum()
    else:
        if teacher is None:
            raise ValueError("logit distillation needs a teacher model or a top-k cache")
        if next(teacher.parameters()).device != logits.device:
            teacher.to(logits.device)
        with torch.no_grad():
            teacher_logits = target_logits(teacher, batch, keep).float()
        kd_sum = kd_per_token(logits, teacher_logits, kd).sum()
    return kd.alpha * kd_sum + (1 - kd.alpha) * ce
