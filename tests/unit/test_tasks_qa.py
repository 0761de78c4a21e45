"""Extractive QA: readers (SQuAD JSONL, nested SQuAD/CMRC JSON), parser, and metrics equal to the official
SQuAD v1.1 evaluation script on real rows."""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter

import pytest
from conftest import SHARED_DATA, needs_shared

from tasktune.config.task import TaskConfig
from tasktune.data.messages import RowError
from tasktune.tasks import qa
from tasktune.tasks.qa import QaRow

SPEC = TaskConfig(name="qa")


# ---- the official SQuAD v1.1 evaluate script (evaluate-v1.1.py), verbatim -----------------------------


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa_ in paragraph["qas"]:
                total += 1
                if qa_["id"] not in predictions:
                    continue
                ground_truths = list(map(lambda x: x["text"], qa_["answers"]))
                prediction = predictions[qa_["id"]]
                exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {"exact_match": exact_match, "f1": f1}


# ---- equality with the official script -------------------------------------------------------------------


def perturb(answer: str, context: str, rng: random.Random) -> str | None:
    start = context.find(answer)
    words = context.split()
    choice = rng.randrange(9)
    if choice == 0:
        return answer
    if choice == 1:
        return "The " + answer.lower() + "."
    if choice == 2:
        return context[start : start + len(answer) + 12]  # runs on into the context
    if choice == 3:
        return answer.split()[0] if " " in answer else answer[:-1]
    if choice == 4:
        return " ".join(rng.sample(words, min(3, len(words))))
    if choice == 5:
        return f'"{answer}"!'
    if choice == 6:
        return "a"  # normalises to nothing
    if choice == 7:
        return None  # no parse: unanswered
    return context[max(0, start - 15) : start + len(answer)]


@needs_shared("qa/squad_v1.1_xquad_en")
def test_scores_equal_the_official_squad_v11_script_on_real_rows(tmp_path):
    lines = (SHARED_DATA / "qa" / "squad_v1.1_xquad_en" / "test.jsonl").read_text().splitlines()[:400]
    flat = [json.loads(line) for line in lines]
    # a nested SQuAD v1.1 file; every third question gets a second reference (the context's first words)
    articles: dict[str, dict] = {}
    for i, r in enumerate(flat):
        answers = [
            {"text": t, "answer_start": s}
            for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"], strict=True)
        ]
        if i % 3 == 0:
            answers.append({"text": " ".join(r["context"].split()[:3]), "answer_start": 0})
        paragraphs = articles.setdefault(r["title"], {"title": r["title"], "paragraphs": []})["paragraphs"]
        if not paragraphs or paragraphs[-1]["context"] != r["context"]:
            paragraphs.append({"context": r["context"], "qas": []})
        paragraphs[-1]["qas"].append({"id": r["id"], "question": r["question"], "answers": answers})
    dataset = list(articles.values())
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps({"version": "1.1", "data": dataset}, indent=1))

    rows = list(qa.read(path, SPEC))
    assert len(rows) == 400 and all(isinstance(r, QaRow) for r in rows)
    assert sum(len(r.answers) == 2 for r in rows) == 134
    rng = random.Random(0)
    predictions = [perturb(r.answers[0], r.context, rng) for r in rows]
    ours = qa.score(predictions, rows, SPEC)
    official = evaluate(dataset, {r.id: p for r, p in zip(rows, predictions, strict=True) if p is not None})
    assert 20 < official["exact_match"] < 80 and official["f1"] > official["exact_match"]
    assert 100 * ours["exact_match"] == pytest.approx(official["exact_match"], abs=1e-9)
    assert 100 * ours["f1"] == pytest.approx(official["f1"], abs=1e-9)
    assert ours["parse_failures"] == sum(p is None for p in predictions)


def test_english_metrics_by_hand():
    assert qa.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert qa.f1("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert qa.f1("a", "the") == 0.0 and qa.exact_match("a", "the") == 1.0


def test_chinese_is_compared_by_characters():
    assert qa.f1("北京大学", "北京", cjk=True) == pytest.approx(2 / 3)  # 2 of 4 predicted characters
    assert qa.exact_match("北京。", "北京", cjk=True) == 1.0
    assert qa.tokens("iPhone 12手机，", cjk=True) == ["iphone", "12", "手", "机"]
    row = QaRow("1", "f:1", "他在北京大学读书。", "他在哪里读书？", ["北京大学"], [2])
    s = qa.score(["北京"], [row], SPEC)  # CJK detected from the answer
    assert s["f1"] == pytest.approx(2 / 3) and s["exact_match"] == 0.0
    english = qa.score(["北京"], [row], TaskConfig(name="qa", language="en"))  # whole-string tokens
    assert english["f1"] == 0.0


def test_not_span_rate_and_script_breakdown():
    rows = [
        QaRow("1", "", "Paris is in France.", "Where is Paris?", ["France"], [12]),
        QaRow("2", "", "Paris is in France.", "Where is Paris?", ["France"], [12]),
        QaRow("3", "", "他在北京。", "他在哪？", ["北京"], [2]),
        QaRow("4", "", "Paris is in France.", "Where is Paris?", ["France"], [12]),
    ]
    s = qa.score(["France", "in the country of France", "北京", None], rows, SPEC)
    assert s["not_span_rate"] == pytest.approx(1 / 3)  # of the 3 parsed answers
    assert s["exact_match"] == 0.5 and s["parse_failure_rate"] == 0.25
    assert s["by_script"]["cjk"] == {"n": 1, "exact_match": 1.0, "f1": 1.0}
    assert s["by_script"]["latin"]["n"] == 3


# ---- readers, prompt, parser -------------------------------------------------------------------------------


def test_jsonl_reader_rejects_answers_outside_the_context(tmp_path):
    path = tmp_path / "qa.jsonl"
    good = {"id": "q1", "context": "Paris is in France.", "question": "Where?",
            "answers": {"text": ["France"], "answer_start": [3]}}  # fmt: skip
    rows = [good, {**good, "answers": {"text": ["Spain"], "answer_start": [0]}}, {**good, "answers": []},
            {**good, "context": ""}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, *errors = qa.read(path, SPEC)
    assert first.answers == ["France"] and first.answer_starts == [
        12
    ]  # wrong offset mended to the occurrence
    assert first.id == "q1" and first.source == f"{path}:1"
    assert [(e.reason, e.source) for e in errors] == [
        ("answer_not_in_context", f"{path}:2"),
        ("missing_field", f"{path}:3"),
        ("empty_text", f"{path}:4"),
    ]


def test_nested_cmrc_style_json_gives_each_question_its_line(tmp_path):
    document = {"version": "v1.0", "data": [{"id": "D1", "paragraphs": [{"id": "P1",
        "context": "《红楼梦》的作者是曹雪芹。", "qas": [
            {"id": "Q1", "question": "作者是谁？", "answers": [{"text": "曹雪芹", "answer_start": 9}]},
            {"id": "Q2", "question": "书名？", "answers": [{"text": "西游记", "answer_start": 0}]},
        ]}]}]}  # fmt: skip
    path = tmp_path / "cmrc.json"
    text = json.dumps(document, ensure_ascii=False, indent=2)
    path.write_text(text)
    first, second = qa.read(path, SPEC)
    assert first.answers == ["曹雪芹"] and first.answer_starts == [9]
    line = text[: text.index('"Q1"')].count("\n") + 1
    assert first.source == f"{path}:{line}"
    assert isinstance(second, RowError) and second.reason == "answer_not_in_context"
    assert second.source == f"{path}:{text[: text.index('Q2')].count(chr(10)) + 1}"


def test_to_messages_and_parser():
    row = QaRow("q", "f:3", "Paris is in France.", "Where is Paris?", ["France", "in France"], [12, 9])
    conv = qa.to_messages(row, SPEC)
    conv.check()
    assert conv.messages[0].content.endswith("\nContext: Paris is in France.\nQuestion: Where is Paris?")
    assert conv.messages[1].content == "France" and conv.meta["reference"] == ["France", "in France"]
    assert qa.output_constraint(SPEC) is None
    assert qa.parse(' Answer: "France"\nBecause the context says so.', row, SPEC) == "France"
    assert qa.parse("答案：曹雪芹", row, SPEC) == "曹雪芹"
    assert qa.parse("```\nFrance\n```", row, SPEC) == "France"
    assert qa.parse("  \n", row, SPEC) is None and qa.parse("", row, SPEC) is None
