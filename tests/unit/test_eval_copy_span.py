"""Span-constrained decoding for extractive QA: the allowed tokens are exactly the grammar's, and random
models under it always answer with a span of the context (no parse failure, no answer outside it)."""

from __future__ import annotations

import random

from conftest import allowed_along_a_walk, random_reply

from tasktune.config.schema import Config
from tasktune.config.task import EvalConfig, TaskConfig
from tasktune.evaluate.constrain import build_constraint
from tasktune.evaluate.copy_span import CopySpanConstraint
from tasktune.evaluate.runner import predict
from tasktune.tasks import qa
from tasktune.tasks.ner_formats import cuts_word

SPEC = TaskConfig(name="qa")
CONTEXTS = [
    "Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara.",
    "北京是中国的首都，有2154万人口。",
    "Zoë met Jürgen at 10:30 — twice.",
]


def rows() -> list[qa.QaRow]:
    return [qa.QaRow(f"q{i}", "t:1", context, "What?", [context.split()[0]], [0])
            for i, context in enumerate(CONTEXTS)]


def on_word_edges(span: str, context: str) -> bool:
    """Whether span occurs in context at an occurrence that cuts no word at either end."""
    start = context.find(span)
    while start != -1:
        if not cuts_word(context, start) and not cuts_word(context, start + len(span)):
            return True
        start = context.find(span, start + 1)
    return False


def test_allowed_tokens_are_exactly_those_the_grammar_reads(smol_tokenizer):
    constraint = build_constraint({"type": "copy_span", "text": CONTEXTS[0] + " " + CONTEXTS[1]},
                                  smol_tokenizer, [2])
    assert isinstance(constraint, CopySpanConstraint)
    for step, (states, allowed) in enumerate(allowed_along_a_walk(constraint, random.Random(0))):
        assert (2 in allowed) == (step > 0 and constraint.complete(states))
    first = {constraint.table.by_id[t] for t in constraint.allowed(())}
    assert b"Super" in first and b"uper" not in first and b" Super" not in first  # starts on a word edge


def test_random_walks_always_give_a_span_of_the_context(smol_tokenizer):
    rng = random.Random(1)
    for context in CONTEXTS:
        constraint = CopySpanConstraint(smol_tokenizer, context, [2])
        assert 2 not in constraint.allowed(())  # never an empty answer
        for _ in range(8):
            output = smol_tokenizer.decode(list(random_reply(constraint, rng)))
            assert output.strip() == output and on_word_edges(output, context), output


def test_qa_eval_is_span_constrained_by_default(noisy_llama):
    model, tokenizer = noisy_llama
    items = rows()
    scored = predict(Config(task=SPEC, eval=EvalConfig(max_new_tokens=24, batch_size=2)), SPEC, model, tokenizer,
                     items, progress=False)
    assert scored.constrained
    assert scored.scores["parse_failures"] == 0 and scored.scores["not_span_rate"] == 0.0
    assert all(r["prediction"] in row.context for r, row in zip(scored.records, items, strict=True))
    free = predict(Config(task=SPEC, eval=EvalConfig(max_new_tokens=24, batch_size=2, constrained=False)), SPEC,
                   model, tokenizer, items, progress=False)
    assert not free.constrained and free.scores["not_span_rate"] > 0  # unconstrained, it writes anything
