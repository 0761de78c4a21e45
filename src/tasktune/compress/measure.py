"""What a variant costs on this machine: parameters, bytes on disk, peak RSS when loaded, generation speed.

Peak RSS is measured in a fresh Python process (load the directory, run one short forward pass), so that
memory freed by earlier variants in this process cannot hide or inflate it. Generation speed is the best of a
few timed greedy runs of NEW_TOKENS forced tokens after a fixed prompt (the export's evaluation text).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tasktune.export.measure import EVAL_TEXT_FILE

NEW_TOKENS = 32
PROMPT_TOKENS = 32
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")

_RSS_SCRIPT = """
import json, resource, sys
kind, path = sys.argv[1], sys.argv[2]
import torch
from tasktune.config.schema import ModelConfig
def peak():
    # VmHWM: this process's own high-water mark (ru_maxrss would carry over the parent's peak at fork on Linux)
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if kind == "head":
    from tasktune.model.heads import load_head
    before = peak()
    model, tokenizer = load_head(path)
    batch = tokenizer(["a short sentence to run once"], return_tensors="pt")
    with torch.inference_mode():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
else:
    from tasktune.model.load import load_model
    before = peak()
    model = load_model(ModelConfig(name_or_path=path))
    with torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
print("RSS_JSON " + json.dumps({"peak_rss_bytes": peak(), "rss_before_load_bytes": before}))
"""


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters); tied weights count once. Quantized tensor subclasses count by shape."""
    total = nonzero = 0
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        shape = getattr(getattr(param, "quant_state", None), "shape", None)  # bitsandbytes 4-bit: packed storage
        count = int(torch.Size(shape).numel()) if shape is not None else param.numel()
        total += count
        try:
            nonzero += count if shape is not None else int(torch.count_nonzero(param.detach()))
        except (RuntimeError, NotImplementedError, TypeError):  # quantized tensor subclasses: counted in full
            nonzero += count
    return total, nonzero


def bytes_on_disk(path: Path) -> int:
    """Size of the weight files (safetensors, bin, gguf) directly in `path`."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def peak_rss(path: Path, kind: str = "llm", timeout: float = 600) -> dict[str, Any]:
    """{"peak_rss_bytes", "rss_before_load_bytes"} of a fresh process that loads `path` and runs it once
    ({"error": ...} when that process fails). Single-threaded, offline."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, kind, str(path)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RSS_JSON "):
            return json.loads(line.removeprefix("RSS_JSON "))
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {done.returncode}: {tail[0][:200]}"}


def prompt_ids(tokenizer: Any) -> torch.Tensor:
    """The fixed timing prompt: the first PROMPT_TOKENS tokens of the export's evaluation text."""
    return tokenizer(EVAL_TEXT_FILE.read_text(), return_tensors="pt").input_ids[:, :PROMPT_TOKENS]


@torch.inference_mode()
def generate_tokens_per_s(model: Any, prompt: torch.Tensor, repeats: int = 3, new_tokens: int = NEW_TOKENS) -> float:
    """Best of `repeats` greedy generations of exactly `new_tokens` tokens after `prompt`, in tokens/s."""
    prompt = prompt.to(model.device)
    pad = model.generation_config.pad_token_id
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad if pad is not None else 0)
        best = min(best, time.perf_counter() - started)
    return new_tokens / best
