"""Drafts from copy constraints (evaluate/byte_grammar.py): a row that copies a text guesses the rest of it,
the decoder verifies the guesses in one pass (model/decode.py), and no reply changes."""

from __future__ import annotations

import random

import pytest

from tasktune.evaluate.byte_grammar import DRAFT_BYTES
from tasktune.evaluate.copy_inline import CopyInlineConstraint
from tasktune.evaluate.copy_span import CopySpanConstraint
from tasktune.evaluate.generate import generate_texts
from tasktune.evaluate.mention_guess import BracketRecord
from tasktune.model import decode
from tasktune.model.decode import Decoder

LABELS = ["PER", "LOC", "ORG"]


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_inline_ner_guesses_the_rest_of_the_sentence_its_brackets_and_the_rest_of_a_label(smol_tokenizer):
    text = "Maria Lopez flew to Madrid."
    constraint = CopyInlineConstraint(smol_tokenizer, text, LABELS, [2])
    # a run of two capitalized words opens the sentence: guessed as a mention, up to the label
    assert constraint.draft((), 8) == ids(smol_tokenizer, "[Maria Lopez|")
    opened = tuple(ids(smol_tokenizer, "[Maria"))  # inside a mention, the run goes on, then its `|`
    assert constraint.draft(opened, 4) == ids(smol_tokenizer, " Lopez|")
    bar = tuple(ids(smol_tokenizer, "[Maria Lopez|"))
    assert constraint.draft(bar, 4) == []  # three labels may follow: no guess
    one_left = bar + tuple(ids(smol_tokenizer, "P"))
    assert constraint.states_after(one_left)  # "P" is a label's start
    assert constraint.draft(one_left, 8) == ids(smol_tokenizer, "ER] flew to [Madrid|")
    closed = tuple(ids(smol_tokenizer, "[Maria Lopez|PER] flew to"))
    assert constraint.draft(closed, 2) == ids(smol_tokenizer, " [Madrid|")[:2]
    assert constraint.draft(closed, 0) == []
    plain = tuple(ids(smol_tokenizer, "Maria Lopez flew to Madrid"))  # the model left it plain
    assert constraint.draft(plain, 4) == ids(smol_tokenizer, ".")
    everything = tuple(ids(smol_tokenizer, text))
    assert constraint.draft(everything, 4) == []  # nothing left to copy


def test_text_whose_capitals_say_nothing_is_guessed_plainly(smol_tokenizer):
    for text in ("EU REJECTS GERMAN CALL TO BOYCOTT BRITISH LAMB .", "maria lopez flew to madrid."):
        assert CopyInlineConstraint(smol_tokenizer, text, LABELS, [2]).draft((), 40) == ids(smol_tokenizer, text)


def test_no_guess_inside_a_character_and_a_long_text_is_tokenized_in_a_window(smol_tokenizer):
    constraint = CopyInlineConstraint(smol_tokenizer, "李雷到了北京", LABELS, [2])
    half = [t for t in range(len(smol_tokenizer)) if constraint.table.by_id.get(t) == "李".encode()[:1]]
    assert half and constraint.states_after((half[0],)) and constraint.draft((half[0],), 4) == []
    long = " ".join(["Word"] + ["word"] * 100)
    assert len(long) > DRAFT_BYTES
    window = CopyInlineConstraint(smol_tokenizer, long, LABELS, [2]).draft((), 32)
    # the window's last token may be a word cut in two: it is dropped
    assert window == ids(smol_tokenizer, long)[:len(window)] and 0 < len(window) < len(ids(smol_tokenizer, long))


def test_a_qa_span_guesses_the_rest_of_its_context_once_it_started(smol_tokenizer):
    context = "The tower was built in 1889 by Gustave Eiffel."
    constraint = CopySpanConstraint(smol_tokenizer, context, [2])
    assert constraint.draft((), 4) == []  # where the span starts, the model decides
    started = tuple(ids(smol_tokenizer, "Gustave"))
    assert constraint.draft(started, 3) == ids(smol_tokenizer, " Eiffel.")[:3]


@pytest.mark.parametrize("kind", ["copy_inline", "copy_span"])
def test_copy_drafts_change_no_reply_and_take_fewer_passes(noisy_llama, monkeypatch, kind):
    model, tokenizer = noisy_llama
    decoders: list[Decoder] = []
    run = Decoder.run

    def spy(self, requests, progress=None):
        run(self, requests, progress)
        decoders.append(self)

    monkeypatch.setattr(Decoder, "run", spy)
    rng = random.Random(1)
    words = ["Maria", "Lopez", "flew", "to", "Madrid", "with", "Acme", "Corp", "on", "Monday", "the", "team"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(7)]
    conversations = [[{"role": "user", "content": f"Copy: {t}"}] for t in texts]
    extra = {"labels": LABELS} if kind == "copy_inline" else {}
    constraint = [{"type": kind, "text": t, **extra} for t in texts]
    plain = generate_texts(model, tokenizer, conversations, 40, 3, constraint, False, copy_drafts=0)
    guessed = generate_texts(model, tokenizer, conversations, 40, 3, constraint, False, copy_drafts=4)
    assert guessed.texts == plain.texts and guessed.truncated == plain.truncated
    without, with_drafts = decoders
    assert without.drafted == 0 and with_drafts.accepted > 0
    assert with_drafts.forward_passes < without.forward_passes


def test_a_reply_ends_where_the_grammar_allows_nothing_but_a_stop(smol_tokenizer):
    text = "Maria Lopez flew to Madrid."
    inline = CopyInlineConstraint(smol_tokenizer, text, LABELS, [2])
    assert inline.ends_after(tuple(ids(smol_tokenizer, text)))
    assert inline.ends_after(tuple(ids(smol_tokenizer, "[Maria Lopez|PER] flew to [Madrid|LOC].")))
    for unfinished in ("Maria Lopez flew to Madrid", "[Maria Lopez|PER] flew to [Madrid|LOC]", "Maria"):
        assert not inline.ends_after(tuple(ids(smol_tokenizer, unfinished)))
    assert not inline.ends_after(tuple(ids(smol_tokenizer, "Maria Lopez flew to Madrid!")))  # left the grammar
    span = CopySpanConstraint(smol_tokenizer, "built by Gustave Eiffel.", [2])
    assert span.ends_after(tuple(ids(smol_tokenizer, "Gustave Eiffel.")))  # the context's end
    assert not span.ends_after(tuple(ids(smol_tokenizer, "Gustave Eiffel")))  # may stop or go on


def test_a_draft_that_ends_the_reply_is_verified_without_its_last_position(noisy_llama, monkeypatch):
    model, tokenizer = noisy_llama
    computed: list[int] = []
    forward = Decoder._forward

    def count(self, input_ids, mask, *args, **kwargs):
        computed.append(int(mask[:, -input_ids.shape[1]:].sum()))
        return forward(self, input_ids, mask, *args, **kwargs)

    monkeypatch.setattr(Decoder, "_forward", count)
    texts = ["Maria Lopez flew to Madrid.", "the team met Acme Corp on Monday", "Lopez flew"]
    conversations = [[{"role": "user", "content": f"Copy: {t}"}] for t in texts]
    constraint = [{"type": "copy_inline", "text": t, "labels": LABELS} for t in texts]
    trimmed = generate_texts(model, tokenizer, conversations, 40, 3, constraint, False, copy_drafts=40)
    positions = sum(computed)
    computed.clear()
    monkeypatch.setattr(decode, "_ends_after", lambda request, draft: False)
    whole = generate_texts(model, tokenizer, conversations, 40, 3, constraint, False, copy_drafts=40)
    assert trimmed.texts == whole.texts and trimmed.generated_tokens == whole.generated_tokens
    assert positions < sum(computed)


def test_rows_stop_guessing_brackets_while_the_model_writes_fewer_than_half_of_them(smol_tokenizer):
    text = "Fans in Lake Geneva cheered on Sunday."
    record = BracketRecord()
    first = CopyInlineConstraint(smol_tokenizer, text, LABELS, [2], record)
    guessed = first.draft((), 8)
    assert guessed == ids(smol_tokenizer, "Fans in [Lake Geneva|")
    on = tuple(ids(smol_tokenizer, "Fans in [Lake Geneva|LOC] cheered on"))
    assert first.draft(on, 8) == ids(smol_tokenizer, " [Sunday|")
    copied = tuple(ids(smol_tokenizer, "Fans in [Lake Geneva|LOC] cheered on Sunday"))  # the `[` missed
    first.draft(copied, 8)
    assert (record.held, record.missed) == (1, 1) and record.declined == {"Sunday"}
    second = CopyInlineConstraint(smol_tokenizer, "Rain in Oslo on Sunday.", LABELS, [2], record)  # another row
    second.draft((), 8)
    # its `[` before Oslo missed too; the run declined in the first row is copied plainly
    assert second.draft(tuple(ids(smol_tokenizer, "Rain in Oslo")), 8) == ids(smol_tokenizer, " on Sunday.")
    assert (record.held, record.missed) == (1, 2) and record.declined == {"Sunday", "Oslo"}
    record.missed = 3  # more missed than held (one free hit to start): plain copies for every row
    assert not record.worth_it
    third = CopyInlineConstraint(smol_tokenizer, text, LABELS, [2], record)
    assert third.draft((), 8) == ids(smol_tokenizer, text)[:8]
    assert third.draft(tuple(ids(smol_tokenizer, "Fans in [Lake")), 3) == ids(smol_tokenizer, " Geneva cheered")[:3]
