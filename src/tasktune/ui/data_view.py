"""The Data tab's logic: rows as the model sees them (chat template, loss-masked part marked), validation
(rejected rows per reason with file:line) and histograms of labels / entity types and token lengths.

Uses the same functions as training: `task_conversations` / `read_conversations`, `render_conversation`
and `encode_many`.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasktune.config.schema import Config, ConfigError, ModelConfig
from tasktune.config.task import TaskConfig
from tasktune.data.messages import Conversation
from tasktune.data.pipeline import read_conversations
from tasktune.data.registry import load_registry, resolve_dataset
from tasktune.data.report import RejectReport
from tasktune.data.tokenize import encode_many, render_conversation, resolve_template
from tasktune.tasks import resolve_labels, task_conversations, task_rows

MAX_VALIDATED_ROWS = 5000
"""Rows read when validating (the histograms say when a file was longer)."""


@dataclass
class DataSource:
    kind: str
    """registry (a dataset_info.json entry) | task (a task file read by cfg.task's task)."""
    name: str
    """Registry entry name, or the task file path."""


@dataclass
class DataSummary:
    conversations: list[Conversation]
    report: RejectReport
    lengths: list[int] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)
    cutoff_len: int = 1024
    rows_read: int = 0


def registry_names(dataset_dir: str | Path) -> list[str]:
    try:
        return sorted(load_registry(dataset_dir))
    except Exception:  # a broken dataset_info.json is shown when an entry is used, not while listing
        return []


@lru_cache(maxsize=4)
def _tokenizer(name_or_path: str, template: str | None):
    from tasktune.model.load import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=name_or_path, template=template))


def tokenizer_for(cfg: Config):
    return _tokenizer(cfg.model.name_or_path, cfg.model.template)


def task_spec(cfg: Config, path: str) -> TaskConfig:
    if not cfg.task.name:
        raise ConfigError("pick a task (task.name: ner, classify, qa or mt) to read a task file")
    spec = replace(cfg.task, train_file=path)
    spec.check()
    return resolve_labels(spec)[0]


def load_source(cfg: Config, source: DataSource, limit: int | None = None) -> tuple[list[Conversation], RejectReport,
                                                                                   Counter[str]]:
    """Conversations of a source (the first `limit` rows), its report and its label / entity-type counts."""
    report = RejectReport()
    labels: Counter[str] = Counter()
    if source.kind == "task":
        path = Path(source.name)
        if not path.is_file():
            raise FileNotFoundError(f"task file not found: {path.resolve()}")
        spec = task_spec(cfg, str(path))
        rows = task_rows(spec, path, RejectReport())[:limit] if limit else None
        convs = task_conversations(replace(spec, train_range=f":{limit}" if limit else None), path, report)
        for row in rows if rows is not None else task_rows(spec, path, RejectReport()):
            if hasattr(row, "entities"):
                labels.update(e.type for e in row.entities)
            elif hasattr(row, "label"):
                labels[str(row.label)] += 1
        return convs, report, labels
    spec = resolve_dataset(source.name, cfg.data.dataset_dir)
    return read_conversations(spec, report, limit, cfg.data.seed), report, labels


def render_html(conv: Conversation, tokenizer: Any, template: str | None = None) -> str:
    """The rendered chat text; the trained (loss-carrying) characters highlighted."""
    text, spans = render_conversation(conv, tokenizer, resolve_template(tokenizer, template))
    out, cursor = [], 0
    for start, end in spans:
        out.append(html.escape(text[cursor:start]))
        out.append(f'<span class="trained" style="background:#c8f7c5" title="loss on these tokens">'
                   f"{html.escape(text[start:end])}</span>")
        cursor = end
    out.append(html.escape(text[cursor:]))
    where = f"<div style='color:#666;font-size:0.8em'>{html.escape(conv.source)}</div>" if conv.source else ""
    return f"{where}<pre style='white-space:pre-wrap'>{''.join(out)}</pre>"


def preview(cfg: Config, source: DataSource, n: int = 3) -> str:
    """The first `n` rows as HTML, as the model will see them."""
    convs, report, _ = load_source(cfg, source, limit=max(n, 1))
    tokenizer = tokenizer_for(cfg)
    parts = [render_html(conv, tokenizer, cfg.model.template) for conv in convs[:n]]
    if report.rejects:
        parts.append(f"<p>{len(report)} of the first rows were rejected: see Validate.</p>")
    legend = "<p><span style='background:#c8f7c5'>highlighted</span>: the tokens that carry loss</p>"
    return legend + "".join(parts) if parts else "<p>no rows</p>"


def validate(cfg: Config, source: DataSource) -> DataSummary:
    """Read (up to MAX_VALIDATED_ROWS rows) and encode like training does; lengths before truncation."""
    convs, report, labels = load_source(cfg, source, limit=MAX_VALIDATED_ROWS)
    tokenizer = tokenizer_for(cfg)
    examples = encode_many(convs, tokenizer, 1 << 30, "truncate", report, cfg.model.template)
    lengths = [len(e["input_ids"]) for e in examples]
    return DataSummary(convs, report, lengths, labels, cfg.data.cutoff_len, len(convs) + len(report))


def report_rows(report: RejectReport, limit: int = 200) -> list[list[str]]:
    """The rejected rows as table rows: reason, file:line, detail, row."""
    return [[r.reason, r.source, r.detail, r.row] for r in report.rejects[:limit]]


def summary_markdown(summary: DataSummary) -> str:
    over = sum(n > summary.cutoff_len for n in summary.lengths)
    counts = ", ".join(f"{k} {v}" for k, v in summary.report.counts().items()) or "none"
    lines = [f"**{summary.rows_read} rows read**, {len(summary.report)} rejected ({counts}); "
             f"{len(summary.lengths)} encoded."]
    if summary.lengths:
        ordered = sorted(summary.lengths)
        lines.append(f"Tokens per example: median {ordered[len(ordered) // 2]}, max {ordered[-1]}; "
                     f"**{over} longer than cutoff_len={summary.cutoff_len}** (data.overlong decides).")
    if summary.rows_read >= MAX_VALIDATED_ROWS:
        lines.append(f"(only the first {MAX_VALIDATED_ROWS} rows were read)")
    return "\n\n".join(lines)


def plot_histograms(summary: DataSummary):
    """Token lengths against cutoff_len, and the label / entity-type counts when there are any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if summary.labels else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.2), dpi=90, squeeze=False)
    ax = axes[0][0]
    if summary.lengths:
        ax.hist(summary.lengths, bins=min(40, max(5, len(summary.lengths) // 5)), color="tab:blue")
    ax.axvline(summary.cutoff_len, color="tab:red", linestyle="--", label=f"cutoff_len {summary.cutoff_len}")
    ax.set_xlabel("tokens per example (chat template applied)")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    if summary.labels:
        names, counts = zip(*summary.labels.most_common(30), strict=True)
        axes[0][1].barh(list(reversed(names)), list(reversed(counts)), color="tab:purple")
        axes[0][1].set_xlabel("count")
        axes[0][1].set_title("labels / entity types", fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig
