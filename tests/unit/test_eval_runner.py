"""The eval runner end to end on the tiny model: files written, misses counted, sampling, checkpoints, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tasktune.cli import main
from tasktune.config.load import load_config
from tasktune.config.schema import ConfigError
from tasktune.evaluate.generate import GenerationResult
from tasktune.evaluate.runner import (
    eval_model_config,
    evaluate_task,
    load_eval_rows,
    make_training_evaluator,
    resolve_eval_model,
)
from tasktune.model.load import load_model, load_tokenizer

RECORD_KEYS = {"id", "input", "reference", "output", "prediction", "correct"}
BREAKDOWN = {"ner": "per_type", "classify": "per_class", "mt": "per_direction"}
HEADLINE = {
    "ner": ["f1", "precision", "recall"],
    "classify": ["accuracy", "macro_f1"],
    "qa": ["exact_match", "f1"],
    "mt": ["bleu", "chrf", "ter"],
}


def entity(kind: str, text: str, start: int) -> dict:
    return {"type": kind, "text": text, "start": start, "end": start + len(text)}


NER_ROWS = [
    {"id": "n1", "text": "John lives in Paris.", "entities": [entity("PER", "John", 0), entity("LOC", "Paris", 14)]},
    {"id": "n2", "text": "Acme hired Mary.", "entities": [entity("ORG", "Acme", 0), entity("PER", "Mary", 11)]},
    {"id": "n3", "text": "Nothing here.", "entities": []},
]
CLASSIFY_ROWS = [
    {"id": "c1", "text": "great fun", "label": "positive"},
    {"id": "c2", "text": "dull and long", "label": "negative"},
    {"id": "c3", "text": "loved it", "label": "positive"},
    {"id": "c4", "text": "", "label": "negative"},  # rejected: empty_text, line 4
    {"id": "c5", "text": "awful", "label": "negative"},
]
QA_ROWS = [
    {"id": "q1", "context": "Paris is the capital of France.", "question": "What is the capital of France?",
     "answers": {"text": ["Paris"], "answer_start": [0]}},
    {"id": "q2", "context": "The cat sat on the mat.", "question": "Where did the cat sit?",
     "answers": {"text": ["on the mat"], "answer_start": [12]}},
]  # fmt: skip
MT_ROWS = [
    {"id": "m1", "source": "Guten Morgen.", "reference": "Good morning.", "src_lang": "de", "tgt_lang": "en"},
    {"id": "m2", "source": "Danke schön.", "reference": "Thank you very much.", "src_lang": "de", "tgt_lang": "en"},
]
ROWS = {"ner": NER_ROWS, "classify": CLASSIFY_ROWS, "qa": QA_ROWS, "mt": MT_ROWS}
EXTRA = {"ner": ["task.labels=[PER,LOC,ORG]"], "classify": [], "qa": [], "mt": []}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval_data")
    for task, rows in ROWS.items():
        write_jsonl(folder / f"{task}.jsonl", rows)
    many = [{"id": f"r{i}", "text": f"text {i}", "label": "positive" if i % 3 else "negative"} for i in range(30)]
    write_jsonl(folder / "many.jsonl", many)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from tasktune.config.schema import ModelConfig

    cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    return load_model(cfg), load_tokenizer(cfg, padding_side="left")


def make_cfg(tiny_llama_dir, data_dir, task, out, *overrides):
    return load_config(None, [
        f"model.name_or_path={tiny_llama_dir}", f"task.name={task}", f"task.eval_file={data_dir / f'{task}.jsonl'}",
        "eval.max_new_tokens=6", "eval.batch_size=4", f"output.dir={out}", *EXTRA[task],
        "data.max_rejected_share=0.5", *overrides,  # classify.jsonl has 1 bad row of 5 on purpose
    ])  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("task", ["ner", "classify", "qa", "mt"])
def test_each_task_writes_exactly_the_required_fields(task, tiny, tiny_llama_dir, data_dir, tmp_path, capsys):
    model, tokenizer = tiny
    cfg = make_cfg(tiny_llama_dir, data_dir, task, tmp_path / "run")
    out = tmp_path / "eval"
    metrics = evaluate_task(cfg, model, tokenizer, out_dir=out, progress=False, model_description="tiny")

    valid_ids = [r["id"] for r in ROWS[task] if r.get("text", "x")]
    records = read_jsonl(out / "predictions.jsonl")
    assert [r["id"] for r in records] == valid_ids
    assert all(set(r) == RECORD_KEYS for r in records)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ["task", "n", *HEADLINE[task], "parse_failure_rate", "examples_per_s", "generated_tokens_per_s",
                "model", "split", "constrained"]:
        assert key in saved, key
    assert list(saved)[: 2 + len(HEADLINE[task])] == ["task", "n", *HEADLINE[task]]
    assert (saved["task"], saved["n"], saved["model"], saved["split"]) == (task, len(valid_ids), "tiny", "eval")
    if task in BREAKDOWN:
        assert isinstance(saved[BREAKDOWN[task]], dict) and saved[BREAKDOWN[task]]
    reloaded = load_config(out / "config.yaml")
    assert reloaded.task.name == task

    if task == "classify":  # constrained by default: every output is a label, judged against the reference
        assert saved["constrained"] is True and saved["parse_failure_rate"] == 0.0
        assert reloaded.task.labels == ["negative", "positive"]  # inferred, then saved
        assert all(r["prediction"] in ("negative", "positive") for r in records)
        assert all(r["correct"] == (r["prediction"] == r["reference"]) for r in records)
        assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
        assert sum(map(sum, saved["confusion"]["matrix"])) == saved["n"]
    elif task == "ner":  # inline by default, copy-constrained: even a random model's output is the row's text
        assert saved["constrained"] is True
        for record in records:
            if record["prediction"] is not None:
                assert all(record["input"][e["start"]:e["end"]] == e["text"] for e in record["prediction"])
            else:  # only a reply cut by the token budget may fail to parse
                assert len(record["output"]) < len(record["input"])
    elif task == "qa":  # span-constrained by default: every answer is a span of its context
        assert saved["constrained"] is True and saved["not_span_rate"] == 0.0 and saved["parse_failure_rate"] < 1.0
    else:  # the random model answers blank lines: unparsed, and a miss, never a crash
        assert saved["constrained"] is False and saved["parse_failure_rate"] == 1.0
        assert all(r["prediction"] is None for r in records)
        assert all(r["correct"] is (None if task == "mt" else False) for r in records)
        assert saved[HEADLINE[task][0]] == 0.0
    report = capsys.readouterr().out
    assert f"== {task} | split eval | {len(valid_ids)} examples | tiny ==" in report


def fake_generation(texts: list[str]):
    def generate(model, tokenizer, conversations, max_new_tokens, batch_size=16, constraint=None, progress=True,
                 draft_tokens=0, copy_drafts=0):
        assert len(conversations) == len(texts)
        assert all(c[-1]["role"] == "user" for c in conversations)  # the reference answer is not in the prompt
        return GenerationResult(list(texts), 10 * len(texts), 2.0, [False] * len(texts))

    return generate


@pytest.mark.parametrize(
    ("task", "texts", "predictions", "correct", "headline"),
    [
        ("ner", ['[{"type": "PER", "text": "John"}, {"type": "LOC", "text": "Paris"}]', "no idea", "[]"],
         [[{"type": "PER", "text": "John", "start": 0, "end": 4},
           {"type": "LOC", "text": "Paris", "start": 14, "end": 19}], None, []],
         [True, False, True], ("f1", 2 * 0.5 / 1.5)),
        ("qa", ["Paris", "the mat"], ["Paris", "the mat"], [True, False], ("exact_match", 0.5)),
        ("mt", ["Good morning.", ""], ["Good morning.", None], [None, None], ("parse_failure_rate", 0.5)),
    ],
)  # fmt: skip
def test_parsed_outputs_are_judged_and_unparsed_ones_are_misses(
    task, texts, predictions, correct, headline, tiny, tiny_llama_dir, data_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr("tasktune.evaluate.runner.generate_texts", fake_generation(texts))
    json_ner = ["task.ner_output_format=json"] if task == "ner" else []
    cfg = make_cfg(tiny_llama_dir, data_dir, task, tmp_path / "run", *json_ner)
    metrics = evaluate_task(cfg, *tiny, out_dir=tmp_path / "eval", progress=False)
    records = read_jsonl(tmp_path / "eval" / "predictions.jsonl")
    assert [r["output"] for r in records] == texts
    assert [r["prediction"] for r in records] == predictions
    assert [r["correct"] for r in records] == correct
    assert metrics[headline[0]] == pytest.approx(headline[1])
    assert metrics["generated_tokens_per_s"] == pytest.approx(5.0 * len(texts))


def test_constrained_ner_outputs_json_and_never_crashes(tiny, tiny_llama_dir, data_dir, tmp_path):
    cfg = make_cfg(tiny_llama_dir, data_dir, "ner", tmp_path / "run", "eval.constrained=true",
                   "task.ner_output_format=json")
    metrics = evaluate_task(cfg, *tiny, out_dir=tmp_path / "eval", progress=False)
    assert metrics["constrained"] is True and metrics["n"] == 3
    records = read_jsonl(tmp_path / "eval" / "predictions.jsonl")
    assert all(r["output"].lstrip().startswith("[") for r in records)


def test_rejected_rows_are_reported_with_file_and_line(tiny_llama_dir, data_dir, tmp_path, capsys):
    cfg = make_cfg(tiny_llama_dir, data_dir, "classify", tmp_path)
    rows, report = load_eval_rows(cfg)
    assert [r.id for r in rows] == ["c1", "c2", "c3", "c5"]
    assert report.counts() == {"empty_text": 1}
    assert report.rejects[0].source == f"{data_dir / 'classify.jsonl'}:4"
    assert "empty_text: 1" in capsys.readouterr().out


def test_limit_takes_the_same_seeded_sample_every_call(tiny_llama_dir, data_dir, tmp_path):
    cfg = make_cfg(tiny_llama_dir, data_dir, "classify", tmp_path, f"task.eval_file={data_dir / 'many.jsonl'}",
                   "eval.limit=5")
    first = [r.id for r in load_eval_rows(cfg)[0]]
    assert first == [r.id for r in load_eval_rows(cfg)[0]]
    assert len(first) == 5 and first == sorted(first, key=lambda i: int(i[1:]))  # file order kept
    cfg.eval.seed = 1
    assert [r.id for r in load_eval_rows(cfg)[0]] != first
    cfg.eval.limit = 100
    assert len(load_eval_rows(cfg)[0]) == 30
    cfg.eval.split = "test"
    with pytest.raises(ConfigError, match="task.test_file"):
        load_eval_rows(cfg)


def test_checkpoint_auto_base_and_directory(tiny_llama_dir, tiny_adapter_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(tiny_llama_dir, data_dir, "classify", out)
    model_cfg, description = eval_model_config(cfg)
    assert model_cfg == cfg.model and "no trained output" in description
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    assert eval_model_config(cfg)[0].adapter == str(out / "adapter")
    (out / "best" / "model").mkdir(parents=True)
    (out / "best" / "model" / "config.json").write_text("{}")
    model_cfg, description = eval_model_config(cfg)
    assert (model_cfg.name_or_path, model_cfg.adapter) == (str(out / "best" / "model"), None)
    cfg.eval.checkpoint = "base"
    assert eval_model_config(cfg)[0] == cfg.model
    cfg.eval.checkpoint = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="eval.checkpoint"):
        eval_model_config(cfg)
    import torch

    cfg.eval.checkpoint = str(tiny_adapter_dir)
    model, tokenizer, description = resolve_eval_model(cfg)
    assert not hasattr(model, "peft_config") and tokenizer.padding_side == "left"  # adapter folded in for eval
    how = "factored" if next(model.parameters()).dtype == torch.bfloat16 else "merged"
    assert description == f"adapter {tiny_adapter_dir} on {tiny_llama_dir} ({how})"
    from tasktune.model.lean import lean_forward
    from tasktune.model.load import load_model

    assert lean_forward(model) is not None  # read-only: the decoder runs its lean forward (model/lean.py)

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        merged = model(ids).logits.float()
        tuned = load_model(replace(cfg.model, adapter=str(tiny_adapter_dir)), torch.float32)(ids).logits
        base = load_model(cfg.model, torch.float32)(ids).logits
    gap = (tuned - base).abs().max()
    assert gap > 0.5  # the adapter matters, so matching it below is not a given
    assert (merged - tuned).abs().max() < 0.05 * gap  # bf16 weights with the adapter folded in


def test_loglik_scoring_picks_labels_without_generating(tiny, tiny_llama_dir, data_dir, tmp_path):
    cfg = make_cfg(tiny_llama_dir, data_dir, "classify", tmp_path, "eval.scoring=loglik")
    metrics = evaluate_task(cfg, *tiny, progress=False)
    assert metrics["scoring"] == "loglik" and metrics["parse_failure_rate"] == 0.0
    assert metrics["generated_tokens_per_s"] == 0.0 and not list(tmp_path.iterdir())  # no out_dir: no files
    cfg = make_cfg(tiny_llama_dir, data_dir, "ner", tmp_path, "eval.scoring=loglik")
    with pytest.raises(ConfigError, match="classify only"):
        evaluate_task(cfg, *tiny, progress=False)


def test_constrained_true_needs_a_task_constraint(tiny, tiny_llama_dir, data_dir, tmp_path):
    cfg = make_cfg(tiny_llama_dir, data_dir, "mt", tmp_path, "eval.constrained=true")
    with pytest.raises(ConfigError, match="no output constraint"):
        evaluate_task(cfg, *tiny, progress=False)


def test_training_evaluator_returns_metric_and_a_small_predictions_file(tiny, tiny_llama_dir, data_dir, tmp_path):
    cfg = make_cfg(tiny_llama_dir, data_dir, "classify", tmp_path, f"task.eval_file={data_dir / 'many.jsonl'}",
                   "eval.during_training_limit=3")
    evaluator = make_training_evaluator(cfg)
    result = evaluator(*tiny, 7)
    assert set(result) >= {"accuracy", "macro_f1", "parse_failure_rate", "metric"}
    assert result["metric"] == result["macro_f1"]  # the classify default
    assert all(isinstance(v, float) for v in result.values())
    assert len(read_jsonl(tmp_path / "eval_steps" / "step-7" / "predictions.jsonl")) == 3
    cfg.eval.metric_for_best = "accuracy"
    assert make_training_evaluator(cfg)(*tiny, 8)["metric"] == result["accuracy"]


def test_metric_for_best_refuses_ter_and_unknown_names(tiny_llama_dir, data_dir, tmp_path):
    cfg = make_cfg(tiny_llama_dir, data_dir, "mt", tmp_path, "eval.metric_for_best=ter")
    with pytest.raises(ConfigError, match="lower TER is better"):
        make_training_evaluator(cfg)
    cfg.eval.metric_for_best = "acuracy"
    with pytest.raises(ConfigError, match="expected one of bleu, chrf"):
        make_training_evaluator(cfg)


def test_cli_eval_writes_to_the_output_dir(tiny_llama_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    config = {"model": {"name_or_path": str(tiny_llama_dir)},
              "task": {"name": "classify", "eval_file": str(data_dir / "many.jsonl"),
                       "test_file": str(data_dir / "classify.jsonl")},
              "eval": {"batch_size": 8}, "output": {"dir": str(out)},
              "data": {"max_rejected_share": 0.5}}  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["eval", str(path), "--limit", "4"]) == 0
    assert json.loads((out / "eval" / "metrics.json").read_text())["n"] == 4
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", str(path), "eval.split=test"]) == 0
    assert json.loads((out / "eval-test" / "metrics.json").read_text())["n"] == 4
    assert main(["eval", str(path), "task.name=null"]) == 2
