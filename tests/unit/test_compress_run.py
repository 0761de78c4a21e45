"""`tasktune compress` end to end on a tiny random Llama: every method writes a variant that loads and is
scored on the same rows, the report / table / plot are written, the uncompressed model is the first row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasktune.config.load import load_config
from tasktune.config.schema import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"
METHODS = ["int8", "int8-dynamic", "int4", "nf4", "wanda", "sparse-2:4", "drop-layers", "distill-logits"]


def _config(model_dir: Path, out: Path, *extra: str):
    return load_config(None, [
        f"model.name_or_path={model_dir}", "task.name=ner", f"task.train_file={DEMO / 'ner_train.jsonl'}",
        f"task.eval_file={DEMO / 'ner_dev.jsonl'}", "task.labels=[PER, LOC, ORG]", "task.train_range=:8",
        "data.cutoff_len=128", "data.val_size=0", "train.batch_size=2", "eval.max_new_tokens=4",
        "compress.source=base", "compress.eval_limit=2", "compress.calibration_rows=2",
        "compress.calibration_tokens=64", "compress.drop_layers=1", "compress.measure_memory=false",
        "compress.speed_repeats=1", "compress.speed_new_tokens=4", "compress.distill_steps=1", f"output.dir={out}",
        *extra])


@pytest.fixture(scope="module")
def report(tiny_llama_dir, tmp_path_factory):
    from tasktune.compress.run import run_compress

    out = tmp_path_factory.mktemp("compress")
    cfg = _config(tiny_llama_dir, out, f"compress.methods=[{', '.join(METHODS)}]", "compress.heal_steps=1",
                  "compress.kd_top_k=8")
    return run_compress(cfg), out / "compress"


def test_every_method_writes_a_scored_variant_that_loads(report):
    from transformers import AutoModelForCausalLM

    result, root = report
    rows = {row["variant"]: row for row in result["rows"]}
    assert result["rows"][0]["variant"] == "uncompressed"
    expected = ["uncompressed", *METHODS, *(f"{m}+heal" for m in ("wanda", "sparse-2:4", "drop-layers"))]
    assert sorted(rows) == sorted(expected)
    for name, row in rows.items():
        assert not row["skipped"], (name, row["notes"])
        assert row["metric"] == "f1" and row["metric_value"] is not None
        assert row["bytes"] > 0 and row["params"] > 0 and row["generate_tokens_per_s"] > 0
        assert (root / "scores" / name.replace(":", "_") / "metrics.json").is_file()
        model = AutoModelForCausalLM.from_pretrained(row["path"], dtype="auto")  # plain transformers
        assert model.config.num_hidden_layers == row["layers"]
    assert rows["int8"]["bytes"] < rows["uncompressed"]["bytes"]
    assert rows["nf4"]["params"] == rows["int8"]["params"] == rows["uncompressed"]["params"]  # unpacked counts
    assert rows["wanda"]["details"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rows["sparse-2:4+heal"]["details"]["sparsity"] == pytest.approx(0.5, abs=0.01)  # re-masked after LoRA
    assert rows["drop-layers"]["layers"] == 1 and rows["distill-logits"]["layers"] == 1
    assert rows["distill-logits"]["details"]["topk_cache"].endswith(".pt")
    assert any("sparse kernel" in note for note in rows["wanda"]["notes"])
    assert rows["uncompressed"]["metric_delta"] == 0.0


def test_report_files_and_table(report):
    from tasktune.compress.report import format_table

    result, root = report
    saved = json.loads((root / "compress_report.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == [r["variant"] for r in result["rows"]]
    assert (root / "compress_report.png").stat().st_size > 0
    assert saved["eval_rows"] == 2 and saved["baseline_speed_recheck"]["last"] > 0
    table = format_table(saved)
    assert "uncompressed" in table.splitlines()[3] and "sparse-2:4+heal" in table


def test_magnitude_gguf_and_a_failing_method(tiny_llama_dir, tmp_path, monkeypatch):
    """magnitude is scored like the others; a GGUF file is a size-only row (llama.cpp's converter is tested in
    test_export_gguf: faked here); a method that fails is a skipped row with the reason."""
    from tasktune.compress import measure, quantize
    from tasktune.compress import run as compress_run

    real = compress_run.quantize_variant

    def nf4_fails(method, *args, **kwargs):
        if method == "nf4":
            raise RuntimeError("no kernel for this here")
        return real(method, *args, **kwargs)

    def fake_gguf(model_dir, out_file, gguf_type, name=None):
        out_file.write_bytes(b"GGUF" + bytes(100))
        return out_file

    monkeypatch.setattr(compress_run, "quantize_variant", nf4_fails)
    monkeypatch.setattr(quantize, "export_gguf", fake_gguf)
    monkeypatch.setattr("tasktune.evaluate.gguf.llama_cpp_installed", lambda: False)  # size only, as in CI
    monkeypatch.setattr(measure, "peak_rss", lambda path, kind: {"peak_rss_bytes": 7, "rss_before_load_bytes": 5})
    result = compress_run.run_compress(_config(tiny_llama_dir, tmp_path, "compress.methods=[nf4, magnitude, gguf-q8_0]",
                                               "compress.measure_memory=true"))
    base, failed, magnitude, gguf = result["rows"]
    assert failed["skipped"] and "no kernel" in failed["notes"][0] and failed["path"] == "None"
    assert magnitude["details"]["sparsity"] == pytest.approx(0.5, abs=0.01) and magnitude["metric_value"] is not None
    assert base["peak_rss_bytes"] == magnitude["peak_rss_bytes"] == 7 and "peak_rss_bytes" not in gguf
    assert gguf["bytes"] == 104 and gguf["metric_value"] is None and "not scored" in gguf["notes"][0]
    assert (tmp_path / "compress" / "gguf-q8_0" / "model-q8_0.gguf").is_file()


def test_gguf_variant_is_scored_through_llama_cpp(tiny_llama_dir, tmp_path):
    """With llama-cpp-python installed (`make llamacpp`), a GGUF variant is exported for real and scored
    on the same rows through llama.cpp; its predictions file holds one reply per row."""
    pytest.importorskip("llama_cpp")
    from tasktune.compress import run as compress_run
    from tasktune.export.gguf import find_converter

    try:
        find_converter()
    except FileNotFoundError:
        pytest.skip("llama.cpp's converter is not installed (make gguf-tools)")
    result = compress_run.run_compress(_config(tiny_llama_dir, tmp_path, "compress.methods=[gguf-q8_0]"))
    base, gguf = result["rows"]
    assert gguf["kind"] == "gguf" and gguf["metric_value"] is not None and gguf["generate_tokens_per_s"] > 0
    assert gguf["examples_per_s"] > 0 and "llama.cpp" in gguf["notes"][0]
    predictions = (tmp_path / "compress" / "scores" / "gguf-q8_0" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 2  # compress.eval_limit


def test_peak_rss_is_measured_in_a_fresh_process(tiny_llama_dir):
    from tasktune.compress.measure import peak_rss

    found = peak_rss(tiny_llama_dir)
    assert found["peak_rss_bytes"] >= found["rss_before_load_bytes"] > 10_000_000  # Python + torch at least


def test_distill_head_trains_an_encoder_on_soft_teacher_labels(tiny_llama_dir, tmp_path):
    from tasktune.compress.run import run_compress
    from tasktune.model.heads import load_head

    rows = [{"text": f"{word} film, {word} story number {i}", "label": label}
            for i, (word, label) in enumerate([("great", "positive"), ("awful", "negative")] * 5)]
    for name, part in (("train", rows[:8]), ("dev", rows[8:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (tmp_path / "extra.txt").write_text("a lovely film\nboring\n")
    cfg = load_config(None, [
        f"model.name_or_path={tiny_llama_dir}", "task.name=classify", f"task.train_file={tmp_path / 'train.jsonl'}",
        f"task.eval_file={tmp_path / 'dev.jsonl'}", "task.labels=[negative, positive]", "task.max_seq_length=32",
        "compress.source=base", "compress.methods=[distill-head]", "compress.measure_memory=false",
        "compress.speed_repeats=1", "compress.speed_new_tokens=4", "compress.head_epochs=1",
        f"compress.extra_texts={tmp_path / 'extra.txt'}",
        f"output.dir={tmp_path / 'run'}"])
    result = run_compress(cfg)
    teacher, student = result["rows"]
    assert student["kind"] == "head" and student["metric"] == "macro_f1" and student["metric_value"] is not None
    assert student["details"]["teacher_labelled_rows"] == 8 and student["details"]["extra_rows"] == 2
    labels = [json.loads(line) for line in Path(student["details"]["labels_file"]).read_text().splitlines()]
    assert len(labels) == 10 and {r["label"] for r in labels} <= {"negative", "positive"}
    model, _ = load_head(student["path"])
    assert model.info.task == "classify" and student["examples_per_s"] > 0


def test_compress_config_checks():
    for override, message in (("compress.methods=[int9]", "did you mean 'int8'"),
                              ("compress.methods=[wanda, wanda]", "twice"),
                              ("compress.sparsity=1.5", "sparsity"),
                              ("compress.int4_group_size=48", "int4_group_size"),
                              ("compress.kd_loss=kl", "kd_loss")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override]).compress.check()
    assert load_config(None, ["compress.methods=sparse-2:4,int8"]).compress.methods == ["sparse-2:4", "int8"]


def test_cli_has_the_compress_subcommand():
    from tasktune.cli import build_parser

    args = build_parser().parse_args(["compress", "examples/compress-demo.yaml", "compress.eval_limit=5"])
    assert args.func.__name__ == "cmd_compress" and args.overrides == ["compress.eval_limit=5"]


def test_report_compares_llms_and_gguf_by_generated_tokens_and_heads_by_examples():
    from tasktune.compress.report import annotate, speedup_of

    rows = annotate([
        {"variant": "uncompressed", "kind": "llm", "bytes": 100, "examples_per_s": 4.0, "generate_tokens_per_s": 10.0,
         "metric_value": 0.9, "notes": []},
        {"variant": "gguf-q8_0", "kind": "gguf", "bytes": 27, "examples_per_s": 1.0, "generate_tokens_per_s": 33.0,
         "metric_value": 0.9, "notes": []},
        {"variant": "int8-dynamic", "kind": "llm", "bytes": 41, "examples_per_s": 3.0, "generate_tokens_per_s": 5.0,
         "metric_value": 0.8, "notes": []},
        {"variant": "distill-head", "kind": "head", "bytes": 17, "examples_per_s": 100.0, "metric_value": 0.85,
         "notes": []},
    ])  # fmt: skip
    assert [speedup_of(r) for r in rows] == pytest.approx([1.0, 3.3, 0.5, 25.0])
    assert rows[1]["notes"] == ["faster on this machine: x3.30"]
    assert rows[2]["notes"][0].startswith("saves disk (x0.41 of the bytes) but not time")
    assert rows[3]["metric_delta"] == pytest.approx(-0.05)
