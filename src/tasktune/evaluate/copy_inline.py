"""Copy-constrained decoding for inline NER: the reply can only be the input text with `[mention|LABEL]`
brackets around some of its spans, so it always parses and never holds a word the input lacks.

The grammar runs on the bytes of the text (a token may hold part of a UTF-8 character, as byte-level BPE
tokens of Chinese do): outside a mention the next byte is the text's next byte or `[` (before a character
that is not whitespace, where no word is cut); inside one, the text's next byte or `|` (after a character
that is not whitespace, where no word is cut), then the bytes of a label and `]`. Several readings can hold
at once (a text with its own `[` or `|`), which the byte grammar's state sets handle (`byte_grammar`). Stop
tokens are allowed exactly when the whole text has been copied outside a mention. Drafts guess the rest of
the text, with brackets around the next run of capitalized words (evaluate/mention_guess.py), and the rest
of a label once one label is left: most of a reply is copied.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasktune.config.schema import ConfigError
from tasktune.evaluate.byte_grammar import SPACE, ByteGrammarConstraint, token_table
from tasktune.evaluate.mention_guess import BracketRecord, guess_mentions, says_nothing
from tasktune.tasks.ner_formats import cuts_word

__all__ = ["CopyInlineConstraint", "token_table", "word_edges"]

_BRACKETS = frozenset(b"[|")
State = tuple
"""("copy", j) | ("mention", j, start) | ("label", j, prefix bytes): j = bytes of the text read so far."""


def word_edges(text: str) -> list[bool]:
    """Per byte offset of `text`: whether a span may start or end there (a character edge that cuts no word)."""
    edges = [False] * (len(text.encode()) + 1)
    position = 0
    for i, ch in enumerate(text):
        edges[position] = not cuts_word(text, i)
        position += len(ch.encode())
    edges[position] = True
    return edges


class CopyInlineConstraint(ByteGrammarConstraint):
    """The input `text` copied, with `[span|LABEL]` around mentions (labels from `labels`), then a stop."""

    def __init__(self, tokenizer, text: str, labels: Sequence[str], stop_ids: Sequence[int],
                 record: BracketRecord | None = None):
        if not labels:
            raise ConfigError("copy-constrained inline NER needs task.labels")
        super().__init__(tokenizer, frozenset({("copy", 0)}), stop_ids)
        self.source = text
        self.text = text.encode()
        self.labels = [label.encode() for label in labels]
        self.edge = word_edges(text)
        self._guesses = not says_nothing(text)
        """Whether drafts guess brackets from capitals (evaluate/mention_guess.py)."""
        self.record = record or BracketRecord()
        """How the guessed brackets fared, shared by the rows of one evaluation (`RowConstraints`)."""
        self._pending: tuple[int, list[int], int, str | None] | None = None
        """The last draft with a guessed bracket: (reply length then, its tokens, the index of the bracket, the
        run it guessed `[` before)."""
        self._run: str | None = None  # the run the last `_guess` put `[` before

    # ---- the grammar ----

    def _next(self, state: State) -> dict[int, State]:
        """byte -> the state it leads to, from one state."""
        text, n = self.text, len(self.text)
        kind, j = state[0], state[1]
        moves: dict[int, list[State]] = {}
        if kind == "copy":
            if j < n:
                moves[text[j]] = [("copy", j + 1)]
                if self.edge[j] and text[j] not in SPACE:
                    moves.setdefault(ord("["), []).append(("mention", j, j))
        elif kind == "mention":
            if j < n:
                moves[text[j]] = [("mention", j + 1, state[2])]
            if j > state[2] and self.edge[j] and text[j - 1] not in SPACE:
                moves.setdefault(ord("|"), []).append(("label", j, b""))
        else:
            prefix = state[2]
            if prefix in self.labels:
                moves.setdefault(ord("]"), []).append(("copy", j))
            for label in self.labels:
                if len(label) > len(prefix) and label.startswith(prefix):
                    moves.setdefault(label[len(prefix)], []).append(("label", j, label[: len(prefix) + 1]))
        return moves  # type: ignore[return-value]

    def draft(self, generated: tuple[int, ...], k: int) -> list[int]:
        """`ByteGrammarConstraint.draft`, and the fate of this row's last guessed bracket counted in `record`
        once the reply has reached it (kept up to it: the model's token there is known). Rows with the same
        text share one constraint, and so its pending guess: the count steers guesses, never replies."""
        if self._pending is not None:
            start, guessed, at, run = self._pending
            if len(generated) > start + at:
                self._pending = None
                if list(generated[start:start + at]) == guessed[:at]:
                    if generated[start + at] == guessed[at]:
                        self.record.held += 1
                    else:
                        self.record.missed += 1
                        if run is not None:
                            self.record.declined.add(run)
        self._run = None
        tokens = super().draft(generated, k)
        if self._pending is None:
            at = next((n for n, token in enumerate(tokens) if _BRACKETS & set(self.table.by_id.get(token, b""))),
                      None)
            if at is not None:
                self._pending = (len(generated), tokens, at, self._run)
        return tokens

    def _continuation(self, states: frozenset[State]) -> bytes | None:
        """Copying (in or out of a mention): the rest of the text with guessed brackets (`_guess`); in a label
        that only one label completes: the rest of it, `]`, then the same."""
        if len(states) != 1:
            return None
        (state,) = states
        if state[0] != "label":
            return self._guess(state[1], state[0] == "mention")
        matches = [label for label in self.labels if label.startswith(state[2])]
        if len(matches) != 1:
            return None
        return matches[0][len(state[2]):] + b"]" + self._guess(state[1], False)

    def _guess(self, j: int, in_mention: bool) -> bytes:
        """The rest of the text from byte j with the brackets `guess_mentions` expects; the plain rest where
        capitals say nothing, the evaluation's guessed brackets did not pay, or j stands inside a character."""
        if not self._guesses or not self.record.worth_it:
            return self.text[j:]
        try:
            at = len(self.text[:j].decode())  # the character byte j starts
        except UnicodeDecodeError:
            return self.text[j:]
        guess, self._run = guess_mentions(self.source, at, in_mention, self.record.declined)
        return guess.encode()

    def complete(self, states: frozenset[State]) -> bool:
        return ("copy", len(self.text)) in states
