"""Machine translation: reader, prompt, parser, and scores equal to calling sacrebleu directly."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest
import sacrebleu
from conftest import SHARED_DATA, needs_shared

from tasktune.config.task import TaskConfig
from tasktune.tasks import mt
from tasktune.tasks.mt import MtRow

SPEC = TaskConfig(name="mt")


def test_reader_collects_references_and_languages(tmp_path):
    path = tmp_path / "mt.jsonl"
    rows = [
        {
            "id": 7,
            "source": "你好",
            "reference": "Hello",
            "reference_b": "Hi",
            "src_lang": "zh",
            "tgt_lang": "en",
        },
        {"source": "谢谢", "references": ["Thanks", "Thank you"]},
        {"source": "再见", "reference": ""},
        {"source": " ", "reference": "x"},
        {"text": "no source", "reference": "x"},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    first, second, *errors = mt.read(path, TaskConfig(name="mt", source_lang="zh", target_lang="en"))
    assert (first.id, first.text, first.references, first.src_lang) == ("7", "你好", ["Hello", "Hi"], "zh")
    assert second.references == ["Thanks", "Thank you"] and second.tgt_lang == "en"
    assert second.source == f"{path}:2"
    assert [(e.reason, e.source) for e in errors] == [
        ("missing_field", f"{path}:3"),
        ("empty_text", f"{path}:4"),
        ("missing_field", f"{path}:5"),
    ]
    (no_langs,) = list(mt.read(path, SPEC))[1:2]
    assert no_langs.reason == "missing_field" and "src_lang" in no_langs.detail


def test_prompt_and_parser():
    row = MtRow("1", "f:1", "是否有途径处罚他", ["Is there a way to punish him?"], "zh", "en")
    conv = mt.to_messages(row, SPEC)
    conv.check()
    assert conv.messages[0].content == (
        "Translate the text from Chinese to English. Answer with the translation only.\n是否有途径处罚他"
    )
    assert conv.messages[1].content == "Is there a way to punish him?"
    assert mt.parse("  Is there a way?\n", row, SPEC) == "Is there a way?"
    assert mt.parse("```\n```", row, SPEC) is None and mt.parse("", row, SPEC) is None
    assert mt.output_constraint(SPEC) is None


def test_tokenizer_by_target_language():
    assert mt.bleu_tokenizer("zh") == "zh" and mt.bleu_tokenizer("zh-Hans") == "zh"
    assert mt.bleu_tokenizer("en") == "13a" and mt.bleu_tokenizer("de") == "13a"
    has_mecab = (
        importlib.util.find_spec("MeCab") is not None and importlib.util.find_spec("ipadic") is not None
    )
    assert mt.bleu_tokenizer("ja") == ("ja-mecab" if has_mecab else "char")
    assert mt.bleu_tokenizer("ko") in ("ko-mecab", "char")
    assert mt.bleu_tokenizer("zh", TaskConfig(bleu_tokenize="char")) == "char"
    assert {mt.bleu_tokenizer(lang) for lang in ("zh", "ja", "ko", "en")} <= set(sacrebleu.BLEU.TOKENIZERS)


def test_perfect_and_empty_translations():
    rows = [MtRow("1", "", "猫", ["The cat sat on the mat ."], "zh", "en")]
    perfect = mt.score(["The cat sat on the mat ."], rows, SPEC)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["ter"] == 0.0 and perfect["chrf"] == 100.0
    failed = mt.score([None], rows, SPEC)
    assert failed["bleu"] == 0.0 and failed["parse_failure_rate"] == 1.0


def wmt_rows(n: int) -> list[MtRow]:
    path = SHARED_DATA / "mt" / "wmt22_general_zh_en" / "test.jsonl"
    return [r for r in mt.read(path, SPEC)][:n]


def drop_words(text: str, rng: random.Random) -> str:
    words = text.split()
    return " ".join(w for w in words if rng.random() > 0.25) or words[0]


@needs_shared("mt/wmt22_general_zh_en")
def test_zh_en_scores_equal_sacrebleu_with_two_references():
    rows = wmt_rows(80)
    rng = random.Random(0)
    hypotheses = [drop_words(r.references[-1], rng) for r in rows]
    ours = mt.score(hypotheses, rows, SPEC)
    refs = [[r.references[0] for r in rows], [r.references[1] for r in rows]]
    bleu, chrf, ter = sacrebleu.BLEU(), sacrebleu.CHRF(), sacrebleu.TER()
    assert ours["bleu"] == bleu.corpus_score(hypotheses, refs).score
    assert ours["chrf"] == chrf.corpus_score(hypotheses, refs).score
    assert ours["ter"] == ter.corpus_score(hypotheses, refs).score
    assert ours["bleu_signature"] == str(bleu.get_signature()) and "nrefs:2" in ours["bleu_signature"]
    assert ours["ter_signature"] == str(ter.get_signature())
    assert 10 < ours["bleu"] < 90


@needs_shared("mt/wmt22_general_zh_en")
def test_mixed_directions_and_variable_references_equal_sacrebleu():
    rows = wmt_rows(60)
    en_zh = [MtRow(f"r{r.id}", r.source, r.references[0], [r.text], "en", "zh") for r in rows[30:]]
    zh_en = [
        MtRow(r.id, r.source, r.text, r.references[: 1 + i % 2], "zh", "en") for i, r in enumerate(rows[:30])
    ]
    rng = random.Random(1)
    hyp_en = [drop_words(r.references[-1], rng) for r in zh_en]
    hyp_zh = [r.references[0][: max(1, len(r.references[0]) * 3 // 4)] for r in en_zh]
    ours = mt.score(hyp_en + hyp_zh, zh_en + en_zh, SPEC)

    zh = ours["by_direction"]["en-zh"]
    refs_zh = [[r.references[0] for r in en_zh]]
    assert zh["bleu"] == sacrebleu.BLEU(tokenize="zh").corpus_score(hyp_zh, refs_zh).score
    assert zh["ter"] == sacrebleu.TER(normalized=True, asian_support=True).corpus_score(hyp_zh, refs_zh).score
    assert "tok:zh" in zh["bleu_signature"] and zh["n"] == 30
    en = ours["by_direction"]["zh-en"]
    refs_en = [
        [r.references[0] for r in zh_en],
        [r.references[1] if len(r.references) > 1 else None for r in zh_en],
    ]
    assert en["bleu"] == sacrebleu.BLEU().corpus_score(hyp_en, refs_en).score
    assert en["chrf"] == sacrebleu.CHRF().corpus_score(hyp_en, refs_en).score
    assert ours["bleu"] == pytest.approx((zh["bleu"] + en["bleu"]) / 2)
    assert ours["bleu_signature"] == "mean over 2 directions"
