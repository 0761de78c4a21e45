"""The vLLM backend of `tasktune api --backend vllm`: the shared front (serve/front.py) with generation by
vLLM on a CUDA GPU, every adapter a LoRA request of one multi-LoRA engine (rows of different adapters are
batched together).

A worker thread adds the waiting jobs to vLLM's `LLMEngine` and steps it; each step's new tokens go through
rows.py's `Row` (stop strings, streamed deltas, the final text), as with the torch backend, so the API
answers the same way. `response_format` becomes vLLM's structured outputs. Needs `pip install vllm` on a
machine with a GPU; `unavailable()` says why it cannot run.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tasktune.config.schema import ModelConfig
from tasktune.model.adapters import check_adapter_base
from tasktune.model.generate import stop_token_ids
from tasktune.model.load import load_tokenizer, resolve_model_dir
from tasktune.serve.front import EngineError, EngineFront, Job, constraint_spec
from tasktune.serve.rows import Row

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The LoRA ranks vLLM's `max_lora_rank` accepts."""


def unavailable() -> str | None:
    """Why the vLLM backend cannot run here, or None when it can."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "the vllm package is not installed (pip install vllm, on a machine with a CUDA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM serves from a CUDA GPU and none is visible; use --backend torch"
    return None


def max_lora_rank(adapter_dirs: list[str]) -> int:
    """The smallest rank vLLM accepts that holds every adapter's `r`."""
    ranks = [json.loads((Path(d) / "adapter_config.json").read_text())["r"] for d in adapter_dirs]
    largest = max(ranks, default=8)
    for rank in VLLM_LORA_RANKS:
        if rank >= largest:
            return rank
    raise EngineError(f"LoRA rank {largest} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]})")


def structured_outputs(spec: dict | None) -> dict[str, Any]:
    """The vLLM SamplingParams keyword for a constraint spec (serve/front.py's `constraint_spec`):
    `structured_outputs` (vLLM >= 0.10.2), else the older `guided_decoding`."""
    if spec is None:
        return {}
    fields = {"json": spec["schema"]} if spec["type"] == "json_schema" else {"choice": list(spec["choices"])}
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(**fields)}
    return {"structured_outputs": StructuredOutputsParams(**fields)}


class VllmEngine(EngineFront):
    """A base model and named LoRA adapters served by one vLLM engine, behind the shared front.

    model: registry name or model directory; adapters: {name: adapter dir}; dtype: auto | float16 |
    bfloat16 | float32 (vLLM's); max_batch: vLLM's `max_num_seqs`; gpu_memory_utilization: vLLM's share of
    the GPU for weights and KV cache.
    """

    def __init__(self, model: str, adapters: Mapping[str, str] | None = None, *, dtype: str = "auto",
                 template: str | None = None, max_queue: int = 64, max_batch: int = 64,
                 default_max_tokens: int = 512, gpu_memory_utilization: float = 0.85):
        from transformers import AutoConfig, GenerationConfig
        from vllm import EngineArgs, LLMEngine
        from vllm.lora.request import LoRARequest

        adapters = dict(adapters or {})
        super().__init__(model, adapters, max_queue, max_batch, default_max_tokens)
        model_dir = resolve_model_dir(model)
        self.tokenizers[model] = load_tokenizer(ModelConfig(name_or_path=model, template=template))
        for name, path in adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"adapter {name!r}: no adapter_config.json in {path}")
            check_adapter_base(path, [model, str(model_dir)])
            self.tokenizers[name] = load_tokenizer(ModelConfig(name_or_path=model, adapter=path, template=template))
        self._lora = {name: LoRARequest(name, i + 1, str(Path(path).resolve()))
                      for i, (name, path) in enumerate(adapters.items())}
        lora: dict[str, Any] = {}
        if adapters:
            lora = {"enable_lora": True, "max_loras": len(adapters),
                    "max_lora_rank": max_lora_rank(list(adapters.values()))}
        self._llm = LLMEngine.from_engine_args(EngineArgs(
            model=str(model_dir), dtype=dtype, max_num_seqs=max_batch,
            gpu_memory_utilization=gpu_memory_utilization, **lora))
        try:
            generation = GenerationConfig.from_pretrained(model_dir)
        except OSError:  # no generation_config.json
            generation = GenerationConfig()
        self.stop_ids = set(stop_token_ids(SimpleNamespace(generation_config=generation), self.tokenizers[model]))
        self.context_length = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
        self._rows: dict[str, Row] = {}
        self._seen: dict[str, int] = {}
        self._request_ids = (f"tasktune-{i}" for i in itertools.count())
        self._worker = threading.Thread(target=self._work, name="tasktune-vllm", daemon=True)
        self._worker.start()

    def _prepare(self, job: Job) -> None:
        job.constraint = structured_outputs(constraint_spec(job.params.response_format))  # type: ignore[assignment]

    def _sampling(self, job: Job):
        from vllm import SamplingParams

        p = job.params
        return SamplingParams(max_tokens=p.max_new_tokens or self.default_max_tokens, temperature=p.temperature,
                              top_p=p.top_p if p.temperature > 0 else 1.0, seed=p.seed,
                              stop_token_ids=sorted(self.stop_ids), detokenize=False, **(job.constraint or {}))

    # ---- worker -----------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._rows and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for request_id in list(self._rows):
                        self._abort(request_id, "cancelled")
                    return
                admitted = self._take_pending(self.max_batch - len(self._rows))
            for job in admitted:
                self._admit(job)
            for request_id, row in list(self._rows.items()):
                if row.job.cancel.is_set():
                    self._abort(request_id, "cancelled")
            if not self._rows:
                continue
            try:
                outputs = self._llm.step()
            except Exception as err:  # a failed step fails its jobs, not the server
                self._fail_all(err)
                continue
            for output in outputs:
                self._advance(output)

    def _admit(self, job: Job) -> None:
        request_id = next(self._request_ids)
        try:
            self._llm.add_request(request_id, {"prompt_token_ids": job.prompt_ids}, self._sampling(job),
                                  lora_request=self._lora.get(job.model))
        except Exception as err:  # vLLM refuses what it cannot serve (a schema, a length)
            job.end(EngineError(f"vLLM refused the request: {err}"))
            self._job_done(job)
            return
        self._rows[request_id] = Row(job, self._decode)
        self._seen[request_id] = 0
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(self._rows))

    def _advance(self, output: Any) -> None:
        """Feed a request's new tokens to its row; end it when vLLM or the row (a stop string) says so."""
        request_id = output.request_id
        row = self._rows.get(request_id)
        if row is None:
            return
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        new, self._seen[request_id] = tokens[self._seen[request_id]:], len(tokens)
        for token in new:
            if token in self.stop_ids:
                continue
            reason = row.feed(token)
            if reason is not None:
                self._abort(request_id, reason)
                return
        if output.finished:
            self._end(request_id, "length" if completion.finish_reason == "length" else "stop")

    def _abort(self, request_id: str, reason: str) -> None:
        self._llm.abort_request([request_id])
        self._end(request_id, reason)

    def _end(self, request_id: str, reason: str) -> None:
        row = self._rows.pop(request_id)
        self._seen.pop(request_id, None)
        row.finish(reason)
        self._job_done(row.job)

    def _fail_all(self, err: Exception) -> None:
        rows, self._rows = self._rows, {}
        self._seen.clear()
        try:
            self._llm.abort_request(list(rows))
        except Exception:  # the engine is already broken; the jobs still get their error below
            pass
        for row in rows.values():
            row.job.end(err)
            self._job_done(row.job)

    def _join_worker(self, timeout: float) -> None:
        self._worker.join(timeout)  # close() has already woken it
