"""Decoding constrained by a byte-level grammar: the base of the copy constraints (inline NER, QA spans).

A grammar is a set of states and, per state, the bytes it may read next and the states they lead to
(`_next`). Several readings can hold at once, so the current state is a set (an NFA). A token is allowed
when every byte of it can be read from the current states (a token may hold part of a UTF-8 character, as
byte-level BPE tokens of Chinese do): a walk of the grammar over the tokenizer's sorted token strings
(built once per tokenizer) finds them. Stop tokens are allowed exactly where the grammar is `complete`.

A grammar that copies a text also guesses what comes next (`draft`): the text from where the reply stands,
tokenized, for the decoder to verify in one forward pass (model/decode.py); the model keeps what it would
have chosen anyway.
"""

from __future__ import annotations

import re
import weakref
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from tasktune.evaluate.constrain import SuffixConstraint

_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
SPACE = frozenset(b" \t\n\r\x0b\x0c")
"""Whitespace bytes: no span starts or ends next to one."""
DRAFT_BYTES = 96
"""Bytes of the copied text tokenized for a draft (~20 tokens of English, so at most that many guesses; a long
QA context is not tokenized whole on every step)."""


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


def piece_bytes(pieces: list[str], byte_level: bool) -> list[bytes | None]:
    """Each token piece's bytes, None where a piece has none (empty, or characters outside the byte-level
    alphabet). Byte-level pieces go through one `str.translate` of all of them (each shown character is one
    byte), not a loop over characters: SmolLM2's table of 49k tokens, built by each evaluation, 0.15 -> 0.08 s."""
    decoder = _byte_decoder()
    joined = "".join(pieces)
    if byte_level and set(joined) <= decoder.keys():
        data = joined.translate({ord(c): b for c, b in decoder.items()}).encode("latin-1")
        out: list[bytes | None] = []
        at = 0
        for piece in pieces:
            out.append(data[at:at + len(piece)] or None)
            at += len(piece)
        return out
    out = []
    for piece in pieces:
        if byte_level and piece and all(c in decoder for c in piece):
            out.append(bytes(decoder[c] for c in piece))
            continue
        hex_byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        if not piece:
            out.append(None)
        elif hex_byte:
            out.append(bytes([int(hex_byte.group(1), 16)]))
        else:
            out.append(None if byte_level else piece.replace("\u2581", " ").encode())
    return out


def token_table(tokenizer) -> TokenTable:
    """The byte string of every regular token (byte-level BPE or SentencePiece pieces), built once."""
    if tokenizer in _TABLES:
        return _TABLES[tokenizer]
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = "ByteLevel" in repr(backend)
    special = set(tokenizer.all_special_ids)
    pieces = [piece or "" for piece in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
    grouped: dict[bytes, list[int]] = defaultdict(list)
    by_id = {}
    for token, data in enumerate(piece_bytes(pieces, byte_level)):
        if data is None or token in special:
            continue
        grouped[data].append(token)
        by_id[token] = data
    keys = sorted(grouped)
    table = TokenTable(keys, [grouped[k] for k in keys], by_id)
    _TABLES[tokenizer] = table
    return table


class ByteGrammarConstraint(SuffixConstraint):
    """Tokens allowed by a byte grammar: subclasses give the start states, `_next` and `complete`."""

    def __init__(self, tokenizer, start: frozenset[Hashable], stop_ids: Sequence[int]):
        super().__init__(stop_ids)
        self.table = token_table(tokenizer)
        self.tokenizer = tokenizer
        self._states: dict[tuple[int, ...], frozenset] = {(): start}
        self._drafts: dict[bytes, list[int]] = {}
        self._moves: dict[frozenset, dict[int, frozenset]] = {}

    def _continuation(self, states: frozenset) -> bytes | None:
        """The bytes the reply most likely goes on with from `states` (a copying grammar: the rest of its
        text), or None where there is no single guess."""
        return None

    def draft(self, generated: tuple[int, ...], k: int) -> list[int]:
        """Up to `k` tokens guessed to follow `generated`: `_continuation` tokenized as the model's training
        targets were (the text's own words), [] without a guess."""
        states = self.states_after(generated)
        rest = self._continuation(states) if states and k > 0 else None
        if not rest:
            return []
        window = rest[:DRAFT_BYTES]
        if window not in self._drafts:
            try:
                text = window.decode()
            except UnicodeDecodeError:  # the reply stands inside a character: no guess
                text = ""
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            # a window cut short may end inside a word that the whole text tokenizes differently
            self._drafts[window] = ids if len(window) == len(rest) else ids[:-1]
        return self._drafts[window][:k]

    def _next(self, state) -> dict[int, list]:
        """byte -> the states it leads to, from one state."""
        raise NotImplementedError

    def complete(self, states: frozenset) -> bool:
        """Whether the reply may end here."""
        raise NotImplementedError

    def _step(self, states: frozenset) -> dict[int, frozenset]:
        """byte -> the states it leads to from `states` (kept: the walks of a row's next positions pass through
        the same states again)."""
        moves = self._moves.get(states)
        if moves is None:
            merged: dict[int, set[Hashable]] = defaultdict(set)
            for state in states:
                for byte, targets in self._next(state).items():
                    merged[byte].update(targets)
            moves = self._moves[states] = {byte: frozenset(targets) for byte, targets in merged.items()}
        return moves

    def _read(self, states: frozenset, data: bytes) -> frozenset:
        for byte in data:
            states = self._step(states).get(byte, frozenset())
            if not states:
                break
        return states

    def states_after(self, generated: tuple[int, ...]) -> frozenset:
        """The grammar states after the generated tokens (empty when they left the grammar)."""
        if generated in self._states:
            return self._states[generated]
        before = self.states_after(generated[:-1])
        data = self.table.by_id.get(generated[-1])
        states = self._read(before, data) if data is not None and before else frozenset()
        self._states[generated] = states
        return states

    def ends_after(self, generated: tuple[int, ...]) -> bool:
        """Whether only a stop token may follow `generated`: the grammar is complete there and reads no further
        byte (the decoder computes no position for such a last token: model/decode.py)."""
        states = self.states_after(generated)
        return bool(states) and self.complete(states) and not self._step(states)

    # ---- tokens ----

    def allowed(self, generated: tuple[int, ...]) -> Sequence[int]:
        states = self.states_after(generated)
        if not states:
            return self.stop_ids
        found: list[int] = []
        keys, ids = self.table.keys, self.table.ids

        def walk(prefix: bytes, here: frozenset) -> None:
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
