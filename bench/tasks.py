"""Task quality benchmark: fine-tune on real train subsets, score dev before and after, both routes.

Rows (from the issue): SmolLM2 + LoRA generative on 1,000 CoNLL-2003 and 2,000 SST-2 training sentences,
and the head route on the same subsets (MiniLM token / sequence classification, SmolLM2 + LoRA sequence
classification). "Before" is the untouched model on the same dev sample (for a head: its new, untrained
classifier, i.e. chance). Needs ../shared/data.

    .venv/bin/python bench/tasks.py                 # all rows, about 30-40 min on 2 idle cores
    .venv/bin/python bench/tasks.py --only sst2     # rows whose name contains "sst2"
    .venv/bin/python bench/tasks.py --quick         # 10x smaller, to check the plumbing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# name, example config, train rows, dev rows scored, extra overrides
ROWS = [
    ("ner-conll2003 generate (SmolLM2 LoRA)", "ner-conll2003.yaml", 1000, 200,
     ["train.num_epochs=1", "eval.max_new_tokens=128"]),
    ("ner-conll2003 head (MiniLM token cls)", "ner-conll2003-head.yaml", 1000, 200, []),
    ("classify-sst2 generate (SmolLM2 LoRA)", "classify-sst2.yaml", 2000, 400, ["train.num_epochs=1"]),
    ("classify-sst2 head (MiniLM seq cls)", "classify-sst2-head.yaml", 2000, 400, []),
    ("classify-sst2 head (SmolLM2 LoRA seq cls)", "classify-sst2-smollm2-head.yaml", 2000, 400, []),
]
HEADLINE = {"ner": "f1", "classify": "accuracy"}


def run_row(config: str, train_rows: int, dev_rows: int, extra: list[str], out: Path) -> dict:
    from tasktune.config import load_config
    from tasktune.evaluate.runner import run_eval
    from tasktune.train.loop import train

    common = [f"output.dir={out}", "output.overwrite=true", f"task.train_range=:{train_rows}",
              f"eval.limit={dev_rows}", "eval.split=eval", "train.eval_steps=0", "train.save_steps=0", *extra]
    cfg = load_config(ROOT / "examples" / config, common)
    metric = HEADLINE[cfg.task.name]
    before = None
    if cfg.task.method != "head":
        started = time.perf_counter()
        before = run_eval(load_config(ROOT / "examples" / config, [*common, "eval.checkpoint=base",
                                                                    f"eval.output_dir={out}/eval-before"]))
        before["seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    result = train(cfg)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    after = run_eval(load_config(ROOT / "examples" / config, common))
    eval_s = time.perf_counter() - started
    return {
        "metric": metric,
        "before": None if before is None else before[metric],
        "after": after[metric],
        "macro_f1": after.get("macro_f1"),
        "parse_failure_rate": after.get("parse_failure_rate"),
        "train_rows": train_rows,
        "dev_rows": after["n"],
        "train_s": round(train_s, 1),
        "steps": result.global_step,
        "tokens_per_s": result.tokens_per_s,
        "eval_s": round(eval_s, 1),
        "examples_per_s": after.get("examples_per_s"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the rows whose name contains this text")
    parser.add_argument("--quick", action="store_true", help="10x fewer train and dev rows")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-tasks"))
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the benchmark needs the real data beside the project)")
        return 0
    results = {}
    for name, config, n_train, n_dev, extra in ROWS:
        if args.only not in name:
            continue
        if args.quick:
            n_train, n_dev = max(20, n_train // 10), max(20, n_dev // 10)
        print(f"\n=== {name}: {n_train} train rows, {n_dev} dev rows ===", flush=True)
        slug = config.removesuffix(".yaml")
        results[name] = run_row(config, n_train, n_dev, extra, Path(args.out) / slug)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| task / route | train rows | dev rows | metric | before | after | train time | eval time |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name, r in results.items():
        before = "chance" if r["before"] is None else f"{r['before']:.3f}"
        print(f"| {name} | {r['train_rows']} | {r['dev_rows']} | {r['metric']} | {before} | {r['after']:.3f} "
              f"| {r['train_s']:.0f} s | {r['eval_s']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
