"""The Data tab: pick a registry entry or a task file, preview rows as the model sees them, validate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from tasktune.config.schema import Config
from tasktune.config.task import TASK_NAMES
from tasktune.ui.data_view import (
    DataSource,
    plot_histograms,
    preview,
    registry_names,
    report_rows,
    summary_markdown,
    validate,
)


def data_config(model: str, dataset_dir: str, task: str | None, cutoff_len: float | None, template: str) -> Config:
    cfg = Config()
    cfg.model.name_or_path = model.strip() or cfg.model.name_or_path
    cfg.model.template = template.strip() or None
    cfg.data.dataset_dir = dataset_dir.strip() or cfg.data.dataset_dir
    cfg.data.cutoff_len = int(cutoff_len or cfg.data.cutoff_len)
    cfg.task.name = task if task and task != "(none)" else None
    return cfg


def build_data_tab(default_model: str) -> dict[str, Any]:
    with gr.Row():
        kind = gr.Radio(["task file", "registry entry"], value="task file", label="data source", elem_id="data-kind")
        task = gr.Dropdown(["(none)", *TASK_NAMES], value="ner", label="task (for task files)", elem_id="data-task")
        path = gr.Textbox(value="data/demo/ner_train.jsonl", label="task file (path, resolved when read)",
                          elem_id="data-path", scale=2)
    with gr.Row():
        dataset_dir = gr.Textbox(value="data", label="dataset_dir (holds dataset_info.json)", elem_id="data-dir")
        entry = gr.Dropdown(registry_names("data"), label="registry entry", allow_custom_value=True,
                            elem_id="data-entry")
        model = gr.Textbox(value=default_model, label="model (its tokenizer and chat template)", elem_id="data-model")
        template = gr.Textbox(value="", label="chat template override (optional)")
        cutoff = gr.Number(value=512, precision=0, label="cutoff_len", elem_id="data-cutoff")
    with gr.Row():
        show = gr.Button("Preview rows", elem_id="data-preview")
        check = gr.Button("Validate", variant="primary", elem_id="data-validate")
    rows = gr.HTML(elem_id="data-rows")
    summary = gr.Markdown(elem_id="data-summary")
    plot = gr.Plot(label="token lengths vs cutoff_len; labels / entity types", format="png", elem_id="data-plot")
    rejects = gr.Dataframe(headers=["reason", "file:line", "detail", "row"], label="rejected rows",
                           interactive=False, wrap=True, elem_id="data-rejects")

    def source(kind_value: str, path_value: str, entry_value: str | None) -> DataSource:
        if kind_value == "registry entry":
            return DataSource("registry", entry_value or "")
        return DataSource("task", str(Path(path_value.strip())))

    def do_preview(kind_value, task_value, path_value, dir_value, entry_value, model_value, template_value, cut):
        try:
            cfg = data_config(model_value, dir_value, task_value, cut, template_value)
            return preview(cfg, source(kind_value, path_value, entry_value), n=3)
        except Exception as exc:  # shown in the page: bad path, unknown entry, unreadable file
            return f"<p><b>error:</b> {type(exc).__name__}: {exc}</p>"

    def do_validate(kind_value, task_value, path_value, dir_value, entry_value, model_value, template_value, cut):
        try:
            cfg = data_config(model_value, dir_value, task_value, cut, template_value)
            result = validate(cfg, source(kind_value, path_value, entry_value))
        except Exception as exc:
            return f"**error:** {type(exc).__name__}: {exc}", None, []
        return summary_markdown(result), plot_histograms(result), report_rows(result.report)

    inputs = [kind, task, path, dataset_dir, entry, model, template, cutoff]
    show.click(do_preview, inputs, [rows])
    check.click(do_validate, inputs, [summary, plot, rejects])
    dataset_dir.change(lambda d: gr.update(choices=registry_names(d)), [dataset_dir], [entry])
    return {"model": model}
