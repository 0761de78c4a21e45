"""`tasktune compress CONFIG`: make each variant of compress.methods from the tuned model and score it again.

OUTPUT_DIR/compress/ holds one loadable directory per variant (`uncompressed/` first: the source merged into a
plain transformers directory, which every other variant is made from), `scores/<variant>/` (predictions.jsonl,
metrics.json), `runs/` (healing and distillation training runs), and compress_report.json + .png.
The directory is rewritten on every run; every number in the report is measured in that run.
"""

from __future__ import annotations

import gc
import shutil
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tasktune.compress import measure
from tasktune.compress.prune import (
    calibration_ids,
    choose_layers_to_drop,
    drop_layers,
    magnitude_prune,
    sparsity_of,
    wanda_prune,
)
from tasktune.compress.quantize import quantize_variant
from tasktune.compress.report import annotate, format_table, write_report
from tasktune.compress.variant import Variant
from tasktune.config.compress import PRUNE_METHODS, QUANTIZE_METHODS
from tasktune.config.schema import Config, ConfigError, ModelConfig
from tasktune.config.task import TaskConfig
from tasktune.evaluate import gguf as gguf_eval
from tasktune.evaluate.runner import eval_model_config, load_eval_rows, metric_for_best, task_spec
from tasktune.export.merge import load_merged, save_model_dir
from tasktune.model.load import load_model, load_tokenizer

TRAINED_OUTPUTS = ("best/adapter", "best/model", "adapter", "model")
BIG_MODEL_BYTES = 50_000_000
EXPECTED_FAILURES = (ImportError, RuntimeError, ValueError, NotImplementedError, OSError, AssertionError)
"""A method that fails with one of these becomes a `skipped` row with the reason; other errors stop the run."""


# ---- the source ----------------------------------------------------------------------------------------


def resolve_source(cfg: Config) -> tuple[ModelConfig, str]:
    """The model compress.source names (auto trains first when allowed and nothing is trained yet)."""
    choice = cfg.compress.source
    if choice == "auto" and not any((Path(cfg.output.dir) / name).is_dir() for name in TRAINED_OUTPUTS):
        if not cfg.compress.train_if_missing:
            raise ConfigError(f"compress.source=auto: no trained adapter or model in output.dir={cfg.output.dir}; "
                              "train first, set compress.train_if_missing=true, or name compress.source")
        from tasktune.train.loop import train

        print(f"compress: nothing trained in {cfg.output.dir} yet: training first", flush=True)
        train(cfg)
    model_cfg, description = eval_model_config(replace(cfg, eval=replace(cfg.eval, checkpoint=choice)))
    source = Path(model_cfg.adapter or model_cfg.name_or_path)
    if (source / "head.json").is_file():
        raise ConfigError(f"compress works on generative models; {source} is a task head")
    return model_cfg, description


# ---- scoring -------------------------------------------------------------------------------------------


class Scorer:
    """Measures every variant the same way: same eval rows, same batch, same timing prompt."""

    def __init__(self, cfg: Config, spec: TaskConfig, rows: list[Any], scores_dir: Path):
        self.cfg, self.spec, self.rows, self.scores_dir = cfg, spec, rows, scores_dir
        self.metric = metric_for_best(spec.name, cfg.eval.metric_for_best)
        self.prompt: torch.Tensor | None = None
        self.tokenizer: Any = None
        """Loaded once from the first (uncompressed) variant: every LLM variant shares its vocabulary."""

    def row(self, variant: Variant) -> dict[str, Any]:
        row: dict[str, Any] = {"variant": variant.name, "kind": variant.kind, "path": str(variant.path),
                               "notes": list(variant.notes), "details": variant.details, "skipped": variant.skipped,
                               "metric": self.metric, "metric_value": None}
        if variant.skipped or variant.path is None:
            return row
        row["bytes"] = measure.bytes_on_disk(variant.path)
        if variant.kind == "gguf" and (not gguf_eval.llama_cpp_installed() or self.tokenizer is None):
            return row
        started = time.perf_counter()
        if variant.kind == "gguf":
            metrics = self._score_gguf(variant, row)
        elif variant.kind == "head":
            metrics = self._score_head(variant, row)
        else:
            metrics = self._score_llm(variant, row)
        row["metric_value"] = float(metrics[self.metric])
        row["parse_failure_rate"] = metrics.get("parse_failure_rate")
        row["examples_per_s"] = metrics.get("examples_per_s")
        row["score_seconds"] = round(time.perf_counter() - started, 2)
        if self.cfg.compress.measure_memory and variant.kind != "gguf":
            row.update(measure.peak_rss(variant.path, variant.kind))
        if row["bytes"] > BIG_MODEL_BYTES:
            gc.collect()  # a freed model held by reference cycles would inflate the next variant's memory
        return row

    def _score_llm(self, variant: Variant, row: dict[str, Any]) -> dict[str, Any]:
        from tasktune.evaluate.runner import evaluate_task

        model_cfg = ModelConfig(name_or_path=str(variant.path), template=self.cfg.model.template)
        model = on_device(load_model(model_cfg))
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(model_cfg, padding_side="left")
        tokenizer = self.tokenizer
        row["params"], row["nonzero_params"] = measure.count_parameters(model)
        row["layers"] = getattr(model.config, "num_hidden_layers", None)
        if self.prompt is None:
            self.prompt = measure.prompt_ids(tokenizer)
        row["generate_tokens_per_s"] = self.generation_speed(model)
        metrics = evaluate_task(self.cfg, model, tokenizer, rows=self.rows, out_dir=self.scores_of(variant),
                                progress=False, model_description=f"compress variant {variant.name}")
        del model
        return metrics

    def _score_gguf(self, variant: Variant, row: dict[str, Any]) -> dict[str, Any]:
        """The GGUF file run by llama.cpp: same rows, prompts and timing prompt as the torch variants."""
        from tasktune.evaluate.runner import evaluate_task

        assert variant.path is not None and self.prompt is not None
        generate = gguf_eval.gguf_generator(variant.path / variant.details["file"])
        llm, ids, new = generate.llm, self.prompt[0].tolist(), self.cfg.compress.speed_new_tokens
        best = float("inf")
        for _ in range(self.cfg.compress.speed_repeats):
            started = time.perf_counter()
            reply = llm.create_completion(ids, max_tokens=new, temperature=0.0, top_k=1)
            best = min(best, (time.perf_counter() - started) / max(1, reply["usage"]["completion_tokens"]))
        row["generate_tokens_per_s"] = 1.0 / best
        return evaluate_task(self.cfg, None, self.tokenizer, rows=self.rows, out_dir=self.scores_of(variant),
                             progress=False, model_description=f"compress variant {variant.name} (llama.cpp)",
                             generator=generate)

    def scores_of(self, variant: Variant) -> Path:
        return self.scores_dir / variant.name.replace(":", "_")

    def generation_speed(self, model: Any) -> float:
        assert self.prompt is not None
        cc = self.cfg.compress
        return measure.generate_tokens_per_s(model, self.prompt, cc.speed_repeats, cc.speed_new_tokens)

    def _score_head(self, variant: Variant, row: dict[str, Any]) -> dict[str, Any]:
        from tasktune.evaluate.heads import evaluate_heads
        from tasktune.model.heads import load_head

        model, tokenizer = load_head(variant.path)
        if torch.cuda.is_available():
            model = model.to("cuda")
        row["params"], row["nonzero_params"] = measure.count_parameters(model)
        head_cfg = replace(self.cfg, task=replace(self.spec, method="head"))
        metrics = evaluate_heads(head_cfg, model, tokenizer, rows=self.rows, out_dir=self.scores_of(variant),
                                 progress=False, model_description=f"compress variant {variant.name}")
        del model
        return metrics


# ---- making variants -----------------------------------------------------------------------------------


class Maker:
    """Makes the variants of one run from the uncompressed directory."""

    def __init__(self, cfg: Config, spec: TaskConfig, root: Path, base_dir: Path):
        self.cfg, self.spec, self.root, self.base_dir = cfg, spec, root, base_dir
        self.cc = cfg.compress
        self._calibration: list[torch.Tensor] | None = None
        self._tokenizer: Any = None
        self.made: dict[str, Variant] = {}

    def tokenizer(self) -> Any:
        """The uncompressed directory's tokenizer (with its chat template), loaded once."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(ModelConfig(name_or_path=str(self.base_dir)))
        return self._tokenizer

    def calibration(self, tokenizer: Any) -> list[torch.Tensor]:
        if self._calibration is None:
            if not self.spec.train_file:
                raise ConfigError("wanda, sparse-2:4 and drop-layers calibrate on the task's training rows: set "
                                  "task.train_file")
            rows = load_eval_rows(self.cfg, self.spec, split="train", limit=self.cc.calibration_rows)[0]
            self._calibration = calibration_ids(rows, self.spec, tokenizer, self.cc.calibration_tokens)
        return self._calibration

    def make(self, method: str) -> list[Variant]:
        out = self.root / method.replace(":", "_")
        if method in QUANTIZE_METHODS:
            return [quantize_variant(method, self.base_dir, out, self.cc.int4_group_size)]
        if method in PRUNE_METHODS:
            variant = self.prune(method, out)
            self.made[method] = variant
            if self.cc.heal_steps:
                from tasktune.compress.distill import heal

                return [variant, heal(self.cfg, variant, self.root / f"{out.name}+heal", self.root / "runs",
                                      self.cc.heal_steps)]
            return [variant]
        if method == "distill-logits":
            from tasktune.compress.distill import distill_logits

            return [distill_logits(self.cfg, self.base_dir, self.student(), out, self.root / "runs")]
        if method == "distill-head":
            from tasktune.compress.head import distill_head

            return [distill_head(self.cfg, self.spec, self.base_dir, out, self.root / "runs")]
        raise ConfigError(f"unknown compress method {method!r}")

    def prune(self, method: str, out: Path) -> Variant:
        model = load_model(ModelConfig(name_or_path=str(self.base_dir)))
        tokenizer = self.tokenizer()
        details: dict[str, Any] = {}
        if method == "magnitude":
            magnitude_prune(model, self.cc.sparsity)
        elif method in ("wanda", "sparse-2:4"):
            n_of_m = (2, 4) if method == "sparse-2:4" else None
            wanda_prune(model, self.calibration(tokenizer), self.cc.sparsity, n_of_m)
            details["calibration_rows"] = len(self.calibration(tokenizer))
        else:
            dropped, distances = choose_layers_to_drop(model, self.calibration(tokenizer), self.cc.drop_layers)
            drop_layers(model, dropped)
            details.update(dropped_layers=dropped, block_angular_distances=[round(d, 5) for d in distances],
                           calibration_rows=len(self.calibration(tokenizer)))
        if method != "drop-layers":
            details["sparsity"] = round(sparsity_of(model), 4)
        save_model_dir(model, tokenizer, out)
        del model
        return Variant(method, out, details=details)

    def student(self) -> Path:
        """The distill-logits student: the drop-layers variant (made now if it was not), or a directory."""
        if self.cc.student != "drop-layers":
            return Path(self.cc.student)
        if "drop-layers" not in self.made:
            self.made["drop-layers"] = self.prune("drop-layers", self.root / "runs" / "student-drop-layers")
        return Path(self.made["drop-layers"].path)


# ---- the command ---------------------------------------------------------------------------------------


def run_compress(cfg: Config) -> dict[str, Any]:
    """Make, measure and score every compress.methods variant; write and print the report; return it."""
    cfg.compress.check()
    spec = task_spec(cfg)
    if spec.method == "head":
        raise ConfigError("tasktune compress works on a generative run (task.method=generate); heads are already "
                          "small (distill-head makes one from an LLM)")
    started = time.perf_counter()
    model_cfg, description = resolve_source(cfg)
    root = Path(cfg.output.dir) / "compress"
    if root.exists():
        shutil.rmtree(root)
    base_dir = root / "uncompressed"
    model, tokenizer = load_merged(model_cfg.name_or_path, model_cfg.adapter, cfg.model.template)
    save_model_dir(model, tokenizer, base_dir)
    del model
    rows = load_eval_rows(cfg, spec, limit=cfg.compress.eval_limit)[0]
    scorer = Scorer(cfg, spec, rows, root / "scores")
    maker = Maker(cfg, spec, root, base_dir)
    table = [scorer.row(Variant("uncompressed", base_dir, details={"source": description}))]
    for method in cfg.compress.methods:
        print(f"compress: {method}", flush=True)
        making = time.perf_counter()
        try:
            variants = maker.make(method)
            for variant in variants:
                variant.details.setdefault("make_seconds", round(time.perf_counter() - making, 2))
        except EXPECTED_FAILURES as exc:
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            print(f"compress: {method} skipped ({reason})", flush=True)
            traceback.print_exc(limit=2)
            variants = [Variant(method, None, notes=[reason[:400]], skipped=True)]
        table.extend(scorer.row(v) for v in variants)
    recheck = None
    if scorer.prompt is not None and len(table) > 1:  # the same measurement at the end: how noisy was this run?
        base = on_device(load_model(ModelConfig(name_or_path=str(base_dir))))
        recheck = {"first": table[0].get("generate_tokens_per_s"), "last": scorer.generation_speed(base)}
        del base
    report = {
        "source": description, "task": spec.name, "metric": scorer.metric, "split": cfg.eval.split,
        "eval_rows": len(rows), "methods": list(cfg.compress.methods), "device": _device(),
        "torch_threads": torch.get_num_threads(), "baseline_speed_recheck": recheck,
        "rows": annotate(table), "seconds": round(time.perf_counter() - started, 1),
        "settings": {k: v for k, v in vars(cfg.compress).items()},
    }
    path = write_report(report, root)
    print(format_table(report))
    print(f"report: {path}" + (f", plot: {report['plot']}" if report.get("plot") else ""))
    return report


def on_device(model: Any) -> Any:
    """The model on the GPU when there is one (bitsandbytes 4-bit models stay where they were loaded)."""
    if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False):
        return model.to("cuda")
    return model


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU {platform.processor() or platform.machine()}"


__all__ = ["Maker", "Scorer", "resolve_source", "run_compress"]
