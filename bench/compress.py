"""Compression benchmark: `tasktune compress` on the embedded SmolLM2 tuned on the bundled demo NER task and on
SST-2 (../shared/data), every variant scored with the task metric, the uncompressed model measured first in the
same run. Prints each report's table and a Markdown table for the README.

    .venv/bin/python bench/compress.py                   # both rows (trains the two LoRA models first when absent)
    .venv/bin/python bench/compress.py --only ner        # rows whose name contains "ner"
    .venv/bin/python bench/compress.py --quick           # 10 eval rows, fewer steps: checks the plumbing
    .venv/bin/python bench/compress.py --methods int8,wanda,drop-layers --heal-steps 30

The models are trained once into out/bench-compress/<row>/ and reused; compress/ under it is rewritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METHODS = "int8,int8-dynamic,int4,nf4,gguf-q8_0,magnitude,wanda,sparse-2:4,drop-layers,distill-logits,distill-head"

# name, example config, overrides (training of the source model, evaluation)
ROWS = [
    ("ner-demo (SmolLM2 LoRA, bundled data)", "compress-demo.yaml", ["compress.eval_limit=80"]),
    ("classify-sst2 (SmolLM2 LoRA, 1,000 train sentences)", "classify-sst2.yaml",
     ["task.train_range=:1000", "train.num_epochs=1", "compress.eval_limit=200", "compress.drop_layers=6",
      "compress.distill_steps=60", "compress.head_epochs=3", "compress.teacher_label_limit=1000"]),
]


def markdown(report: dict) -> str:
    """The report as a Markdown table (one row per variant, ratios against the first row)."""
    from tasktune.compress.report import speedup_of

    metric = report["metric"]
    lines = [f"| variant | params | MB on disk | size | peak RSS MB | examples/s | gen tok/s | speed | {metric} | "
             "delta |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def num(value, fmt, unit=""):
        return "-" if value is None else format(value, fmt) + unit

    for row in report["rows"]:
        if row.get("skipped"):
            lines.append(f"| {row['variant']} | skipped: {row['notes'][0][:80]} |||||||||")
            continue
        speed = speedup_of(row)
        rss = row.get("peak_rss_bytes")
        lines.append(
            f"| {row['variant']} | {num(row.get('params') and row['params'] / 1e6, '.1f', 'M')} | "
            f"{num(row.get('bytes') and row['bytes'] / 1e6, '.1f')} | {num(row['size_ratio'], '.2f', 'x')} | "
            f"{num(rss and rss / 1e6, '.0f')} | {num(row.get('examples_per_s'), '.2f')} | "
            f"{num(row.get('generate_tokens_per_s'), '.1f')} | {num(speed, '.2f', 'x')} | "
            f"{num(row.get('metric_value'), '.3f')} | {num(row.get('metric_delta'), '+.3f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the rows whose name contains this text")
    parser.add_argument("--methods", default=METHODS, help=f"compress.methods (default {METHODS})")
    parser.add_argument("--heal-steps", type=int, default=0, help="compress.heal_steps (default 0)")
    parser.add_argument("--quick", action="store_true", help="10 eval rows, 10 distillation steps")
    args = parser.parse_args(argv)

    from tasktune.compress.report import format_table
    from tasktune.compress.run import run_compress
    from tasktune.config.load import load_config

    results = {}
    for name, config, overrides in ROWS:
        if args.only and args.only not in name:
            continue
        if "sst2" in config and not (SHARED / "classification" / "sst2").is_dir():
            print(f"skipped {name}: {SHARED / 'classification' / 'sst2'} is absent", file=sys.stderr)
            continue
        out = ROOT / "out" / "bench-compress" / config.removesuffix(".yaml")
        extra = [*overrides, f"output.dir={out}", f"compress.methods=[{args.methods}]",
                 f"compress.heal_steps={args.heal_steps}"]
        if args.quick:
            extra += ["compress.eval_limit=10", "compress.distill_steps=10", "compress.head_epochs=1",
                      "compress.teacher_label_limit=100", "train.max_steps=20"]
        report = run_compress(load_config(ROOT / "examples" / config, extra))
        results[name] = report
        print(f"\n### {name}\n\n{format_table(report)}\n\n{markdown(report)}\n", flush=True)
    path = ROOT / "out" / "bench-compress" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"all reports: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
