"""The Evaluate tab: score a run (best, final or base) as a `tasktune eval` job, show its metrics, the
per-type / per-class table, the confusion matrix, an error browser over predictions.jsonl, and compare two
evaluations side by side."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import gradio as gr

from tasktune.ui.errors import (
    COLORS,
    KINDS,
    classify_ner,
    confusion_pairs,
    error_counts,
    filter_records,
    highlight_ner,
    read_predictions,
    record_types,
)
from tasktune.ui.runs import UIContext, adapters, read_json

SHOWN_RECORDS = 30


def metric_rows(metrics: dict[str, Any] | None) -> list[list[Any]]:
    """The scalar metrics of a metrics.json, headline first (as written), rounded."""
    if not metrics:
        return []
    return [[k, round(v, 4) if isinstance(v, float) else v] for k, v in metrics.items()
            if isinstance(v, (int, float, str)) and not k.endswith("_signature")]


def breakdown_rows(metrics: dict[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    """The per-type (ner) / per-class (classify) / per-direction (mt) table."""
    if not metrics:
        return ["name"], []
    for key in ("per_type", "per_class"):
        if isinstance(metrics.get(key), dict):
            rows = [[name, round(s["precision"], 4), round(s["recall"], 4), round(s["f1"], 4), s["support"]]
                    for name, s in metrics[key].items()]
            return [key.removeprefix("per_"), "precision", "recall", "f1", "support"], rows
    if isinstance(metrics.get("per_direction"), dict):
        rows = [[d, s.get("n"), round(s.get("bleu", 0.0), 2), round(s.get("chrf", 0.0), 2), round(s.get("ter", 0.0), 2)]
                for d, s in metrics["per_direction"].items()]
        return ["direction", "n", "bleu", "chrf", "ter"], rows
    return ["name"], []


def compare_rows(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[list[Any]]:
    """metric | A | B | B - A, for the numbers both have, then per-type / per-class F1."""
    if not a or not b:
        return []
    rows = []
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, (int, float)) and isinstance(other, (int, float)) and not isinstance(value, bool):
            rows.append([key, round(value, 4), round(other, 4), round(other - value, 4)])
    for breakdown in ("per_type", "per_class"):
        left, right = a.get(breakdown) or {}, b.get(breakdown) or {}
        for name in sorted(set(left) | set(right)):
            fa, fb = (left.get(name) or {}).get("f1"), (right.get(name) or {}).get("f1")
            delta = round(fb - fa, 4) if fa is not None and fb is not None else None
            rows.append([f"{name} f1", fa and round(fa, 4), fb and round(fb, 4), delta])
    return rows


def render_records(records: list[dict[str, Any]], task: str | None) -> str:
    """The first SHOWN_RECORDS records as HTML; NER sentences with their entities marked by error kind."""
    if not records:
        return "<p>no predictions match these filters</p>"
    parts = []
    if task == "ner":
        parts.append("<p>" + " ".join(f'<mark style="background:{c}">{k}</mark>' for k, c in COLORS.items())
                     + "</p>")
    for record in records[:SHOWN_RECORDS]:
        mark = {True: "✓", False: "✗"}.get(record.get("correct"), "·")
        head = f"<b>{mark} {html.escape(str(record.get('id', '')))}</b> "
        if task == "ner" and isinstance(record.get("input"), str):
            errors = classify_ner(record["input"], record.get("reference") or [], record.get("prediction"))
            body = highlight_ner(record["input"], errors)
        else:
            body = (f"{html.escape(json.dumps(record.get('input'), ensure_ascii=False)[:600])}<br>"
                    f"reference: <code>{html.escape(json.dumps(record.get('reference'), ensure_ascii=False))}</code> "
                    f"prediction: <code>{html.escape(json.dumps(record.get('prediction'), ensure_ascii=False))}"
                    "</code>")
        output = html.escape(str(record.get("output", ""))[:400])
        parts.append(f"<div class='pred' style='margin:6px 0;padding:4px;border-bottom:1px solid #ddd'>{head}"
                     f"{body}<br><small>model wrote: <code>{output}</code></small></div>")
    more = len(records) - SHOWN_RECORDS
    if more > 0:
        parts.append(f"<p>... and {more} more</p>")
    return "".join(parts)


def build_eval_tab(ctx: UIContext) -> dict[str, Any]:
    gr.Markdown("### Run an evaluation (a `tasktune eval` job on the run's saved config)")
    with gr.Row():
        run = gr.Dropdown(label="run", choices=[], allow_custom_value=True, elem_id="eval-run")
        checkpoint = gr.Radio(["best", "final", "base"], value="best", label="model scored",
                              info="best/ (by the task metric) or the final adapter/model; base = no adapter")
        split = gr.Dropdown(["eval", "test", "train"], value="eval", label="split")
        limit = gr.Number(value=50, precision=0, label="sample size (seeded; 0 = all)", elem_id="eval-limit")
    start = gr.Button("Evaluate", variant="primary", elem_id="eval-start")
    command = gr.Code(label="command", language="shell", interactive=False, elem_id="eval-command")
    job_status = gr.Markdown(elem_id="eval-job")
    gr.Markdown("### Results")
    with gr.Row():
        chosen = gr.Dropdown(label="evaluation", choices=[], allow_custom_value=True, elem_id="eval-chosen", scale=4)
        show = gr.Button("Show", elem_id="eval-show", scale=1)
    summary = gr.Markdown(elem_id="eval-summary")
    with gr.Row():
        headline = gr.Dataframe(headers=["metric", "value"], label="metrics", elem_id="eval-metrics",
                                interactive=False, max_height=300)
        breakdown = gr.Dataframe(label="per type / class", elem_id="eval-breakdown", interactive=False,
                                 max_height=300)
    confusion = gr.Image(label="confusion matrix (classify)", visible=False, type="pil", elem_id="eval-confusion")
    gr.Markdown("### Error browser", elem_id="eval-errors-title")
    with gr.Row():
        correctness = gr.Radio(["all", "wrong", "correct"], value="wrong", label="rows")
        kind = gr.Dropdown(["all"], value="all", label="entity type / class", allow_custom_value=True)
        error_kind = gr.Dropdown(["all", *KINDS[1:]], value="all", label="NER error kind")
    errors = gr.HTML(elem_id="eval-errors")
    gr.Markdown("### Compare two evaluations")
    with gr.Row():
        left = gr.Dropdown(label="A", choices=[], allow_custom_value=True, elem_id="eval-compare-a")
        right = gr.Dropdown(label="B", choices=[], allow_custom_value=True, elem_id="eval-compare-b")
        compare = gr.Button("Compare", elem_id="eval-compare")
    compared = gr.Dataframe(headers=["metric", "A", "B", "B - A"], interactive=False, elem_id="eval-compared")

    def do_start(run_label, which, split_name, n):
        run_dir = ctx.resolve(run_label)
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            return "# pick a run (a directory with config.yaml)"
        found = adapters(run_dir)
        if which != "base" and which not in found:
            return f"# {run_dir} has no {which} adapter/model yet (has: {', '.join(found) or 'none'})"
        target = "base" if which == "base" else str(found[which])
        out = run_dir / f"eval-{which}-{split_name}"
        args = ["eval", str(run_dir / "config.yaml"), f"eval.split={split_name}", f"eval.checkpoint={target}",
                f"eval.output_dir={out}"]
        if n and int(n) > 0:
            args += ["--limit", str(int(n))]
        job = ctx.store.submit("eval", args, out)
        return f"{job.command}\n# queued as job {job.id}; writes {out}"

    def do_show(label, rows_filter, kind_filter, error_filter):
        path = ctx.resolve(label)
        metrics = read_json(path / "metrics.json") if path else None
        if not metrics:
            return ("no metrics.json there yet", [], gr.update(), gr.update(visible=False), "",
                    gr.update(choices=["all"], value="all"))
        headers, rows = breakdown_rows(metrics)
        records = read_predictions(path / "predictions.jsonl")
        task = metrics.get("task")
        classes = sorted({t for r in records for t in record_types(r)})
        kinds = gr.update(choices=["all", *classes], value=kind_filter if kind_filter in classes else "all")
        shown = filter_records(records, rows_filter, kind_filter if kind_filter in classes else "all",
                               error_filter if task == "ner" else "all")
        text = f"**{metrics.get('task')}** · {metrics.get('n')} examples · {metrics.get('model')} · `{path}`"
        if task == "ner":
            counts = error_counts(records)
            text += "\n\nentities: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in KINDS)
        if task == "classify":
            pairs = confusion_pairs(records)[:5]
            text += "\n\nmost confused: " + ("; ".join(f"{g} → {p} ({n})" for g, p, n in pairs) or "none")
        image = path / "confusion.png"
        picture = gr.update(value=_image(image), visible=True) if image.is_file() else gr.update(visible=False)
        return (text, metric_rows(metrics), gr.update(value=rows, headers=headers), picture,
                render_records(shown, task), kinds)

    def do_compare(a, b):
        pa, pb = ctx.resolve(a), ctx.resolve(b)
        return compare_rows(read_json(pa / "metrics.json") if pa else None,
                            read_json(pb / "metrics.json") if pb else None)

    start.click(do_start, [run, checkpoint, split, limit], [command])
    outputs = [summary, headline, breakdown, confusion, errors, kind]
    filters = [chosen, correctness, kind, error_kind]
    show.click(do_show, filters, outputs)
    for control in (correctness, kind, error_kind):
        control.input(do_show, filters, outputs)
    compare.click(do_compare, [left, right], [compared])
    return {"run": run, "chosen": chosen, "left": left, "right": right, "job": job_status}


def _image(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()
