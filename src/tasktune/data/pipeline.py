"""Config -> training units: load conversations, mix, encode, split validation, pack, report.

Two levels, so a task can bring its own conversations: `load_conversations` (registry/paths + formats)
and `build_datasets(..., conversations=...)` for everything after.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from tasktune.config.schema import DataConfig
from tasktune.data.formats import FORMATS
from tasktune.data.messages import Conversation, RowError
from tasktune.data.pack import pack_examples, with_positions
from tasktune.data.registry import DatasetSpec, resolve_dataset
from tasktune.data.report import DataError, RejectReport
from tasktune.data.sources import read_rows
from tasktune.data.tokenize import IGNORE_INDEX, encode_many

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    """Training units (packed when data.packing): input_ids, labels, position_ids."""
    val: list[dict[str, Any]]
    """Validation units, never packed."""
    report: RejectReport
    stats: dict[str, Any] = field(default_factory=dict)
    """rows, rejected, examples, train/val examples, tokens and target_tokens (train), truncated,
    packed_sequences, packing_efficiency (train tokens / (units * cutoff_len): 1.0 = no padding), seconds."""


def resample(items: list[T], target: int, rng: random.Random) -> list[T]:
    """`target` items: whole copies while more are wanted than exist, the rest sampled without replacement."""
    if not items:
        return []
    copies, rest = divmod(target, len(items))
    return items * copies + [items[i] for i in sorted(rng.sample(range(len(items)), rest))]


def read_converted(spec: DatasetSpec, convert: Callable[[dict, DatasetSpec], T], report: RejectReport,
                   max_samples: int | None, seed: int) -> list[T]:
    """`convert` of each row of one dataset (its first max_samples rows; then num_samples, as LLaMA-Factory);
    a row `convert` refuses with RowError goes to the report. Each item gets its `source` (`file:line`)."""
    items = []
    for row, source in islice(read_rows(spec.path, report), max_samples):
        try:
            item = convert(row, spec)
        except RowError as err:
            report.add(source, err, row)
            continue
        item.source = source
        items.append(item)
    if spec.num_samples is not None:
        items = resample(items, int(spec.num_samples), random.Random(seed))
    return items


def read_conversations(
    spec: DatasetSpec, report: RejectReport, max_samples: int | None, seed: int
) -> list[Conversation]:
    """The conversations of one dataset (its first max_samples rows; then num_samples, as LLaMA-Factory)."""
    return read_converted(spec, FORMATS[spec.formatting], report, max_samples, seed)


def mix_datasets(
    datasets: list[list[Conversation]], weights: list[float] | None, seed: int, names: list[str] | None = None
) -> list[list[Conversation]]:
    """Resize each dataset to its weighted share of the total: round(total * w_i / sum(w)) rows."""
    if weights is None:
        return datasets
    if len(weights) != len(datasets) or any(w < 0 for w in weights) or not sum(weights):
        raise DataError(f"data.weights={weights}: need {len(datasets)} non-negative weights, not all zero")
    names = names or [f"#{i}" for i in range(len(datasets))]
    total, rng = sum(map(len, datasets)), random.Random(seed)
    mixed = []
    for name, convs, weight in zip(names, datasets, weights, strict=True):
        target = round(total * weight / sum(weights))
        if target and not convs:
            raise DataError(f"dataset {name!r} has no usable rows to fill its share (weight {weight})")
        mixed.append(resample(convs, target, rng))
        logger.info("mix: %s: %d rows -> %d (weight %g)", name, len(convs), target, weight)
    return mixed


def load_conversations(cfg: DataConfig, report: RejectReport) -> list[list[Conversation]]:
    """One list of conversations per entry of `cfg.datasets`, mixed by `cfg.weights`."""
    specs = [resolve_dataset(name, cfg.dataset_dir) for name in cfg.datasets]
    datasets = [read_conversations(spec, report, cfg.max_samples, cfg.seed) for spec in specs]
    return mix_datasets(datasets, cfg.weights, cfg.seed, cfg.datasets)


def encode_all(
    conversations: list[Conversation], tokenizer: Any, cfg: DataConfig, report: RejectReport
) -> list[dict[str, Any]]:
    """Encoded examples (input_ids, labels, source); rejects and truncations go to `report`."""
    return encode_many(conversations, tokenizer, cfg.cutoff_len, cfg.overlong, report)


def split_val(
    examples: list[dict[str, Any]], val_size: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out a share (<1) or count (>=1) of examples; copies of one row (mixing) stay on one side."""
    if val_size <= 0:
        return examples, []
    wanted = int(val_size) if val_size >= 1 else max(1, round(val_size * len(examples)))
    if wanted >= len(examples):
        raise DataError(f"data.val_size={val_size} leaves no training examples (of {len(examples)})")
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(example.get("source") or f"#{i}", []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    held: set[int] = set()
    for key in keys:
        if len(held) >= wanted:
            break
        held.update(groups[key])
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


def build_datasets(
    cfg: DataConfig,
    tokenizer: Any,
    out_dir: str | Path | None,
    conversations: list[list[Conversation]] | None = None,
    report: RejectReport | None = None,
) -> PreparedData:
    """Load (unless `conversations` are given), encode, split, pack; write out_dir/rejected.jsonl.

    Given conversations are used as they are (see `mix_datasets` to weight them). Raises DataError when
    more than cfg.max_rejected_share of the rows were rejected. out_dir None writes nothing (other ranks).
    """
    cfg.check()
    report = report if report is not None else RejectReport()
    started = time.perf_counter()
    groups = load_conversations(cfg, report) if conversations is None else conversations
    examples = encode_all([conv for group in groups for conv in group], tokenizer, cfg, report)
    total = len(examples) + len(report)
    if out_dir is not None:
        report.write(Path(out_dir) / "rejected.jsonl")
        print(report.summary(total))
    report.check(cfg.max_rejected_share, total)
    if not examples:
        raise DataError(f"no training examples in {cfg.datasets}")
    train, val = split_val(examples, cfg.val_size, cfg.seed)
    units = pack_examples(train, cfg.cutoff_len) if cfg.packing else [with_positions(e) for e in train]
    tokens = sum(len(u["input_ids"]) for u in units)
    stats = {
        "rows": total,
        "rejected": len(report),
        "examples": len(examples),
        "train_examples": len(train),
        "val_examples": len(val),
        "tokens": tokens,
        "target_tokens": sum(label != IGNORE_INDEX for u in units for label in u["labels"]),
        "truncated": len(report.truncated),
        "packed_sequences": len(units) if cfg.packing else 0,
        "packing_efficiency": tokens / (len(units) * cfg.cutoff_len),
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("data: %s", stats)
    return PreparedData(units, [with_positions(e) for e in val], report, stats)
