"""The preference stages through the one training loop on a tiny Llama: logs, saved adapters, reference."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_DATA, needs_shared

from tasktune.config import load_config
from tasktune.train.loop import train

LF_DEMO = SHARED_DATA / "instruct" / "llamafactory_demo"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = [{"prompt": f"Name colour {i}.", "chosen": f"Colour {i} is {c}.", "rejected": f"I do not know {i}."}
            for i, c in enumerate(["red", "green", "blue", "amber"] * 2)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _cfg(model_dir, data, out, *extra):
    return load_config(None, [
        f"model.name_or_path={model_dir}", f"data.datasets={data}", f"output.dir={out}", "data.cutoff_len=128",
        "train.batch_size=2", "train.logging_steps=1", "train.learning_rate=5e-3", "train.mixed_precision=no",
        "train.max_steps=3", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0", *extra])


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_dpo_logs_rewards_and_starts_at_log2(tiny_llama_dir, pairs, tmp_path):
    out = tmp_path / "dpo"
    result = train(_cfg(tiny_llama_dir, pairs, out, "train.stage=dpo", "pref.beta=0.5"))
    steps = [r for r in _log(out) if "loss" in r]
    # a fresh LoRA adapter (B = 0) equals its reference: the first DPO loss is log 2 and every reward 0
    assert steps[0]["loss"] == pytest.approx(0.69315, abs=1e-4)
    assert steps[0]["rewards/chosen"] == steps[0]["rewards/rejected"] == 0.0
    assert all({"rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"} <= set(r) for r in steps)
    assert steps[-1]["rewards/margin"] > 0 and result.last_loss < result.first_loss
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_dpo_continues_an_sft_adapter_against_it(tiny_llama_dir, pairs, tmp_path):
    """With model.adapter the reference is that adapter (a frozen copy), not the bare base."""
    sft = tmp_path / "sft"
    train(_cfg(tiny_llama_dir, pairs, sft, "train.stage=orpo"))  # any trained adapter will do as the start
    out = tmp_path / "dpo"
    train(_cfg(tiny_llama_dir, pairs, out, "train.stage=dpo", f"model.adapter={sft / 'adapter'}"))
    first = next(r for r in _log(out) if "loss" in r)
    assert first["loss"] == pytest.approx(0.69315, abs=1e-4) and first["rewards/margin"] == 0.0
    assert not (out / "adapter" / "ref").exists()


@pytest.mark.parametrize("stage", ["orpo", "simpo"])
def test_reference_free_stages_train(tiny_llama_dir, pairs, tmp_path, stage):
    result = train(_cfg(tiny_llama_dir, pairs, tmp_path / stage, f"train.stage={stage}"))
    assert result.last_loss < result.first_loss
    assert "rewards/accuracy" in _log(tmp_path / stage)[-1]


def test_kto_trains_on_labelled_answers(tiny_llama_dir, tmp_path):
    rows = [{"prompt": f"Q{i}?", "completion": f"Answer {i}.", "label": i % 3 != 0} for i in range(8)]
    path = tmp_path / "kto.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "kto"
    result = train(_cfg(tiny_llama_dir, path, out, "train.stage=kto", "train.batch_size=4"))
    assert result.global_step == 3 and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert any("rewards/chosen" in r for r in _log(out))


def test_reward_model_learns_to_rank_and_loads_with_peft(tiny_llama_dir, pairs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rm"
    result = train(_cfg(tiny_llama_dir, pairs, out, "train.stage=rm", "train.max_steps=6"))
    assert result.last_loss < result.first_loss
    assert _log(out)[-1]["rewards/accuracy"] >= 0.5
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1)
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        score = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert score.shape == (1, 1)


@needs_shared("instruct/llamafactory_demo")
@pytest.mark.parametrize(("stage", "dataset"), [("dpo", "dpo_en_demo"), ("kto", "kto_en_demo")])
def test_llamafactory_preference_demos_train_unchanged(tiny_llama_dir, tmp_path, stage, dataset):
    out = tmp_path / dataset
    result = train(_cfg(tiny_llama_dir, dataset, out, f"train.stage={stage}", f"data.dataset_dir={LF_DEMO}",
                        "data.max_samples=4", "data.cutoff_len=512", "train.max_steps=1"))
    assert result.global_step == 1 and (out / "adapter" / "adapter_model.safetensors").is_file()
