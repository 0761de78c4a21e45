"""`tasktune predict`: a trained task head over JSONL rows (or stdin) -> one JSON line per row,
{"id", "prediction", "scores"}, in input order.

Input per line: a JSON object with the text (classify: task.text_field or text/sentence/...; ner: text) or,
for qa, context and question; classify and ner also take plain text lines. `id` is kept, else the line number.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from tasktune.config.task import TaskConfig
from tasktune.data.report import DataError
from tasktune.data.text import read_lines
from tasktune.evaluate.heads import predict_rows
from tasktune.model.heads import load_head
from tasktune.tasks.classify import TEXT_FIELDS, ClassifyRow
from tasktune.tasks.ner import NerRow
from tasktune.tasks.qa import QaRow


def _text(record: dict[str, Any], fields: tuple[str, ...], where: str) -> str:
    for name in fields:
        if isinstance(record.get(name), str):
            return record[name]
    raise DataError(f"{where}: no string field {' / '.join(fields)}")


def read_inputs(lines: Iterable[str], spec: TaskConfig, source: str = "<stdin>") -> list[Any]:
    """Rows for the head of spec.name (no references) from JSONL or plain-text lines; blank lines skipped."""
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if spec.name == "qa":
                raise DataError(f"{where}: qa needs a JSON object with context and question")
            record = {"text": line.rstrip("\r\n")}
        rid = str(record.get("id", number))
        if spec.name == "qa":
            context, question = _text(record, ("context",), where), _text(record, ("question",), where)
            rows.append(QaRow(rid, where, context, question, [], []))
            continue
        fields = (spec.text_field,) if spec.text_field else (("text",) if spec.name == "ner" else TEXT_FIELDS)
        text = _text(record, fields, where)
        rows.append(ClassifyRow(rid, where, text, "") if spec.name == "classify" else NerRow(rid, where, text, []))
    return rows


def _open_input(path: str | None) -> tuple[Iterable[str], str]:
    if path in (None, "-"):
        return sys.stdin, "<stdin>"
    return read_lines(path), str(path)


def run_predict(model_dir: str, input_path: str | None = None, output_path: str | None = None,
                batch_size: int = 32) -> int:
    """Predict every input row with the head in model_dir (a run's output.dir or its adapter/ or model/)."""
    import torch

    model, tokenizer = load_head(model_dir)
    if torch.cuda.is_available():
        model = model.to("cuda")
    lines, source = _open_input(input_path)
    rows = read_inputs(lines, model.info.spec(), source)
    started = time.perf_counter()
    results = predict_rows(model, tokenizer, rows, model.info.spec(), batch_size, progress=output_path is not None)
    seconds = time.perf_counter() - started
    out: TextIO = open(output_path, "w", encoding="utf-8") if output_path else sys.stdout  # noqa: SIM115
    try:
        for row, (prediction, scores) in zip(rows, results, strict=True):
            out.write(json.dumps({"id": row.id, "prediction": prediction, "scores": scores}, ensure_ascii=False))
            out.write("\n")
    finally:
        if output_path:
            out.close()
    rate = len(rows) / seconds if seconds else 0.0
    print(f"{len(rows)} predictions ({model.info.task} head) in {seconds:.2f} s, {rate:.1f} rows/s"
          + (f" -> {output_path}" if output_path else ""), file=sys.stderr)
    return 0
