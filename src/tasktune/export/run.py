"""`tasktune export`: merge -> Hugging Face directory, then optionally int8 (torchao) and GGUF (llama.cpp).

The float directory is written first; the GGUF is converted from it, and with `int8` the output directory
holds the int8 model while the float one lives in a temporary folder just long enough to be compared with it.
Everything measured goes into `<out>/export_report.json`, whose `metrics` slot holds the task metrics of
`metric_fn` (called on each exported model directory) when the caller passes one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasktune.config.schema import Config, ConfigError
from tasktune.export.gguf import GGUF_TYPES, export_gguf, find_converter, require_quantizer
from tasktune.export.measure import compare_model_dirs, files_with_sizes, weights_bytes
from tasktune.export.merge import load_unmerged, merge, save_model_dir
from tasktune.export.quantize import SCHEME, quantize_int8, torchao_version

DTYPES = ("float32", "bfloat16", "float16")
REPORT_FILE = "export_report.json"


@dataclass
class ExportOptions:
    model: str
    """Registry name or Hugging Face model directory (the base, when `adapter` is set)."""
    out: Path
    """Output directory (the Hugging Face model, GGUF file and export_report.json)."""
    adapter: str | None = None
    """LoRA adapter directory merged into `model`."""
    dtype: str = "float32"
    """Weight dtype of the exported model: float32 | bfloat16 | float16."""
    max_shard_size: str = "2GB"
    """Largest safetensors shard (transformers' syntax: 2GB, 500MB, or bytes)."""
    int8: bool = False
    """Quantize the exported weights to int8 (torchao weight-only)."""
    gguf: str | None = None
    """Also write `model-<type>.gguf` for llama.cpp / Ollama: f16 | q8_0 | q4_k_m."""
    template: str | None = None
    """Chat template override saved with the tokenizer (registry name or .jinja path)."""
    overwrite: bool = False
    """Replace a non-empty output directory."""
    task_config: Config | None = None
    """The run's config when it names a task: the exported model is scored on it (`tasktune export CONFIG`)."""

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"export dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.gguf is not None and self.gguf not in GGUF_TYPES:
            raise ConfigError(f"--gguf {self.gguf!r}: use one of {', '.join(GGUF_TYPES)}")
        if self.out.exists() and any(self.out.iterdir()) and not self.overwrite:
            raise ConfigError(f"export directory {self.out} is not empty: choose another --out or pass --overwrite")
        # the tools, before any work is done
        if self.gguf:
            find_converter()
        if self.gguf == "q4_k_m":
            require_quantizer(self.gguf)
        if self.int8:
            torchao_version()


def source_from_config(cfg: Config) -> tuple[str, str | None]:
    """(model, adapter) to export for a training config.

    model.adapter when set; else the run's `output.dir/adapter` (LoRA) when it exists; else the run's
    `output.dir/model` (full or freeze fine-tuning) replaces model.name_or_path when it exists.
    """
    if cfg.model.adapter:
        return cfg.model.name_or_path, cfg.model.adapter
    run_dir = Path(cfg.output.dir)
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return cfg.model.name_or_path, str(run_dir / "adapter")
    if (run_dir / "model" / "config.json").is_file():
        return str(run_dir / "model"), None
    return cfg.model.name_or_path, None


def _gguf_section(float_dir: Path, out: Path, gguf_type: str) -> dict[str, Any]:
    target = export_gguf(float_dir, out / f"model-{gguf_type}.gguf", gguf_type, name=out.name)
    return {"type": gguf_type, "file": target.name, "bytes": target.stat().st_size,
            "converter": "llama.cpp convert_hf_to_gguf.py"}


def _int8_section(float_dir: Path, out: Path, max_shard_size: str) -> dict[str, Any]:
    quantize_int8(float_dir, out, max_shard_size)
    return {"library": f"torchao {torchao_version()}", "scheme": SCHEME,
            "weights_bytes": {"before": weights_bytes(float_dir), "after": weights_bytes(out)},
            **compare_model_dirs(float_dir, out)}


def export_model(opts: ExportOptions, metric_fn: Callable[[Path], dict[str, float]] | None = None) -> dict[str, Any]:
    """Export as `opts` says; returns the report (also written to `opts.out/export_report.json`).

    metric_fn: the task-metric hook, e.g. an evaluation of the task's dev set on a model directory; its
    results go to report["metrics"]["float"] (and ["int8"] with `opts.int8`).
    """
    opts.check()
    started = time.perf_counter()
    if opts.out.exists() and opts.overwrite:
        shutil.rmtree(opts.out)
    opts.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_unmerged(opts.model, opts.adapter, opts.template)
    options = {k: v for k, v in asdict(opts).items() if k != "task_config"}
    report: dict[str, Any] = {"options": {**options, "out": str(opts.out)}, "metrics": {}}
    if opts.adapter and opts.dtype != "float32":
        report["adapter_delta_lost"] = _delta_lost(model, opts.dtype)
    model = merge(model)
    timings = report["timings_s"] = {}
    with tempfile.TemporaryDirectory(dir=opts.out.parent, prefix=f".{opts.out.name}-float-") as tmp:
        float_dir = Path(tmp) if opts.int8 else opts.out
        save_model_dir(model, tokenizer, float_dir, opts.dtype, opts.max_shard_size)
        del model
        timings["merge_and_save"] = round(time.perf_counter() - started, 2)
        if metric_fn is not None:
            report["metrics"]["float"] = metric_fn(float_dir)
        if opts.gguf:
            step = time.perf_counter()
            report["gguf"] = _gguf_section(float_dir, opts.out, opts.gguf)
            timings["gguf"] = round(time.perf_counter() - step, 2)
        if opts.int8:
            step = time.perf_counter()
            report["int8"] = _int8_section(float_dir, opts.out, opts.max_shard_size)
            timings["int8_and_measure"] = round(time.perf_counter() - step, 2)
            if metric_fn is not None:
                report["metrics"]["int8"] = metric_fn(opts.out)
    for path in opts.out.iterdir():  # transformers writes safetensors as 0600: an export is meant to be shared
        if path.is_file():
            path.chmod(0o644)
    report["files"] = files_with_sizes(opts.out)
    report["shards"] = len(list(opts.out.glob("*.safetensors")))
    report["seconds"] = round(time.perf_counter() - started, 2)
    (opts.out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _delta_lost(model, dtype: str) -> float:
    """The share of the adapter's delta that merged weights cast to `dtype` round away (`model` not merged)."""
    import torch

    from tasktune.model.fold import delta_lost_to_rounding

    return round(delta_lost_to_rounding(model, getattr(torch, dtype)), 4)


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def format_summary(report: dict[str, Any]) -> str:
    """The export summary printed by the CLI: files with sizes, dtype, shards, time, int8 and GGUF results."""
    opts = report["options"]
    source = opts["model"] + (f" + {opts['adapter']}" if opts["adapter"] else "")
    weights = "int8 (torchao)" if opts["int8"] else opts["dtype"]
    steps = ", ".join(f"{name} {seconds:.1f}" for name, seconds in report["timings_s"].items())
    lines = [f"exported {source} -> {opts['out']}: {weights}, {report['shards']} shard(s), "
             f"{report['seconds']:.1f} s ({steps})"]
    lines += [f"  {f['file']:40s} {_mb(f['bytes']):>12s}" for f in report["files"]]
    if report.get("adapter_delta_lost", 0) > 0.05:
        lines.append(f"note: {opts['dtype']} weights round away {report['adapter_delta_lost']:.0%} of the adapter's "
                     "delta (median over the adapted layers); the task metric shows what that costs, and "
                     "--dtype float32 keeps it")
    if "int8" in report:
        q = report["int8"]
        lines.append(f"int8 ({q['library']}) vs {opts['dtype']}: "
                     f"weights {_mb(q['weights_bytes']['before'])} -> {_mb(q['weights_bytes']['after'])}, "
                     f"perplexity {q['perplexity']['before']:.2f} -> {q['perplexity']['after']:.2f} "
                     f"({q['eval_tokens']} tokens of export/eval_text.txt), "
                     f"forward {q['forward_tokens_per_s']['before']:.0f} -> {q['forward_tokens_per_s']['after']:.0f}"
                     f" tok/s, generate {q['generate_tokens_per_s']['before']:.1f} -> "
                     f"{q['generate_tokens_per_s']['after']:.1f} tok/s")
    if "gguf" in report:
        lines.append(f"gguf {report['gguf']['type']}: {report['gguf']['file']} ({_mb(report['gguf']['bytes'])})")
    for name, scores in report["metrics"].items():
        shown = ", ".join(f"{key} {value:.4f}" for key, value in scores.items() if key != "examples_per_s")
        lines.append(f"task metric, {name} export: {shown}")
    lines.append(f"report: {Path(opts['out']) / REPORT_FILE}")
    return "\n".join(lines)
