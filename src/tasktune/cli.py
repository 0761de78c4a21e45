"""`tasktune` command line: one entry, one subcommand per front end of the same run path."""

from __future__ import annotations

import argparse
import os
import sys

from tasktune.config.errors import UserError
from tasktune.config.load import help_text, load_config
from tasktune.config.schema import Config, ConfigError
from tasktune.data.text import data_encoding
from tasktune.registry.lookup import UnknownEntryError
from tasktune.runtime import preload_allocator, quiet_known_noise

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _config_parser(sub, name: str, summary: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\nExample: tasktune {name} examples/lora-sft-demo.yaml train.max_steps=10",
        epilog=help_text(Config),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML config file (optional: defaults apply)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, applied after the YAML")
    return parser


def _split_config_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """`tasktune train a=b` (no YAML) puts the first override into `config`; put it back."""
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from tasktune.train.loop import train

    path, overrides = _split_config_args(args)
    cfg = load_config(path, overrides)
    with data_encoding(cfg.data.encoding):  # how data/text.py decodes data and task files
        result = train(cfg)
    if result.main_process and result.first_loss is not None:
        print(f"loss {result.first_loss:.4f} -> {result.last_loss:.4f} in {result.global_step} steps, "
              f"{result.seconds:.0f} s; output in {result.output_dir}")
        if result.best_step is not None:
            named = cfg.eval.metric_for_best or ("mean of the tasks' metrics" if cfg.tasks else "metric")
            print(f"best checkpoint: step {result.best_step} ({named} "
                  f"{result.best_metric:.4f}) in {result.output_dir / 'best'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tasktune.evaluate.runner import run_eval

    path, overrides = _split_config_args(args)
    cfg = load_config(path, overrides)
    if args.limit is not None:
        cfg.eval.limit = args.limit
    with data_encoding(cfg.data.encoding):
        run_eval(cfg)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tasktune.evaluate.predict import run_predict

    return run_predict(args.model, args.input, args.output, args.batch_size)


def cmd_chat(args: argparse.Namespace) -> int:
    from tasktune.serve.chat import run_chat_args

    return run_chat_args(args)


def cmd_api(args: argparse.Namespace) -> int:
    from tasktune.serve.launch import run_api_args

    return run_api_args(args)


def cmd_export(args: argparse.Namespace) -> int:
    from tasktune.export.args import options_from_args
    from tasktune.export.run import export_model, format_summary

    options = options_from_args(args)
    scorer = None
    if options.task_config is not None and (options.task_config.task.name or options.task_config.tasks):
        from tasktune.evaluate.runner import model_dir_scorer

        scorer = model_dir_scorer(options.task_config)  # re-run the task metric on what was exported
    try:
        report = export_model(options, metric_fn=scorer)
    except (ImportError, RuntimeError) as exc:  # torchao missing, llama.cpp's converter failed
        print(f"tasktune: export error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(report))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from tasktune.ui.app import run_ui_args

    return run_ui_args(args)


def cmd_compress(args: argparse.Namespace) -> int:
    from tasktune.compress.run import run_compress

    path, overrides = _split_config_args(args)
    run_compress(load_config(path, overrides))
    return 0


def cmd_models(_: argparse.Namespace) -> int:
    from tasktune.registry.lookup import load_registry

    for name, entry in load_registry("models").items():
        print(f"{name:28s} {entry.get('kind', ''):12s} {entry.get('description', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tasktune", description="Fine-tune LLMs for real tasks, measured properly.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _config_parser(sub, "train", "Fine-tune a model (LoRA, full or freeze) on the configured data.").set_defaults(
        func=cmd_train
    )
    evaluate = _config_parser(sub, "eval", "Score a model on the task (eval.split) and write predictions + metrics.")
    evaluate.add_argument("--limit", type=int, help="score a seeded sample of at most N examples (eval.limit)")
    evaluate.set_defaults(func=cmd_eval)
    predict = sub.add_parser("predict", help="Run a trained task head (task.method=head) over JSONL rows or stdin.")
    predict.add_argument("--model", required=True, help="a head run's output.dir, or its adapter/ or model/ folder")
    predict.add_argument("--input", help="JSONL (text, or context + question for qa) or plain text lines; "
                         "default: stdin")
    predict.add_argument("--output", help="where to write the predictions (JSONL); default: stdout")
    predict.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    predict.set_defaults(func=cmd_predict)
    from tasktune.serve.chat import add_chat_args

    chat = sub.add_parser("chat", help="Chat with a model (and adapter) in the terminal, streaming.")
    add_chat_args(chat)
    chat.set_defaults(func=cmd_chat)
    from tasktune.serve.launch import add_api_args

    api = sub.add_parser("api", help="Serve the model and adapters over an OpenAI-compatible HTTP API.")
    add_api_args(api)
    api.set_defaults(func=cmd_api)
    from tasktune.export.args import add_export_args

    export = sub.add_parser("export", help="Merge an adapter; export a Hugging Face, int8 or GGUF model.")
    add_export_args(export).set_defaults(func=cmd_export)
    _config_parser(sub, "compress", "Quantize, prune and distill a tuned model; score every variant on the task "
                   "(OUTPUT_DIR/compress/compress_report.json).").set_defaults(func=cmd_compress)
    sub.add_parser("models", help="List the model registry.").set_defaults(func=cmd_models)
    from tasktune.ui.app import add_ui_args

    ui = sub.add_parser("ui", help="Web UI: data, training, evaluation, chat, export and runs in the browser.")
    add_ui_args(ui).set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_known_noise()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    debug = getattr(args, "debug", False) or "--debug" in extra  # also accepted after the subcommand
    extra = [e for e in extra if e != "--debug"]
    # `key=value` overrides after an option (`eval cfg.yaml --limit 5 eval.split=test`) arrive as leftovers
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ConfigError as exc:
        if debug:
            raise
        print(f"tasktune: config error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (UserError, UnknownEntryError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError) as exc:
        if debug:
            raise
        print(f"tasktune: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The message on one line (a data report's detail lines are joined)."""
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def entry() -> None:
    """The `tasktune` command: `main` in a process with the faster, leaner allocator preloaded (runtime.py)."""
    preload_allocator("tasktune.cli", sys.argv[1:])
    sys.exit(main())


if __name__ == "__main__":
    entry()
