"""The task section of the run configuration (to be nested into the main `Config` as `task`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasktune.config.schema import ConfigError

TASK_NAMES = ("ner", "classify", "qa", "mt")
NER_OUTPUT_FORMATS = ("json", "inline")
TAG_SCHEMES = ("auto", "iob1", "iob2", "bioes")


@dataclass
class TaskConfig:
    name: str | None = None
    """The task tuned and scored for: ner | classify | qa | mt; None: plain instruction tuning."""
    train_file: str | None = None
    """Task data to train on: jsonl, json, csv/tsv, or CoNLL/BIO columns for ner."""
    eval_file: str | None = None
    """Task data to score on, in the same formats as train_file."""
    labels: list[str] | None = None
    """Label names (classify) or entity types (ner), in id order; None: inferred from train_file."""
    label_descriptions: dict[str, str] = field(default_factory=dict)
    """Short descriptions of labels or entity types, shown to the model in the instruction."""
    text_field: str | None = None
    """Column with the input text; default: text (ner), source (mt), text/sentence/text_a/... (classify)."""
    label_field: str | None = None
    """Column holding the label (classify); default: label."""
    ner_output_format: str = "json"
    """NER target format: json (`[{"type", "text"}]` in order of appearance) | inline (`type: text; ...`)."""
    tag_scheme: str = "auto"
    """Tag scheme of CoNLL/BIO token files: auto | iob1 | iob2 | bioes."""
    instruction: str | None = None
    """Replaces the task's default instruction (the text before the input in the user message)."""
    language: str | None = None
    """Language of the inputs and answers (e.g. en, zh); picks QA normalisation; None: detected per row."""
    source_lang: str | None = None
    """MT source language when rows do not carry src_lang."""
    target_lang: str | None = None
    """MT target language when rows do not carry tgt_lang."""
    bleu_tokenize: str | None = None
    """sacrebleu tokenizer for BLEU; None: by target language (zh, ja-mecab/char, ko-mecab/char, else 13a)."""

    def check(self) -> None:
        if self.name is not None and self.name not in TASK_NAMES:
            import difflib

            close = difflib.get_close_matches(self.name, TASK_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"task.name={self.name!r}: expected one of {', '.join(TASK_NAMES)}{hint}")
        if self.ner_output_format not in NER_OUTPUT_FORMATS:
            raise ConfigError(
                f"task.ner_output_format={self.ner_output_format!r}: expected one of json, inline"
            )
        if self.tag_scheme not in TAG_SCHEMES:
            raise ConfigError(
                f"task.tag_scheme={self.tag_scheme!r}: expected one of {', '.join(TAG_SCHEMES)}"
            )
        if self.labels is not None:
            if not self.labels or any(not isinstance(x, str) or not x.strip() for x in self.labels):
                raise ConfigError("task.labels must be a non-empty list of non-empty names")
            if len(set(self.labels)) != len(self.labels):
                raise ConfigError(f"task.labels has duplicates: {self.labels}")
            unknown = sorted(set(self.label_descriptions) - set(self.labels))
            if unknown:
                raise ConfigError(f"task.label_descriptions names labels not in task.labels: {unknown}")
        if self.name == "mt" and (self.source_lang is None) != (self.target_lang is None):
            raise ConfigError(
                "task.source_lang and task.target_lang are set together (or both left to the rows)"
            )
