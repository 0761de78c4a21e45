"""Copy-constrained decoding for inline NER: the allowed tokens are exactly the grammar's, and random models
under it always write a parseable copy of their input (no invented mention, no parse failure)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import allowed_along_a_walk, random_reply

from tasktune.config.schema import Config
from tasktune.config.task import EvalConfig, TaskConfig
from tasktune.evaluate.byte_grammar import piece_bytes
from tasktune.evaluate.constrain import RowConstraints, build_constraint
from tasktune.evaluate.copy_inline import CopyInlineConstraint, token_table
from tasktune.evaluate.generate import generate_texts
from tasktune.evaluate.runner import predict
from tasktune.tasks import ner
from tasktune.tasks.ner_formats import read_copy

LABELS = ["PER", "LOC", "ORG"]
SPEC = TaskConfig(name="ner", labels=LABELS, ner_output_format="inline")
DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "ner_dev.jsonl"
TEXTS = ["Ada Park joined Acme in Oslo.", "北京的李雷说：好", "a [b|PER] c | d", "Zoë met Jürgen."]


def rows() -> list[ner.NerRow]:
    demo = [r for r in ner.read(DEMO, SPEC)][:5]
    return demo + [ner.NerRow(f"x{i}", "t:1", text, []) for i, text in enumerate(TEXTS)]


def copied(output: str, row: ner.NerRow) -> bool:
    """Whether the output is the row's text (or its beginning) with mention brackets."""
    return read_copy(output, row.text, LABELS) is not None


def test_allowed_tokens_are_exactly_those_the_grammar_reads(smol_tokenizer):
    table = token_table(smol_tokenizer)
    assert token_table(smol_tokenizer) is table  # built once per tokenizer
    constraint = build_constraint({"type": "copy_inline", "text": "Ann met 李雷 [x]", "labels": LABELS},
                                  smol_tokenizer, [2])
    assert isinstance(constraint, CopyInlineConstraint)
    assert constraint.table is table
    allowed_along_a_walk(constraint, random.Random(0))  # a few states of a random walk, each against every token


def test_token_bytes_of_the_whole_vocabulary_match_the_piece_by_piece_reading(smol_tokenizer):
    pieces = [p or "" for p in smol_tokenizer.convert_ids_to_tokens(list(range(len(smol_tokenizer))))]
    fast = piece_bytes(pieces, byte_level=True)  # one translate of the whole vocabulary
    # a piece outside the byte-level alphabet sends every piece through the character-by-character reading
    slow = piece_bytes([*pieces, "x\u2603"], byte_level=True)
    assert slow[-1] is None and fast == slow[:-1]
    table = token_table(smol_tokenizer)
    geneva = smol_tokenizer.convert_tokens_to_ids("ĠGeneva")
    assert table.by_id[geneva] == b" Geneva" and table.by_id[smol_tokenizer.convert_tokens_to_ids("Ċ")] == b"\n"
    assert len({len(p.encode()) for p in pieces}) > 1 and sum(len(b or b"") for b in fast) > len(pieces)
    # SentencePiece pieces: the word marker is a space, <0xNN> a byte
    assert piece_bytes(["\u2581Hello", "<0x0A>", ""], byte_level=False) == [b" Hello", b"\n", None]


def test_random_walks_always_give_a_copy_that_parses(smol_tokenizer):
    rng = random.Random(1)
    for row in rows():
        constraint = CopyInlineConstraint(smol_tokenizer, row.text, LABELS, [2])
        for _ in range(3):
            output = smol_tokenizer.decode(list(random_reply(constraint, rng)))
            assert read_copy(output, row.text, LABELS, whole=True) is not None
            assert read_copy(output + "!", row.text, LABELS) is None
            parsed = ner.parse(output, row, SPEC)
            assert parsed is not None and all(p["start"] is not None for p in parsed)


def test_generation_with_one_constraint_per_row(noisy_llama):
    model, tokenizer = noisy_llama
    items = rows()
    prompts = [[{"role": "user", "content": ner.instruction(SPEC) + "\n" + r.text}] for r in items]
    specs = [ner.row_constraint(r, SPEC) for r in items]
    specs[1] = None  # free text for one row
    result = generate_texts(model, tokenizer, prompts, 96, batch_size=4, constraint=specs, progress=False)
    alone = generate_texts(model, tokenizer, prompts[2:3], 96, batch_size=1, constraint=specs[2:3], progress=False)
    assert result.texts[2] == alone.texts[0]
    for i, (row, text, cut) in enumerate(zip(items, result.texts, result.truncated, strict=True)):
        if i == 1:
            continue
        assert copied(text, row) and (cut or read_copy(text, row.text, LABELS, whole=True) is not None)
        assert ner.parse(text, row, SPEC) is not None
    assert not copied(result.texts[1], items[1])  # unconstrained, the random model writes anything
    assert sum(len(ner.parse(t, r, SPEC)) for t, r in zip(result.texts, items, strict=True) if t) > 3


def test_eval_of_inline_ner_is_constrained_by_default_and_never_fails(noisy_llama):
    model, tokenizer = noisy_llama
    cfg = Config(task=SPEC, eval=EvalConfig(max_new_tokens=96, batch_size=8))
    scored = predict(cfg, SPEC, model, tokenizer, rows(), progress=False)
    assert scored.constrained
    assert scored.scores["parse_failures"] == 0 and scored.scores["hallucinated"] == 0
    assert scored.scores["unplaced"] == 0
    assert all(r["prediction"] is not None for r in scored.records)


def test_row_constraints_need_the_batch_rows(smol_tokenizer):
    processor = RowConstraints([None, {"type": "choice", "choices": ["a"]}], smol_tokenizer, [2])
    with pytest.raises(ValueError, match="rows"):
        processor.start(3)
    assert processor.start(3, [1, 0]).active[1] is None
