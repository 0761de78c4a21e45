"""task.case_features: an uncased encoder's ner head sees each token's casing as its token type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_head_predictions

from tasktune.config import load_config
from tasktune.config.schema import ConfigError
from tasktune.evaluate.heads import predict_rows
from tasktune.model.case_types import CASE_TYPES, case_type
from tasktune.model.head_data import collate, encode_rows
from tasktune.model.heads import build_head, load_head
from tasktune.tasks import task_rows
from tasktune.train.loop import train


class _Report:
    def add(self, *_):
        raise AssertionError("test rows are valid")


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> Path:
    rows = []
    for name, city in [("John Smith", "Paris"), ("Mary", "New York"), ("IBM", "London")] * 4:
        text = f"{name} visited {city} and met the apple people today ."
        start = text.index(city)
        rows.append({"text": text, "entities": [{"type": "PER", "start": 0, "end": len(name)},
                                                {"type": "LOC", "start": start, "end": start + len(city)}]})
    path = tmp_path_factory.mktemp("case") / "ner.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(model_dir: Path, data: Path, out: Path, *extra: str):
    return load_config(None, [
        f"model.name_or_path={model_dir}", "task.name=ner", "task.method=head", "task.case_features=true",
        "task.labels=[PER, LOC]", f"task.train_file={data}", f"task.eval_file={data}", f"output.dir={out}",
        "train.batch_size=4", "train.learning_rate=2e-2", "train.mixed_precision=no", "train.logging_steps=1",
        "lora.r=4", "lora.alpha=8", "task.max_seq_length=32", "task.doc_stride=8", *extra,
    ])


def test_case_types():
    assert [CASE_TYPES[case_type(p)] for p in ("paris", "Paris", "IBM", "iPhone", "1996", ",", "I", "Ö", "ÖL")] == [
        "lower", "capitalised", "upper", "mixed", "none", "none", "capitalised", "capitalised", "upper"]
    assert CASE_TYPES[case_type("中国")] == "none"  # no case in the script


def test_units_carry_the_case_of_the_original_text(tiny_bert_dir, sentences, tmp_path):
    from transformers import AutoTokenizer

    cfg = _cfg(tiny_bert_dir, sentences, tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    row = task_rows(cfg.task, sentences, _Report())[2]  # "IBM visited London and met the apple people today ."
    unit = encode_rows([row], cfg.task, tokenizer).units[0]
    tokens = tokenizer.convert_ids_to_tokens(unit["input_ids"])
    types = dict(zip(tokens, (CASE_TYPES[t] for t in unit["token_type_ids"]), strict=True))
    assert tokens[0] == "[CLS]" and types["[CLS]"] == "none" and types["[SEP]"] == "none"
    assert (types["ibm"], types["london"], types["apple"], types["."]) == ("upper", "capitalised", "lower", "none")
    cfg.task.case_features = False
    assert set(encode_rows([row], cfg.task, tokenizer).units[0]["token_type_ids"]) == {0}


def test_widened_head_starts_as_the_uncased_model(tiny_bert_dir, sentences, tmp_path):
    """New case rows copy row 0: at the start the case ids change nothing; the embedding is trained in full."""
    from transformers import AutoTokenizer

    cfg = _cfg(tiny_bert_dir, sentences, tmp_path / "run", "train.finetuning=full")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    head = build_head(cfg).eval()
    embedding = head.net.bert.embeddings.token_type_embeddings
    assert embedding.num_embeddings == len(CASE_TYPES) and embedding.weight.requires_grad
    batch = collate(encode_rows(task_rows(cfg.task, sentences, _Report())[:3], cfg.task, tokenizer).units,
                    tokenizer.pad_token_id)
    assert int(batch["token_type_ids"].max()) >= 2
    with torch.no_grad():
        cased = head(**batch)["logits"]
        plain = head(**{**batch, "token_type_ids": torch.zeros_like(batch["token_type_ids"])})["logits"]
    torch.testing.assert_close(cased, plain)


@pytest.mark.parametrize("finetuning", ["lora", "full"])
def test_cased_head_trains_saves_reloads(tiny_bert_dir, sentences, tmp_path, finetuning, capsys):
    cfg = _cfg(tiny_bert_dir, sentences, tmp_path / "run", f"train.finetuning={finetuning}")
    rows = task_rows(cfg.task, sentences, _Report())
    captured = {}

    def capture(model, tokenizer, step):
        captured["predictions"] = predict_rows(model, tokenizer, rows, cfg.task)
        captured["rows"] = model.net.get_submodule(
            "base_model.model.bert" if finetuning == "lora" else "bert").embeddings.token_type_embeddings
        return {}

    cfg.train.max_steps = cfg.train.eval_steps = 10
    result = train(cfg, evaluator=capture)
    assert result.last_loss < result.first_loss
    if finetuning == "lora":
        assert "token_type_embeddings" in capsys.readouterr().out  # among the modules trained in full
    model, tokenizer = load_head(tmp_path / "run")
    assert model.info.case_features and model.info.spec().case_features
    after = predict_rows(model, tokenizer, rows, model.info.spec())
    # an eval config without the option still reads the casing, as the head was trained to
    uncased_config = predict_rows(model, tokenizer, rows, _cfg(tiny_bert_dir, sentences, tmp_path / "x",
                                                               "task.case_features=false").task)
    assert_same_head_predictions(captured["predictions"], after, uncased_config)


def test_case_features_need_a_ner_head_on_an_encoder(tiny_llama_dir, sentences, tmp_path):
    with pytest.raises(ConfigError, match="case_features"):
        load_config(None, ["task.name=classify", "task.method=head", "task.case_features=true"]).task.check()
    with pytest.raises(ValueError, match="no token-type embedding"):
        build_head(_cfg(tiny_llama_dir, sentences, tmp_path / "run"))
