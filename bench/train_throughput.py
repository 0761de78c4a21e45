"""Training throughput: tasktune against LLaMA-Factory, same model, data and hyper-parameters, same run.

LoRA SFT of SmolLM2-135M-Instruct on the first `--rows` rows of LLaMA-Factory's own alpaca_en_demo, run by
`llamafactory-cli train` (side venv .bench/lf-venv, made by bench/setup_llamafactory.sh) and by
`tasktune train` (.venv). Each framework keeps ITS OWN DEFAULTS for everything not fixed below, so the table
compares what a user gets out of the box. Fixed for both:

    model       SmolLM2-135M-Instruct (the converted safetensors dir), its own chat template (LF: smollm2)
    data        alpaca_en_demo, first --rows rows, cutoff_len --cutoff, no validation split, 1 epoch
    LoRA        r=8, alpha=16, dropout=0 (LLaMA-Factory's default), every linear layer but lm_head
    optimizer   AdamW lr 1e-4, cosine, warmup_ratio 0.1, weight decay 0, grad clip 1.0, seed 42
    step size   LF: 10 rows per step (no accumulation); tasktune: 2 packed sequences of <= cutoff tokens
                (about 10 rows) per step. The table prints the real tokens per step of each.
    saving      no intermediate checkpoints (LF save_strategy=no, tasktune save_steps=0)

What stays at each framework's default (the point of the comparison): LF trains in fp32 unless bf16 is set,
with gradient checkpointing, unpacked rows padded per batch, logits at every position; tasktune uses bf16
autocast where the CPU runs it (train.mixed_precision=auto), packing, logits only at target positions.

Measured per run: training seconds (LF: `train_runtime` of the HF Trainer; tasktune: `elapsed_s` of the last
step in train_log.jsonl; both exclude model loading and data preparation), real (non-padding) tokens
(LF: `num_input_tokens_seen` with include_num_input_tokens_seen=non_padding; tasktune: `tokens_seen`),
tokens/s = tokens / training seconds, the whole process's wall time and peak RSS (wait4).
Model GFLOP/s = 4 * N * tokens / seconds with N the weights of every matmul (decoder linears + tied lm_head):
LoRA's forward (2N) plus the backward to activations (2N); frozen weights get no weight gradient, and
recomputation (gradient checkpointing), padding, logits at non-target positions and LoRA's own <2 % are
NOT counted, so this is useful work against the CPU's peak (~415 GFLOP/s bf16, ~170 fp32 on 2 cores).

Runs are interleaved (the order rotates every repeat) and summarised by medians; ratios are against LF's
default in the same invocation, and the per-repeat paired ratio is printed too because the machine is
shared and noisy. The load average before each run is printed.

    bench/setup_llamafactory.sh                 # once: .bench/lf-venv (about a minute)
    .venv/bin/python bench/train_throughput.py  # lf, lf-fast, tt; 48 rows; 2 repeats
    .venv/bin/python bench/train_throughput.py --runs lf,tt,tt-fp32,tt-drop --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LF_VENV = ROOT / ".bench" / "lf-venv"
DATA_DIR = (ROOT / ".." / "shared" / "data" / "instruct" / "llamafactory_demo").resolve()
DATASET = "alpaca_en_demo"
PEAK_BF16_GFLOPS = 415.0
LF_ROWS_PER_STEP = 10
TT_PACKS_PER_STEP = 2

HYPER = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lr": 1.0e-4, "warmup_ratio": 0.1,
         "scheduler": "cosine", "epochs": 1, "seed": 42, "logging_steps": 1}


@dataclass
class Run:
    name: str
    framework: str  # lf | tt
    summary: str
    extra: list[str] = field(default_factory=list)  # LF: "key: value" YAML lines; tasktune: overrides
    env: dict[str, str] = field(default_factory=dict)


RUNS = {
    "lf": Run("lf", "lf", "LLaMA-Factory defaults (fp32, grad. checkpointing, no packing)"),
    # transformers refuses bf16 without a GPU unless use_cpu is set; it then runs CPU bf16 autocast.
    "lf-bf16": Run("lf-bf16", "lf", "LLaMA-Factory + bf16: true (as its example YAMLs)",
                   ["bf16: true", "use_cpu: true"]),
    # LF's fastest flags that run here (issue 8): fp32, no gradient checkpointing, neat packing, and the same
    # real tokens per step as tasktune (2 packed sequences); these keys replace the base YAML's.
    "lf-fast": Run("lf-fast", "lf", "LLaMA-Factory fp32 + disable_gradient_checkpointing + neat_packing",
                   ["disable_gradient_checkpointing: true", "neat_packing: true", "packing: true",
                    f"per_device_train_batch_size: {TT_PACKS_PER_STEP}"]),
    "tt": Run("tt", "tt", "tasktune defaults (bf16 frozen base, fused loss and blocks, packing)"),
    "tt-nofuse": Run("tt-nofuse", "tt", "tasktune, train.fused_blocks=false", ["train.fused_blocks=false"]),
    "tt-fp32": Run("tt-fp32", "tt", "tasktune, train.mixed_precision=no", ["train.mixed_precision=no"]),
    "tt-nopack": Run("tt-nopack", "tt", "tasktune, data.packing=false, 10 rows/step",
                     ["data.packing=false", f"train.batch_size={LF_ROWS_PER_STEP}"]),
    "tt-gc": Run("tt-gc", "tt", "tasktune, train.gradient_checkpointing=true",
                 ["train.gradient_checkpointing=true"]),
    "tt-drop": Run("tt-drop", "tt", "tasktune, lora.dropout=0.05 (tasktune's own default)",
                   ["lora.dropout=0.05"]),
    "tt-glibc": Run("tt-glibc", "tt", "tasktune, TASKTUNE_ALLOCATOR=system (glibc malloc, not tcmalloc)",
                    env={"TASKTUNE_ALLOCATOR": "system"}),
    "tt-1thread": Run("tt-1thread", "tt", "tasktune, OMP_NUM_THREADS=1", env={"OMP_NUM_THREADS": "1"}),
    "lf-bf16-nogc": Run("lf-bf16-nogc", "lf", "LLaMA-Factory + bf16 + disable_gradient_checkpointing",
                        ["bf16: true", "use_cpu: true", "disable_gradient_checkpointing: true"]),
}


def model_dir() -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from tasktune.model.load import resolve_model_dir

    return Path(resolve_model_dir("smollm2-135m-instruct"))


def matmul_params(mdir: Path) -> int:
    """Weights of every matmul of a Llama-style model: q, k, v, o, gate, up, down per layer, plus lm_head."""
    c = json.loads((mdir / "config.json").read_text())
    d, f, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    head_dim = c.get("head_dim") or d // c["num_attention_heads"]
    kv = c.get("num_key_value_heads", c["num_attention_heads"]) * head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f
    return layers * per_layer + vocab * d


def lf_yaml(run: Run, mdir: Path, out: Path, rows: int, cutoff: int) -> str:
    h = HYPER
    lines = [
        f"model_name_or_path: {mdir}",
        "stage: sft",
        "do_train: true",
        "finetuning_type: lora",
        f"lora_rank: {h['lora_r']}",
        f"lora_alpha: {h['lora_alpha']}",
        f"lora_dropout: {h['lora_dropout']}",
        "lora_target: all",
        f"dataset: {DATASET}",
        f"dataset_dir: {DATA_DIR}",
        "template: smollm2",
        f"cutoff_len: {cutoff}",
        f"max_samples: {rows}",
        f"output_dir: {out}",
        "overwrite_output_dir: true",
        f"per_device_train_batch_size: {LF_ROWS_PER_STEP}",
        "gradient_accumulation_steps: 1",
        f"learning_rate: {h['lr']}",
        f"num_train_epochs: {h['epochs']}",
        f"lr_scheduler_type: {h['scheduler']}",
        f"warmup_ratio: {h['warmup_ratio']}",
        "weight_decay: 0.0",
        "max_grad_norm: 1.0",
        f"seed: {h['seed']}",
        f"logging_steps: {h['logging_steps']}",
        "save_strategy: 'no'",
        "report_to: none",
        "include_num_input_tokens_seen: non_padding",
    ]
    overridden = {line.split(":", 1)[0] for line in run.extra}  # LF's YAML loader refuses duplicate keys
    lines = [line for line in lines if line.split(":", 1)[0] not in overridden] + run.extra
    return "\n".join(lines) + "\n"


def tt_overrides(run: Run, out: Path, rows: int, cutoff: int) -> list[str]:
    h = HYPER
    return [
        "model.name_or_path=smollm2-135m-instruct",
        f"data.datasets=[{DATASET}]", f"data.dataset_dir={DATA_DIR}", f"data.max_samples={rows}",
        f"data.cutoff_len={cutoff}", "data.val_size=0",
        f"lora.r={h['lora_r']}", f"lora.alpha={h['lora_alpha']}", f"lora.dropout={h['lora_dropout']}",
        "lora.target_modules=[all-linear]",
        "train.finetuning=lora", f"train.learning_rate={h['lr']}", f"train.lr_scheduler={h['scheduler']}",
        f"train.warmup_ratio={h['warmup_ratio']}", "train.weight_decay=0", "train.max_grad_norm=1.0",
        f"train.num_epochs={h['epochs']}", f"train.seed={h['seed']}", f"train.logging_steps={h['logging_steps']}",
        f"train.batch_size={TT_PACKS_PER_STEP}", "train.grad_accum=1", "train.save_steps=0",
        f"output.dir={out}", "output.overwrite=true",
        *run.extra,
    ]


def run_child(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in GiB of the child and its waited-for children)."""
    started = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - started, usage.ru_maxrss / 2**20


def step_rates(points: list[tuple[float, int]]) -> list[float]:
    """tokens/s of each logged step from cumulative (seconds, tokens) pairs, the first from (0, 0)."""
    rates, prev = [], (0.0, 0)
    for seconds, tokens in points:
        if seconds > prev[0]:
            rates.append((tokens - prev[1]) / (seconds - prev[0]))
        prev = (seconds, tokens)
    return rates


def read_lf(out: Path) -> dict:
    state = json.loads((out / "trainer_state.json").read_text())
    steps = [r for r in state["log_history"] if "loss" in r]
    final = state["log_history"][-1]
    points = [(r["train_runtime"], r["num_input_tokens_seen"]) for r in steps if "train_runtime" in r]
    tokens = state["num_input_tokens_seen"]
    if tokens <= 0:  # LF's non-padding counter overflows with neat_packing: its per-step rates are garbage too
        tokens, points = None, []
    return {"seconds": final["train_runtime"], "tokens": tokens,
            "steps": state["global_step"], "loss": steps[-1]["loss"] if steps else None,
            "step_tok_s": step_rates(points)}


def read_tt(out: Path) -> dict:
    records = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in records if "loss" in r]
    return {"seconds": steps[-1]["elapsed_s"], "tokens": steps[-1]["tokens_seen"], "steps": steps[-1]["step"],
            "loss": steps[-1]["loss"], "step_tok_s": step_rates([(r["elapsed_s"], r["tokens_seen"]) for r in steps])}


def one_run(run: Run, work: Path, rep: int, mdir: Path, args) -> dict:
    out = work / f"{run.name}-{rep}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "DISABLE_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1", **run.env}
    if run.framework == "lf":
        cfg = out / "lf.yaml"
        cfg.write_text(lf_yaml(run, mdir, out / "output", args.rows, args.cutoff))
        cmd = [str(LF_VENV / "bin" / "llamafactory-cli"), "train", str(cfg)]
    else:
        cmd = [str(ROOT / ".venv" / "bin" / "tasktune"), "train",
               *tt_overrides(run, out / "output", args.rows, args.cutoff)]
    load = os.getloadavg()[0]
    code, wall, rss = run_child(cmd, env, out / "log.txt", args.timeout)
    result = {"run": run.name, "repeat": rep, "load_before": round(load, 2), "wall_s": round(wall, 1),
              "peak_rss_gib": round(rss, 2), "exit": code}
    if code != 0:
        tail = (out / "log.txt").read_text(errors="replace")[-1500:]
        print(f"  {run.name}: FAILED (exit {code}); last lines of {out / 'log.txt'}:\n{tail}", flush=True)
        return result
    result.update((read_lf if run.framework == "lf" else read_tt)(out / "output"))
    if result["tokens"] is not None:
        result["tok_s"] = result["tokens"] / result["seconds"]
        result["step_tok_s_median"] = statistics.median(result["step_tok_s"][1:] or result["step_tok_s"])
    return result


def borrow_lf_tokens(result: dict, results: list[dict]) -> None:
    """An LF run whose token counter failed (neat_packing) trained on the same rows as LF's default run:
    take that run's real-token count, and its whole-run rate as the per-step figure."""
    counts = [r["tokens"] for r in results if r["run"] == "lf" and r["exit"] == 0]
    if result["exit"] == 0 and result.get("tokens") is None and counts:
        result["tokens"] = counts[-1]
        result["tok_s"] = result["step_tok_s_median"] = counts[-1] / result["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="lf,lf-fast,tt", help=f"comma list of {', '.join(RUNS)}")
    parser.add_argument("--rows", type=int, default=48, help="first rows of alpaca_en_demo (1 epoch)")
    parser.add_argument("--cutoff", type=int, default=1024, help="cutoff_len for both")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is killed")
    parser.add_argument("--workdir", default=str(ROOT / ".bench" / "train_throughput"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the successful runs already in WORKDIR/results.json and do only the missing ones")
    parser.add_argument("--tt-src", help="also run tasktune defaults from this src/ folder (e.g. a `git worktree` "
                        "of another commit) as run `tt-src`, to compare two versions in the same invocation")
    args = parser.parse_args()
    if args.tt_src:
        src = str(Path(args.tt_src).resolve())
        RUNS["tt-src"] = Run("tt-src", "tt", f"tasktune defaults, code from {src}", env={"PYTHONPATH": src})
        args.runs += ",tt-src"
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    if "lf" not in names:
        names.insert(0, "lf")  # the baseline every ratio is against
    if not (LF_VENV / ".installed").is_file():
        print("LLaMA-Factory side venv missing: running bench/setup_llamafactory.sh", flush=True)
        subprocess.run(["bash", str(ROOT / "bench" / "setup_llamafactory.sh")], check=True)
    mdir = model_dir()
    n_params = matmul_params(mdir)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"model {mdir} (N = {n_params / 1e6:.1f} M matmul weights), data {DATASET}[:{args.rows}], "
          f"cutoff_len {args.cutoff}, {os.cpu_count()} CPUs; {args.repeats} repeats of {', '.join(names)}",
          flush=True)

    saved = work / "results.json"
    results: list[dict] = json.loads(saved.read_text()) if args.resume and saved.is_file() else []
    done = {(r["run"], r["repeat"]) for r in results if r["exit"] == 0}
    results = [r for r in results if (r["run"], r["repeat"]) in done]
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            if (name, rep) in done:
                continue
            r = one_run(RUNS[name], work, rep, mdir, args)
            borrow_lf_tokens(r, results)
            results.append(r)
            saved.write_text(json.dumps(results, indent=1))
            if r["exit"] == 0:
                print(f"  [{rep}] {name:11s} {r['tok_s']:7.1f} tok/s (per-step median {r['step_tok_s_median']:6.1f})  "
                      f"{r['tokens']:6d} tok in {r['seconds']:6.1f} s "
                      f"({r['steps']} steps, loss {r['loss']:.3f})  wall {r['wall_s']:6.1f} s  "
                      f"rss {r['peak_rss_gib']:.2f} GiB  load {r['load_before']:.1f}", flush=True)
    print_table(results, names, n_params)
    return 0 if all(r["exit"] == 0 for r in results) else 1


def print_table(results: list[dict], names: list[str], n_params: int) -> None:
    ok = [r for r in results if r["exit"] == 0]
    by = {n: [r for r in ok if r["run"] == n] for n in names}
    if not by["lf"]:
        print("no successful LLaMA-Factory default run: no ratios")
        return
    base = statistics.median(r["tok_s"] for r in by["lf"])
    base_step = statistics.median(r["step_tok_s_median"] for r in by["lf"])
    base_by_rep = {r["repeat"]: r["tok_s"] for r in by["lf"]}
    print()
    print("| run | what | tokens/s | vs LF default | paired vs LF | per-step tokens/s | vs LF | tokens/step | "
          "train s | wall s | peak RSS GiB | model GFLOP/s | of 415 peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        rs = by[name]
        if not rs:
            print(f"| {name} | {RUNS[name].summary} | failed |" + " |" * 10)
            continue
        tok_s = statistics.median(r["tok_s"] for r in rs)
        step = statistics.median(r["step_tok_s_median"] for r in rs)
        paired = [r["tok_s"] / base_by_rep[r["repeat"]] for r in rs if r["repeat"] in base_by_rep]
        gflops = 4 * n_params * tok_s / 1e9
        print(f"| {name} | {RUNS[name].summary} | {tok_s:.0f} | {tok_s / base:.2f}x | "
              f"{statistics.median(paired):.2f}x | {step:.0f} | {step / base_step:.2f}x | "
              f"{statistics.median(r['tokens'] / r['steps'] for r in rs):.0f} | "
              f"{statistics.median(r['seconds'] for r in rs):.1f} | {statistics.median(r['wall_s'] for r in rs):.1f} | "
              f"{max(r['peak_rss_gib'] for r in rs):.2f} | {gflops:.0f} | {100 * gflops / PEAK_BF16_GFLOPS:.0f} % |")
    print(f"\ntokens/s = real tokens / training seconds, median over repeats; paired = median of per-repeat ratios;"
          f"\nper-step = median over steps (the first excluded) of each run's per-step rate, then median over repeats:"
          f"\nthe figure least hurt by bursts of load from other processes on a shared machine."
          f"\nmodel GFLOP/s = 4 * {n_params / 1e6:.1f}M * tokens/s (LoRA: forward 2N + backward to activations 2N;"
          f" recompute, padding and non-target logits not counted).")


if __name__ == "__main__":
    sys.exit(main())
