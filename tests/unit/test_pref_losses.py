"""Parity with TRL: tasktune's per-step DPO, ORPO, SimPO and KTO losses equal TRL's own code on a tiny model.

TRL computes its reference values through its trainers' loss code (DPOTrainer._compute_loss,
KTOTrainer._compute_loss, ORPOTrainer.odds_ratio_loss, CPOTrainer.cpo_loss / get_batch_logps), called on a
stand-in for the trainer object; the model it sees returns per-token log-probs of the same tiny model
(TRL's selective_log_softmax), as its fused LM head does. No TRL trainer is built or run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import nullcontext
from types import MethodType, SimpleNamespace

import pytest
import torch

from tasktune.config.preference import PreferenceConfig
from tasktune.config.schema import DataConfig, LoraConfig, ModelConfig, TrainConfig
from tasktune.data.preference import build_preference_data, collate_kto, collate_pairs
from tasktune.model.adapters import prepare_for_training
from tasktune.model.load import load_model, load_tokenizer
from tasktune.train import preference as P

trl_utils = pytest.importorskip("trl.trainer.utils")

PAIRS = [
    {"prompt": "Extract the entities: Ada Park joined Acme in Oslo.",
     "chosen": '[{"type": "PER", "text": "Ada Park"}, {"type": "ORG", "text": "Acme"}]',
     "rejected": '[{"type": "LOC", "text": "Ada Park"}]'},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven, probably, or a small dog."},
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
]


@pytest.fixture(scope="module")
def policy(tiny_llama_dir):
    """The tiny Llama with a LoRA adapter whose B is random (policy != reference), no dropout; seeded first,
    so the adapter (and the float32 rounding the comparisons allow for) is the same in any test order."""
    torch.manual_seed(0)
    model = prepare_for_training(load_model(ModelConfig(name_or_path=str(tiny_llama_dir))),
                                 TrainConfig(finetuning="lora"), LoraConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.3)
    return model.train()


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return load_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir)))


def _units(tmp_path, tokenizer, rows, kto=False):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return build_preference_data(DataConfig(datasets=[str(path)], cutoff_len=256), tokenizer, None, kto=kto).train


def _lengths(units, key):
    return [len(u[key]) for u in units]


def _mask(lengths, width):
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def trl_model(model, reference=False):
    """What TRL's trainers call: per-token log-probs of `labels` (0 where -100), as TRL's fused LM head."""

    def forward(input_ids, attention_mask, labels, **_):
        with model.disable_adapter() if reference else nullcontext():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        targets = labels[:, 1:]
        logps = trl_utils.selective_log_softmax(logits[:, :-1].float(), targets.clamp(min=0))
        zeros = torch.zeros_like(logps)
        return SimpleNamespace(log_probs=logps * (targets != -100), entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())

    return forward


def _trainer_stub(model, **attrs):
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda t: t, gather=lambda t: t,
                                  unwrap_model=lambda m: m)
    return SimpleNamespace(model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
                           args=SimpleNamespace(), **attrs)


@pytest.mark.parametrize(("loss_type", "smoothing"), [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0),
                                                      ("sigmoid", 0.2)])
def test_dpo_matches_trl(policy, tokenizer, tmp_path, loss_type, smoothing):
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer

    cfg = PreferenceConfig(beta=0.3, loss_type=loss_type, label_smoothing=smoothing)
    units = _units(tmp_path, tokenizer, PAIRS)
    batch = collate_pairs(units, tokenizer.pad_token_id)
    stats = P.RewardStats()
    ours = P.pair_loss("dpo", cfg, policy, batch, stats) / len(units)

    ids = batch["input_ids"]
    attention = _mask(_lengths(units, "input_ids") + _lengths(units, "rejected_ids"), ids.shape[1])
    completion = (batch["labels"] != -100).long()
    labels = ids.masked_fill(completion == 0, -100)
    with torch.no_grad():
        ref = trl_model(policy, reference=True)(ids, attention, labels).log_probs.sum(1)
    ref_chosen, ref_rejected = ref.chunk(2)
    if smoothing:  # TRL 1.16's DPO "sigmoid" has no label smoothing; its CPO sigmoid (cDPO form) does
        logps = trl_model(policy)(ids, attention, labels).log_probs.sum(1)
        chosen, rejected = logps.chunk(2)
        stub = _trainer_stub(policy, beta=cfg.beta, label_smoothing=smoothing, loss_type="sigmoid", alpha=0.0)
        theirs = CPOTrainer.cpo_loss(stub, chosen - ref_chosen, rejected - ref_rejected)[0].mean()
    else:
        stub = _trainer_stub(policy, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                             loss_types=[loss_type], loss_weights=[1.0], beta=cfg.beta, label_smoothing=smoothing,
                             use_weighting=False)
        inputs = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion,
                  "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
        theirs = DPOTrainer._compute_loss(stub, trl_model(policy), inputs, return_outputs=False)
        logged = stats.read()
        for key in ("chosen", "rejected"):
            assert logged[f"rewards/{key}"] == pytest.approx(stub._metrics["train"][f"rewards/{key}"][0], abs=1e-5)
        assert logged["rewards/accuracy"] == pytest.approx(stub._metrics["train"]["rewards/accuracies"][0], abs=1e-5)
        assert logged["rewards/margin"] == pytest.approx(stub._metrics["train"]["rewards/margins"][0], abs=1e-5)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)
    assert float(ours) > 0


def _logits(model, batch, units):
    ids = batch["input_ids"]
    attention = _mask(_lengths(units, "input_ids") + _lengths(units, "rejected_ids"), ids.shape[1])
    return model(input_ids=ids, attention_mask=attention).logits


def test_orpo_matches_trl(policy, tokenizer, tmp_path):
    from trl.experimental.orpo import ORPOTrainer

    cfg = PreferenceConfig(beta=0.2)
    units = _units(tmp_path, tokenizer, PAIRS)
    batch = collate_pairs(units, tokenizer.pad_token_id)
    ours = P.pair_loss("orpo", cfg, policy, batch, None) / len(units)

    logits, labels, n = _logits(policy, batch, units), batch["labels"], len(units)
    avg = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    stub = _trainer_stub(policy, beta=cfg.beta)
    losses = ORPOTrainer.odds_ratio_loss(stub, avg[:n], avg[n:])[0]
    # ORPO's NLL of the chosen answers (ORPOTrainer's cross_entropy_loss), on the answer tokens only
    nll = torch.nn.CrossEntropyLoss()(logits[:n, :-1].reshape(-1, logits.shape[-1]), labels[:n, 1:].reshape(-1))
    theirs = nll - losses.mean()
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_simpo_matches_trl(policy, tokenizer, tmp_path, smoothing):
    from trl.experimental.cpo import CPOTrainer

    cfg = PreferenceConfig(beta=2.0, simpo_gamma=0.8, label_smoothing=smoothing)
    units = _units(tmp_path, tokenizer, PAIRS)
    batch = collate_pairs(units, tokenizer.pad_token_id)
    ours = P.pair_loss("simpo", cfg, policy, batch, None) / len(units)

    n = len(units)
    avg = CPOTrainer.get_batch_logps(_logits(policy, batch, units), batch["labels"], average_log_prob=True)
    stub = _trainer_stub(policy, beta=cfg.beta, label_smoothing=smoothing, loss_type="simpo", alpha=0.0,
                         simpo_gamma=cfg.simpo_gamma)
    theirs = CPOTrainer.cpo_loss(stub, avg[:n], avg[n:])[0].mean()  # cpo_alpha=0: SimPO without the NLL term
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)


def test_kto_matches_trl(policy, tokenizer, tmp_path):
    from trl import KTOTrainer

    rows = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in PAIRS for side in ("chosen", "rejected")][:5]
    cfg = PreferenceConfig(beta=0.4, desirable_weight=1.0, undesirable_weight=1.5)
    units = _units(tmp_path, tokenizer, rows, kto=True)
    batch = collate_kto(units, tokenizer.pad_token_id)
    ours = P.kto_loss(cfg, policy, batch, None) / len(units)

    ids, kl_ids = batch["input_ids"], batch["kl_input_ids"]
    inputs = {"input_ids": ids, "attention_mask": _mask(_lengths(units, "input_ids"), ids.shape[1]),
              "completion_mask": (batch["labels"] != -100).long(), "KL_input_ids": kl_ids,
              "KL_attention_mask": _mask(_lengths(units, "kl_ids"), kl_ids.shape[1]),
              "KL_completion_mask": (batch["kl_labels"] != -100).long(), "label": batch["kto_label"]}
    ref_stub = _trainer_stub(policy, calculate_KL=True)
    with torch.no_grad():
        ref = trl_model(policy, reference=True)
        labels = ids.masked_fill(inputs["completion_mask"] == 0, -100)
        inputs["ref_logps"] = ref(ids, inputs["attention_mask"], labels).log_probs.sum(1)
        inputs["ref_KL_logps"] = KTOTrainer._compute_kl_logps(ref_stub, ref, inputs)
    stub = _trainer_stub(policy, calculate_KL=True, precompute_ref_logps=True, loss_type="kto", beta=cfg.beta,
                         desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
    stub._compute_kl_logps = MethodType(KTOTrainer._compute_kl_logps, stub)
    theirs = KTOTrainer._compute_loss(stub, trl_model(policy), inputs, return_outputs=False)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)


def test_reward_model_loss_and_accuracy():
    stats = P.RewardStats()
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, -1.0])
    stats.add(chosen, rejected)
    loss = P.pairwise_rm_losses(chosen, rejected)
    assert torch.allclose(loss, torch.nn.functional.softplus(rejected - chosen))
    logged = stats.read()
    assert logged["rewards/accuracy"] == pytest.approx(2 / 3, abs=1e-5)
    assert logged["rewards/margin"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-5)
    assert stats.read() == {}  # read resets the window


def test_sequence_logps_skip_prompt_and_padding(policy, tokenizer, tmp_path):
    units = _units(tmp_path, tokenizer, PAIRS)
    batch = collate_pairs(units, tokenizer.pad_token_id)
    sums, counts = P.sequence_logps(policy, batch["input_ids"], batch["labels"], batch["position_ids"])
    assert counts.tolist() == [int((torch.tensor(u[k][1:]) != -100).sum()) for k in ("labels", "rejected_labels")
                               for u in units]
    assert (sums < 0).all()
