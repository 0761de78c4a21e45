"""NER: readers (JSONL offsets, CLUENER maps, CoNLL/BIO in IOB1/IOB2/BIOES), prompts, parser and metrics."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig
from tasktune.data.messages import RowError
from tasktune.tasks import bio, ner
from tasktune.tasks import ner_formats as formats
from tasktune.tasks.ner import Entity, NerRow

SPEC = TaskConfig(name="ner", labels=["PER", "LOC", "ORG"], ner_output_format="json")


def write_jsonl(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    )
    return path


def row(text: str, *entities: tuple[str, str]) -> NerRow:
    """A row whose entities are located by their first occurrence in the text."""
    found = [
        Entity(kind, value, text.index(value), text.index(value) + len(value)) for kind, value in entities
    ]
    return NerRow(id="r", source="t:1", text=text, entities=found)


# ---- readers -------------------------------------------------------------------------------------------


def test_jsonl_reader_keeps_good_rows_and_rejects_bad_ones_with_file_and_line(tmp_path):
    path = write_jsonl(
        tmp_path / "ner.jsonl",
        [
            {
                "text": "Anna lives in Rome",
                "entities": [
                    {"type": "LOC", "text": "Rome", "start": 14, "end": 18},
                    {"type": "PER", "text": "Anna", "start": 0, "end": 4},
                ],
            },
            {
                "text": "Anna lives in Rome",
                "entities": [{"type": "PER", "text": "Anna", "start": 1, "end": 5}],
            },
            '{"text": "broken',
            "",
            {"text": "  ", "entities": []},
            {"text": "Bob", "entities": [{"type": "MISC", "text": "Bob", "start": 0, "end": 3}]},
            {"text": "no entities key"},
            {"text": "Bob", "entities": [{"type": "PER", "text": "Bob", "start": 0, "end": 9}]},
        ],
    )
    items = list(ner.read(path, SPEC))
    good, *errors = items
    assert isinstance(good, NerRow) and good.source == f"{path}:1" and good.id == "ner.jsonl:1"
    assert [(e.type, e.text) for e in good.entities] == [("PER", "Anna"), ("LOC", "Rome")]  # sorted by offset
    assert all(isinstance(e, RowError) for e in errors)
    assert [(e.reason, e.source) for e in errors] == [
        ("offset_mismatch", f"{path}:2"),
        ("invalid_json", f"{path}:3"),
        ("empty_text", f"{path}:5"),
        ("unknown_label", f"{path}:6"),
        ("missing_field", f"{path}:7"),
        ("offset_mismatch", f"{path}:8"),
    ]


def test_cluener_label_maps_become_entities_with_exclusive_ends(tmp_path):
    text = "浙商银行的叶老桂说，叶老桂"
    label = {"name": {"叶老桂": [[5, 7], [10, 12]]}, "company": {"浙商银行": [[0, 3]]}}
    path = write_jsonl(
        tmp_path / "clue.jsonl",
        [{"text": text, "label": label}, {"text": text, "label": {"name": {"叶老桂": [[4, 6]]}}}],
    )
    spec = TaskConfig(name="ner", labels=["name", "company"])
    first, second = ner.read(path, spec)
    assert [(e.type, e.start, e.end) for e in first.entities] == [
        ("company", 0, 4),
        ("name", 5, 8),
        ("name", 10, 13),
    ]
    assert all(text[e.start : e.end] == e.text for e in first.entities)
    assert (
        isinstance(second, RowError) and second.reason == "offset_mismatch" and second.source == f"{path}:2"
    )


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP {eu}
rejects VBZ B-VP O
German JJ B-NP {german}
call NN I-NP O
. . O O

Peter NNP B-NP {peter}
Blackburn NNP I-NP {blackburn}
von NNP I-NP {von}
Bonn NNP I-NP {bonn}
"""
SCHEMES = {
    "iob2": dict(eu="B-ORG", german="B-MISC", peter="B-PER", blackburn="I-PER", von="B-PER", bonn="I-PER"),
    "iob1": dict(eu="I-ORG", german="I-MISC", peter="I-PER", blackburn="I-PER", von="B-PER", bonn="I-PER"),
    "bioes": dict(eu="S-ORG", german="S-MISC", peter="B-PER", blackburn="E-PER", von="B-PER", bonn="E-PER"),
}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_conll_files_in_every_scheme_give_the_same_text_and_offsets(tmp_path, scheme):
    path = tmp_path / f"{scheme}.conll"
    path.write_text(CONLL.format(**SCHEMES[scheme]))
    for configured in ("auto", scheme):
        first, second = ner.read(path, TaskConfig(name="ner", tag_scheme=configured))
        assert first.text == "EU rejects German call ." and first.source == f"{path}:3"
        assert [(e.type, e.text, e.start, e.end) for e in first.entities] == [
            ("ORG", "EU", 0, 2),
            ("MISC", "German", 11, 17),
        ]
        assert [(e.type, e.text) for e in second.entities] == [
            ("PER", "Peter Blackburn"),
            ("PER", "von Bonn"),
        ]
        assert second.source == f"{path}:9"
    assert bio.detect_scheme([t for _, t in SCHEMES[scheme].items()]) == scheme


def test_conll_reader_rejects_bad_sentences_and_goes_on(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("Anna B-PER\nlonely\n\nRome X-LOC\n\nOslo I-LOC\n\nBob B-PER\n")
    items = list(ner.read(path, TaskConfig(name="ner", tag_scheme="iob2")))
    assert [(i.reason, i.source) for i in items[:3]] == [
        ("missing_field", f"{path}:2"),
        ("invalid_tag", f"{path}:4"),
        ("invalid_tag", f"{path}:6"),  # I- opening an entity is not IOB2
    ]
    assert items[3].text == "Bob" and items[3].entities == [Entity("PER", "Bob", 0, 3)]


def test_json_rows_with_tokens_and_tags_and_sniffed_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "tagged.txt",  # not a .jsonl name: recognised by its first line
        [
            {"tokens": ["Anna", "visited", "New", "York"], "tags": ["S-PER", "O", "B-LOC", "E-LOC"]},
            {"tokens": ["Anna"], "tags": "B-PER"},
            {"tokens": ["Anna", "Berg"], "tags": ["B-PER"]},
        ],
    )
    first, *errors = ner.read(path, SPEC)
    assert first.text == "Anna visited New York"
    assert first.entities == [Entity("PER", "Anna", 0, 4), Entity("LOC", "New York", 13, 21)]
    assert [(e.reason, e.source) for e in errors] == [
        ("missing_field", f"{path}:2"),
        ("offset_mismatch", f"{path}:3"),
    ]


def test_chinese_character_columns_are_joined_without_spaces(tmp_path):
    path = tmp_path / "zh.bio"
    path.write_text("我 O\n在 O\n北 B-LOC\n京 I-LOC\n")
    (only,) = ner.read(path, TaskConfig(name="ner"))
    assert only.text == "我在北京" and only.entities == [Entity("LOC", "北京", 2, 4)]


def test_bio_decode_encode_round_trip_and_lenient_default():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG"]
    spans = bio.decode(tags)
    assert spans == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 6)]
    assert bio.encode(spans, len(tags)) == tags[:5] + ["B-ORG"]  # written back as valid IOB2
    assert bio.decode(["S-PER", "I-PER", "E-LOC"]) == [("PER", 0, 1), ("PER", 1, 2), ("LOC", 2, 3)]
    with pytest.raises(ValueError, match="overlaps"):
        bio.encode([("PER", 0, 2), ("LOC", 1, 3)], 3)


# ---- prompts -------------------------------------------------------------------------------------------


def test_to_messages_lists_types_and_writes_entities_in_order_of_appearance():
    r = NerRow("x", "f:1", "北京的李雷", [Entity("PER", "李雷", 3, 5), Entity("LOC", "北京", 0, 2)])
    spec = TaskConfig(name="ner", labels=["PER", "LOC"], label_descriptions={"PER": "person"}, ner_output_format="json")
    conv = ner.to_messages(r, spec)
    conv.check()
    user, assistant = conv.messages
    assert user.content.startswith("Entity types: PER (person), LOC.") and user.content.endswith(
        "\n北京的李雷"
    )
    assert assistant.content == '[{"type": "LOC", "text": "北京"}, {"type": "PER", "text": "李雷"}]'
    assert conv.source == "f:1" and conv.meta["id"] == "x"
    assert ner.parse(assistant.content, r, spec) == [
        {"type": "LOC", "text": "北京", "start": 0, "end": 2},
        {"type": "PER", "text": "李雷", "start": 3, "end": 5},
    ]
    inline = TaskConfig(name="ner", labels=["PER", "LOC"], ner_output_format="inline")
    assert ner.to_messages(r, inline).messages[1].content == "[北京|LOC]的[李雷|PER]"
    assert "[entity text|TYPE]" in ner.to_messages(r, inline).messages[0].content
    assert ner.to_messages(NerRow("y", "f:2", "nothing", []), inline).messages[1].content == "nothing"
    words = TaskConfig(name="ner", labels=["PER", "LOC"], ner_output_format="tagged-words")
    assert ner.to_messages(r, words).messages[1].content == "北(B-LOC) 京(I-LOC) 的(O) 李(B-PER) 雷(I-PER)"
    with pytest.raises(ConfigError, match="task.labels"):
        ner.to_messages(r, TaskConfig(name="ner"))


def test_targets_of_each_format_cut_words_at_entity_edges():
    r = row("Ada Park joined Acme Corp. in Oslo.", ("PER", "Ada Park"), ("ORG", "Acme Corp."), ("LOC", "Oslo"))
    spec = TaskConfig(name="ner", labels=["PER", "LOC", "ORG"])
    assert ner.target(r.text, r.entities, replace(spec, ner_output_format="inline")) == (
        "[Ada Park|PER] joined [Acme Corp.|ORG] in [Oslo|LOC].")
    assert ner.target(r.text, r.entities, replace(spec, ner_output_format="tagged-words")) == (
        "Ada(B-PER) Park(I-PER) joined(O) Acme(B-ORG) Corp.(I-ORG) in(O) Oslo(B-LOC) .(O)")
    for fmt in ("json", "inline", "tagged-words"):
        local = replace(spec, ner_output_format=fmt)
        parsed = ner.parse(ner.target(r.text, r.entities, local), r, local)
        assert [(p["type"], p["start"], p["end"]) for p in parsed] == [(e.type, e.start, e.end) for e in r.entities]
        assert ner.score([parsed], [r], local)["f1"] == 1.0


def test_output_constraint_is_a_json_schema_with_the_types():
    constraint = ner.output_constraint(SPEC)
    assert constraint["type"] == "json_schema"
    assert constraint["schema"]["items"]["properties"]["type"]["enum"] == ["PER", "LOC", "ORG"]
    inline = TaskConfig(name="ner", labels=["PER"], ner_output_format="inline")
    assert ner.output_constraint(inline) is None
    r = NerRow("y", "f:2", "Ann ran", [])
    assert ner.row_constraint(r, inline) == {"type": "copy_inline", "text": "Ann ran", "labels": ["PER"]}
    assert ner.row_constraint(r, SPEC) is None


# ---- parser --------------------------------------------------------------------------------------------

ANNA = [{"type": "PER", "text": "Anna", "start": None, "end": None}]


@pytest.mark.parametrize(
    "output, expected",
    [
        ('[{"type": "PER", "text": "Anna"}]', ANNA),
        ('```json\n[{"type": "PER", "text": " Anna "}]\n```', ANNA),
        ('Sure! The entities are: [{"type": "PER", "text": "Anna", "start": 0}] Hope that helps.', ANNA),
        ("[]", []),
        ("No entities.\n[]", []),
        ("", None),
        ('[{"type": "PER", "text": "An', None),  # truncated
        ("Anna is a person.", None),  # prose
        ('{"type": "PER", "text": "Anna"}', None),  # an object, not a list
        ('["Anna"]', None),  # wrong item type
        ('[{"type": 1, "text": "Anna"}]', None),
        ('[{"type": "PER"}]', None),
        ('[{"type": "PER", "text": ""}]', None),
        ("[PER] Anna", None),
    ],
)
def test_json_parser_is_tolerant_but_honest(output, expected):
    assert ner.parse(output, None, SPEC) == expected


INLINE = TaskConfig(name="ner", labels=["PER", "LOC"], ner_output_format="inline")
TEXT = NerRow("r", "t:1", "Anna met Anna in Rome [sic]", [])


@pytest.mark.parametrize(
    "output, expected",
    [
        ("[Anna|PER] met Anna in [Rome|LOC] [sic]", [("PER", 0, 4), ("LOC", 17, 21)]),
        ("Anna met [Anna|per] in Rome [sic]", [("PER", 9, 13)]),  # the bracket says which Anna
        ("Anna met Anna in [Rome|LOC] [s", [("LOC", 17, 21)]),  # cut by the token budget
        ("Anna met Anna in Rome [sic]", []),
        ("[Anna|PER] and [Anna|PER] in [Milan|LOC]", [("PER", 0, 4), ("PER", 9, 13), ("LOC", None, None)]),
        ("[Monday|DATE] Anna met", None),
        ("", None),
    ],
)
def test_inline_parser_places_brackets_on_the_text(output, expected):
    parsed = ner.parse(output, TEXT, INLINE)
    assert expected is None and parsed is None or [(p["type"], p["start"], p["end"]) for p in parsed] == expected


@pytest.mark.parametrize(
    "output, expected",
    [
        ("Anna(B-PER) met(O) Anna(O) in(O) Rome(B-LOC) [sic](O)", [("PER", 0, 4), ("LOC", 17, 21)]),
        ("Anna(O) met(O) Anna(B-PER) in(I-PER) Rome(I-PER)", [("PER", 9, 21)]),
        ("Anna(O) met(O) Anna(I-PER)", [("PER", 9, 13)]),  # an I- that continues nothing starts one
        ("Anna met Rome(B-LOC)", [("LOC", 17, 21)]),  # untagged words are O
        ("Ann(B-PER) Berg(I-PER)", [("PER", None, None)]),  # not in the text
        ("Anna met Anna", None),
        ("Anna(B-DATE)", None),
    ],
)
def test_tagged_words_parser(output, expected):
    spec = replace(INLINE, ner_output_format="tagged-words")
    parsed = ner.parse(output, TEXT, spec)
    assert expected is None and parsed is None or [(p["type"], p["start"], p["end"]) for p in parsed] == expected


# ---- metrics -------------------------------------------------------------------------------------------


def test_scores_by_hand():
    rows = [
        row("Anna Berg met Tom in Rome .", ("PER", "Anna Berg"), ("PER", "Tom"), ("LOC", "Rome")),
        row("Acme Corp hired Bob .", ("ORG", "Acme Corp"), ("PER", "Bob")),
        row("Oslo is cold .", ("LOC", "Oslo")),
        row("Nothing here ."),
    ]
    predictions = [
        [
            {"type": "PER", "text": "Anna Berg"},
            {"type": "LOC", "text": "Tom"},
            {"type": "LOC", "text": "Rome"},
            {"type": "ORG", "text": "Milan"},
        ],
        [{"type": "ORG", "text": "Acme"}, {"type": "PER", "text": "Bob"}],
        None,
        [],
    ]
    s = ner.score(predictions, rows, SPEC)
    # strict: gold PER 3, LOC 2, ORG 1; predicted PER 2, LOC 2, ORG 2; tp PER 2 (Anna Berg, Bob), LOC 1 (Rome)
    assert (s["precision"], s["recall"], s["f1"]) == (0.5, 0.5, 0.5)
    per_type = s["strict"]["per_type"]
    assert per_type["PER"]["precision"] == 1.0 and per_type["PER"]["recall"] == pytest.approx(2 / 3)
    assert per_type["PER"]["f1"] == pytest.approx(0.8) and per_type["LOC"]["f1"] == 0.5
    assert per_type["ORG"]["f1"] == 0.0 and per_type["ORG"]["support"] == 1
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    # partial: "Acme" overlaps "Acme Corp" (same type); "Tom" as LOC still does not count
    assert s["partial"]["per_type"]["ORG"]["tp"] == 1
    assert s["partial_f1"] == pytest.approx(4 / 6)
    assert s["hallucinated"] == 1 and s["hallucinated_rate"] == pytest.approx(1 / 6)  # Milan
    assert s["parse_failure_rate"] == 0.25 and s["n"] == 4


def test_strict_matching_is_a_multiset_per_sentence():
    r = NerRow("x", "f:1", "Li met Li and Li", [Entity("PER", "Li", 0, 2), Entity("PER", "Li", 7, 9)])
    s = ner.score([[{"type": "PER", "text": "Li"}] * 3], [r], SPEC)
    assert s["strict"]["micro"]["tp"] == 2 and s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0
    assert s["hallucinated"] == 0


def test_spans_decide_which_of_two_identical_mentions_is_right():
    r = NerRow("x", "f:1", "Li met Li", [Entity("PER", "Li", 0, 2), Entity("LOC", "Li", 7, 9)])
    swapped = [{"type": "LOC", "text": "Li"}, {"type": "PER", "text": "Li"}]  # in order: LOC@0, PER@7
    s = ner.score([swapped], [r], SPEC)
    assert s["f1"] == 0.0 and s["text_f1"] == 1.0
    head = [{"type": "PER", "text": "Li", "start": 0, "end": 2}, {"type": "PER", "text": "Li", "start": 7, "end": 9}]
    s = ner.score([head], [r], SPEC)
    assert s["strict"]["per_type"]["PER"]["tp"] == 1 and s["f1"] == 0.5
    assert ner.exact_match(head, r) is False and ner.exact_match(ner.parse("[Li|PER] met [Li|LOC]", r, INLINE), r)
    too_many = [{"type": "PER", "text": "Li"}] * 3
    s = ner.score([too_many], [r], SPEC)
    assert s["unplaced"] == 1 and s["hallucinated"] == 0 and s["precision"] == pytest.approx(1 / 3)


def test_alignment_prefers_whole_words_and_the_order_of_mentions():
    text = "Jordanian officials met Jordan in Jordan"
    assert formats.align(["Jordan", "Jordan"], text) == [(24, 30), (34, 40)]
    assert formats.align(["Jordan", "officials", "Jordan"], text) == [(24, 30), (10, 19), (34, 40)]
    assert formats.align(["Jordan"] * 4, text) == [(24, 30), (34, 40), (0, 6), None]


def test_partial_match_uses_each_gold_entity_once():
    r = row("New York City is big .", ("LOC", "New York City"))
    s = ner.score([[{"type": "LOC", "text": "New York"}, {"type": "LOC", "text": "York City"}]], [r], SPEC)
    assert s["partial"]["micro"]["tp"] == 1 and s["partial"]["micro"]["precision"] == 0.5
    assert s["f1"] == 0.0


def test_a_model_that_predicts_nothing_is_flagged():
    from tasktune.evaluate.report import degenerate_warning

    rows = [row("Anna met Tom .", ("PER", "Anna"), ("PER", "Tom")), row("Nothing here .")]
    assert "NO entity" in degenerate_warning("ner", ner.score([[], None], rows, SPEC))
    assert degenerate_warning("ner", ner.score([[{"type": "PER", "text": "Tom"}], []], rows, SPEC)) is None
    one_label = {"n": 3, "per_class": {"a": {"predicted": 3}, "b": {"predicted": 0}}}
    assert "'a' for all 3" in degenerate_warning("classify", one_label)
