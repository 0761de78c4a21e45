"""The Chat tab (streaming; any run's adapter; one prompt to two models side by side) and the Export tab."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from tasktune.config.schema import ModelConfig
from tasktune.ui.runs import UIContext, adapters, read_json, run_config

NO_ADAPTER = "(none: base model)"
MAX_LOADED = 2
EMPTY_REPLY = "(no text: the model ended its turn at once)"


class ModelCache:
    """The last MAX_LOADED (model, adapter) pairs, loaded as `tasktune eval` loads them: in the inference dtype,
    the adapter folded in (read-only here), with the decoder's lean forward where the model has one."""

    def __init__(self) -> None:
        self._models: OrderedDict[tuple[str, str | None], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name_or_path: str, adapter: str | None) -> tuple[Any, Any]:
        from tasktune.model.load import load_for_inference, load_tokenizer

        key = (name_or_path, adapter)
        with self._lock:
            if key not in self._models:
                cfg = ModelConfig(name_or_path=name_or_path, adapter=adapter)
                self._models[key] = (load_for_inference(cfg)[0], load_tokenizer(cfg))
                while len(self._models) > MAX_LOADED:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return self._models[key]


def adapter_choices(ctx: UIContext) -> list[str]:
    found = [NO_ADAPTER]
    for run_dir in ctx.run_dirs():
        found += [str(path) for path in adapters(run_dir).values() if (path / "adapter_config.json").is_file()]
    return found


def default_model(ctx: UIContext) -> str:
    """The base model of the newest run (else the registry default)."""
    for run_dir in ctx.run_dirs():
        name = (run_config(run_dir).get("model") or {}).get("name_or_path")
        if name:
            return str(name)
    return ModelConfig().name_or_path


def stream_reply(cache: ModelCache, model: str, adapter: str | None, history: list[dict[str, str]],
                 max_new_tokens: int, temperature: float, top_p: float) -> Iterator[str]:
    """The reply so far, growing piece by piece (the public `stream_chat` of tasktune.model.generate)."""
    from tasktune.model.generate import stream_chat

    loaded, tokenizer = cache.get(model, None if adapter in (None, "", NO_ADAPTER) else adapter)
    text = ""
    for piece in stream_chat(loaded, tokenizer, history, int(max_new_tokens), float(temperature), float(top_p)):
        text += piece
        yield text


def _messages(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else str(m["content"])}
            for m in history]


def build_chat_tab(ctx: UIContext) -> dict[str, Any]:
    cache = ModelCache()
    with gr.Row():
        model_a = gr.Textbox(value=default_model(ctx), label="model A", elem_id="chat-model-a",
                             info="registry name or model directory")
        adapter_a = gr.Dropdown([NO_ADAPTER], value=NO_ADAPTER, label="adapter A", allow_custom_value=True,
                                elem_id="chat-adapter-a")
    side_by_side = gr.Checkbox(value=False, label="side by side: send each prompt to model B as well",
                               elem_id="chat-side-by-side")
    with gr.Row(visible=False) as row_b:
        model_b = gr.Textbox(value=default_model(ctx), label="model B", elem_id="chat-model-b")
        adapter_b = gr.Dropdown([NO_ADAPTER], value=NO_ADAPTER, label="adapter B", allow_custom_value=True,
                                elem_id="chat-adapter-b")
    with gr.Row():
        max_new = gr.Number(value=128, precision=0, label="max new tokens")
        temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0 = greedy)")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top p")
    with gr.Row():
        chat_a = gr.Chatbot(label="A", elem_id="chat-a", height=360)
        chat_b = gr.Chatbot(label="B", elem_id="chat-b", height=360, visible=False)
    with gr.Row():
        prompt = gr.Textbox(label="message", placeholder="Extract the entities: Ada Park joined Acme in Oslo.",
                            elem_id="chat-input", scale=5)
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        clear = gr.Button("Clear", elem_id="chat-clear", scale=1)
    error = gr.Markdown(elem_id="chat-error")

    def respond(message, hist_a, hist_b, both, m_a, a_a, m_b, a_b, budget, temp, p):
        hist_a, hist_b = list(hist_a or []), list(hist_b or [])
        if not (message or "").strip():
            yield hist_a, hist_b, "", ""
            return
        user = {"role": "user", "content": message}
        streams = [(hist_a, stream_reply(cache, m_a, a_a, _messages([*hist_a, user]), budget, temp, p))]
        hist_a.append(user)
        hist_a.append({"role": "assistant", "content": ""})
        if both:
            streams.append((hist_b, stream_reply(cache, m_b, a_b, _messages([*hist_b, user]), budget, temp, p)))
            hist_b.append(user)
            hist_b.append({"role": "assistant", "content": ""})
        yield hist_a, hist_b, "", ""  # the prompt shows at once; models load on first use
        try:
            active = list(streams)
            while active:  # round robin: both answers grow together
                for item in list(active):
                    history, stream = item
                    try:
                        history[-1] = {"role": "assistant", "content": next(stream)}
                    except StopIteration:
                        active.remove(item)
                yield hist_a, hist_b, "", ""
        except Exception as exc:  # a bad path or model: shown, the server stays up
            yield hist_a, hist_b, "", f"**error:** {type(exc).__name__}: {exc}"
            return
        for history, _ in streams:
            if not history[-1]["content"]:
                history[-1] = {"role": "assistant", "content": EMPTY_REPLY}
        yield hist_a, hist_b, "", ""

    inputs = [prompt, chat_a, chat_b, side_by_side, model_a, adapter_a, model_b, adapter_b, max_new, temperature,
              top_p]
    send.click(respond, inputs, [chat_a, chat_b, prompt, error])
    prompt.submit(respond, inputs, [chat_a, chat_b, prompt, error])
    clear.click(lambda: ([], [], ""), None, [chat_a, chat_b, error])
    side_by_side.change(lambda on: (gr.update(visible=on), gr.update(visible=on)), [side_by_side], [row_b, chat_b])
    return {"adapter_a": adapter_a, "adapter_b": adapter_b, "model_a": model_a, "model_b": model_b,
            "on_select": lambda a, b: tuple(_newest_model(ctx, value) for value in (a, b))}


def _newest_model(ctx: UIContext, value: str | None) -> str:
    """The newest run's base model in place of the untouched registry default."""
    return default_model(ctx) if value in (None, "", ModelConfig().name_or_path) else value


def build_export_tab(ctx: UIContext) -> dict[str, Any]:
    gr.Markdown("Merge a run's adapter into its base and write a Hugging Face model; optionally int8 (torchao) "
                "and GGUF (llama.cpp's converter). Runs `tasktune export` as a job; when the run has a task, the "
                "exported model is scored again.")
    with gr.Row():
        run = gr.Dropdown(label="run", choices=[], allow_custom_value=True, elem_id="export-run")
        which = gr.Radio(["best", "final"], value="final", label="adapter")
        out = gr.Textbox(label="output directory (default: <run>/export)", elem_id="export-out")
    with gr.Row():
        dtype = gr.Dropdown(["float32", "bfloat16", "float16"], value="float32", label="weight dtype")
        int8 = gr.Checkbox(label="int8 (torchao weight-only)")
        gguf = gr.Dropdown(["none", "f16", "q8_0", "q4_k_m"], value="none", label="GGUF")
        overwrite = gr.Checkbox(label="overwrite a non-empty output directory")
        score_rows = gr.Number(value=20, precision=0, label="score the export on N eval rows (0: do not score)",
                               elem_id="export-score")
    start = gr.Button("Export", variant="primary", elem_id="export-start")
    command = gr.Code(label="command", language="shell", interactive=False, elem_id="export-command")
    job_status = gr.Markdown(elem_id="export-job")
    show = gr.Button("Show export_report.json", elem_id="export-show")
    summary = gr.Textbox(label="summary", lines=10, interactive=False, elem_id="export-summary")
    report = gr.JSON(label="export_report.json", elem_id="export-report")

    def target(run_label: str | None, out_text: str | None) -> tuple[Path | None, Path | None]:
        run_dir = ctx.resolve(run_label)
        if run_dir is None:
            return None, None
        return run_dir, Path(out_text).resolve() if out_text and out_text.strip() else run_dir / "export"

    def do_start(run_label, adapter_kind, out_text, weight_dtype, with_int8, gguf_type, replace, rows):
        run_dir, out_dir = target(run_label, out_text)
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            return "# pick a run (a directory with config.yaml)"
        found = adapters(run_dir)
        if adapter_kind not in found:
            return f"# {run_dir} has no {adapter_kind} adapter/model (has: {', '.join(found) or 'none'})"
        source = ["--adapter", str(found[adapter_kind])] if found[adapter_kind].name == "adapter" else [
            "--model", str(found[adapter_kind])]
        scoring = [f"eval.limit={int(rows)}"] if rows and int(rows) > 0 else ["task.name=null"]
        args = ["export", str(run_dir / "config.yaml"), *scoring, *source, "--out", str(out_dir),
                "--dtype", weight_dtype]
        args += ["--int8"] if with_int8 else []
        args += ["--gguf", gguf_type] if gguf_type and gguf_type != "none" else []
        args += ["--overwrite"] if replace else []
        job = ctx.store.submit("export", args, out_dir)
        return f"{job.command}\n# queued as job {job.id}"

    def do_show(run_label, out_text):
        _, out_dir = target(run_label, out_text)
        data = read_json(out_dir / "export_report.json") if out_dir else None
        if data is None:
            return f"no export_report.json in {out_dir}", None
        from tasktune.export.run import format_summary

        try:
            text = format_summary(data)
        except (KeyError, TypeError, ValueError):
            text = json.dumps(data, indent=2)[:4000]
        return text, data

    start.click(do_start, [run, which, out, dtype, int8, gguf, overwrite, score_rows], [command])
    show.click(do_show, [run, out], [summary, report])
    return {"run": run, "job": job_status}
