"""Knowledge-distillation losses against direct formulas, alpha = 0 against the SFT loss, the top-k cache,
and the logit-distillation route through the real training loop."""

from __future__ import annotations

import math

import pytest
import torch

from tasktune.train.distill import (
    KDSettings,
    TopKCache,
    distill_summed_loss,
    forward_kl,
    generalized_jsd,
    kd_per_token,
    reverse_kl,
    soft_cross_entropy,
)
from tasktune.train.step import summed_loss


def _direct(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float, beta: float = 0.5):
    """The divergences written out element by element (float64), one value per row."""
    out = []
    for s_row, t_row in zip(student.double(), teacher.double(), strict=True):
        q = [math.exp(v) for v in (s_row / temperature).tolist()]
        p = [math.exp(v) for v in (t_row / temperature).tolist()]
        q = [v / sum(q) for v in q]
        p = [v / sum(p) for v in p]

        def kl(a, b):
            return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)

        if kind == "forward_kl":
            value = kl(p, q)
        elif kind == "reverse_kl":
            value = kl(q, p)
        else:
            m = [beta * x + (1 - beta) * y for x, y in zip(p, q, strict=True)]
            value = beta * kl(p, m) + (1 - beta) * kl(q, m)
        out.append(value * temperature**2)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_losses_match_the_direct_formulas(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 11) * 3, torch.randn(6, 11) * 3
    for kind, value in (("forward_kl", forward_kl(student, teacher, temperature)),
                        ("reverse_kl", reverse_kl(student, teacher, temperature)),
                        ("jsd", generalized_jsd(student, teacher, 0.3, temperature))):
        torch.testing.assert_close(value.double(), _direct(student, teacher, kind, temperature, 0.3),
                                   rtol=1e-4, atol=1e-6)
    assert torch.all(forward_kl(teacher, teacher, temperature).abs() < 1e-5)  # zero for identical logits


def test_jsd_tends_to_the_kls_at_the_ends_and_the_dispatch_picks_the_loss():
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 7), torch.randn(4, 7)
    # beta -> 0: JSD / beta -> KL(p || q) (first order); beta = 0.5: the symmetric JS divergence
    small = generalized_jsd(student, teacher, 1e-4) / 1e-4
    torch.testing.assert_close(small, forward_kl(student, teacher), rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(generalized_jsd(student, teacher, 0.5), generalized_jsd(teacher, student, 0.5))
    for kind, fn in (("forward_kl", forward_kl), ("reverse_kl", reverse_kl)):
        torch.testing.assert_close(kd_per_token(student, teacher, KDSettings(kind, temperature=2.0)),
                                   fn(student, teacher, 2.0))


def test_soft_cross_entropy_equals_hard_cross_entropy_on_one_hot_targets():
    torch.manual_seed(2)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot),
                               torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))


@pytest.fixture(scope="module")
def tiny_pair(tiny_llama_dir):
    """(student, teacher, a batch with targets): the tiny Llama and a perturbed copy of it."""
    from tasktune.config.schema import ModelConfig
    from tasktune.model.load import load_model

    student = load_model(ModelConfig(name_or_path=str(tiny_llama_dir)))
    teacher = load_model(ModelConfig(name_or_path=str(tiny_llama_dir)))
    torch.manual_seed(3)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    ids = torch.randint(5, 500, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 10:] = -100
    positions = torch.arange(12).repeat(2, 1)
    return student, teacher, {"input_ids": ids, "labels": labels, "position_ids": positions}


def test_alpha_zero_is_exactly_the_sft_loss(tiny_pair):
    student, teacher, batch = tiny_pair
    with torch.no_grad():
        sft = summed_loss(student, batch)
        kd0 = distill_summed_loss(student, batch, KDSettings(alpha=0.0), teacher=teacher)
        assert torch.equal(kd0, sft)
        logits = student(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        direct = torch.nn.functional.cross_entropy(logits[targets != -100], targets[targets != -100], reduction="sum")
        torch.testing.assert_close(kd0, direct, rtol=1e-4, atol=1e-4)
        mixed = distill_summed_loss(student, batch, KDSettings(alpha=0.5), teacher=teacher)
        pure = distill_summed_loss(student, batch, KDSettings(alpha=1.0), teacher=teacher)
    torch.testing.assert_close(mixed, 0.5 * pure + 0.5 * sft)
    assert pure > 0


def test_topk_cache_with_the_whole_vocabulary_equals_the_teacher_on_the_fly(tiny_pair, tmp_path):
    from tasktune.data.collate import collate

    student, teacher, batch = tiny_pair
    units = [{"input_ids": batch["input_ids"][i].tolist(), "labels": batch["labels"][i].tolist(), "kd_index": i}
             for i in range(2)]
    vocab = student.config.vocab_size
    cache = TopKCache.load(TopKCache.build(teacher, units, vocab, collate, 0).save(tmp_path / "topk.pt"))
    assert cache.entries[1][0].shape == (int((batch["labels"][1, 1:] != -100).sum()), vocab)
    indexed = {**batch, "kd_index": torch.tensor([0, 1])}
    kd = KDSettings("reverse_kl", alpha=1.0, temperature=2.0)
    with torch.no_grad():
        on_the_fly = distill_summed_loss(student, batch, kd, teacher=teacher)
        cached = distill_summed_loss(student, indexed, kd, topk=cache)
    torch.testing.assert_close(cached, on_the_fly, rtol=2e-3, atol=1e-3)  # the cache keeps float16 log-probs
    small = TopKCache.build(teacher, units, 4, collate, 0)
    with torch.no_grad():
        assert torch.isfinite(distill_summed_loss(student, indexed, kd, topk=small))


def test_the_distillation_route_trains_through_the_loop(tiny_llama_dir, tmp_path):
    from tasktune.config.load import load_config
    from tasktune.model.load import load_model
    from tasktune.train.loop import train
    from tasktune.train.route import logit_distill_route

    cfg = load_config(None, [f"model.name_or_path={tiny_llama_dir}", "data.datasets=[demo_ner_instruct]",
                             "data.dataset_dir=data", "data.max_samples=8", "data.val_size=0", "data.cutoff_len=128",
                             "train.max_steps=2", "train.batch_size=2", "train.finetuning=full",
                             f"output.dir={tmp_path / 'kd'}"])
    teacher = load_model(cfg.model)
    result = train(cfg, route=logit_distill_route(KDSettings("jsd", alpha=0.7, temperature=2.0), teacher=teacher))
    assert result.global_step == 2 and math.isfinite(result.last_loss)
    assert (tmp_path / "kd" / "model" / "config.json").is_file()
    with pytest.raises(ValueError, match="alpha"):
        logit_distill_route(KDSettings(alpha=1.5), teacher=teacher)
