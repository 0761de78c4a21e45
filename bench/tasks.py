"""Task quality benchmark: fine-tune on real train subsets, score dev before and after, both routes.

Rows (from the issue): SmolLM2 + LoRA generative on 1,000 CoNLL-2003 and 2,000 SST-2 training sentences,
and the head route on the same subsets (MiniLM token / sequence classification, SmolLM2 + LoRA sequence
classification); Chinese NER (CLUENER) and sentiment (ChnSentiCorp), 500 rows each, with SmolLM2 and with
Gemma 3 270M on the same rows (`--only cluener`, `--only chnsenticorp`, `--only Gemma`). "Before" is the
untouched model on the same dev sample (for a head: its new, untrained classifier, i.e. chance). Needs
../shared/data.

    .venv/bin/python bench/tasks.py                 # all rows, about 30-40 min on 2 idle cores
    .venv/bin/python bench/tasks.py --only sst2     # rows whose name contains "sst2"
    .venv/bin/python bench/tasks.py --only cluener,chnsenticorp   # the Chinese rows, both models
    .venv/bin/python bench/tasks.py --quick         # 10x smaller, to check the plumbing
    .venv/bin/python bench/tasks.py --only ner --ner-format all   # generative NER once per answer format
    .venv/bin/python bench/tasks.py --targets --only generate      # the issue's CoNLL test targets, ~1 h a row
    .venv/bin/python bench/tasks.py --targets --before --only qa-squad,wmt22   # QA and MT, base model too
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
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
    # Chinese, the same rows for both embedded causal LMs (issue 14): SmolLM2 against the multilingual Gemma 3.
    # 500 train rows each: a ChnSentiCorp review is ~110 characters, ~250 SmolLM2 tokens with its prompt.
    ("ner-cluener generate (SmolLM2 LoRA)", "ner-cluener.yaml", 500, 200,
     ["train.num_epochs=1", "eval.max_new_tokens=192"]),
    ("ner-cluener generate (Gemma-3-270M LoRA)", "ner-cluener-gemma.yaml", 500, 200,
     ["train.num_epochs=1", "eval.max_new_tokens=192"]),
    ("classify-chnsenticorp generate (SmolLM2 LoRA)", "classify-chnsenticorp.yaml", 500, 200, ["train.num_epochs=1"]),
    ("classify-chnsenticorp generate (Gemma-3-270M LoRA)", "classify-chnsenticorp-gemma.yaml", 500, 200,
     ["train.num_epochs=1"]),
]
TARGET_ROWS = [
    # The quality targets (`--targets`): CoNLL-2003 test (all 3,453 sentences, span-exact F1), SST-2 dev
    # (all 872); at most one CPU-hour of training each on 2 idle cores; no "before" run.
    ("ner-conll2003 generate, one CPU-hour (SmolLM2 LoRA) [test]", "ner-conll2003.yaml", 5000, None,
     ["train.num_epochs=1", "eval.max_new_tokens=192", "eval.split=test"]),
    ("ner-conll2003 head, all train sentences (MiniLM full) [test]", "ner-conll2003-head.yaml", 14041, None,
     ["train.finetuning=full", "train.learning_rate=2e-4", "train.num_epochs=3", "task.logit_adjustment=0",
      "eval.split=test"]),
    ("classify-sst2 head, all train sentences (MiniLM full) [dev]", "classify-sst2-head.yaml", 6920, None,
     ["train.finetuning=full", "train.learning_rate=5e-5", "train.num_epochs=3"]),
    ("classify-sst2 generate, one CPU-hour (SmolLM2 LoRA) [dev]", "classify-sst2.yaml", 6000, None,
     ["train.num_epochs=1"]),
    ("classify-sst2 head, all train sentences (SmolLM2 LoRA seq cls) [dev]", "classify-sst2-smollm2-head.yaml",
     6920, None, ["train.num_epochs=1", "train.learning_rate=5e-4"]),
    # XQuAD-en and WMT22 ship one split each: the example configs train on its head and score the rest.
    ("qa-squad generate, span-constrained (SmolLM2 LoRA) [XQuAD-en held out]", "qa-squad.yaml", 800, None,
     ["train.num_epochs=3", "train.grad_accum=1"]),
    ("mt-wmt22-zh-en generate (SmolLM2 LoRA) [WMT22 held out]", "mt-wmt22-zh-en.yaml", 800, None,
     ["train.num_epochs=1", "eval.max_new_tokens=128"]),
]
HEADLINE = {"ner": "f1", "classify": "accuracy", "qa": "f1", "mt": "bleu"}
NER_FORMATS = ("json", "inline", "tagged-words")
NER_BUDGET = {"json": 128, "inline": 192, "tagged-words": 384}
"""eval.max_new_tokens per NER answer format: inline copies the sentence, tagged-words adds a tag per word."""


def with_ner_formats(rows: list, formats: list[str]) -> list:
    """Each generative NER row once per answer format (task.ner_output_format), the others unchanged."""
    expanded = []
    for name, config, n_train, n_dev, extra in rows:
        if not (name.startswith("ner") and "generate" in name):
            expanded.append((name, config, n_train, n_dev, extra))
            continue
        kept = [x for x in extra if not x.startswith("eval.max_new_tokens=")]
        for fmt in formats:
            expanded.append((f"{name} [{fmt}]", config, n_train, n_dev,
                             [*kept, f"task.ner_output_format={fmt}", f"eval.max_new_tokens={NER_BUDGET[fmt]}"]))
    return expanded


def run_row(config: str, train_rows: int, dev_rows: int | None, extra: list[str], out: Path,
            before_too: bool = True) -> dict:
    from tasktune.config import load_config
    from tasktune.evaluate.runner import run_eval
    from tasktune.train.loop import train

    limit = "null" if dev_rows is None else dev_rows
    common = [f"output.dir={out}", "output.overwrite=true", f"task.train_range=:{train_rows}",
              f"eval.limit={limit}", "eval.split=eval", "train.eval_steps=0", "train.save_steps=0", *extra]
    cfg = load_config(ROOT / "examples" / config, common)
    metric = HEADLINE[cfg.task.name]
    before = None
    if before_too and cfg.task.method != "head":
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
    parser.add_argument("--only", default="", help="run the rows whose name contains this text (a comma-separated "
                                                   "list: any of them)")
    parser.add_argument("--quick", action="store_true", help="10x fewer train and dev rows")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-tasks"))
    parser.add_argument("--ner-format", choices=[*NER_FORMATS, "all"], default=None,
                        help="generative NER rows with this answer format (all: one row per format); "
                             "default: the example config's")
    parser.add_argument("--targets", action="store_true",
                        help="the issue's quality-target rows instead (CoNLL-2003 test, SST-2 dev, XQuAD-en, "
                             "WMT22; up to 1 h each)")
    parser.add_argument("--before", action="store_true",
                        help="with --targets: score the untuned model too (the other rows always do)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the benchmark needs the real data beside the project)")
        return 0
    results = {}
    rows = TARGET_ROWS if args.targets else ROWS
    if args.ner_format:
        rows = with_ner_formats(rows, list(NER_FORMATS) if args.ner_format == "all" else [args.ner_format])
    for name, config, n_train, n_dev, extra in rows:
        if not any(part in name for part in args.only.split(",")):
            continue
        if args.quick:
            n_train, n_dev = max(20, n_train // 10), max(20, (n_dev or 200) // 10)
        print(f"\n=== {name}: {n_train} train rows, {n_dev} dev rows ===", flush=True)
        slug = config.removesuffix(".yaml") + (f"-{name.rsplit('[', 1)[1].rstrip(']')}" if "[" in name else "")
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", slug).lower() + ("-target" if args.targets else "")
        try:
            results[name] = run_row(config, n_train, n_dev, extra, Path(args.out) / slug,
                                    args.before or not args.targets)
        except Exception:  # one failing row must not lose the others
            traceback.print_exc()
            print(f"row failed: {name}", file=sys.stderr, flush=True)
            continue
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
