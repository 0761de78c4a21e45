"""Preference data: LLaMA-Factory's ranking / KTO layouts and plain prompt/chosen/rejected JSONL load unchanged,
answers go through the chat template with loss on the answer only, and pair faults land in the report."""

from __future__ import annotations

import json

import pytest

from tasktune.config.schema import DataConfig, ModelConfig
from tasktune.data.preference import build_preference_data, collate_pairs
from tasktune.data.registry import resolve_dataset
from tasktune.data.report import DataError
from tasktune.model.load import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return load_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir)))


@pytest.fixture(scope="module")
def pref_dir(tmp_path_factory):
    """A dataset_dir in LLaMA-Factory's layout: alpaca ranking, sharegpt ranking, KTO (openai tags), plain."""
    root = tmp_path_factory.mktemp("prefs")
    alpaca = [{"instruction": "Extract the entities.", "input": f"Ada Park {i} joined Acme.",
               "chosen": f'[{{"type": "PER", "text": "Ada Park {i}"}}]', "rejected": "[]"} for i in range(4)]
    sharegpt = [{"conversations": [{"from": "system", "value": "Be brief."},
                                   {"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": "Hello."},
                                   {"from": "human", "value": "Colour?"}],
                 "chosen": {"from": "gpt", "value": "Blue."}, "rejected": {"from": "gpt", "value": "Seven."}}
                for i in range(3)]
    kto = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}],
            "label": i % 2 == 0} for i in range(4)]
    (root / "alpaca_pairs.json").write_text(json.dumps(alpaca))
    (root / "sharegpt_pairs.json").write_text(json.dumps(sharegpt))
    (root / "kto.json").write_text(json.dumps(kto))
    info = {
        "alpaca_pairs": {"file_name": "alpaca_pairs.json", "ranking": True,
                         "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                     "rejected": "rejected"}},
        "sharegpt_pairs": {"file_name": "sharegpt_pairs.json", "ranking": True, "formatting": "sharegpt",
                           "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "kto_rows": {"file_name": "kto.json", "formatting": "sharegpt",
                     "columns": {"messages": "messages", "kto_tag": "label"},
                     "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                              "assistant_tag": "assistant"}},
    }
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def _answer_text(tokenizer, ids, labels):
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])


def test_llamafactory_ranking_layouts_load_with_loss_on_answers_only(tokenizer, pref_dir):
    cfg = DataConfig(datasets=["alpaca_pairs", "sharegpt_pairs"], dataset_dir=str(pref_dir), cutoff_len=256)
    data = build_preference_data(cfg, tokenizer, None)
    assert len(data.train) == 7 and len(data.report) == 0
    first = data.train[0]
    answer = _answer_text(tokenizer, first["input_ids"], first["labels"])
    assert answer == '[{"type": "PER", "text": "Ada Park 0"}]<|im_end|>'
    assert _answer_text(tokenizer, first["rejected_ids"], first["rejected_labels"]) == "[]<|im_end|>"
    prompt = tokenizer.decode(first["input_ids"])
    assert "Extract the entities.\nAda Park 0 joined Acme." in prompt  # instruction + "\n" + input
    share = data.train[4]
    text = tokenizer.decode(share["input_ids"])
    assert "Be brief." in text and "Hello." in text  # system and history turns are in the prompt ...
    assert _answer_text(tokenizer, share["input_ids"], share["labels"]) == "Blue.<|im_end|>"  # ... without loss
    batch = collate_pairs(data.train[:2], tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows


def test_kto_rows_load_with_their_labels(tokenizer, pref_dir):
    cfg = DataConfig(datasets=["kto_rows"], dataset_dir=str(pref_dir), cutoff_len=128)
    data = build_preference_data(cfg, tokenizer, None, kto=True)
    assert [u["kto_label"] for u in data.train] == [True, False, True, False]
    assert _answer_text(tokenizer, data.train[0]["input_ids"], data.train[0]["labels"]) == "A0.<|im_end|>"
    # the KL row pairs the prompt with another row's answer
    assert _answer_text(tokenizer, data.train[0]["kl_ids"], data.train[0]["kl_labels"]) == "A1.<|im_end|>"
    with pytest.raises(DataError, match="does not hold chosen/rejected pairs"):
        build_preference_data(cfg, tokenizer, None, kto=False)


def test_plain_jsonl_and_pair_faults_are_reported(tokenizer, tmp_path):
    long = "word " * 300
    rows = [
        {"prompt": "Good row?", "chosen": "Yes.", "rejected": "No."},
        {"prompt": [{"role": "system", "content": "S."}, {"role": "user", "content": "Messages?"}],
         "chosen": [{"role": "assistant", "content": "Fine."}], "rejected": [{"role": "assistant", "content": "Bad."}]},
        {"prompt": "Same?", "chosen": "Same.", "rejected": "Same."},
        {"prompt": "Empty?", "chosen": "Yes.", "rejected": "  "},
        {"prompt": "Long?", "chosen": "Yes.", "rejected": long},
        {"prompt": "No rejected?", "chosen": "Yes."},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(datasets=[str(path)], cutoff_len=64, overlong="reject", max_rejected_share=1.0)
    data = build_preference_data(cfg, tokenizer, tmp_path)
    assert len(data.train) == 2
    assert data.report.counts() == {"identical_pair": 1, "empty_rejected": 1, "overlong_pair": 1,
                                    "missing_column": 1}
    rejected = [json.loads(x) for x in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert {r["source"].rsplit(":", 1)[1] for r in rejected} == {"3", "4", "5", "6"}
    # with overlong=truncate the long side is cut to cutoff_len and reported as truncated
    cfg = DataConfig(datasets=[str(path)], cutoff_len=64, max_rejected_share=1.0)
    data = build_preference_data(cfg, tokenizer, None)
    assert len(data.train) == 3 and len(data.report.truncated) == 1
    assert max(len(u["rejected_ids"]) for u in data.train) == 64


def test_sft_stage_still_refuses_preference_entries(pref_dir):
    with pytest.raises(DataError, match="is ranking .* train.stage=dpo"):
        resolve_dataset("alpaca_pairs", pref_dir)
    with pytest.raises(DataError, match="kto_tag .* train.stage=kto"):
        resolve_dataset("kto_rows", pref_dir)
