"""Guessed brackets for the drafts of copy-constrained inline NER (evaluate/copy_inline.py).

An inline NER reply copies its input with `[mention|LABEL]` around the entities. A draft that only copies the
text is right until the next mention, where the model writes `[` instead, and again at the mention's end,
where it writes `|`: a row's run of verified guesses stops there, and its next tokens wait for the next
forward pass. Guessing the brackets of a run of capitalized words (`guess_mentions`) lets a run go through
`[` and `|` where the guess holds (the demo evaluation: 11 forward passes instead of 13).

A bracket guessed where the model copies the text instead ends the run where a plain copy would have gone on,
so the rows of one evaluation keep a shared count (`BracketRecord`) of how their guessed brackets fared, and
copy plainly while the model writes fewer than half of them (a model that leaves most capitalized words
plain or writes mentions of other shapes, text full of capitalized words that are no mentions: the demo
adapter on 80 CoNLL-2003 sentences: 49 forward passes with unguarded guesses, 34 with the count, 33 plain).
The record also keeps the runs the model copied plainly where a row guessed `[` ("on [Sunday|" where the
model wrote "on Sunday"): no row guesses them again.
Drafts are verified: a wrong guess costs its positions in one pass, never a different reply. Text without
capitals (Chinese) or mostly in capitals (headlines) is copied plainly (`says_nothing`).
"""

from __future__ import annotations

from collections.abc import Collection

from tasktune.tasks.ner_formats import is_wordy

UPPERCASE_TEXT = 0.5
"""Share of a text's letters that are capitals from which its capitals say nothing about mentions."""


class BracketRecord:
    """How the brackets that the rows of one evaluation guessed fared: written by the model, or not."""

    def __init__(self) -> None:
        self.held = 0
        self.missed = 0
        self.declined: set[str] = set()
        """Runs of capitalized words the model copied plainly where a row guessed a mention."""

    @property
    def worth_it(self) -> bool:
        """Whether to guess brackets: the model wrote at least half of the guessed ones (one free hit to start)."""
        return self.held + 1 >= self.missed


def says_nothing(text: str) -> bool:
    """Whether `text`'s capitals say nothing about its mentions (none, or mostly capitals)."""
    letters = [ch for ch in text if ch.isalpha()]
    capitals = sum(ch.isupper() for ch in letters)
    return capitals == 0 or capitals >= UPPERCASE_TEXT * len(letters)


def _word_end(text: str, i: int) -> int:
    while i < len(text) and is_wordy(text[i]):
        i += 1
    return i


def _run_end(text: str, i: int) -> int:
    """The end of the run of capitalized words going on at character i (words joined by a space or `-`)."""
    i = _word_end(text, i)
    while i + 1 < len(text) and text[i] in " -" and text[i + 1].isupper():
        i = _word_end(text, i + 1)
    return i


def guess_mentions(text: str, i: int, in_mention: bool, declined: Collection[str] = ()) -> tuple[str, str | None]:
    """The reply's likely continuation from character `i` of `text`, inside a mention or not, and the run it
    guesses `[` before (None: none): the text, with `[` before the next run of capitalized words that is not
    `declined` (at a sentence's start only a run of two or more: "The" starts most sentences) and `|` after it
    (or after the run a mention stands in); it ends at that `|`, where the model chooses the label. The plain
    rest of the text where no run lies ahead."""
    if in_mention:
        return text[i:_run_end(text, i)] + "|", None
    out = []
    while i < len(text):
        if text[i].isupper() and (i == 0 or not is_wordy(text[i - 1])):
            end = _run_end(text, i)
            starts_sentence = text[:i].rstrip()[-1:] in ("", ".", "!", "?")
            if (not starts_sentence or end > _word_end(text, i)) and text[i:end] not in declined:
                return "".join(out) + "[" + text[i:end] + "|", text[i:end]
            out.append(text[i:end])
            i = end
            continue
        out.append(text[i])
        i += 1
    return "".join(out), None
