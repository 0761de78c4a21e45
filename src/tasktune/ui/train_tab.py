"""The Train tab: the config form, the exact command, Start / Stop / Resume, live progress, curves and log."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import gradio as gr

from tasktune.config.load import load_config, save_config
from tasktune.config.schema import Config, ConfigError
from tasktune.data.report import DataError
from tasktune.ui.curves import plot_curves, progress_from_log, run_curves
from tasktune.ui.forms import (
    FieldSpec,
    command_line,
    config_fields,
    config_to_values,
    parse_extra,
    values_to_config,
    values_to_overrides,
)
from tasktune.ui.jobs import describe
from tasktune.ui.runs import UIContext

QUEUE_COLUMNS = ["job", "kind", "status", "output", "elapsed_s", "command"]


def field_component(spec: FieldSpec) -> gr.components.Component:
    elem_id = "cfg-" + spec.key.replace(".", "-")
    info = spec.help or None
    if spec.kind == "bool":
        return gr.Checkbox(value=spec.default, label=spec.key, info=info, elem_id=elem_id)
    if spec.kind in ("int", "float"):
        return gr.Number(value=spec.default, label=spec.key, info=info, elem_id=elem_id,
                         precision=0 if spec.kind == "int" else None, step=1 if spec.kind == "int" else 0.0001)
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), value=spec.default, label=spec.key, info=info,
                           elem_id=elem_id, allow_custom_value=True)
    placeholder = "null" if spec.optional else None
    return gr.Textbox(value=spec.default, label=spec.key, info=info, elem_id=elem_id, placeholder=placeholder)


def build_form() -> tuple[list[FieldSpec], list[gr.components.Component]]:
    """Every config field, grouped by section, the advanced ones folded."""
    specs = config_fields(Config)
    components: dict[str, gr.components.Component] = {}
    sections: dict[str, list[FieldSpec]] = {}
    for spec in specs:
        sections.setdefault(spec.section, []).append(spec)
    for section, fields in sections.items():
        with gr.Accordion(section or "top-level lists", open=section in ("model", "task", "train", "output")):
            basic = [s for s in fields if s.basic]
            with gr.Row(equal_height=False):
                for spec in basic:
                    components[spec.key] = field_component(spec)
            advanced = [s for s in fields if not s.basic]
            if advanced:
                with gr.Accordion(f"{section}: advanced ({len(advanced)})", open=False):
                    with gr.Row(equal_height=False):
                        for spec in advanced:
                            components[spec.key] = field_component(spec)
    return specs, [components[s.key] for s in specs]


def form_config(specs: list[FieldSpec], values: list[Any], extra: str) -> Config:
    return values_to_config({s.key: v for s, v in zip(specs, values, strict=True)}, parse_extra(extra))


def save_job_config(ctx: UIContext, cfg: Config, name: str) -> Path:
    path = ctx.store.configs / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.yaml"
    save_config(cfg, path)
    return path


def build_train_tab(ctx: UIContext) -> dict[str, Any]:
    with gr.Row():
        source = gr.Dropdown(label="load an example or a previous run's config", choices=_config_choices(ctx),
                             value=None, allow_custom_value=True, elem_id="train-load-source", scale=4,
                             info="a shipped example, a run's config.yaml, or any YAML path (resolved, shown)")
        load = gr.Button("Load", elem_id="train-load", scale=1)
    loaded = gr.Markdown(elem_id="train-loaded")
    specs, fields = build_form()
    extra = gr.Textbox(label="extra overrides (key=value, one per line)", lines=2, elem_id="train-extra",
                       info="applied after the form, exactly as on the command line")
    with gr.Row():
        preview = gr.Button("Preview command", elem_id="train-preview")
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop (save a checkpoint)", variant="stop", elem_id="train-stop")
        resume = gr.Button("Resume from the latest checkpoint", elem_id="train-resume")
    command = gr.Code(label="command", language="shell", elem_id="train-command", interactive=False)
    status = gr.Markdown(elem_id="train-status")
    plot = gr.Plot(label="curves", elem_id="train-curves", format="png")
    log = gr.Textbox(label="log tail", lines=12, max_lines=14, elem_id="train-log", interactive=False,
                     autoscroll=True)
    queue = gr.Dataframe(headers=QUEUE_COLUMNS, label="job queue (one job at a time; state lives on disk)",
                         elem_id="job-queue", interactive=False, wrap=True)

    def do_load(choice: str | None):
        if not choice:
            return ["pick a config first", *[gr.skip()] * len(fields)]
        path = Path(choice)
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            return [f"**could not load** `{path.resolve()}`: {exc}", *[gr.skip()] * len(fields)]
        values = config_to_values(cfg)
        return [f"loaded `{path.resolve()}`", *[values[s.key] for s in specs]]

    def do_preview(*args):
        *values, extra_text = args
        try:
            cfg = form_config(specs, values, extra_text)
        except ConfigError as exc:
            return f"# config error: {exc}"
        target = ctx.store.configs / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(cfg.output.dir).name}.yaml"
        same = shlex.join(["tasktune", "train", *values_to_overrides(_changed(cfg))])
        return (f"{command_line('train', target)}\n# output.dir -> {Path(cfg.output.dir).resolve()}\n"
                f"# the same run from a shell, without the saved YAML:\n{same}")

    def do_start(*args):
        *values, extra_text = args
        try:
            cfg = form_config(specs, values, extra_text)
        except (ConfigError, DataError) as exc:
            return f"# config error, nothing started: {exc}"
        path = save_job_config(ctx, cfg, Path(cfg.output.dir).name)
        job = ctx.store.submit("train", ["train", str(path)], cfg.output.dir)
        return f"{job.command}\n# queued as job {job.id}; output.dir -> {job.output_dir}"

    def do_stop():
        job = ctx.last_job("train")
        if job is None or job.status not in ("running", "queued"):
            return "# no training job is running"
        ctx.store.cancel(job.id)
        return f"# stop requested for job {job.id}: a checkpoint is saved at the end of the current step"

    def do_resume():
        job = ctx.last_job("train")
        if job is None:
            return "# no training run to resume"
        config = Path(job.output_dir) / "config.yaml"
        if not (Path(job.output_dir) / "checkpoints").is_dir():
            return f"# {job.output_dir} has no checkpoints to resume from"
        new = ctx.store.submit("train", ["train", str(config), "train.resume_from_checkpoint=latest"],
                               job.output_dir)
        return f"{new.command}\n# queued as job {new.id}"

    inputs = [*fields, extra]
    load.click(do_load, [source], [loaded, *fields])
    preview.click(do_preview, inputs, [command])
    start.click(do_start, inputs, [command])
    stop.click(do_stop, None, [command])
    resume.click(do_resume, None, [command])
    return {"status": status, "plot": plot, "log": log, "queue": queue, "refresh": lambda: refresh_train(ctx),
            "source": source}


def _config_choices(ctx: UIContext) -> list[str]:
    runs = [str(p / "config.yaml") for p in ctx.run_dirs() if (p / "config.yaml").is_file()]
    return [*ctx.examples(), *runs]


def _changed(cfg: Config) -> dict[str, Any]:
    """Fields that differ from the defaults, as key=value pairs (for the preview)."""
    default, current = config_to_values(Config()), config_to_values(cfg)
    return {k: v for k, v in current.items() if v != default[k]}


_PLOT_CACHE: dict[str, tuple[tuple[float, int], Any]] = {}


def refresh_train(ctx: UIContext) -> tuple[Any, Any, Any, Any]:
    """Status line, curves, log tail and queue of the running (else the last) training job."""
    rows = [[*describe(j).values()] for j in reversed(ctx.store.all()[-12:])]
    job = ctx.last_job("train")
    if job is None:
        return "no training job yet: load an example, then Start", None, "", rows
    tail = ctx.store.log_tail(job.id, 12)
    progress = progress_from_log(tail)
    curves = run_curves(job.output_dir)
    line = f"**{job.status}** · job {job.id} · `{job.output_dir}`"
    if progress:
        line += (f" · step {progress['step']}/{progress['total']} ({progress['percent']}%) · elapsed "
                 f"{progress['elapsed']} · ETA {progress['eta']}")
    if curves.best_step is not None and curves.best_metric is not None:
        line += f" · best: step {curves.best_step}, {curves.main_metric} {curves.best_metric:.4f}"
    if job.status == "failed":
        line += f"\n\n**failed** (exit code {job.returncode}); the end of its log:\n```\n{job.error or ''}\n```"
    if job.status == "stopped":
        line += "\n\nstopped: a checkpoint was saved; **Resume** continues it"
    log_path = Path(job.output_dir) / "train_log.jsonl"
    key = (log_path.stat().st_mtime, log_path.stat().st_size) if log_path.is_file() else (0.0, 0)
    cached = _PLOT_CACHE.get(job.output_dir)
    if cached is not None and cached[0] == key:
        plot = cached[1]
    else:
        plot = plot_curves(curves, Path(job.output_dir).name) if key[1] else None
        _PLOT_CACHE[job.output_dir] = (key, plot)
    return line, plot, tail, rows
