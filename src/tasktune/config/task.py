"""The `task` and `eval` sections of the run configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasktune.config.errors import ConfigError

TASK_NAMES = ("ner", "classify", "qa", "mt")


def row_slice(text: str | None, where: str = "range") -> slice:
    """`"start:end"` (either side may be empty) -> slice; None -> everything."""
    if text is None:
        return slice(None)
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ConfigError(f"{where}={text!r}: expected start:end, e.g. :1000 or 800:") from None
    return slice(start, end)
NER_OUTPUT_FORMATS = ("json", "inline", "tagged-words")
TAG_SCHEMES = ("auto", "iob1", "iob2", "bioes")
HEAD_TASKS = ("classify", "ner", "qa")


@dataclass
class TaskConfig:
    name: str | None = None
    """The task tuned and scored for: ner | classify | qa | mt; None: plain instruction tuning."""
    train_file: str | None = None
    """Task data to train on: jsonl, json, csv/tsv, or CoNLL/BIO columns for ner."""
    eval_file: str | None = None
    """Development data scored during training and by `tasktune eval` (eval.split=eval)."""
    test_file: str | None = None
    """Held-out test data, scored by `tasktune eval` with eval.split=test."""
    train_range: str | None = None
    """Rows of train_file used, as a Python slice over its valid rows: ":1000" (the first 1000), "200:"."""
    eval_range: str | None = None
    """Rows of the scored file used, as a slice ("800:" scores what a train_range ":800" left out)."""
    labels: list[str] | None = None
    """Label names (classify) or entity types (ner), in id order; None: inferred from train_file."""
    label_descriptions: dict[str, str] = field(default_factory=dict)
    """Short descriptions of labels or entity types, shown to the model in the instruction."""
    text_field: str | None = None
    """Column with the input text; default: text (ner), source (mt), text/sentence/text_a/... (classify)."""
    label_field: str | None = None
    """Column holding the label (classify); default: label."""
    ner_output_format: str = "inline"
    """Generative NER answer: inline (the text copied with `[mention|TYPE]` brackets, decoding constrained to
    copying; the measured best, see the README) | json (`[{"type", "text"}]` in order of appearance) |
    tagged-words (GNER-style `word(B-TYPE)`, `word(O)` for every word). Every answer is placed on the input's
    characters and scored span-exact."""
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
    method: str = "generate"
    """How the task is learned: generate (the LM writes the answer) | head (a classification layer on the model:
    sequence labels for classify, token tags for ner, answer span for qa; cross-entropy, no generation)."""
    use_crf: bool = False
    """ner heads: a CRF layer over the token tags (learned transitions, Viterbi decoding)."""
    class_weights: dict[str, float] | str | None = None
    """classify/ner heads: loss weight per class: balanced (inverse frequency in the training data) or a map
    {label: weight} (ner: entity types and O); unlisted classes weigh 1."""
    logit_adjustment: float = 0.5
    """ner heads: training adds this x log(share of each tag among the training words) to the tag scores (the
    logit-adjusted loss, Menon et al. 2021), so rare entity tags are not drowned by O on sparse data (a head
    that predicts only O); predictions use the plain scores. 0: off."""
    head_prompt: bool = False
    """classify heads on a chat model: the head reads the task's prompt (instruction, text, the assistant's turn
    opened) instead of the bare text, and starts as the model's own answer: its weights are the output
    embeddings of each label's first token. Learns faster than a bare-text head from a random start."""
    case_features: bool = False
    """ner heads on an uncased BERT-style encoder (minilm-l6): each token's original casing (lower, Capitalised,
    UPPER, mixed, no letters) enters as its token type, since the tokenizer lowercases it away."""
    max_seq_length: int = 384
    """Heads: longest input in tokens; longer ner texts and qa contexts are split into overlapping windows,
    longer classify texts are truncated (reported)."""
    doc_stride: int = 128
    """Heads: tokens shared by consecutive windows of a long ner text or qa context."""
    max_answer_length: int = 30
    """qa heads: longest answer span considered, in tokens."""
    weight: float = 1.0
    """Multi-task runs (`tasks:`): this task's share of the training mixture, relative to the other tasks'
    weights (its rows are resampled to round(all task rows x weight / sum of weights))."""
    alias: str | None = None
    """Multi-task runs: the task's short name, used for its eval folder and as the prefix of its metrics
    (`ner/f1`); default: task.name (ner, ner-2, ... when repeated)."""

    def check(self) -> None:
        if self.name is not None and self.name not in TASK_NAMES:
            import difflib

            close = difflib.get_close_matches(self.name, TASK_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"task.name={self.name!r}: expected one of {', '.join(TASK_NAMES)}{hint}")
        if self.ner_output_format not in NER_OUTPUT_FORMATS:
            raise ConfigError(
                f"task.ner_output_format={self.ner_output_format!r}: expected one of {', '.join(NER_OUTPUT_FORMATS)}"
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
        for key in ("train_range", "eval_range"):
            value = getattr(self, key)
            if value is not None:
                row_slice(value, f"task.{key}")
        if self.name == "mt" and (self.source_lang is None) != (self.target_lang is None):
            raise ConfigError(
                "task.source_lang and task.target_lang are set together (or both left to the rows)"
            )
        self._check_head()

    def _check_head(self) -> None:
        if self.method not in ("generate", "head"):
            raise ConfigError(f"task.method={self.method!r}: expected one of generate, head")
        if self.method == "head" and self.name not in HEAD_TASKS:
            raise ConfigError(f"task.method=head works for {', '.join(HEAD_TASKS)}, not task.name={self.name!r}")
        if self.use_crf and (self.method != "head" or self.name != "ner"):
            raise ConfigError("task.use_crf=true needs task.name=ner and task.method=head")
        weights = self.class_weights
        if weights is not None:
            if self.method != "head" or self.name not in ("classify", "ner"):
                raise ConfigError("task.class_weights needs task.method=head and task.name classify or ner")
            if self.use_crf:
                raise ConfigError("task.class_weights cannot be combined with task.use_crf (the CRF loss is "
                                  "over whole tag sequences)")
            if isinstance(weights, dict):
                known = set(self.labels or []) | ({"O"} if self.name == "ner" else set())
                unknown = sorted(set(weights) - known) if self.labels else []
                if unknown:
                    raise ConfigError(f"task.class_weights names {unknown}, not in task.labels"
                                      f"{' or O' if self.name == 'ner' else ''}")
                if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0 for w in weights.values()):
                    raise ConfigError(f"task.class_weights: weights must be positive numbers, got {weights}")
            elif weights != "balanced":
                raise ConfigError(f"task.class_weights={weights!r}: expected balanced or a map {{label: weight}}")
        if self.head_prompt and (self.method != "head" or self.name != "classify"):
            raise ConfigError("task.head_prompt=true needs task.name=classify and task.method=head")
        if self.case_features and (self.method != "head" or self.name != "ner"):
            raise ConfigError("task.case_features=true needs task.name=ner and task.method=head")
        if self.logit_adjustment < 0:
            raise ConfigError(f"task.logit_adjustment={self.logit_adjustment}: must be >= 0 (0 turns it off)")
        if self.max_seq_length < 16:
            raise ConfigError(f"task.max_seq_length={self.max_seq_length}: must be at least 16")
        if self.name in ("ner", "qa") and not 0 <= self.doc_stride < self.max_seq_length // 2:
            raise ConfigError(f"task.doc_stride={self.doc_stride}: must be within [0, max_seq_length / 2) "
                              f"(task.max_seq_length={self.max_seq_length})")
        if self.max_answer_length < 1:
            raise ConfigError("task.max_answer_length must be at least 1")


def task_aliases(tasks: list[TaskConfig]) -> list[str]:
    """Each task's alias: its own, else its name, numbered (ner, ner-2) when the name repeats."""
    seen: dict[str, int] = {}
    aliases = []
    for spec in tasks:
        base = spec.alias or str(spec.name)
        seen[base] = seen.get(base, 0) + 1
        aliases.append(base if spec.alias or seen[base] == 1 else f"{base}-{seen[base]}")
    return aliases


def check_task_list(tasks: list[TaskConfig], single: TaskConfig) -> None:
    """The `tasks:` list of a multi-task run: generative tasks with names, train data, positive weights and
    distinct aliases, and no `task:` section beside it."""
    if not tasks:
        return
    if single.name:
        raise ConfigError("set either task (one task) or tasks (a list, one adapter for all), not both")
    for i, spec in enumerate(tasks):
        where = f"tasks[{i}]"
        if not spec.name:
            raise ConfigError(f"{where}.name is not set: expected one of {', '.join(TASK_NAMES)}")
        try:
            spec.check()
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        if spec.method != "generate":
            raise ConfigError(f"{where}.method={spec.method!r}: multi-task runs train one generative adapter; "
                              "task heads need a run of their own")
        if isinstance(spec.weight, bool) or not spec.weight > 0:
            raise ConfigError(f"{where}.weight={spec.weight!r}: must be a positive number")
        if spec.alias is not None and (not spec.alias.strip() or "/" in spec.alias):
            raise ConfigError(f"{where}.alias={spec.alias!r}: a non-empty name without '/'")
    aliases = task_aliases(tasks)
    if len(set(aliases)) != len(aliases):
        raise ConfigError(f"tasks: aliases must differ, got {aliases} (set tasks[i].alias)")


GENERATE_ROWS = 128
"""Rows generated at once when eval.batch_size is None."""
FORWARD_ROWS = 64
"""Rows per forward batch (task heads, label log-likelihoods) when eval.batch_size is None."""


@dataclass
class EvalConfig:
    split: str = "eval"
    """Which task file `tasktune eval` scores: eval (task.eval_file) | test (task.test_file) | train."""
    limit: int | None = None
    """Score a deterministic sample of at most this many examples (None: all)."""
    checkpoint: str = "auto"
    """Model scored: auto (this run's best/ or final adapter/model in output.dir if present, else the base
    model with model.adapter) | base (model.name_or_path with model.adapter) | a directory (adapter or model)."""
    batch_size: int | None = None
    """Rows at once. Generating (continuous batching: a finished row is replaced by the next at once): 128 when
    None, fewer where their key/value cache would take over a quarter of the free memory (on this 2-core CPU,
    128 score the demo's 80 and 160 NER rows 9 % faster than 64, same answers). A forward batch (task heads,
    label log-likelihoods): 64 when None (QA windows of 384 tokens: 128 were slower and took twice the memory)."""
    max_new_tokens: int | None = None
    """Generation budget per example; None: the task's default."""
    constrained: bool | None = None
    """Constrain decoding to the task's output format (classify: a label; ner json: the entity list schema;
    ner inline: copying the input with `[mention|TYPE]` brackets; qa: a span of the context); None: on for
    classify, ner inline and qa."""
    draft_tokens: int = 0
    """Tokens a greedy row may copy from its own prompt per forward pass (prompt lookup decoding: the model
    checks the guesses in the same pass and keeps those it would have chosen, so the answers are unchanged).
    Pays with small batches (batch_size 1: 1.3x on inline NER here); on a full CPU batch it costs 3-11 %,
    hence off by default. 0: one token per pass."""
    copy_drafts: int = 3
    """Tokens a greedy row may guess per forward pass from the text its constraint copies (constrained inline
    NER: the rest of the sentence with brackets around the next run of capitalized words, or of a label once
    one is left; QA: the rest of the context within a span). Checked in the same pass like `draft_tokens`,
    same answers; most guesses hold, so they pay on a full batch too. 0: one token per pass."""
    scoring: str = "generate"
    """classify only: generate (decode a label) | loglik (pick the label with the highest log-likelihood)."""
    during_training_limit: int = 200
    """Examples of the eval split scored at every train.eval_steps (a fixed, seeded sample)."""
    metric_for_best: str | None = None
    """Metric that picks the best checkpoint during training (higher is better; ter is refused); None: ner f1,
    classify macro_f1, qa f1, mt bleu. Multi-task runs: ALIAS/METRIC (e.g. ner/f1); None: the mean of the
    tasks' default metrics (mt bleu divided by 100)."""
    output_dir: str | None = None
    """Where predictions.jsonl, metrics.json and plots go; None: OUTPUT_DIR/eval (eval-test, eval-train for
    the other splits)."""
    seed: int = 0
    """Seed of the sample taken by limit."""

    def rows(self, generating: bool) -> int:
        """`batch_size`, or its default: rows generated at once (GENERATE_ROWS) or per forward batch
        (FORWARD_ROWS)."""
        if self.batch_size is not None:
            return self.batch_size
        return GENERATE_ROWS if generating else FORWARD_ROWS

    def check(self) -> None:
        if self.split not in ("eval", "test", "train"):
            raise ConfigError(f"eval.split={self.split!r}: expected one of eval, test, train")
        if self.scoring not in ("generate", "loglik"):
            raise ConfigError(f"eval.scoring={self.scoring!r}: expected one of generate, loglik")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("eval.limit must be at least 1 (or null for all)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("eval.batch_size must be at least 1 (or null for the defaults)")
        if not 0 <= self.draft_tokens <= 32:
            raise ConfigError("eval.draft_tokens must be within [0, 32]")
        if not 0 <= self.copy_drafts <= 32:
            raise ConfigError("eval.copy_drafts must be within [0, 32]")
