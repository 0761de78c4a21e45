"""Fine-tuning methods side by side on the demo NER task: same data, same step budget, same dev sample.

Each method trains SmolLM2-135M-Instruct from examples/ner-demo.yaml in its own process (so peak RSS is its
own) and is scored on the demo dev set; the table has trainable parameters, peak RSS, tokens/s and entity F1.
LoRA is the baseline of the ratio column.

    .venv/bin/python bench/methods.py                     # every method, STEPS steps each
    .venv/bin/python bench/methods.py --only dora,qlora   # methods whose name contains one of these
    .venv/bin/python bench/methods.py --steps 10 --dev 16 # to check the plumbing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "ner-demo.yaml"
STEPS, DEV_ROWS = 32, 80  # 32 steps: one epoch of the packed demo data, the `make demo` budget

METHODS: dict[str, list[str]] = {
    "lora": ["train.finetuning=lora"],
    "lora+ (ratio 16)": ["train.finetuning=lora", "lora.plus_ratio=16"],
    "dora": ["train.finetuning=lora", "lora.variant=dora"],
    "rslora": ["train.finetuning=lora", "lora.variant=rslora"],
    "pissa": ["train.finetuning=lora", "lora.variant=pissa"],
    "olora": ["train.finetuning=lora", "lora.variant=olora"],
    "qlora nf4": ["train.finetuning=qlora", "model.quantization=nf4"],
    "qlora int8": ["train.finetuning=qlora", "model.quantization=int8"],
    "freeze (last 2 layers)": ["train.finetuning=freeze", "train.learning_rate=1e-4"],
    "full": ["train.finetuning=full", "train.learning_rate=5e-5"],
}


def run_one(name: str, steps: int, dev_rows: int, out: Path) -> dict:
    """Train and score one method in this process; peak RSS is this process's."""
    from tasktune.config import load_config
    from tasktune.evaluate.runner import run_eval
    from tasktune.model.adapters import count_parameters
    from tasktune.train.loop import train
    from tasktune.train.route import route_for

    common = [f"output.dir={out}", "output.overwrite=true", f"train.max_steps={steps}", "train.eval_steps=0",
              "train.save_steps=0", f"eval.limit={dev_rows}", *METHODS[name]]
    cfg = load_config(CONFIG, common)
    route, counted = route_for(cfg), {}

    def build_and_count(c):
        model = route.build_model(c)
        counted["trainable"] = count_parameters(model)[0]
        return model

    started = time.perf_counter()
    result = train(cfg, route=dataclasses.replace(route, build_model=build_and_count))
    trainable = counted["trainable"]
    train_s = time.perf_counter() - started
    scores = run_eval(load_config(CONFIG, common))
    return {"method": name, "trainable_params": trainable, "tokens_per_s": result.tokens_per_s,
            "train_s": round(train_s, 1), "f1": scores["f1"], "final_loss": result.last_loss,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated parts of method names")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--dev", type=int, default=DEV_ROWS, help="dev rows scored")
    parser.add_argument("--out", default="out/bench-methods")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: run this method, print JSON
    args = parser.parse_args()
    out = ROOT / args.out
    if args.one:
        slug = re.sub(r"[^a-z0-9]+", "-", args.one).strip("-")
        print("RESULT " + json.dumps(run_one(args.one, args.steps, args.dev, out / slug)))
        return 0
    wanted = [p for p in args.only.split(",") if p]
    names = [n for n in METHODS if not wanted or any(p in n for p in wanted)]
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--dev",
                               str(args.dev), "--out", args.out], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[len("RESULT "):]))
        print(f"{name}: {rows[-1]}", flush=True)
    base = next((r for r in rows if r["method"] == "lora"), None)
    print("\n| method | trainable params | peak RSS | tokens/s | vs LoRA | entity F1 | final loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and base["tokens_per_s"] else "-"
        print(f"| {r['method']} | {r['trainable_params']:,} | {r['peak_rss_gib']:.2f} GiB | {r['tokens_per_s']:.0f} "
              f"| {ratio} | {r['f1']:.3f} | {r['final_loss']:.3f} |")
    (out / "methods.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "methods.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
