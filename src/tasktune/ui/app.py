"""`tasktune ui`: the web UI (gradio) over the CLI's functions; training, evaluation and export run as
`tasktune` subprocesses of a saved YAML, so every run started in the browser is a normal run directory.

Safety: binds 127.0.0.1 unless told otherwise, refuses any other address without --auth, never creates
share links; paths typed into the page are resolved and shown, and only ever passed as arguments.
"""

import argparse
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

AUTH_ENV = "TASKTUNE_UI_AUTH"
REFRESH_SECONDS = 2.0
CSS = """
.trained { border-radius: 3px; }
mark sub { font-size: 0.65em; margin-left: 2px; }
footer { display: none !important; }
"""


class UIError(ValueError):
    """A refused `tasktune ui` setting (an exposed address without auth, a malformed --auth)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UIError("--auth (or TASKTUNE_UI_AUTH) must look like user:password, both non-empty")
    return user, password


def check_host(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to serve a non-loopback address without a password."""
    if not is_loopback(host) and auth is None:
        raise UIError(f"--host {host} is reachable from other machines: set --auth user:password (or "
                      f"{AUTH_ENV}), or keep 127.0.0.1 and use an SSH tunnel (see the README)")


def build_app(runs_dir: str | Path, start_runner: bool = True):
    """The gradio Blocks of the six tabs over the runs in `runs_dir`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from tasktune.ui.chat_tab import adapter_choices, build_chat_tab, build_export_tab, default_model
    from tasktune.ui.curves import plot_curves, run_curves
    from tasktune.ui.data_tab import build_data_tab
    from tasktune.ui.eval_tab import build_eval_tab
    from tasktune.ui.runs import RUN_COLUMNS, UIContext, headline, read_json, run_row
    from tasktune.ui.train_tab import build_train_tab

    ctx = UIContext.create(runs_dir, start_runner=start_runner)
    with gr.Blocks(title="tasktune", analytics_enabled=False) as app:
        gr.Markdown(f"## tasktune · runs in `{ctx.runs_dir}`")
        with gr.Tabs():
            with gr.Tab("Data", id="data", elem_id="tab-data") as data_tab:
                data = build_data_tab(default_model(ctx))
            data_tab.select(lambda value: chat["on_select"](value, None)[0], [data["model"]], [data["model"]])
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train = build_train_tab(ctx)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"):
                evaluate = build_eval_tab(ctx)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat_tab:
                chat = build_chat_tab(ctx)
            chat_tab.select(chat["on_select"], [chat["model_a"], chat["model_b"]], [chat["model_a"], chat["model_b"]])
            with gr.Tab("Export", id="export", elem_id="tab-export"):
                export = build_export_tab(ctx)
            with gr.Tab("Runs", id="runs", elem_id="tab-runs") as runs_tab:
                runs_table = gr.Dataframe(headers=RUN_COLUMNS, label="runs (click one)", interactive=False,
                                          wrap=True, elem_id="runs-table")
                with gr.Row():
                    picked = gr.Dropdown(label="run", choices=[], allow_custom_value=True, elem_id="runs-picked",
                                         scale=4)
                    cancel_id = gr.Textbox(label="job id to stop or drop from the queue", scale=3)
                    cancel = gr.Button("Stop / drop job", variant="stop", scale=1)
                run_info = gr.Markdown(elem_id="runs-info")
                run_plot = gr.Plot(label="curves", format="png", elem_id="runs-curves")
                run_yaml = gr.Code(label="config.yaml", language="yaml", interactive=False)
        timer = gr.Timer(REFRESH_SECONDS)

        def refresh_pickers(run_value, eval_value, left, right, export_run, picked_run, adapter_a, adapter_b):
            runs = [ctx.label(p) for p in ctx.run_dirs()]
            evals = [ctx.label(p) for p in ctx.eval_dirs()]
            adapters = adapter_choices(ctx)

            def pick(choices, value, fallback=True):
                keep = value if value in choices else (choices[0] if choices and fallback else None)
                return gr.update(choices=choices, value=keep)

            return (pick(runs, run_value), pick(evals, eval_value), pick(evals, left), pick(evals, right),
                    pick(runs, export_run), pick(runs, picked_run), pick(adapters, adapter_a),
                    pick(adapters, adapter_b), [run_row(ctx, p) for p in ctx.run_dirs()])

        pickers = [evaluate["run"], evaluate["chosen"], evaluate["left"], evaluate["right"], export["run"], picked,
                   chat["adapter_a"], chat["adapter_b"]]
        timer.tick(lambda: train["refresh"](), None, [train["status"], train["plot"], train["log"], train["queue"]])
        timer.tick(refresh_pickers, pickers, [*pickers, runs_table])
        job_lines = [evaluate["job"], export["job"]]
        timer.tick(lambda: (job_line(ctx, "eval"), job_line(ctx, "export")), None, job_lines)
        app.load(lambda: train["refresh"](), None, [train["status"], train["plot"], train["log"], train["queue"]])
        app.load(refresh_pickers, pickers, [*pickers, runs_table])

        def open_run(label):
            path = ctx.resolve(label)
            if path is None or not path.is_dir():
                return "pick a run", None, ""
            evals = sorted(p.parent for p in path.glob("eval*/metrics.json"))
            lines = [f"**{ctx.label(path)}** · `{path}`"]
            for eval_dir in evals:
                metrics = read_json(eval_dir / "metrics.json") or {}
                lines.append(f"- evaluation `{eval_dir.name}` ({metrics.get('n')} examples): {headline(metrics)}")
            config = path / "config.yaml"
            text = config.read_text(encoding="utf-8") if config.is_file() else ""
            return "\n".join(lines), plot_curves(run_curves(path), path.name), text

        def select_row(table, evt: gr.SelectData):
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            try:
                return table.iloc[row, 0]
            except (AttributeError, IndexError):
                return gr.skip()

        runs_table.select(select_row, [runs_table], [picked])
        picked.change(open_run, [picked], [run_info, run_plot, run_yaml])
        runs_tab.select(open_run, [picked], [run_info, run_plot, run_yaml])
        def do_cancel(job_id: str) -> str:
            job = ctx.store.cancel((job_id or "").strip())
            return f"job {job.id}: {job.status}{' (stop requested)' if job.stop_requested else ''}" if job else \
                "no such job"

        cancel.click(do_cancel, [cancel_id], [run_info])
    app.ctx = ctx  # type: ignore[attr-defined]
    return app


def job_line(ctx, kind: str) -> str:
    """The state of the latest job of a kind, with the end of its log when it failed."""
    job = ctx.last_job(kind)
    if job is None:
        return ""
    line = f"last {kind} job {job.id}: **{job.status}** · `{job.output_dir}`"
    if job.status == "running":
        line += f"\n```\n{ctx.store.log_tail(job.id, 3)}\n```"
    if job.status == "failed":
        line += f" (exit code {job.returncode})\n```\n{job.error or ''}\n```"
    return line


def theme():
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def launch(host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, runs_dir: str | Path = "out",
           block: bool = True) -> Any:
    """Check the address, build the app and serve it (no share link, errors shown in the page)."""
    credentials = parse_auth(auth or os.environ.get(AUTH_ENV))
    check_host(host, credentials)
    app = build_app(runs_dir)
    app.queue(default_concurrency_limit=4)
    print(f"tasktune ui: http://{host}:{port} (runs in {Path(runs_dir).resolve()})", flush=True)
    app.launch(server_name=host, server_port=port, auth=credentials, share=False, show_error=True,
               ssr_mode=False, inbrowser=False, prevent_thread_lock=not block, theme=theme(), css=CSS,
               footer_links=[], quiet=True, pwa=False, mcp_server=False, enable_monitoring=False)
    return app


def add_ui_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine "
                        "only; any other address needs --auth)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", help=f"user:password required to open the page (or set {AUTH_ENV})")
    parser.add_argument("--runs-dir", default="out", help="where runs are listed and the job queue lives "
                        "(default: out)")
    return parser


def run_ui_args(args: argparse.Namespace) -> int:
    try:
        launch(args.host, args.port, args.auth, args.runs_dir)
    except UIError as exc:
        print(f"tasktune: ui error: {exc}", flush=True)
        return 2
    return 0
