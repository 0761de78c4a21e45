"""Pipeline: bad rows are reported with file:line, the share limit stops the run, mixing is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasktune.config.schema import DataConfig
from tasktune.data.messages import Conversation, Message
from tasktune.data.pipeline import build_datasets, load_conversations, mix_datasets
from tasktune.data.report import DataError, RejectReport

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"
BAD = str(ASSETS / "bad_rows.jsonl")
BAD_COUNTS = {
    "wrong_type": 2,
    "invalid_json": 1,
    "missing_column": 1,
    "empty_response": 1,
    "empty_prompt": 1,
    "unknown_role": 1,
    "bad_turn_order": 1,
    "overlong": 2,
}


def test_bad_rows_are_reported_by_reason_and_line(smol_tokenizer, tmp_path, capsys):
    cfg = DataConfig(datasets=[BAD], cutoff_len=64, overlong="reject", packing=False, max_rejected_share=1.0)
    data = build_datasets(cfg, smol_tokenizer, tmp_path)
    assert data.report.counts() == BAD_COUNTS
    assert len(data.train) == 3 and data.stats["rows"] == 13 and data.stats["rejected"] == 10
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    lines = {r["source"].rsplit(":", 1)[1]: r["reason"] for r in rejected}
    assert lines == {
        "2": "invalid_json",
        "3": "missing_column",
        "4": "wrong_type",
        "5": "empty_response",
        "6": "empty_prompt",
        "7": "unknown_role",
        "8": "bad_turn_order",
        "9": "overlong",
        "10": "overlong",
        "12": "wrong_type",
    }
    assert all(r["source"].startswith(BAD) and r["row"] for r in rejected)
    printed = capsys.readouterr().out
    assert (
        "10 of 13 rows rejected" in printed and "unknown_role: 1" in printed and "bad_rows.jsonl:7" in printed
    )


def test_truncation_is_a_warning_and_an_empty_target_a_reject(smol_tokenizer, tmp_path):
    cfg = DataConfig(datasets=[BAD], cutoff_len=64, overlong="truncate", max_rejected_share=1.0)
    data = build_datasets(cfg, smol_tokenizer, tmp_path)
    counts = data.report.counts()
    assert counts.get("overlong") is None and counts["no_target_tokens"] == 1
    assert [s.rsplit(":", 1)[1] for s, _, _ in data.report.truncated] == ["9"]
    assert data.stats["examples"] == 4 and data.stats["truncated"] == 1
    assert all(len(u["input_ids"]) <= 64 for u in data.train)


def test_rejected_share_over_the_limit_raises_with_counts_and_path(smol_tokenizer, tmp_path):
    cfg = DataConfig(datasets=[BAD], cutoff_len=64, overlong="reject", max_rejected_share=0.5)
    with pytest.raises(DataError) as err:
        build_datasets(cfg, smol_tokenizer, tmp_path)
    message = str(err.value)
    assert "10 of 13 rows rejected (76.9%)" in message and "max_rejected_share=0.5" in message
    assert "invalid_json=1" in message and str(tmp_path / "rejected.jsonl") in message
    assert (tmp_path / "rejected.jsonl").read_text().count("\n") == 10


def test_clean_data_packs_splits_and_writes_an_empty_report(smol_tokenizer, tmp_path):
    cfg = DataConfig(
        datasets=["tiny_alpaca", "tiny_openai", "tiny_sharegpt"],
        dataset_dir=str(ASSETS),
        cutoff_len=256,
        val_size=2,
    )
    data = build_datasets(cfg, smol_tokenizer, tmp_path)
    assert (tmp_path / "rejected.jsonl").read_text() == ""
    assert data.stats["examples"] == 9 and len(data.val) == 2 and data.stats["train_examples"] == 7
    assert len(data.train) == data.stats["packed_sequences"] < 7
    restarts = sum(u["position_ids"].count(0) for u in data.train)
    assert restarts == 7  # every training example starts its own positions inside a pack
    assert all(v["position_ids"] == list(range(len(v["input_ids"]))) for v in data.val)
    assert 0 < data.stats["target_tokens"] < data.stats["tokens"]
    assert data.stats["packing_efficiency"] == pytest.approx(data.stats["tokens"] / (len(data.train) * 256))


def test_given_conversations_skip_loading(smol_tokenizer, tmp_path):
    convs = [[Conversation([Message("user", "Hi"), Message("assistant", "Hey")], source="task:1")]]
    cfg = DataConfig(datasets=["not_used"], packing=False)
    data = build_datasets(cfg, smol_tokenizer, None, conversations=convs, report=RejectReport())
    assert len(data.train) == 1 and data.stats["rows"] == 1
    assert not (tmp_path / "rejected.jsonl").exists()


def test_mixing_weights_give_expected_counts_deterministically():
    a = [f"a{i}" for i in range(6)]
    b = [f"b{i}" for i in range(3)]
    mixed = mix_datasets([a, b], [1, 2], seed=7)
    assert [len(m) for m in mixed] == [3, 6]  # total 9 split 1:2
    assert len(set(mixed[0])) == 3 and set(mixed[0]) <= set(a)  # down-sampled without repeats
    assert sorted(mixed[1]) == sorted(b * 2)  # up-sampled: every row twice
    assert mixed == mix_datasets([a, b], [1, 2], seed=7)
    assert mix_datasets([a, b], None, seed=7) == [a, b]
    with pytest.raises(DataError, match="non-negative"):
        mix_datasets([a, b], [1, -1], seed=7)


def test_load_conversations_mixes_registry_datasets():
    cfg = DataConfig(datasets=["tiny_alpaca", "tiny_openai"], dataset_dir=str(ASSETS), weights=[3, 1], seed=1)
    report = RejectReport()
    first = load_conversations(cfg, report)
    assert [len(g) for g in first] == [5, 2]  # 7 rows: round(7 * 3/4) = 5, round(7 * 1/4) = 2
    assert [[c.source for c in g] for g in first] == [
        [c.source for c in g] for g in load_conversations(cfg, report)
    ]
    assert len(report) == 0
    capped = load_conversations(
        DataConfig(datasets=["tiny_alpaca"], dataset_dir=str(ASSETS), max_samples=2), report
    )
    assert [c.source.rsplit(":", 1)[1] for c in capped[0]] == ["1", "2"]
