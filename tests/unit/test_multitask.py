"""Multi-task runs (`tasks:`): config, weighted mixing, per-task scoring and training-time eval on a tiny model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tasktune.config import load_config
from tasktune.config.load import save_config
from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig, task_aliases

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "multitask-demo.yaml"


def _demo(*extra: str):
    return load_config(DEMO, list(extra))


def test_tasks_list_loads_as_sections_and_round_trips(tmp_path):
    cfg = _demo("tasks.1.weight=2", "tasks.2.language=en")
    assert [t.name for t in cfg.tasks] == ["ner", "classify", "qa"]
    assert all(isinstance(t, TaskConfig) for t in cfg.tasks)
    assert cfg.tasks[1].weight == 2.0 and cfg.tasks[1].alias == "sentiment"
    assert task_aliases(cfg.tasks) == ["ner", "sentiment", "qa"]
    assert cfg.task.name is None  # the single-task section stays untouched
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_single_task_configs_keep_working():
    cfg = load_config(ROOT / "examples" / "ner-demo.yaml")
    assert cfg.tasks == [] and cfg.task.name == "ner"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.name=ner"], "either task"),
        (["tasks.0.weight=0"], "positive"),
        (["tasks.1.alias=ner"], "aliases must differ"),
        (["tasks.0.method=head"], "generative adapter"),
        (["tasks.5.weight=1"], "index below 3"),
        (["tasks.0.name=nerr"], "did you mean 'ner'"),
    ],
)
def test_bad_task_lists_are_refused(overrides, message):
    from tasktune.config.task import check_task_list

    with pytest.raises(ConfigError, match=message):
        cfg = _demo(*overrides)
        check_task_list(cfg.tasks, cfg.task)


def test_task_list_items_must_be_sections(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [ner, qa]\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    path.write_text("tasks:\n  - {name: ner, wieght: 2}\n")
    with pytest.raises(ConfigError, match="did you mean 'weight'"):
        load_config(path)


def test_repeated_task_names_get_numbered_aliases():
    assert task_aliases([TaskConfig(name="ner"), TaskConfig(name="ner"), TaskConfig(name="qa")]) == [
        "ner", "ner-2", "qa"]


def test_mixture_follows_the_weights(smol_tokenizer, monkeypatch):
    from tasktune.train import route

    captured = {}
    real_build = route.build_datasets

    def spy(cfg, tokenizer, out_dir, conversations=None, report=None):
        captured["groups"] = conversations
        return real_build(cfg, tokenizer, out_dir, conversations=conversations, report=report)

    monkeypatch.setattr(route, "build_datasets", spy)
    cfg = _demo("data.packing=false")  # weights 1, 0.5, 1 over 320 + 240 + 200 rows
    route.resolve_task(cfg)
    data = route.build_sft_data(cfg, smol_tokenizer, None)
    files = [Counter(Path(c.source.rsplit(":", 1)[0]).name for c in group) for group in captured["groups"]]
    total = 320 + 240 + 200
    assert files == [{"ner_train.jsonl": round(total / 2.5)}, {"sentiment_train.jsonl": round(total * 0.5 / 2.5)},
                     {"qa_train.jsonl": round(total / 2.5)}]
    assert len(data.train) == sum(sum(f.values()) for f in files)


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    from tasktune.config.schema import ModelConfig
    from tasktune.model.load import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    return load_model(cfg), load_tokenizer(cfg, padding_side="left")


def _tiny(tiny_llama_dir, out, *extra):
    return _demo(f"model.name_or_path={tiny_llama_dir}", f"output.dir={out}", "eval.checkpoint=base",
                 "eval.limit=3", "eval.during_training_limit=3", "eval.max_new_tokens=4", *extra)


def test_eval_writes_one_metrics_file_per_task_and_a_summary(tiny_llama_dir, tmp_path):
    from tasktune.evaluate.runner import run_eval

    summary = run_eval(_tiny(tiny_llama_dir, tmp_path / "run"))
    base = tmp_path / "run" / "eval"
    per_task = {alias: json.loads((base / alias / "metrics.json").read_text()) for alias in ("ner", "sentiment", "qa")}
    assert {alias: m["task"] for alias, m in per_task.items()} == {"ner": "ner", "sentiment": "classify", "qa": "qa"}
    assert all(m["n"] == 3 and (base / a / "predictions.jsonl").is_file() for a, m in per_task.items())
    saved = json.loads((base / "summary.json").read_text())
    assert saved["mean"] == summary["mean"]
    values = [per_task["ner"]["f1"], per_task["sentiment"]["macro_f1"], per_task["qa"]["f1"]]
    assert saved["mean"] == pytest.approx(sum(values) / 3)
    assert saved["tasks"]["sentiment"]["metric"] == "macro_f1"
    with pytest.raises(ConfigError, match="missing in: ner, sentiment, qa"):
        run_eval(_tiny(tiny_llama_dir, tmp_path / "run", "eval.split=test"))


def test_training_evaluator_reports_every_task_and_the_mean(tiny_llama_dir, tiny_model, tmp_path):
    from tasktune.evaluate.multitask import make_multitask_evaluator

    model, tokenizer = tiny_model
    result = make_multitask_evaluator(_tiny(tiny_llama_dir, tmp_path / "a"))(model, tokenizer, 7)
    assert {"ner/f1", "sentiment/macro_f1", "sentiment/accuracy", "qa/f1", "qa/exact_match", "mean"} <= set(result)
    assert result["metric"] == result["mean"] == pytest.approx(
        (result["ner/f1"] + result["sentiment/macro_f1"] + result["qa/f1"]) / 3)
    assert (tmp_path / "a" / "eval_steps" / "qa" / "step-7" / "predictions.jsonl").is_file()
    named = make_multitask_evaluator(_tiny(tiny_llama_dir, tmp_path / "b", "eval.metric_for_best=sentiment/accuracy"))
    result = named(model, tokenizer, 1)
    assert result["metric"] == result["sentiment/accuracy"]
    for bad in ("f1", "sentiment/f1", "mt/bleu"):
        with pytest.raises(ConfigError, match="metric_for_best"):
            make_multitask_evaluator(_tiny(tiny_llama_dir, tmp_path / "c", f"eval.metric_for_best={bad}"))


def test_one_adapter_trains_on_the_mixture_and_logs_each_task(tiny_llama_dir, tmp_path):
    from tasktune.train.loop import train

    out = tmp_path / "train"
    cfg = _tiny(tiny_llama_dir, out, "data.cutoff_len=256", "train.max_steps=2",
                "train.eval_steps=2", "train.batch_size=2", "train.mixed_precision=no", "lora.r=4", "lora.alpha=8",
                "eval.during_training_limit=2")
    result = train(cfg)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    logged = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if "eval_mean" in x]
    assert len(logged) == 1 and {"eval_ner/f1", "eval_sentiment/macro_f1", "eval_qa/f1"} <= set(logged[0])
    assert result.best_step == 2 and result.best_metric == logged[0]["eval_mean"]
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 2
    assert [t.alias or t.name for t in load_config(out / "config.yaml").tasks] == ["ner", "sentiment", "qa"]


def test_resume_fingerprint_names_the_tasks_and_their_mixture():
    """A checkpoint of a multi-task run cannot be resumed with other tasks or another mixing weight."""
    from types import SimpleNamespace

    import torch

    from tasktune.train.checkpoint import run_fingerprint
    from tasktune.train.state_io import fingerprint_differences

    plan = SimpleNamespace(seed=0, batch_size=2, grad_accum=1, world_size=1, lengths=[10, 12])
    model = torch.nn.Linear(2, 2)
    saved = run_fingerprint(_demo(), model, plan)
    assert saved["tasks"] == ["ner/generate*1.0", "classify/generate*0.5", "qa/generate*1.0"]
    assert fingerprint_differences(saved, run_fingerprint(_demo(), model, plan)) == []
    changed = fingerprint_differences(saved, run_fingerprint(_demo("tasks.1.weight=2"), model, plan))
    assert len(changed) == 1 and "tasks" in changed[0]


def test_export_of_a_multitask_run_scores_every_task(tiny_llama_dir, tiny_adapter_dir, tmp_path):
    from tasktune.cli import main

    config = tmp_path / "run.yaml"
    save_config(_tiny(tiny_llama_dir, tmp_path / "run", f"model.adapter={tiny_adapter_dir}"), config)
    out = tmp_path / "export"
    assert main(["export", str(config), "--out", str(out)]) == 0
    scores = json.loads((out / "export_report.json").read_text())["metrics"]["float"]
    summary = json.loads((tmp_path / "eval-export" / "summary.json").read_text())
    assert scores["mean"] == pytest.approx(summary["mean"])
    assert scores["sentiment/macro_f1"] == pytest.approx(summary["tasks"]["sentiment"]["macro_f1"])
    assert {"ner/f1", "sentiment/accuracy", "qa/exact_match", "qa/f1"} <= set(scores)
    assert all((tmp_path / "eval-export" / alias / "metrics.json").is_file() for alias in ("ner", "sentiment", "qa"))
