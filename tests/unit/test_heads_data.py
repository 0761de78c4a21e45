"""Head data: character offsets aligned to sub-word tokens (English and Chinese, WordPiece and byte-level BPE),
first-sub-token labels, windows, qa answer positions, collate, class weights; window merging end to end with
an oracle model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig
from tasktune.model.head_data import (
    IGNORE,
    answer_positions,
    attach_weights,
    class_weight_table,
    collate,
    count_targets,
    encode_rows,
    ner_units,
    qa_units,
    tag_names,
    tags_to_entities,
    word_spans,
    word_tags,
)
from tasktune.tasks.classify import ClassifyRow
from tasktune.tasks.ner import Entity, NerRow
from tasktune.tasks.qa import QaRow

ROWS = [
    ("EU rejects German call to boycott British lamb .", [("ORG", 0, 2), ("MISC", 11, 17), ("MISC", 34, 41)]),
    ("The U.S. Army's chief, Gen. Smith-Jones, said (Reuters) 3.5%", [("ORG", 4, 13), ("PER", 28, 39),
                                                                     ("ORG", 47, 54)]),
    ("浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。", [("company", 0, 4), ("name", 9, 12)]),
    ("生生不息CSOL生化狂潮让你填弹狂扫", [("game", 4, 8)]),
]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from tasktune.model.load import resolve_model_dir

    return AutoTokenizer.from_pretrained(resolve_model_dir("minilm-l6"))


def _row(text: str, spans, number: int = 0) -> NerRow:
    return NerRow(f"r{number}", f"t:{number}", text, [Entity(k, text[s:e], s, e) for k, s, e in spans])


def _spec(name: str, **kw) -> TaskConfig:
    return TaskConfig(name=name, method="head", **kw)


@pytest.mark.parametrize("text,spans", ROWS)
@pytest.mark.parametrize("which", ["minilm", "smollm2"])
def test_entities_survive_the_round_trip_through_words(which, text, spans, minilm_tokenizer, smol_tokenizer):
    tokenizer = minilm_tokenizer if which == "minilm" else smol_tokenizer
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    words = word_spans(text, offsets)
    row = _row(text, spans)
    tags, misaligned = word_tags(words, row.entities)
    assert misaligned == 0
    back = tags_to_entities(text, words, tags)
    assert [(e["type"], e["start"], e["end"]) for e in back] == spans
    assert [e["text"] for e in back] == [e.text for e in row.entities]


def test_chinese_words_are_characters_and_latin_runs_stay_whole(minilm_tokenizer):
    text = "生生不息CSOL生化"
    offsets = minilm_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert [text[s:e] for s, e in word_spans(text, offsets)] == ["生", "生", "不", "息", "CSOL", "生", "化"]


def test_first_subtoken_carries_the_label(minilm_tokenizer):
    """'Zweibruecken' is five WordPiece tokens: only the first is labelled; special tokens never are."""
    row = _row("Peter Blackburn of Zweibruecken", [("PER", 0, 15), ("LOC", 19, 31)])
    spec = _spec("ner", labels=["LOC", "PER"])
    (unit,) = encode_rows([row], spec, minilm_tokenizer, targets=True).units
    names = tag_names(["LOC", "PER"])
    tokens = minilm_tokenizer.convert_ids_to_tokens(unit["input_ids"])
    assert tokens == ["[CLS]", "peter", "blackburn", "of", "z", "##wei", "##br", "##ue", "##cken", "[SEP]"]
    assert [names[x] if x != IGNORE else None for x in unit["labels"]] == [
        None, "B-PER", "I-PER", "O", "B-LOC", None, None, None, None, None]


def test_misaligned_entity_is_counted():
    words = [(0, 7), (8, 13)]  # "NewYork rocks"
    tags, misaligned = word_tags(words, [Entity("LOC", "York", 3, 7)])
    assert misaligned == 1 and tags == ["O", "O"]  # starts inside a word: no word starts in it


def test_long_text_becomes_windows_that_cover_every_word(minilm_tokenizer):
    text = " ".join(f"word{i}" for i in range(60))
    spec = _spec("ner", labels=["X"], max_seq_length=24, doc_stride=6)
    units, words = ner_units(text, minilm_tokenizer, spec)
    assert len(units) > 3 and all(len(u["input_ids"]) <= 24 for u in units)
    covered = {w for u in units for w in u["word_index"] if w >= 0}
    assert covered == set(range(len(words))) and len(words) == 60


def test_qa_answer_positions_and_windows(minilm_tokenizer):
    context = " ".join(["filler"] * 40) + " The capital is Canberra , not Sydney . " + " ".join(["more"] * 40)
    start = context.index("Canberra")
    row = QaRow("q", "t:1", context, "What is the capital?", ["Canberra"], [start])
    spec = _spec("qa", max_seq_length=48, doc_stride=12)
    units = encode_rows([row], spec, minilm_tokenizer, targets=True).units
    assert len(units) > 2
    holding = [u for u in units if u["start_positions"] != 0]
    assert holding, "some window must hold the answer"
    for unit in holding:
        first, last = unit["start_positions"], unit["end_positions"]
        assert context[unit["offsets"][first][0] : unit["offsets"][last][1]] == "Canberra"
    assert all(u["end_positions"] == 0 for u in units if u["start_positions"] == 0)
    assert answer_positions([None, (0, 4), (5, 9)], 5, 9) == (2, 2)
    assert answer_positions([None, (0, 4)], 5, 9) == (0, 0)


def test_decoder_pairs_get_a_separator(smol_tokenizer):
    (unit,) = qa_units("Who?", "Ann did.", smol_tokenizer, _spec("qa"))
    assert smol_tokenizer.decode(unit["input_ids"]) == "Who?\nAnn did."
    assert [smol_tokenizer.decode([i]) for i, o in zip(unit["input_ids"], unit["offsets"], strict=True) if o] == \
        ["Ann", " did", "."]


def test_classify_truncates_and_reports(minilm_tokenizer):
    from tasktune.data.report import RejectReport

    rows = [ClassifyRow("a", "t:1", "good " * 50, "pos"), ClassifyRow("b", "t:2", "bad", "neg")]
    report = RejectReport()
    encoded = encode_rows(rows, _spec("classify", labels=["neg", "pos"], max_seq_length=16), minilm_tokenizer,
                          targets=True, report=report)
    assert encoded.truncated == 1 and report.truncated == [("t:1", 52, 16)]
    assert [u["labels"] for u in encoded.units] == [1, 0] and len(encoded.units[0]["input_ids"]) == 16


def test_collate_and_targets():
    units = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 0], "labels": [IGNORE, 1, IGNORE]},
             {"input_ids": [5], "token_type_ids": [0], "labels": [2]}]
    batch = collate(units, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 1, IGNORE], [2, IGNORE, IGNORE]]
    assert count_targets(batch) == 2
    texts = collate([{"input_ids": [1, 2], "labels": 1, "weights": 2.0}, {"input_ids": [1], "labels": 0,
                                                                         "weights": 0.5}], 0)
    assert texts["labels"].tolist() == [1, 0] and texts["weights"].tolist() == [2.0, 0.5]
    assert count_targets(texts) == 2
    spans = collate([{"input_ids": [1, 2], "start_positions": 1, "end_positions": 1}], 0)
    assert spans["start_positions"].tolist() == [1] and count_targets(spans) == 1


def test_class_weights_balanced_and_given():
    units = [{"labels": 0}, {"labels": 0}, {"labels": 0}, {"labels": 1}]
    spec = _spec("classify", labels=["neg", "pos"], class_weights="balanced")
    table = class_weight_table(spec, units)
    assert table == pytest.approx([4 / 6, 2.0])
    attach_weights(units, table)
    assert [u["weights"] for u in units] == pytest.approx([4 / 6] * 3 + [2.0])
    ner_spec = _spec("ner", labels=["LOC", "PER"], class_weights={"PER": 3.0, "O": 0.5})
    assert class_weight_table(ner_spec, []) == [0.5, 1.0, 1.0, 3.0, 3.0]
    token_units = [{"labels": [IGNORE, 0, 3]}]
    attach_weights(token_units, [0.5, 1.0, 1.0, 3.0, 3.0])
    assert token_units[0]["weights"] == [0.0, 0.5, 3.0]


@pytest.mark.parametrize("override,message", [
    ({"method": "heads"}, "expected one of generate, head"),
    ({"method": "head", "name": "mt"}, "task.method=head works for"),
    ({"use_crf": True, "name": "classify"}, "use_crf=true needs"),
    ({"class_weights": "inverse"}, "expected balanced or a map"),
    ({"class_weights": {"PER": -1}}, "positive numbers"),
    ({"class_weights": {"XYZ": 2}}, "not in task.labels"),
    ({"class_weights": "balanced", "use_crf": True}, "cannot be combined"),
    ({"doc_stride": 300}, "task.doc_stride=300"),
])
def test_head_settings_are_checked(override, message):
    values = {"name": "ner", "method": "head", "labels": ["PER", "LOC"], **override}
    with pytest.raises(ConfigError, match=message):
        TaskConfig(**values).check()


class _Oracle(torch.nn.Module):
    """A stand-in head whose logits come from a token-id table: the right tag (or span edge) per token."""

    def __init__(self, info, table: dict[int, int], width: int):
        super().__init__()
        from tasktune.model.heads import TaskHead

        self.info, self.table, self.width, self.crf = info, table, width, None
        self.tag_paths = TaskHead.tag_paths.__get__(self)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        picked = torch.tensor([[self.table.get(int(i), 0) for i in row] for row in input_ids])
        logits = torch.nn.functional.one_hot(picked, self.width).float() * 10
        if self.info.task == "qa":
            return {"start_logits": logits[..., 1], "end_logits": logits[..., 2]}
        return {"logits": logits}


def test_windows_merge_back_to_the_right_entities(minilm_tokenizer):
    from tasktune.evaluate.heads import predict_rows
    from tasktune.model.heads import HeadInfo

    names = [f"city{i}" for i in range(30)]
    text = " ".join(f"visit {n} now" for n in names)
    spec = _spec("ner", labels=["LOC"], max_seq_length=20, doc_stride=5)
    info = HeadInfo.from_spec(spec, "none")
    ids = {minilm_tokenizer.convert_tokens_to_ids(t) for t in ("visit", "now")}
    table = {i: 0 for i in ids}
    for n in names:  # "city12" -> city, ##12: the first piece starts the entity
        table[minilm_tokenizer(n, add_special_tokens=False)["input_ids"][0]] = 1
    model = _Oracle(info, table, len(info.outputs))
    ((entities, scores),) = predict_rows(model, minilm_tokenizer, [_row(text, [])], spec, batch_size=4)
    assert [e["text"] for e in entities] == names
    assert all(text[e["start"] : e["end"]] == e["text"] for e in entities) and len(scores) == len(names)


def test_best_span_over_windows(minilm_tokenizer):
    from tasktune.evaluate.heads import predict_rows
    from tasktune.model.heads import HeadInfo

    context = " ".join(["filler"] * 50) + " the answer is zanzibar island today " + " ".join(["more"] * 50)
    spec = _spec("qa", max_seq_length=40, doc_stride=10, max_answer_length=5)
    info = HeadInfo.from_spec(spec, "none")
    ids = minilm_tokenizer("zanzibar island", add_special_tokens=False)["input_ids"]
    model = _Oracle(info, {ids[0]: 1, ids[-1]: 2}, 3)
    row = QaRow("q", "t:1", context, "Where?", ["zanzibar island"], [context.index("zanzibar")])
    ((answer, scores),) = predict_rows(model, minilm_tokenizer, [row], spec)
    assert answer == "zanzibar island" and scores["start"] == context.index("zanzibar")
    assert 0 < scores["probability"] <= 1


HEAD_EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*-head.yaml"))


@pytest.mark.parametrize("path", HEAD_EXAMPLES, ids=[p.name for p in HEAD_EXAMPLES])
def test_head_examples_load_and_take_the_head_route(path):
    from tasktune.config import load_config
    from tasktune.train.route import HEAD, route_for

    cfg = load_config(path)
    cfg.task.check()
    assert cfg.task.method == "head" and route_for(cfg) is HEAD


def test_all_four_head_examples_ship():
    assert {p.name for p in HEAD_EXAMPLES} >= {"ner-conll2003-head.yaml", "classify-sst2-head.yaml",
                                              "classify-sst2-smollm2-head.yaml", "qa-squad-head.yaml"}
