"""Each head trained a few steps through the shared training loop on a tiny random model, saved, reloaded:
the reloaded head predicts exactly what the trained one did; `eval` and `predict` write the shared schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from tasktune.config import load_config
from tasktune.evaluate.heads import predict_rows, run_head_eval
from tasktune.model.heads import load_head
from tasktune.tasks import task_rows
from tasktune.train.loop import train
from tasktune.train.route import HEAD, route_for


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("head_data")
    classify = [{"text": f"{word} film number {i}", "label": label}
                for i in range(12) for word, label in (("great", "positive"), ("awful", "negative"))]
    people = [("John Smith", "Paris"), ("Mary", "New York"), ("李伟", "北京")] * 4
    ner = []
    for name, city in people:
        text = f"{name} visited {city} today ."
        start = text.index(city)
        ner.append({"text": text, "entities": [{"type": "PER", "start": 0, "end": len(name)},
                                               {"type": "LOC", "start": start, "end": start + len(city)}]})
    qa = []
    for i, (country, capital) in enumerate([("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima")] * 4):
        context = f"Many people live in {country}. The capital of {country} is {capital}, a large city."
        qa.append({"id": f"q{i}", "context": context, "question": f"What is the capital of {country}?",
                   "answers": {"text": [capital], "answer_start": [context.index(capital)]}})
    return {"classify": _jsonl(folder / "classify.jsonl", classify), "ner": _jsonl(folder / "ner.jsonl", ner),
            "qa": _jsonl(folder / "qa.jsonl", qa)}


def _cfg(model_dir: Path, task: str, data: Path, out: Path, *extra: str):
    return load_config(None, [
        f"model.name_or_path={model_dir}", f"task.name={task}", "task.method=head", f"task.train_file={data}",
        f"task.eval_file={data}", f"output.dir={out}", "train.batch_size=4", "train.learning_rate=5e-3",
        "train.mixed_precision=no", "train.logging_steps=1", "lora.r=4", "lora.alpha=8", "task.max_seq_length=32",
        "task.doc_stride=8", *extra,
    ])


def _train_and_reload(cfg, steps: int):
    """Train through the loop, capturing the in-memory model's predictions at the last step; reload the
    saved head. Returns (rows, predictions before saving, predictions after reloading, train result)."""
    rows = task_rows(cfg.task, cfg.task.train_file, _Report())
    captured = {}

    def capture(model, tokenizer, step):
        captured["predictions"] = predict_rows(model, tokenizer, rows, cfg.task)
        return {}

    cfg.train.max_steps, cfg.train.eval_steps = steps, steps
    result = train(cfg, evaluator=capture)
    model, tokenizer = load_head(cfg.output.dir)
    return rows, captured["predictions"], predict_rows(model, tokenizer, rows, cfg.task), result


class _Report:
    def add(self, *_):
        raise AssertionError("test rows are valid")


def _same(before, after) -> None:
    for (p1, s1), (p2, s2) in zip(before, after, strict=True):
        assert p1 == p2
        if isinstance(s1, dict):
            assert s1.keys() == s2.keys()
            assert all(s1[k] is None and s2[k] is None or abs(s1[k] - s2[k]) < 1e-4 for k in s1)
        else:
            assert s1 == pytest.approx(s2, abs=1e-4)


def test_route_for_head():
    cfg = load_config(None, ["task.name=classify", "task.method=head"])
    assert route_for(cfg) is HEAD
    assert route_for(load_config(None, ["task.name=classify"])) is not HEAD


def test_classify_lora_head_trains_saves_reloads(tiny_bert_dir, task_files, tmp_path):
    cfg = _cfg(tiny_bert_dir, "classify", task_files["classify"], tmp_path / "run", "task.class_weights=balanced")
    rows, before, after, result = _train_and_reload(cfg, steps=8)
    assert result.last_loss < result.first_loss
    _same(before, after)
    saved = tmp_path / "run" / "adapter"
    assert (saved / "adapter_model.safetensors").is_file() and (saved / "tokenizer.json").is_file()
    info = json.loads((saved / "head.json").read_text())
    assert info["task"] == "classify" and info["outputs"] == ["negative", "positive"]
    assert {label for label, _ in after} <= {"negative", "positive"}
    assert all(abs(sum(scores.values()) - 1) < 1e-3 for _, scores in after)


def test_eval_writes_the_generative_schema(tiny_bert_dir, task_files, tmp_path):
    cfg = _cfg(tiny_bert_dir, "classify", task_files["classify"], tmp_path / "run", "train.max_steps=2")
    train(cfg)
    metrics = run_head_eval(cfg)
    written = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert written["task"] == "classify" and written["n"] == 24 and written["scoring"] == "head"
    assert {"accuracy", "macro_f1", "per_class", "confusion", "parse_failure_rate", "examples_per_s"} <= set(written)
    assert metrics["accuracy"] == written["accuracy"]
    first = json.loads((tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "input", "reference", "output", "prediction", "correct", "scores"}
    assert (tmp_path / "run" / "eval" / "confusion.png").is_file()


@pytest.mark.parametrize("extra", [["task.use_crf=true"], ["train.finetuning=full", "task.max_seq_length=16",
                                                           "task.doc_stride=4"]])
def test_ner_head_trains_saves_reloads(tiny_bert_dir, task_files, tmp_path, extra):
    cfg = _cfg(tiny_bert_dir, "ner", task_files["ner"], tmp_path / "run", "train.learning_rate=2e-2", *extra)
    rows, before, after, result = _train_and_reload(cfg, steps=12)
    assert result.last_loss < result.first_loss
    _same(before, after)
    for row, (entities, scores) in zip(rows, after, strict=True):
        assert len(scores) == len(entities)
        assert all(row.text[e["start"] : e["end"]] == e["text"] for e in entities)
    saved = tmp_path / "run" / ("adapter" if "train.finetuning=full" not in extra else "model")
    assert (saved / "crf.safetensors").is_file() == ("task.use_crf=true" in extra)
    if "train.finetuning=full" in extra:  # a full model: label names in its config
        config = json.loads((saved / "config.json").read_text())
        assert config["id2label"]["1"] == "B-LOC" and len(config["id2label"]) == 5


def test_qa_head_trains_saves_reloads(tiny_bert_dir, task_files, tmp_path):
    cfg = _cfg(tiny_bert_dir, "qa", task_files["qa"], tmp_path / "run", "train.learning_rate=2e-2")
    rows, before, after, result = _train_and_reload(cfg, steps=10)
    assert result.last_loss < result.first_loss
    _same(before, after)
    for row, (answer, scores) in zip(rows, after, strict=True):
        assert answer is None or row.context[scores["start"] : scores["end"]] == answer


@pytest.mark.parametrize("task,head", [("classify", "score"), ("ner", "score"), ("qa", "qa_outputs")])
def test_decoder_heads_with_lora(tiny_llama_dir, task_files, tmp_path, task, head, capsys):
    """A Llama-family decoder (LlamaFor{SequenceClassification,TokenClassification,QuestionAnswering}): the
    backbone comes from the checkpoint (LlamaForQuestionAnswering names it `transformer`, the checkpoint
    `model`), only the head is new, trained in full and saved with the adapter."""
    from safetensors import safe_open

    cfg = _cfg(tiny_llama_dir, task, task_files[task], tmp_path / "run")
    rows, before, after, result = _train_and_reload(cfg, steps=8)
    assert f"new modules {head}\n" in capsys.readouterr().out
    assert result.last_loss < result.first_loss
    _same(before, after)
    with safe_open(tmp_path / "run" / "adapter" / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any(head in k for k in keys) and any("lora_" in k for k in keys)


def test_predict_cli_reads_jsonl_and_plain_lines(tiny_bert_dir, task_files, tmp_path, capsys, monkeypatch):
    from tasktune.cli import main

    cfg = _cfg(tiny_bert_dir, "ner", task_files["ner"], tmp_path / "run", "train.max_steps=1")
    train(cfg)
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "text": "Mary visited Paris today ."}\nJohn Smith visited 北京 today .\n')
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--model", str(tmp_path / "run"), "--input", str(source), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", "2"]
    assert all(isinstance(line["prediction"], list) and len(line["scores"]) == len(line["prediction"])
               for line in lines)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("Mary visited Paris today .\n"))
    assert main(["predict", "--model", str(tmp_path / "run" / "adapter")]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["id"] == "1"
    assert main(["predict", "--model", str(tmp_path)]) == 1
    assert "no task head" in capsys.readouterr().err


def test_resume_continues_a_crf_head_exactly(tiny_bert_dir, task_files, tmp_path):
    """2N steps straight == N steps, stop, resume for N more: same losses, same adapter, head and CRF."""
    import shutil

    from safetensors.torch import load_file

    n = 3
    extra = ["task.use_crf=true", f"train.save_steps={n}", f"train.max_steps={2 * n}", "train.learning_rate=2e-2"]
    straight = tmp_path / "straight"
    train(_cfg(tiny_bert_dir, "ner", task_files["ner"], straight, *extra))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / f"step-{n}", resumed / "checkpoints" / f"step-{n}")
    lines = (straight / "train_log.jsonl").read_text().splitlines()
    (resumed / "train_log.jsonl").write_text("\n".join(lines[:n]) + "\n")
    result = train(_cfg(tiny_bert_dir, "ner", task_files["ner"], resumed, *extra,
                        "train.resume_from_checkpoint=latest"))
    assert result.global_step == 2 * n

    def losses(out):
        return [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]

    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    for name in ("adapter_model.safetensors", "crf.safetensors"):
        a, b = load_file(straight / "adapter" / name), load_file(resumed / "adapter" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
