"""Copy-constrained decoding for inline NER: the reply can only be the input text with `[mention|LABEL]`
brackets around some of its spans, so it always parses and never holds a word the input lacks.

The grammar runs on the bytes of the text (a token may hold part of a UTF-8 character, as byte-level BPE
tokens of Chinese do): outside a mention the next byte is the text's next byte or `[` (before a character
that is not whitespace, where no word is cut); inside one, the text's next byte or `|` (after a character
that is not whitespace, where no word is cut), then the bytes of a label and `]`. Several readings can hold
at once (a text with its own `[` or `|`), so the state is a set (an NFA). A token is allowed when every byte
of it can be read from the current states: a walk of the grammar over the tokenizer's sorted token strings
(built once per tokenizer) finds them. Stop tokens are allowed exactly when the whole text has been copied
outside a mention.
"""

from __future__ import annotations

import re
import weakref
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from tasktune.config.schema import ConfigError
from tasktune.evaluate.constrain import SuffixConstraint
from tasktune.tasks.ner_formats import cuts_word

State = tuple
"""("copy", j) | ("mention", j, start) | ("label", j, prefix bytes): j = bytes of the text read so far."""
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SPACE = frozenset(b" \t\n\r\x0b\x0c")


@dataclass(frozen=True)
class TokenTable:
    keys: list[bytes]
    """Distinct token byte strings, sorted (so the tokens starting with a prefix are one bisect range)."""
    ids: list[list[int]]
    """Token ids of each key."""
    by_id: dict[int, bytes]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a byte-level BPE token shows -> the byte."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(shown)
    extra = 0
    for byte in range(256):
        if byte not in shown:
            shown.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(shown, chars, strict=True)}


def token_table(tokenizer) -> TokenTable:
    """The byte string of every regular token (byte-level BPE or SentencePiece pieces), built once."""
    if tokenizer in _TABLES:
        return _TABLES[tokenizer]
    decoder = _byte_decoder()
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = "ByteLevel" in repr(backend)
    special = set(tokenizer.all_special_ids)
    grouped: dict[bytes, list[int]] = defaultdict(list)
    by_id = {}
    for token, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token in special or not piece:
            continue
        hex_byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        if byte_level and all(c in decoder for c in piece):
            data = bytes(decoder[c] for c in piece)
        elif hex_byte:
            data = bytes([int(hex_byte.group(1), 16)])
        elif not byte_level:
            data = piece.replace("\u2581", " ").encode()
        else:
            continue
        grouped[data].append(token)
        by_id[token] = data
    keys = sorted(grouped)
    table = TokenTable(keys, [grouped[k] for k in keys], by_id)
    _TABLES[tokenizer] = table
    return table


class CopyInlineConstraint(SuffixConstraint):
    """The input `text` copied, with `[span|LABEL]` around mentions (labels from `labels`), then a stop."""

    def __init__(self, tokenizer, text: str, labels: Sequence[str], stop_ids: Sequence[int]):
        super().__init__(stop_ids)
        if not labels:
            raise ConfigError("copy-constrained inline NER needs task.labels")
        self.table = token_table(tokenizer)
        self.text = text.encode()
        self.labels = [label.encode() for label in labels]
        self.edge = self._edges(text)
        self._states: dict[tuple[int, ...], frozenset[State]] = {(): frozenset({("copy", 0)})}

    @staticmethod
    def _edges(text: str) -> list[bool]:
        """Per byte offset: whether a mention may start or end there (a character edge that cuts no word)."""
        edges = [False] * (len(text.encode()) + 1)
        position = 0
        for i, ch in enumerate(text):
            edges[position] = not cuts_word(text, i)
            position += len(ch.encode())
        edges[position] = True
        return edges

    # ---- the grammar ----

    def _next(self, state: State) -> dict[int, State]:
        """byte -> the state it leads to, from one state."""
        text, n = self.text, len(self.text)
        kind, j = state[0], state[1]
        moves: dict[int, list[State]] = {}
        if kind == "copy":
            if j < n:
                moves[text[j]] = [("copy", j + 1)]
                if self.edge[j] and text[j] not in _SPACE:
                    moves.setdefault(ord("["), []).append(("mention", j, j))
        elif kind == "mention":
            if j < n:
                moves[text[j]] = [("mention", j + 1, state[2])]
            if j > state[2] and self.edge[j] and text[j - 1] not in _SPACE:
                moves.setdefault(ord("|"), []).append(("label", j, b""))
        else:
            prefix = state[2]
            if prefix in self.labels:
                moves.setdefault(ord("]"), []).append(("copy", j))
            for label in self.labels:
                if len(label) > len(prefix) and label.startswith(prefix):
                    moves.setdefault(label[len(prefix)], []).append(("label", j, label[: len(prefix) + 1]))
        return moves  # type: ignore[return-value]

    def _step(self, states: frozenset[State]) -> dict[int, frozenset[State]]:
        merged: dict[int, set[State]] = defaultdict(set)
        for state in states:
            for byte, targets in self._next(state).items():
                merged[byte].update(targets)  # type: ignore[arg-type]
        return {byte: frozenset(targets) for byte, targets in merged.items()}

    def _read(self, states: frozenset[State], data: bytes) -> frozenset[State]:
        for byte in data:
            states = self._step(states).get(byte, frozenset())
            if not states:
                break
        return states

    def states_after(self, generated: tuple[int, ...]) -> frozenset[State]:
        """The grammar states after the generated tokens (empty when they left the grammar)."""
        if generated in self._states:
            return self._states[generated]
        before = self.states_after(generated[:-1])
        data = self.table.by_id.get(generated[-1])
        states = self._read(before, data) if data is not None and before else frozenset()
        self._states[generated] = states
        return states

    def complete(self, states: frozenset[State]) -> bool:
        return ("copy", len(self.text)) in states

    # ---- tokens ----

    def allowed(self, generated: tuple[int, ...]) -> Sequence[int]:
        states = self.states_after(generated)
        if not states:
            return self.stop_ids
        found: list[int] = []
        keys, ids = self.table.keys, self.table.ids

        def walk(prefix: bytes, here: frozenset[State]) -> None:
            at = bisect_left(keys, prefix)
            if at == len(keys) or not keys[at].startswith(prefix):
                return  # no token starts with this prefix
            if prefix and keys[at] == prefix:
                found.extend(ids[at])
            for byte, there in self._step(here).items():
                walk(prefix + bytes([byte]), there)

        walk(b"", states)
        if self.complete(states):
            found.extend(self.stop_ids)
        return found or self.stop_ids
