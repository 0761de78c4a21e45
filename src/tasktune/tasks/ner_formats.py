"""The answer formats of generative NER and how an answer is placed back on its input text.

- json: `[{"type", "text"}, ...]` in order of appearance;
- inline: the input rewritten with each entity as `[text|TYPE]` (`[Maria Lopez|PER] flew to [Madrid|LOC]`):
  its spans are exact by construction;
- tagged-words: GNER-style, every word followed by its IOB2 tag, `Maria(B-PER) Lopez(I-PER) flew(O) ...`
  (words: whitespace runs, every CJK character, and cuts at entity edges so entities are whole words).

`align` places mention texts on the input: left to right, each on the next unused occurrence (occurrences
that cut a word are taken last); a mention that is not in the text gets no span.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

from tasktune.tasks import bio
from tasktune.tasks.base import has_cjk

FORMATS = ("json", "inline", "tagged-words")
_FENCE = re.compile(r"```[A-Za-z]*")
Span = tuple[int, int]


class Spanned(Protocol):
    type: str
    start: int
    end: int


# ---- alignment -----------------------------------------------------------------------------------------


def is_wordy(ch: str) -> bool:
    """Whether `ch` is part of a word that a span edge must not cut (a letter or digit, not CJK)."""
    return ch.isalnum() and not has_cjk(ch)


def cuts_word(text: str, i: int) -> bool:
    """Whether a span edge at character i splits a word (letters/digits on both sides, CJK excepted)."""
    return 0 < i < len(text) and is_wordy(text[i - 1]) and is_wordy(text[i])


def occurrences(needle: str, haystack: str) -> list[Span]:
    """Every (start, end) where needle occurs, overlapping ones included."""
    found, start = [], haystack.find(needle) if needle else -1
    while start != -1:
        found.append((start, start + len(needle)))
        start = haystack.find(needle, start + 1)
    return found


def align(mentions: Sequence[str], text: str, used: set[Span] | None = None) -> list[Span | None]:
    """The span of each mention in `text`, in order: the next unused occurrence after the previous mention
    (an occurrence on word edges before one that cuts a word, one after the previous mention before an earlier
    one); None for a mention that is not in the text or whose occurrences are all taken."""
    used = set() if used is None else used
    cursor, spans = 0, []
    for mention in mentions:
        options = [span for span in occurrences(mention, text) if span not in used]
        if not options:
            spans.append(None)
            continue
        best = min(options, key=lambda s: (cuts_word(text, s[0]) or cuts_word(text, s[1]), s[0] < cursor, s[0]))
        used.add(best)
        cursor = best[1]
        spans.append(best)
    return spans


def placed(kind: str, mention: str, span: Span | None, text: str | None) -> dict[str, Any]:
    """A predicted entity: type, text and its character span (start/end None when it has none)."""
    if span is None or text is None:
        return {"type": kind, "text": mention, "start": None, "end": None}
    return {"type": kind, "text": text[span[0] : span[1]], "start": span[0], "end": span[1]}


def place_all(items: list[tuple[str, str]], text: str | None) -> list[dict[str, Any]]:
    """(type, mention) pairs placed by `align` (no spans without a text)."""
    spans = align([m for _, m in items], text) if text is not None else [None] * len(items)
    return [placed(kind, mention, span, text) for (kind, mention), span in zip(items, spans, strict=True)]


# ---- words (tagged-words) ------------------------------------------------------------------------------


def words(text: str, cuts: set[int] = frozenset()) -> list[Span]:
    """Word spans: whitespace-separated runs, split before and after every CJK character and at `cuts`."""
    found = []
    for match in re.finditer(r"\S+", text):
        start = match.start()
        for i in range(match.start() + 1, match.end()):
            if i in cuts or has_cjk(text[i]) or has_cjk(text[i - 1]):
                found.append((start, i))
                start = i
        found.append((start, match.end()))
    return found


# ---- targets -------------------------------------------------------------------------------------------


def flat(entities: Sequence[Spanned]) -> list[Spanned]:
    """Entities by position, dropping any that overlaps an earlier one (no flat format can write it)."""
    kept, end = [], 0
    for entity in sorted(entities, key=lambda e: (e.start, e.end)):
        if entity.start >= end:
            kept.append(entity)
            end = entity.end
    return kept


def render(text: str, entities: Sequence[Spanned], fmt: str) -> str:
    """The answer the model learns to write for a text and its entities."""
    ordered = sorted(entities, key=lambda e: (e.start, e.end))
    if fmt == "json":
        return json.dumps([{"type": e.type, "text": text[e.start : e.end]} for e in ordered], ensure_ascii=False)
    kept = flat(ordered)
    if fmt == "inline":
        parts, position = [], 0
        for e in kept:
            parts += [text[position : e.start], "[", text[e.start : e.end], "|", e.type, "]"]
            position = e.end
        return "".join(parts) + text[position:]
    if fmt == "tagged-words":
        spans = words(text, {edge for e in kept for edge in (e.start, e.end)})
        tags = ["O"] * len(spans)
        for e in kept:
            inside = [i for i, (s, _) in enumerate(spans) if e.start <= s < e.end]
            for k, i in enumerate(inside):
                tags[i] = f"{'B' if k == 0 else 'I'}-{e.type}"
        return " ".join(f"{text[s:e]}({tag})" for (s, e), tag in zip(spans, tags, strict=True))
    raise ValueError(f"unknown NER output format {fmt!r}: expected one of {', '.join(FORMATS)}")


# ---- parsing -------------------------------------------------------------------------------------------


def _label_map(labels: Sequence[str] | None) -> dict[str, str]:
    return {label.lower(): label for label in labels or []}


def parse_json(output: str, text: str | None) -> list[dict[str, Any]] | None:
    """The first JSON list in the output (code fences and prose around it ignored), if every item is an
    object with non-empty string `type` and `text`; mentions placed on `text`."""
    cleaned = _FENCE.sub("", output)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", cleaned):
        try:
            value, _ = decoder.raw_decode(cleaned, match.start())
        except json.JSONDecodeError:
            continue
        if not isinstance(value, list):
            continue
        items = []
        for item in value:
            if not (isinstance(item, dict) and isinstance(item.get("type"), str)
                    and isinstance(item.get("text"), str)):
                return None
            if not item["text"].strip() or not item["type"].strip():
                return None
            items.append((item["type"].strip(), item["text"].strip()))
        return place_all(items, text)
    return None


_ANY_MARK = re.compile(r"\[([^\[\]|]+)\|([^\[\]|]+)\]")


def read_copy(output: str, text: str, labels: Sequence[str], whole: bool = False) -> list[tuple[str, int, int]] | None:
    """(type, start, end) of the mentions when `output` is `text` (or, cut short and not `whole`, its
    beginning) with `[mention|TYPE]` brackets around some spans, else None. Every reading is followed at once,
    so a text that holds `[`, `|` or `]` itself is read right; the first complete reading wins."""
    n = len(text)
    known = _label_map(labels)  # labels are read case-insensitively
    # state -> mentions so far; states: ("copy", j) | ("in", j, start) | ("label", j, start, prefix)
    states: dict[tuple, tuple] = {("copy", 0): ()}
    for ch in output:
        after: dict[tuple, tuple] = {}
        for state, found in states.items():
            kind, j = state[0], state[1]
            moves = []
            if kind == "copy":
                if j < n and text[j] == ch:
                    moves.append((("copy", j + 1), found))
                if ch == "[" and j < n:
                    moves.append((("in", j, j), found))
            elif kind == "in":
                if j < n and text[j] == ch:
                    moves.append((("in", j + 1, state[2]), found))
                if ch == "|" and j > state[2]:
                    moves.append((("label", j, state[2], ""), found))
            else:
                prefix = state[3]
                if ch == "]" and prefix in known:
                    moves.append((("copy", j), (*found, (known[prefix], state[2], j))))
                if any(label.startswith(prefix + ch.lower()) for label in known):
                    moves.append((("label", j, state[2], prefix + ch.lower()), found))
            for target, mentions in moves:
                after.setdefault(target, mentions)
        if not after:
            return None
        states = after
    done = states.get(("copy", n))
    if done is not None or whole:
        return None if done is None else list(done)
    return list(max(states.values(), key=len))  # cut short: the mentions closed so far


def parse_inline(output: str, text: str | None, labels: Sequence[str] | None) -> list[dict[str, Any]] | None:
    """Mentions `[text|TYPE]` of an inline rewrite. When the rewrite is the input with brackets (`read_copy`)
    the spans are where the brackets stand; otherwise the bracketed mentions are placed by `align`.
    None: an empty answer, or a bracket with a type that is not a label."""
    if not output.strip():
        return None
    if text is not None and labels:
        exact = read_copy(output, text, labels)
        if exact is not None:
            return [placed(kind, "", (start, end), text) for kind, start, end in exact]
    known = _label_map(labels)
    items = []
    for match in _ANY_MARK.finditer(output):
        kind = match.group(2).strip()
        if known and kind.lower() not in known:
            if text is not None and match.group(0) in text:
                continue  # brackets that are part of the input itself
            return None
        items.append((known.get(kind.lower(), kind), match.group(1).strip()))
    return place_all(items, text)


def parse_tagged_words(output: str, text: str | None, labels: Sequence[str] | None) -> list[dict[str, Any]] | None:
    """Entities of `word(TAG)` pieces: words placed on the input left to right, IOB2 tags decoded leniently
    (an I- that continues nothing starts an entity). None when no piece carries a tag."""
    known = _label_map(labels)
    pieces, tags = [], []
    for piece in output.split():
        match = re.fullmatch(r"(.+)\((O|[BI]-[^()\s]+)\)", piece)
        tag = "O"
        if match:
            piece, tag = match.group(1), match.group(2)
            if tag != "O":
                kind = tag[2:]
                if known and kind.lower() not in known:
                    return None
                tag = f"{tag[0]}-{known.get(kind.lower(), kind)}"
        tags.append(tag)
        pieces.append((piece, bool(match)))
    if not any(tagged for _, tagged in pieces):
        return None
    spans: list[Span | None] = []
    cursor = 0
    for piece, _ in pieces:
        start = text.find(piece, cursor) if text is not None else -1
        spans.append(None if start < 0 else (start, start + len(piece)))
        cursor = cursor if start < 0 else start + len(piece)
    found = []
    for kind, first, last in bio.decode(tags, "iob1"):
        inside = spans[first:last]
        if text is not None and all(s is not None for s in inside):
            found.append(placed(kind, "", (inside[0][0], inside[-1][1]), text))  # type: ignore[index]
            continue
        joiner = "" if any(has_cjk(p) for p, _ in pieces[first:last]) else " "
        mention = joiner.join(p for p, _ in pieces[first:last])
        found.append(place_all([(kind, mention)], text)[0])
    return found


def parse(output: str, text: str | None, fmt: str, labels: Sequence[str] | None) -> list[dict[str, Any]] | None:
    """The entities of an answer in format `fmt`, placed on `text` when given; None when it does not parse."""
    if fmt == "inline":
        return parse_inline(output, text, labels)
    if fmt == "tagged-words":
        return parse_tagged_words(output, text, labels)
    return parse_json(output, text)
