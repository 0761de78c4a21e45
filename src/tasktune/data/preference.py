"""Preference data (chosen / rejected pairs, KTO rows) -> training units, through the same template step as SFT.

Formats, read unchanged: LLaMA-Factory's alpaca with `"ranking": true` (prompt / query / chosen / rejected
columns), sharegpt / openai with `chosen` / `rejected` messages, KTO rows (a conversation ending on the answer
plus a boolean `kto_tag` column), and plain `{"prompt", "chosen", "rejected"}` JSONL (TRL's layout; prompt and
answers as text or as message lists). Each answer becomes `prompt messages + assistant(answer)`, encoded by
`data.tokenize` with loss on the answer only. Pair faults go to the bad-row report: identical_pair,
empty_chosen / empty_rejected, overlong_pair (with data.overlong=reject; else both sides are truncated).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasktune.config.schema import DataConfig
from tasktune.data.collate import collate
from tasktune.data.formats import FORMATS, _content, _json, _system, _tools
from tasktune.data.messages import Conversation, Message, RowError
from tasktune.data.pipeline import PreparedData, read_converted, split_val
from tasktune.data.registry import DatasetSpec, load_registry, resolve_dataset
from tasktune.data.report import DataError, RejectReport
from tasktune.data.sources import read_rows
from tasktune.data.tokenize import IGNORE_INDEX, encode_conversation


@dataclass
class PreferenceRow:
    prompt: list[Message]
    """The conversation before the answer: ends on a user (or tool) turn; no loss on it."""
    chosen: str
    """The preferred answer (KTO: the one answer)."""
    rejected: str | None = None
    """The dispreferred answer; None for KTO rows."""
    label: bool | None = None
    """KTO: whether the answer is desirable; None for pairs."""
    tools: list[dict[str, Any]] | None = None
    source: str = ""


def _answer(value: Any, what: str, spec: DatasetSpec | None = None) -> str:
    """An answer cell: text (taken as it is, even when it looks like JSON), one message object ({from, value} /
    {role, content}), or a list of messages ending on it."""
    if isinstance(value, list):
        if not value:
            raise RowError(f"empty_{what}", f"{what} is an empty list")
        value = value[-1]
    if isinstance(value, dict):
        key = spec.tag("content_tag") if spec is not None and spec.tag("content_tag") in value else (
            "content" if "content" in value else "value")
        value = _content(value, key, 0)
    if value is None:
        raise RowError("missing_column", f"no {what} answer")
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{what} is {type(value).__name__}, expected text or a message")
    if not value.strip():
        raise RowError(f"empty_{what}", f"the {what} answer is blank")
    return value


def _prompt_turns(turns: Any, spec: DatasetSpec, what: str) -> list[Message]:
    """Messages of a prompt in a sharegpt / openai layout (roles by the spec's tags)."""
    turns = _json(turns, what)
    if not isinstance(turns, list):
        raise RowError("wrong_type", f"{what} is {type(turns).__name__}, expected a list")
    roles = {spec.tag("user_tag"): "user", spec.tag("assistant_tag"): "assistant",
             spec.tag("observation_tag"): "tool", spec.tag("function_tag"): "assistant",
             spec.tag("system_tag"): "system", "user": "user", "assistant": "assistant", "system": "system"}
    role_key, content_key = spec.tag("role_tag"), spec.tag("content_tag")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get(role_key) not in roles:
            raise RowError("unknown_role", f"turn {i} of {what} has no known {role_key!r}")
        messages.append(Message(roles[turn[role_key]], _content(turn, content_key, i)))
    return messages


def _alpaca_prompt(row: dict[str, Any], spec: DatasetSpec) -> list[Message]:
    prompt = row.get(spec.column("prompt") or "instruction")
    query = row.get(spec.column("query") or "input")
    if not isinstance(prompt, str):
        raise RowError("missing_column", f"no text {spec.column('prompt')!r} (row has {sorted(row)})")
    messages = _system(row, spec)
    for pair in row.get(spec.column("history") or "history") or []:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError("wrong_type", "history items must be [prompt, response] pairs")
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    user = "\n".join(p for p in (prompt, query if isinstance(query, str) else "") if p)
    if not user.strip():
        raise RowError("empty_prompt", "the prompt is blank")
    return messages + [Message("user", user)]


def pair_row(row: dict[str, Any], spec: DatasetSpec) -> PreferenceRow:
    """A ranking row (alpaca / sharegpt / openai per `spec.formatting`) -> prompt, chosen, rejected."""
    chosen_col, rejected_col = spec.columns.get("chosen", "chosen"), spec.columns.get("rejected", "rejected")
    if spec.formatting == "alpaca":
        prompt = _alpaca_prompt(row, spec)
    else:
        prompt = _system(row, spec) + _prompt_turns(row.get(spec.column("messages")), spec, "prompt")
    chosen = _answer(row.get(chosen_col), "chosen", spec)
    rejected = _answer(row.get(rejected_col), "rejected", spec)
    return PreferenceRow(prompt, chosen, rejected, tools=_tools(row, spec))


def plain_row(row: dict[str, Any], spec: DatasetSpec) -> PreferenceRow:
    """{"prompt", "chosen", "rejected"}: prompt as text or messages (role/content); answers as text or messages."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RowError("empty_prompt", "the prompt is blank")
        messages = [Message("user", prompt)]
    else:
        openai_spec = DatasetSpec(name=spec.name, formatting="openai")
        messages = _prompt_turns(prompt, openai_spec, "prompt")
    if "label" in row and "rejected" not in row:  # TRL's unpaired (KTO) layout: prompt, completion, label
        return kto_label(PreferenceRow(messages, _answer(row.get("completion"), "chosen")), row.get("label"))
    return PreferenceRow(messages, _answer(row.get("chosen"), "chosen"), _answer(row.get("rejected"), "rejected"))


def kto_label(row: PreferenceRow, tag: Any) -> PreferenceRow:
    if not isinstance(tag, bool):
        raise RowError("wrong_type", f"kto_tag is {type(tag).__name__} {tag!r:.20}, expected true or false")
    row.label = tag
    return row


def kto_row(row: dict[str, Any], spec: DatasetSpec) -> PreferenceRow:
    """A conversation ending on the answer, plus the boolean kto_tag column."""
    conv = FORMATS[spec.formatting](row, spec)
    last = conv.messages[-1]
    return kto_label(PreferenceRow(conv.messages[:-1], last.content, tools=conv.tools),
                     row.get(spec.columns["kto_tag"]))


def detect_preference_format(path: Path) -> DatasetSpec:
    """A spec for a preference file given by path, told by its first row's keys."""
    first = next(read_rows(path, RejectReport()), None)
    if first is None:
        raise DataError(f"{path}: no rows")
    row = first[0]
    base = {"name": str(path), "file_name": str(path), "path": path, "ranking": True}
    if "prompt" in row and ("chosen" in row or "completion" in row):
        return DatasetSpec(formatting="plain", **base)
    for column in ("conversations", "messages"):
        if column in row:
            turns = row[column]
            item = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
            formatting = "sharegpt" if "from" in item else "openai"
            if "chosen" in row:
                return DatasetSpec(formatting=formatting, columns={"messages": column}, **base)
            tag = next((k for k in ("kto_tag", "label") if k in row), None)
            if tag:
                base["ranking"] = False
                return DatasetSpec(formatting=formatting, columns={"messages": column, "kto_tag": tag}, **base)
    if "instruction" in row and "chosen" in row:
        return DatasetSpec(**base)
    raise DataError(f"{path}: not preference data (columns {sorted(row)}); expected prompt/chosen/rejected, "
                    "messages + chosen/rejected, instruction + chosen/rejected, or messages + kto_tag")


def resolve_preference(name: str, dataset_dir: str | Path) -> DatasetSpec:
    if name in load_registry(dataset_dir):
        return resolve_dataset(name, dataset_dir, preference=True)
    for candidate in (Path(name), Path(dataset_dir) / name):
        if candidate.exists():
            return detect_preference_format(candidate)
    return resolve_dataset(name, dataset_dir, preference=True)  # raises with a did-you-mean


def read_preference_rows(spec: DatasetSpec, report: RejectReport, max_samples: int | None,
                         seed: int) -> list[PreferenceRow]:
    if spec.formatting == "plain":
        convert = plain_row
    elif "kto_tag" in spec.columns:
        convert = kto_row
    else:
        convert = pair_row

    def checked(row: dict, spec: DatasetSpec) -> PreferenceRow:
        item = convert(row, spec)
        if item.rejected is not None and item.chosen.strip() == item.rejected.strip():
            raise RowError("identical_pair", "chosen and rejected are the same answer")
        if not item.prompt or item.prompt[-1].role not in ("user", "tool"):
            raise RowError("bad_turn_order", "the prompt must end on a user turn")
        return item

    return read_converted(spec, checked, report, max_samples, seed)


def fit_pair_side(ids: list[int], labels: list[int], cutoff_len: int) -> tuple[list[int], list[int]]:
    """Cut prompt + answer to cutoff_len: the prompt loses its OLDEST tokens (the turns next to the answer stay),
    the answer its last ones; the prompt keeps at least half of cutoff_len when the answer alone would fill it."""
    if len(ids) <= cutoff_len:
        return ids, labels
    start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    answer = len(ids) - start
    prompt_budget = max(cutoff_len - answer, min(start, cutoff_len // 2))
    answer_budget = cutoff_len - prompt_budget
    keep = slice(start - prompt_budget, start + answer_budget)
    return ids[keep], labels[keep]


def _encode_answer(row: PreferenceRow, answer: str, tokenizer: Any, cutoff_len: int,
                   report: RejectReport | None) -> tuple[list[int], list[int]]:
    """ids and labels of prompt + answer (loss on the answer only), fitted to cutoff_len (truncation reported)."""
    prompt = [Message(m.role, m.content, train=False) for m in row.prompt]
    conv = Conversation(prompt + [Message("assistant", answer)], tools=row.tools, source=row.source)
    encoded = encode_conversation(conv, tokenizer, 1 << 30, "truncate")
    ids, labels = encoded["input_ids"], encoded["labels"]
    if len(ids) > cutoff_len and report is not None:
        report.add_truncated(row.source, len(ids), cutoff_len)
    return fit_pair_side(ids, labels, cutoff_len)


def encode_preference(rows: list[PreferenceRow], tokenizer: Any, cfg: DataConfig,
                      report: RejectReport) -> list[dict[str, Any]]:
    """Units: pairs -> input_ids/labels (chosen) + rejected_ids/rejected_labels; KTO -> input_ids/labels +
    kto_label + kl_ids/kl_labels (the prompt with the next row's answer, for KTO's reference KL)."""
    units = []
    for i, row in enumerate(rows):
        try:
            if cfg.overlong == "reject":
                for answer in filter(None, (row.chosen, row.rejected)):
                    ids, _ = _encode_answer(row, answer, tokenizer, 1 << 30, None)
                    if len(ids) > cfg.cutoff_len:
                        raise RowError("overlong_pair", f"{len(ids)} tokens > cutoff_len={cfg.cutoff_len}")
            ids, labels = _encode_answer(row, row.chosen, tokenizer, cfg.cutoff_len, report)
            unit: dict[str, Any] = {"input_ids": ids, "labels": labels, "source": row.source}
            if row.rejected is not None:
                unit["rejected_ids"], unit["rejected_labels"] = _encode_answer(
                    row, row.rejected, tokenizer, cfg.cutoff_len, report)
            else:
                other = rows[(i + 1) % len(rows)].chosen
                unit["kto_label"] = bool(row.label)
                unit["kl_ids"], unit["kl_labels"] = _encode_answer(row, other, tokenizer, cfg.cutoff_len, report)
        except RowError as err:
            report.add(row.source, err, {"prompt": row.prompt[-1].content, "chosen": row.chosen,
                                         "rejected": row.rejected})
            continue
        units.append(unit)
    return units


def build_preference_data(cfg: DataConfig, tokenizer: Any, out_dir: Path | None, kto: bool = False) -> PreparedData:
    """data.datasets as preference units (pairs, or KTO rows when kto); writes out_dir/rejected.jsonl."""
    cfg.check()
    if not cfg.datasets:
        raise DataError("a preference stage needs data.datasets (ranking or KTO data)")
    started = time.perf_counter()
    report = RejectReport()
    rows: list[PreferenceRow] = []
    for name in cfg.datasets:
        spec = resolve_preference(name, cfg.dataset_dir)
        got = read_preference_rows(spec, report, cfg.max_samples, cfg.seed)
        if got and (got[0].label is not None) != kto:
            need = "KTO rows (kto_tag)" if kto else "chosen/rejected pairs"
            raise DataError(f"dataset {name!r} does not hold {need}: "
                            f"{'use train.stage=kto' if not kto else 'use train.stage=dpo|orpo|simpo|rm'}")
        rows.extend(got)
    units = encode_preference(rows, tokenizer, cfg, report)
    total = len(units) + len(report)
    if out_dir is not None:
        report.write(Path(out_dir) / "rejected.jsonl")
        print(report.summary(total))
    report.check(cfg.max_rejected_share, total)
    if not units:
        raise DataError(f"no preference examples in {cfg.datasets}")
    train, val = split_val(units, cfg.val_size, cfg.seed)
    stats = {"rows": total, "rejected": len(report), "train_examples": len(train), "val_examples": len(val),
             "truncated": len(report.truncated), "seconds": round(time.perf_counter() - started, 3)}
    return PreparedData(train, val, report, stats)


def collate_pairs(units: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B rows: the chosen answers first, then the rejected ones (padded together)."""
    sides = [{"input_ids": u["input_ids"], "labels": u["labels"]} for u in units]
    sides += [{"input_ids": u["rejected_ids"], "labels": u["rejected_labels"]} for u in units]
    return collate(sides, pad_token_id)


def collate_kto(units: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The answers (input_ids, labels, position_ids), their kto_label, and the mismatched KL rows (kl_*)."""
    batch = collate([{"input_ids": u["input_ids"], "labels": u["labels"]} for u in units], pad_token_id)
    kl = collate([{"input_ids": u["kl_ids"], "labels": u["kl_labels"]} for u in units], pad_token_id)
    batch.update({f"kl_{k}": v for k, v in kl.items()})
    batch["kto_label"] = torch.tensor([u["kto_label"] for u in units], dtype=torch.bool)
    return batch
