"""Multi-task benchmark: one LoRA adapter on NER + sentiment + QA against three single-task adapters.

Both sides train SmolLM2-135M-Instruct (LoRA, the settings of examples/multitask.yaml) on the same rows of
each task: the single-task runs one adapter per task (the task section of multitask.yaml as the `task` of
its own run), the multi-task run one adapter on the weighted mixture. Every adapter is scored on the same
seeded dev sample of its task(s), with the task's own metric (ner f1, sentiment accuracy and macro-F1, qa
EM / F1). Prints one row per task and the totals (training seconds, adapters to serve). Needs ../shared/data
(examples/multitask.yaml); `--demo` runs examples/multitask-demo.yaml on the bundled data instead.

    .venv/bin/python bench/multitask.py                # about 1.5 h on 2 idle cores
    .venv/bin/python bench/multitask.py --factor 4 --dev-factor 2   # a quarter of the rows, half the dev
    .venv/bin/python bench/multitask.py --quick        # 10x fewer rows, to check the plumbing
    .venv/bin/python bench/multitask.py --demo --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METRICS = {"ner": ("f1",), "classify": ("accuracy", "macro_f1"), "qa": ("exact_match", "f1"), "mt": ("bleu",)}


def _shrink(cfg, factor: int, dev_factor: int):
    """Every task's train rows cut to 1/factor (at least 20), the dev sample to 1/dev_factor (at least 20)."""
    from tasktune.config.task import row_slice

    for spec in cfg.tasks:
        rows = row_slice(spec.train_range)
        start, stop = rows.start or 0, rows.stop
        spec.train_range = f"{start}:{start + max(20, (stop - start) // factor) if stop else start + 40}"
    cfg.eval.limit = max(20, (cfg.eval.limit or 200) // dev_factor)
    cfg.eval.during_training_limit = max(10, cfg.eval.during_training_limit // dev_factor)


def run(config: Path, out: Path, factor: int = 1, dev_factor: int = 1) -> dict:
    from tasktune.config import load_config
    from tasktune.config.task import task_aliases
    from tasktune.evaluate.runner import run_eval
    from tasktune.train.loop import train

    base = load_config(config, [f"output.dir={out}/multi", "output.overwrite=true", "train.eval_steps=0",
                                "train.save_steps=0"])
    if factor > 1 or dev_factor > 1:
        _shrink(base, factor, dev_factor)
    results: dict = {"config": str(config), "single": {}, "multi": {}}

    started = time.perf_counter()
    train(base)
    multi_train_s = time.perf_counter() - started
    summary = run_eval(base)
    results["multi"] = {"train_s": round(multi_train_s, 1), "mean": summary["mean"]}
    for alias in summary["tasks"]:
        metrics = json.loads((Path(base.output.dir) / "eval" / alias / "metrics.json").read_text())
        results["multi"][alias] = {k: metrics[k] for k in METRICS[metrics["task"]]}

    for alias, spec in zip(task_aliases(base.tasks), base.tasks, strict=True):
        single = replace(base, task=replace(spec, weight=1.0, alias=None), tasks=[],
                         output=replace(base.output, dir=f"{out}/single-{alias}"))
        single.eval = replace(base.eval, scoring=base.eval.scoring if spec.name == "classify" else "generate")
        started = time.perf_counter()
        train(single)
        train_s = time.perf_counter() - started
        metrics = run_eval(single)
        results["single"][alias] = {"train_s": round(train_s, 1),
                                    **{k: metrics[k] for k in METRICS[metrics["task"]]}}
        print(json.dumps(results, indent=2), flush=True)
    return results


def table(results: dict) -> str:
    lines = ["| task | metric | single-task adapter | multi-task adapter |", "|---|---|---:|---:|"]
    for alias, single in results["single"].items():
        for metric, value in single.items():
            if metric != "train_s":
                lines.append(f"| {alias} | {metric} | {value:.3f} | {results['multi'][alias][metric]:.3f} |")
    single_s = sum(s["train_s"] for s in results["single"].values())
    lines.append(f"| all | training time | {single_s:.0f} s ({len(results['single'])} adapters) | "
                 f"{results['multi']['train_s']:.0f} s (1 adapter) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="examples/multitask-demo.yaml (bundled data)")
    parser.add_argument("--quick", action="store_true", help="10x fewer train and dev rows")
    parser.add_argument("--factor", type=int, default=1, help="train on 1/FACTOR of each task's rows")
    parser.add_argument("--dev-factor", type=int, default=1, help="score 1/DEV_FACTOR of each dev sample")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-multitask"))
    args = parser.parse_args()
    if not args.demo and not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (use --demo for the bundled data)")
        return 0
    config = ROOT / "examples" / ("multitask-demo.yaml" if args.demo else "multitask.yaml")
    factor, dev_factor = (10, 10) if args.quick else (args.factor, args.dev_factor)
    results = run(config, Path(args.out), factor, dev_factor)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
