"""`make demo`: LoRA-tune the embedded SmolLM2 on the bundled NER instruction set, then show what changed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tasktune.config.load import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "lora-sft-demo.yaml"
PROMPT_SENTENCE = "Maria Lopez flew from Madrid to Boston to meet the board of Northwind Labs."


def _demo_prompt() -> str:
    rows = json.loads((ROOT / "data" / "demo" / "ner_instruct.json").read_text(encoding="utf-8"))
    return f"{rows[0]['instruction']}\n{PROMPT_SENTENCE}"


def main(argv: list[str] | None = None) -> int:
    from tasktune.model.generate import chat_once
    from tasktune.model.load import load_model, load_tokenizer
    from tasktune.train.loop import train

    overrides = list(argv if argv is not None else sys.argv[1:])
    cfg = load_config(CONFIG, ["output.dir=out/demo", "output.overwrite=true", *overrides])
    started = time.perf_counter()
    result = train(cfg)
    prompt = _demo_prompt()
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    base = load_model(cfg.model)
    before = chat_once(base, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens=80)
    cfg.model.adapter = str(result.output_dir / "adapter")
    tuned = load_model(cfg.model)
    after = chat_once(tuned, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens=80)

    print("\n=== tasktune demo: LoRA on SmolLM2-135M-Instruct ===")
    print(f"train loss        {result.first_loss:.4f} (first step) -> {result.last_loss:.4f} (last step)")
    if result.eval_loss_before is not None and result.eval_loss is not None:
        print(f"held-out loss     {result.eval_loss_before:.4f} (before) -> {result.eval_loss:.4f} (after)")
    print(f"steps             {result.global_step}, {result.tokens_per_s or 0:.0f} tokens/s, "
          f"{time.perf_counter() - started:.0f} s in all")
    print(f"output            {result.output_dir} (adapter/, loss.png, train_log.jsonl, config.yaml)")
    print(f"\nprompt: {PROMPT_SENTENCE}")
    print(f"base model  : {before.strip()}")
    print(f"with adapter: {after.strip()}")
    print(f"\nchat with it: .venv/bin/tasktune chat --adapter {result.output_dir / 'adapter'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
