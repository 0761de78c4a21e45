"""Task distillation across architectures: the tuned LLM labels the task's training texts (and extra unlabeled
texts), and a small encoder (the embedded MiniLM) learns a task head from those labels (`task.method=head`).

classify: soft labels, the teacher's distribution over the labels from log-likelihood scoring
(`evaluate.loglik.score_choices`), learned with the cross-entropy against that distribution (a route of the
training loop: the head route with its own targets and loss). ner: the teacher's generated entities, placed in
the text (entities the teacher invents are dropped), learned with the usual token-tag head.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tasktune.compress.variant import Variant
from tasktune.config.schema import Config, ConfigError, ModelConfig
from tasktune.config.task import TaskConfig
from tasktune.data.report import RejectReport
from tasktune.model.load import load_model, load_tokenizer
from tasktune.tasks import get_task, task_rows

HEAD_TASKS = ("classify", "ner")


def extra_rows(path: str, spec: TaskConfig) -> list[Any]:
    """Rows of unlabeled texts (JSONL with `text`, or one text per line) with placeholder targets."""
    from tasktune.tasks.classify import ClassifyRow
    from tasktune.tasks.ner import NerRow

    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        text = json.loads(line)["text"] if line.startswith("{") else line
        source = f"{path}:{number}"
        if spec.name == "classify":
            rows.append(ClassifyRow(id=f"extra-{number}", source=source, text=text, label=spec.labels[0]))
        else:
            rows.append(NerRow(id=f"extra-{number}", source=source, text=text, entities=[]))
    return rows


def _prompts(rows: list[Any], spec: TaskConfig) -> list[list[dict[str, str]]]:
    task = get_task(spec.name)
    return [task.to_messages(row, spec).as_dicts()[:-1] for row in rows]  # without the reference answer


def teacher_labels(cfg: Config, spec: TaskConfig, teacher_dir: Path, rows: list[Any]
                   ) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """(records to train on, classify: text -> the teacher's label distribution)."""
    from tasktune.evaluate.loglik import score_choices
    from tasktune.evaluate.runner import predict

    model_cfg = ModelConfig(name_or_path=str(teacher_dir), template=cfg.model.template)
    model = load_model(model_cfg)
    tokenizer = load_tokenizer(model_cfg, padding_side="left")
    if spec.name == "classify":
        result = score_choices(model, tokenizer, _prompts(rows, spec), list(spec.labels), cfg.eval.rows(False))
        soft = {}
        records = []
        for row, scores in zip(rows, result.scores, strict=True):
            probs = torch.tensor(scores).softmax(-1)
            soft[row.text] = probs.tolist()
            records.append({"id": row.id, "text": row.text, "label": spec.labels[int(probs.argmax())],
                            "reference": row.label if not row.id.startswith("extra-") else None})
        return records, soft
    scored = predict(cfg, spec, model, tokenizer, rows)
    records = []
    for row, record in zip(rows, scored.records, strict=True):
        entities = [{"type": e["type"], "text": e["text"], "start": e["start"], "end": e["end"]}
                    for e in record["prediction"] or [] if e.get("start") is not None]
        records.append({"id": row.id, "text": row.text, "entities": entities})
    return records, {}


def soft_label_route(soft: dict[str, list[float]]):
    """The head route, trained on the teacher's label distributions (`soft_labels`) instead of hard labels."""
    from tasktune.model.head_data import build_head_data
    from tasktune.model.head_data import collate as head_collate
    from tasktune.train.distill import soft_cross_entropy
    from tasktune.train.route import HEAD

    def build_data(cfg: Config, tokenizer: Any, out_dir: Path | None):
        data = build_head_data(cfg, tokenizer, out_dir)
        rows = task_rows(cfg.task, cfg.task.train_file, RejectReport(), cfg.task.train_range)
        for unit in [*data.train, *data.val]:
            unit["soft_labels"] = soft[rows[unit["row"]].text]
        return data

    def collate(units: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        batch = head_collate(units, pad_id)
        batch["soft_labels"] = torch.tensor([u["soft_labels"] for u in units], dtype=torch.float)
        return batch

    def summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return soft_cross_entropy(model(**inputs)["logits"], batch["soft_labels"])

    return replace(HEAD, build_data=build_data, collate=collate, summed_loss=summed_loss)


def head_config(cfg: Config, labels_file: Path, run_dir: Path) -> Config:
    """`cfg` turned into a head training run of compress.head_model on the teacher-labelled file."""
    cc = cfg.compress
    run = copy.deepcopy(cfg)
    run.model = ModelConfig(name_or_path=cc.head_model)
    run.task.method = "head"
    run.task.train_file = str(labels_file)
    run.task.train_range = None
    run.task.use_crf = False
    run.task.class_weights = None
    run.data.datasets = []
    run.data.val_size = 0.0
    run.train.finetuning = "full"
    run.train.learning_rate = cc.head_learning_rate
    run.train.num_epochs = cc.head_epochs
    run.train.max_steps = -1
    run.train.batch_size = 16
    run.train.grad_accum = 1
    run.train.warmup_ratio = 0.1
    run.train.eval_steps = 0
    run.train.save_steps = 0
    run.train.resume_from_checkpoint = None
    run.output.dir = str(run_dir)
    run.output.overwrite = True
    return run


def distill_head(cfg: Config, spec: TaskConfig, teacher_dir: Path, out_dir: Path, runs_dir: Path) -> Variant:
    """Label the training texts with the teacher, train compress.head_model's head on them, copy it to out_dir."""
    from tasktune.evaluate.runner import load_eval_rows
    from tasktune.train.loop import train

    if spec.name not in HEAD_TASKS:
        raise ConfigError(f"distill-head works for {', '.join(HEAD_TASKS)}, not task.name={spec.name}")
    cc = cfg.compress
    rows = load_eval_rows(cfg, spec, split="train", limit=cc.teacher_label_limit)[0]
    labelled = len(rows)
    if cc.extra_texts:
        rows += extra_rows(cc.extra_texts, spec)
    records, soft = teacher_labels(cfg, spec, teacher_dir, rows)
    run_dir = runs_dir / "distill-head"
    labels_file = runs_dir / "distill-head-teacher-labels.jsonl"
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    labels_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    run = head_config(replace(cfg, task=spec), labels_file, run_dir)
    result = train(run, route=soft_label_route(soft) if spec.name == "classify" else None)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(run_dir / "model", out_dir)
    details: dict[str, Any] = {"student": cc.head_model, "teacher_labelled_rows": labelled,
                               "extra_rows": len(rows) - labelled, "labels_file": str(labels_file),
                               "targets": "soft (teacher label distribution)" if soft else "teacher entities",
                               "loss": [result.first_loss, result.last_loss]}
    if spec.name == "classify":
        known = [r for r in records if r["reference"] is not None]
        details["teacher_agrees_with_reference"] = sum(r["label"] == r["reference"] for r in known) / max(1, len(known))
    return Variant("distill-head", out_dir, kind="head", details=details)
