"""Where a training step's memory and time go: peak RSS after each phase of a LoRA SFT step on SmolLM2.

Builds the model and batches exactly as `tasktune train` does (the generative route, packed rows of
`--cutoff` tokens from alpaca_en_demo), then runs `--steps` optimizer steps and prints, per phase, the
process's peak RSS and the seconds spent. Variants of the step are chosen with the same `key=value`
overrides as the CLI, so a lever (dtype, attention, chunked loss, ...) is measured by changing one flag:

    .venv/bin/python bench/profile_step.py                      # tasktune defaults
    .venv/bin/python bench/profile_step.py train.mixed_precision=no model.attn_implementation=eager
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = (ROOT / ".." / "shared" / "data" / "instruct" / "llamafactory_demo").resolve()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not (DATA_DIR / "dataset_info.json").is_file():
        sys.exit(f"needs {DATA_DIR} (../shared/data)")


    from tasktune.config.load import load_config
    from tasktune.model.load import load_tokenizer
    from tasktune.runtime import configure_threads, resolve_precision
    from tasktune.train.loop import new_accelerator
    from tasktune.train.optim import build_optimizer
    from tasktune.train.route import GENERATIVE
    from tasktune.train.step import autocast_casts_inputs, tuner_layers

    configure_threads()
    base = ["data.datasets=[alpaca_en_demo]", f"data.dataset_dir={DATA_DIR}", f"data.cutoff_len={args.cutoff}",
            f"data.max_samples={args.rows}", "lora.r=8", "lora.alpha=16", "lora.dropout=0", "train.batch_size=2"]
    cfg = load_config(None, base + args.overrides)
    phases: list[tuple[str, float, float, float]] = []
    clock = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases.append((name, now - clock, current_rss_gb(), peak_rss_gb()))
        clock = now

    mark("start (imports)")
    tokenizer = load_tokenizer(cfg.model)
    data = GENERATIVE.build_data(cfg, tokenizer, None)
    mark("data")
    accelerator = new_accelerator(resolve_precision(cfg.train.mixed_precision))
    model = GENERATIVE.build_model(cfg)
    optimizer = build_optimizer(model, cfg.train)
    model, optimizer = accelerator.prepare(model, optimizer)
    mark("model + LoRA")
    lora_layers = tuner_layers(model) if accelerator.native_amp else []
    units = data.train
    model.train()
    tokens = 0
    for step in range(args.steps):
        batch = GENERATIVE.collate(units[2 * step % len(units): 2 * step % len(units) + 2], tokenizer.pad_token_id)
        tokens += int((batch["labels"] != -200).sum())
        with autocast_casts_inputs(lora_layers), accelerator.autocast():
            loss = GENERATIVE.summed_loss(model, batch)
        mark(f"step {step} forward")
        accelerator.backward(loss / max(1, GENERATIVE.count_targets(batch)))
        mark(f"step {step} backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark(f"step {step} optimizer")
    print(f"{'phase':<22} {'seconds':>8} {'RSS GB':>8} {'peak GB':>8}")
    for name, seconds, rss, peak in phases:
        print(f"{name:<22} {seconds:8.2f} {rss:8.2f} {peak:8.2f}")
    step_s = sum(s for n, s, _, _ in phases if n.startswith("step ") and not n.startswith("step 0"))
    n = max(1, args.steps - 1)
    print(f"tokens/step ~{tokens / args.steps:.0f}; seconds/step (after the first) {step_s / n:.2f}; "
          f"tokens/s {tokens / args.steps / max(step_s / n, 1e-9):.0f}")


if __name__ == "__main__":
    main()
