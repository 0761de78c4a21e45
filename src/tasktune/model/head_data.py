"""Task rows -> units for a task head: sub-word tokens with character offsets, targets aligned to them.

classify: one unit per text (truncated to max_seq_length, reported). ner: words are found from the token
offsets (a word starts after whitespace, at or after punctuation, and at every CJK character), the first
sub-token of each word carries the word's BIO tag, other sub-tokens are ignored; long texts become windows
sharing doc_stride tokens. qa: question + context pairs, long contexts as windows, the answer as start/end
token positions (position 0 when the window does not hold it, as in the SQuAD recipe).
"""

from __future__ import annotations

import math
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tasktune.config.schema import Config, ConfigError
from tasktune.config.task import TaskConfig
from tasktune.data.pipeline import PreparedData, split_val
from tasktune.data.report import DataError, RejectReport
from tasktune.model.case_types import case_type_ids
from tasktune.tasks import bio, task_rows
from tasktune.tasks.base import has_cjk

IGNORE = -100
Span = tuple[int, int]


def tag_names(entity_types: list[str]) -> list[str]:
    """The IOB2 tags a ner head predicts: O, then B- and I- of each type."""
    return ["O"] + [f"{prefix}-{kind}" for kind in entity_types for prefix in "BI"]


def allowed_transitions(tags: list[str]) -> torch.Tensor:
    """IOB2: I-X may only follow B-X or I-X. A window may still start inside an entity (with I-X)."""
    allowed = torch.ones(len(tags), len(tags), dtype=torch.bool)
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            for i, before in enumerate(tags):
                allowed[i, j] = before in (f"B-{tag[2:]}", tag)
    return allowed


def head_labels(spec: TaskConfig) -> list[str]:
    """What the head's outputs mean, in id order (saved as id2label): labels, tags, or start/end for qa."""
    if spec.name == "qa":
        return ["start", "end"]
    if not spec.labels:
        raise ConfigError(f"task.labels is not set: a {spec.name} head needs its label set")
    return list(spec.labels) if spec.name == "classify" else tag_names(spec.labels)


# ---- offsets and words ---------------------------------------------------------------------------------


def trimmed(text: str, start: int, end: int) -> Span:
    """The offsets without surrounding whitespace (byte-level BPE tokens carry their leading space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _is_punctuation(ch: str) -> bool:
    """As BERT's basic tokenizer: ASCII symbols and every Unicode punctuation character."""
    return (ch.isascii() and not ch.isalnum() and not ch.isspace()) or unicodedata.category(ch).startswith("P")


def starts_word(text: str, i: int) -> bool:
    if i == 0:
        return True
    before, here = text[i - 1], text[i]
    return before.isspace() or any(_is_punctuation(c) or has_cjk(c) for c in (before, here))


def word_spans(text: str, offsets: list[Span]) -> list[Span]:
    """Character spans of the words of `text`, given the offsets of its tokens (no special tokens)."""
    words: list[list[int]] = []
    previous = -1
    for raw_start, raw_end in offsets:
        start, end = trimmed(text, raw_start, raw_end)
        if start >= end:
            continue
        if start != previous and starts_word(text, start) or not words:
            words.append([start, end])
        else:  # a later sub-token, or another byte piece of the same character
            words[-1][1] = max(words[-1][1], end)
        previous = start
    return [(s, e) for s, e in words]


def word_tags(words: list[Span], entities: list[Any]) -> tuple[list[str], int]:
    """IOB2 tag per word, and how many entities do not start and end on word boundaries (or overlap
    another): those are tagged by the words they touch, or dropped when overlapping."""
    tags = ["O"] * len(words)
    misaligned = 0
    for entity in sorted(entities, key=lambda e: (e.start, e.end)):
        inside = [i for i, (s, _) in enumerate(words) if entity.start <= s < entity.end]
        if not inside or any(tags[i] != "O" for i in inside):
            misaligned += 1
            continue
        tags[inside[0]] = f"B-{entity.type}"
        for i in inside[1:]:
            tags[i] = f"I-{entity.type}"
        misaligned += words[inside[0]][0] != entity.start or words[inside[-1]][1] != entity.end
    return tags, misaligned


def tags_to_entities(text: str, words: list[Span], tags: list[str]) -> list[dict[str, Any]]:
    """BIO tags per word -> entities with character offsets ({type, text, start, end})."""
    found = []
    for kind, first, last in bio.decode(tags, "auto"):
        start, end = words[first][0], words[last - 1][1]
        found.append({"type": kind, "text": text[start:end], "start": start, "end": end})
    return found


# ---- units ---------------------------------------------------------------------------------------------


def _inputs(tokenizer, encoding, i: int) -> dict[str, Any]:
    unit = {"input_ids": encoding["input_ids"][i]}
    if "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in encoding:
        unit["token_type_ids"] = encoding["token_type_ids"][i]
    return unit


def _windows(tokenizer, first: str, second: str | None, spec: TaskConfig, stride: int):
    return tokenizer(
        first, second, truncation="only_second" if second is not None else True,
        max_length=spec.max_seq_length, stride=stride, return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


PromptFrame = tuple[list[int], list[int]]
_TEXT_SLOT = "\x00TEXT\x00"


def prompt_frame(tokenizer, spec: TaskConfig) -> PromptFrame:
    """task.head_prompt: the token ids before and after the text in the task's chat prompt (user message =
    instruction + text, then the assistant's turn opened, as the generative route asks)."""
    from tasktune.tasks.classify import instruction

    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("task.head_prompt=true needs a chat model: this tokenizer has no chat template")
    chat = [{"role": "user", "content": f"{instruction(spec)}\n{_TEXT_SLOT}"}]
    before, after = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False).split(_TEXT_SLOT)
    return (tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(after, add_special_tokens=False)["input_ids"])


def classify_units(text: str, tokenizer, spec: TaskConfig,
                   frame: PromptFrame | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """One unit (the first max_seq_length tokens; with a prompt frame, the text cut to fit between its two
    parts), and the input's full length in tokens (the prompt's included) when it was cut."""
    if frame is not None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        room = spec.max_seq_length - len(frame[0]) - len(frame[1])
        if room < 1:
            raise ConfigError(f"task.max_seq_length={spec.max_seq_length} leaves no room for the text after the "
                              f"{len(frame[0]) + len(frame[1])}-token prompt of task.head_prompt")
        full = len(frame[0]) + len(ids) + len(frame[1])
        return [{"input_ids": frame[0] + ids[:room] + frame[1]}], full if len(ids) > room else None
    encoding = _windows(tokenizer, text, None, spec, 0)
    cut = len(tokenizer(text)["input_ids"]) if len(encoding["input_ids"]) > 1 else None
    return [_inputs(tokenizer, encoding, 0)], cut


def ner_units(text: str, tokenizer, spec: TaskConfig) -> tuple[list[dict[str, Any]], list[Span]]:
    """Windows of the text with `word_index` per token (the word a first sub-token starts, else -1), and the
    words of the whole text."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    words = word_spans(text, offsets)
    word_at = {start: i for i, (start, _) in enumerate(words)}
    encoding = _windows(tokenizer, text, None, spec, spec.doc_stride)
    units = []
    for i in range(len(encoding["input_ids"])):
        unit, seen = _inputs(tokenizer, encoding, i), set()
        index = []
        for (start, end), sequence in zip(encoding["offset_mapping"][i], encoding.sequence_ids(i), strict=True):
            start, end = trimmed(text, start, end)
            first = sequence is not None and start < end and start not in seen
            index.append(word_at.get(start, -1) if first else -1)
            if first:
                seen.add(start)
        unit["word_index"] = index
        if spec.case_features:
            unit["token_type_ids"] = case_type_ids(text, encoding["offset_mapping"][i], encoding.sequence_ids(i))
        units.append(unit)
    return units, words


def _question(question: str, tokenizer, spec: TaskConfig) -> str:
    """The question cut to a third of max_seq_length tokens, with a line break where the tokenizer puts
    nothing between the two texts of a pair (decoders)."""
    offsets = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    limit = spec.max_seq_length // 3
    if len(offsets) > limit:
        question = question[: offsets[limit - 1][1]]
    return question + "\n" if tokenizer.num_special_tokens_to_add(pair=True) == 0 else question


def qa_units(question: str, context: str, tokenizer, spec: TaskConfig) -> list[dict[str, Any]]:
    """Windows of question + context with `offsets`: the character span of each context token, else None."""
    encoding = _windows(tokenizer, _question(question, tokenizer, spec), context, spec, spec.doc_stride)
    units = []
    for i in range(len(encoding["input_ids"])):
        unit = _inputs(tokenizer, encoding, i)
        spans = []
        for (start, end), sequence in zip(encoding["offset_mapping"][i], encoding.sequence_ids(i), strict=True):
            start, end = trimmed(context, start, end)
            spans.append((start, end) if sequence == 1 and start < end else None)
        unit["offsets"] = spans
        units.append(unit)
    return units


def answer_positions(offsets: list[Span | None], start: int, end: int) -> tuple[int, int]:
    """Token positions of the first and last token of the answer text[start:end]; (0, 0) when the window
    does not hold all of it."""
    inside = [i for i, span in enumerate(offsets) if span is not None]
    if not inside or offsets[inside[0]][0] > start or offsets[inside[-1]][1] < end:
        return 0, 0
    first = next(i for i in inside if offsets[i][1] > start)
    last = next(i for i in reversed(inside) if offsets[i][0] < end)
    return first, last


@dataclass
class Encoded:
    units: list[dict[str, Any]]
    """Model inputs (and targets when asked) with `row`, the index of the row each unit comes from."""
    words: list[list[Span]] = field(default_factory=list)
    """ner: the words of each row."""
    truncated: int = 0
    """classify: texts cut to max_seq_length."""
    misaligned: int = 0
    """ner (with targets): entities whose edges are not word edges."""


def encode_rows(rows: list[Any], spec: TaskConfig, tokenizer, targets: bool = False,
                report: RejectReport | None = None) -> Encoded:
    """The units of task rows for the head of spec.name; with targets: labels / start and end positions."""
    encoded = Encoded([])
    tags = {name: i for i, name in enumerate(head_labels(spec))}
    frame = prompt_frame(tokenizer, spec) if spec.head_prompt else None
    for number, row in enumerate(rows):
        if spec.name == "classify":
            units, cut = classify_units(row.text, tokenizer, spec, frame)
            encoded.truncated += cut is not None
            if cut is not None and report is not None:
                report.add_truncated(row.source, cut, spec.max_seq_length)
            if targets:
                units[0]["labels"] = tags[row.label]
        elif spec.name == "ner":
            units, words = ner_units(row.text, tokenizer, spec)
            encoded.words.append(words)
            if targets:
                word_tag, misaligned = word_tags(words, row.entities)
                encoded.misaligned += misaligned
                for unit in units:
                    unit["labels"] = [tags[word_tag[w]] if w >= 0 else IGNORE for w in unit["word_index"]]
        else:
            units = qa_units(row.question, row.context, tokenizer, spec)
            if targets:
                start = row.answer_starts[0]
                for unit in units:
                    unit["start_positions"], unit["end_positions"] = answer_positions(
                        unit["offsets"], start, start + len(row.answers[0]))
        for unit in units:
            unit["row"], unit["source"] = number, row.source
        encoded.units.extend(units)
    return encoded


# ---- class weights -------------------------------------------------------------------------------------


def class_weight_table(spec: TaskConfig, units: list[dict[str, Any]]) -> list[float] | None:
    """Loss weight per head label from task.class_weights: balanced = n / (classes * count) over the
    training targets (classes that occur), or the given map (ner: an entity type weighs its B- and I-)."""
    setting = spec.class_weights
    if setting is None:
        return None
    names = head_labels(spec)
    if isinstance(setting, dict):
        kind = (lambda name: name.split("-", 1)[-1]) if spec.name == "ner" else (lambda name: name)
        return [float(setting.get(kind(name), 1.0)) for name in names]
    counts = [0] * len(names)
    for unit in units:
        for label in unit["labels"] if isinstance(unit["labels"], list) else [unit["labels"]]:
            if label != IGNORE:
                counts[label] += 1
    present, total = sum(c > 0 for c in counts), sum(counts)
    return [total / (present * c) if c else 1.0 for c in counts]


def tag_log_prior(spec: TaskConfig, tokenizer) -> list[float]:
    """ner: log of each head tag's share among the words of task.train_file (task.train_range), add-one
    smoothed: the shift of the logit-adjusted loss (task.logit_adjustment)."""
    names = head_labels(spec)
    index = {name: i for i, name in enumerate(names)}
    counts = [1] * len(names)
    for row in task_rows(spec, spec.train_file, RejectReport(), spec.train_range):
        offsets = tokenizer(row.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for tag in word_tags(word_spans(row.text, offsets), row.entities)[0]:
            counts[index[tag]] += 1
    total = sum(counts)
    return [math.log(count / total) for count in counts]


def attach_weights(units: list[dict[str, Any]], table: list[float]) -> None:
    """Give every target its class weight (`weights`: per token for ner, per text for classify)."""
    for unit in units:
        labels = unit["labels"]
        if isinstance(labels, list):
            unit["weights"] = [table[label] if label != IGNORE else 0.0 for label in labels]
        else:
            unit["weights"] = table[labels]


# ---- batches -------------------------------------------------------------------------------------------


def collate(units: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask (and token_type_ids), plus the targets the units carry:
    labels (per text or per token, IGNORE on padding), weights, start_positions / end_positions."""
    width = max(len(u["input_ids"]) for u in units)
    batch = {
        "input_ids": torch.full((len(units), width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(units), width), dtype=torch.long),
    }
    if "token_type_ids" in units[0]:
        batch["token_type_ids"] = torch.zeros((len(units), width), dtype=torch.long)
    first = units[0]
    per_token = isinstance(first.get("labels"), list)
    if "labels" in first:
        batch["labels"] = torch.full((len(units), width), IGNORE) if per_token else torch.zeros(len(units))
        batch["labels"] = batch["labels"].long()
    if "weights" in first:
        batch["weights"] = torch.zeros((len(units), width) if per_token else len(units))
    for row, unit in enumerate(units):
        n = len(unit["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(unit["input_ids"])
        batch["attention_mask"][row, :n] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][row, :n] = torch.tensor(unit["token_type_ids"])
        for key in ("labels", "weights"):
            if key in batch and per_token:
                batch[key][row, :n] = torch.tensor(unit[key])
            elif key in batch:
                batch[key][row] = unit[key]
    for key in ("start_positions", "end_positions"):
        if key in first:
            batch[key] = torch.tensor([u[key] for u in units], dtype=torch.long)
    return batch


def _targets(unit: dict[str, Any]) -> int:
    labels = unit.get("labels")
    return sum(label != IGNORE for label in labels) if isinstance(labels, list) else 1


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Tagged tokens (ner), texts (classify) or windows (qa) in a batch."""
    if "labels" in batch:
        return int((batch["labels"] != IGNORE).sum())
    return int(batch["start_positions"].numel())


# ---- training data -------------------------------------------------------------------------------------


def build_head_data(cfg: Config, tokenizer, out_dir: Path | None) -> PreparedData:
    """Units of task.train_file (task.train_range) with targets; data.val_size of the rows held out."""
    spec = cfg.task
    if not spec.train_file:
        raise ConfigError("task.method=head trains on task.train_file: set it")
    if cfg.data.datasets:
        raise ConfigError("task.method=head trains on task rows only: leave data.datasets empty")
    started = time.perf_counter()
    report = RejectReport()
    rows = task_rows(spec, spec.train_file, report, spec.train_range)
    encoded = encode_rows(rows, spec, tokenizer, targets=True, report=report)
    total = len(rows) + len(report)
    if out_dir is not None:
        report.write(Path(out_dir) / "rejected.jsonl")
        print(report.summary(total))
    report.check(cfg.data.max_rejected_share, total)
    if not encoded.units:
        raise DataError(f"no training rows in {spec.train_file}")
    table = class_weight_table(spec, encoded.units)
    if table is not None:
        attach_weights(encoded.units, table)
        print("class weights: " + ", ".join(f"{n}={w:.3g}" for n, w in zip(head_labels(spec), table, strict=True)))
    if encoded.misaligned:
        print(f"ner: {encoded.misaligned} entities do not start and end on word boundaries of the tokenizer")
    train, val = split_val(encoded.units, cfg.data.val_size, cfg.data.seed)
    stats = {
        "rows": total,
        "rejected": len(report),
        "examples": len(encoded.units),
        "train_examples": len(train),
        "val_examples": len(val),
        "tokens": sum(len(u["input_ids"]) for u in train),
        "target_tokens": sum(_targets(u) for u in train),
        "truncated": encoded.truncated,
        "misaligned_entities": encoded.misaligned,
        "windows_per_row": round(len(encoded.units) / max(1, len(rows)), 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return PreparedData(train, val, report, stats)
