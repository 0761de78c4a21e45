"""`make demo`: LoRA-tune the embedded SmolLM2 to extract entities, and show the task metric before and after."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tasktune.config.load import load_config
from tasktune.runtime import preload_allocator, quiet_known_noise

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "ner-demo.yaml"
SENTENCE = "Maria Lopez flew from Madrid to Boston to meet the board of Northwind Labs."


def main(argv: list[str] | None = None) -> int:
    quiet_known_noise()
    from tasktune.evaluate.runner import resolve_eval_model, run_eval, task_spec
    from tasktune.model.generate import chat_once
    from tasktune.tasks import get_task
    from tasktune.tasks.ner import NerRow
    from tasktune.train.loop import train

    overrides = ["output.dir=out/demo", "output.overwrite=true", *(argv if argv is not None else sys.argv[1:])]
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = now - since
        return now

    clock = started
    before = run_eval(load_config(CONFIG, [*overrides, "eval.checkpoint=base", "eval.output_dir=out/demo-base"]))
    clock = phase("score the untuned model", clock)
    result = train(load_config(CONFIG, overrides))
    clock = phase("fine-tune", clock)
    after_cfg = load_config(CONFIG, overrides)
    after = run_eval(after_cfg)
    clock = phase("score the tuned model", clock)

    spec = task_spec(after_cfg)
    prompt = get_task("ner").to_messages(NerRow(id="demo", source="demo", text=SENTENCE, entities=[]), spec)
    model, tokenizer, _ = resolve_eval_model(after_cfg)
    answer = chat_once(model, tokenizer, prompt.as_dicts()[:-1], max_new_tokens=96)
    phase("one chat answer", clock)

    print("\n=== tasktune demo: LoRA on SmolLM2-135M-Instruct, named-entity extraction ===")
    print(f"entity F1 (dev, {after['n']} sentences)  {before['f1']:.3f} before -> {after['f1']:.3f} after "
          f"(precision {after['precision']:.3f}, recall {after['recall']:.3f}; "
          f"unparsable outputs {before['parse_failure_rate']:.0%} -> {after['parse_failure_rate']:.0%})")
    if result.eval_loss_before is not None and result.eval_loss is not None:
        print(f"held-out loss                 {result.eval_loss_before:.4f} before -> {result.eval_loss:.4f} after")
    print(f"train loss                    {result.first_loss:.4f} (first step) -> {result.last_loss:.4f} (last)")
    print(f"training                      {result.global_step} steps, {result.tokens_per_s or 0:.0f} tokens/s; "
          f"{time.perf_counter() - started:.0f} s for the whole demo")
    print("time per phase                " + "; ".join(f"{name} {sec:.0f} s" for name, sec in phases.items()))
    print(f"outputs                       {result.output_dir}/ (adapter/, loss.png, train_log.jsonl, eval/)")
    print(f"\n{SENTENCE}\n-> {answer.strip()}")
    print(f"\nchat with it: .venv/bin/tasktune chat --adapter {result.output_dir / 'adapter'}")
    return 0


if __name__ == "__main__":
    preload_allocator("tasktune.demo", sys.argv[1:])
    sys.exit(main())
