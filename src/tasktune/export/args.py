"""`tasktune export` options: a training config (optional) plus flags, the flags winning."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasktune.config.load import load_config
from tasktune.export.gguf import GGUF_TYPES
from tasktune.export.run import DTYPES, ExportOptions, source_from_config

EXAMPLES = """examples:
  tasktune export examples/lora-sft-demo.yaml              # base + the run's output.dir/adapter
  tasktune export --model smollm2-135m-instruct --adapter out/run/adapter --out out/export --gguf q8_0
  tasktune export run.yaml --dtype bfloat16 --max-shard-size 500MB --int8
"""


def add_export_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `tasktune export` arguments to `parser` (a subparser)."""
    parser.description = ("Merge a LoRA adapter into its base model (or re-shard/cast a full model) and write\n"
                          "a standard Hugging Face model directory; optionally int8 (torchao) and GGUF (llama.cpp).")
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("config", nargs="?", help="training YAML: model.name_or_path, model.adapter (else the "
                        "run's output.dir/adapter), model.dtype, model.template, output.dir")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, applied after the YAML")
    parser.add_argument("--model", help="registry name or model directory (overrides the config)")
    parser.add_argument("--adapter", help="LoRA adapter directory to merge (overrides the config)")
    parser.add_argument("--out", help="output directory (default: <output.dir>/export)")
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default: 2GB)")
    parser.add_argument("--dtype", choices=DTYPES,
                        help="exported weight dtype (default: model.dtype; auto exports float32)")
    parser.add_argument("--int8", action="store_true", help="int8 weight-only quantization with torchao")
    parser.add_argument("--gguf", choices=GGUF_TYPES, help="also write model-<type>.gguf with llama.cpp's converter")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return parser


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """ExportOptions from the parsed arguments: config values first, flags over them."""
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    model, adapter = source_from_config(cfg)
    return ExportOptions(
        model=args.model or model,
        adapter=args.adapter or adapter,
        out=Path(args.out or Path(cfg.output.dir) / "export"),
        dtype=args.dtype or ("float32" if cfg.model.dtype == "auto" else cfg.model.dtype),
        max_shard_size=args.max_shard_size,
        int8=args.int8,
        gguf=args.gguf,
        template=cfg.model.template,
        overwrite=args.overwrite,
        task_config=cfg if config else None,
    )
