"""`tasktune` command line: one entry, one subcommand per front end of the same run path."""

from __future__ import annotations

import argparse
import os
import sys

from tasktune.config.load import help_text, load_config
from tasktune.config.schema import Config, ConfigError
from tasktune.data.report import DataError
from tasktune.registry.lookup import UnknownEntryError

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
    result = train(cfg)
    if result.main_process and result.first_loss is not None:
        print(f"loss {result.first_loss:.4f} -> {result.last_loss:.4f} in {result.global_step} steps, "
              f"{result.seconds:.0f} s; output in {result.output_dir}")
        if result.best_step is not None:
            print(f"best checkpoint: step {result.best_step} ({cfg.eval.metric_for_best or 'metric'} "
                  f"{result.best_metric:.4f}) in {result.output_dir / 'best'}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from tasktune.serve.chat import run_chat

    return run_chat(args.model, args.adapter, args.prompt, args.max_new_tokens, args.temperature,
                    system=args.system)


def cmd_models(_: argparse.Namespace) -> int:
    from tasktune.registry.lookup import load_registry

    for name, entry in load_registry("models").items():
        print(f"{name:28s} {entry.get('kind', ''):12s} {entry.get('description', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tasktune", description="Fine-tune LLMs for real tasks, measured properly.")
    sub = parser.add_subparsers(dest="command", required=True)
    _config_parser(sub, "train", "Fine-tune a model (LoRA, full or freeze) on the configured data.").set_defaults(
        func=cmd_train
    )
    from tasktune.serve.chat import add_chat_args

    chat = sub.add_parser("chat", help="Chat with a model (and adapter) in the terminal, streaming.")
    add_chat_args(chat)
    chat.set_defaults(func=cmd_chat)
    sub.add_parser("models", help="List the model registry.").set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"tasktune: config error: {exc}", file=sys.stderr)
        return 2
    except (DataError, UnknownEntryError, FileNotFoundError) as exc:
        print(f"tasktune: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
