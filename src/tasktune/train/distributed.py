"""What the loop does differently on several processes: data prepared once, DeepSpeed set-up and micro-batch
boundaries, full state dicts for sharded saves (FSDP, ZeRO-3), one evaluation instead of one per process.

Note: accelerate selects FSDP only on accelerators; on a CPU-only machine several processes run as MULTI_CPU
(DDP over gloo) or, under `accelerate launch` with a DeepSpeed config, as DeepSpeed on its CPU accelerator
(see `loop.new_accelerator`), so the FSDP paths here run on GPUs and the DeepSpeed ones on either.
"""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType

from tasktune.config.schema import TrainConfig
from tasktune.data.pipeline import PreparedData
from tasktune.data.report import DataError

SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def shared_data(build: Callable[[Path | None], PreparedData], out: Path, accelerator: Accelerator) -> PreparedData:
    """`build` runs once, on the main process (it writes rejected.jsonl there); the other processes read its result
    from a cache file in the run directory instead of tokenising the whole dataset again. A failure on the main
    process is raised on every process (none waits forever)."""
    if accelerator.num_processes == 1:
        return build(out)
    cache = out / "dist" / "prepared_data.pkl"
    if accelerator.is_main_process:
        data, error = None, None
        try:
            data = build(out)
        except Exception as err:  # shipped to the other processes, then raised here too
            error = err
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump((data, None if error is None else f"{type(error).__name__}: {error}"), fh)
        os.replace(tmp, cache)
        accelerator.wait_for_everyone()
        accelerator.wait_for_everyone()  # every process has read it
        cache.unlink(missing_ok=True)
        if error is not None:
            raise error
        return data
    accelerator.wait_for_everyone()
    with cache.open("rb") as fh:  # written by this run's main process a moment ago
        data, error = pickle.load(fh)
    accelerator.wait_for_everyone()
    if error is not None:
        raise DataError(f"data preparation failed on the main process: {error}")
    return data


def configure_plugins(accelerator: Accelerator, tc: TrainConfig) -> None:
    """Before `prepare`: DeepSpeed's micro-batch size (there is no dataloader for it to read it from), gradient
    accumulation left to the loop (one engine step per optimizer step, see `micro_batch`), and ZeRO-3 set to
    gather the full weights for the final save."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = tc.batch_size
    config["gradient_accumulation_steps"] = 1  # the loop marks the boundary itself; the loss is already normalised
    config["train_batch_size"] = tc.batch_size * accelerator.num_processes
    if tc.max_grad_norm > 0:
        config["gradient_clipping"] = tc.max_grad_norm
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True


@contextmanager
def micro_batch(accelerator: Accelerator, model: torch.nn.Module, last: bool) -> Iterator[None]:
    """One micro-batch of an optimizer step: gradients are synchronised (DDP, FSDP2) and DeepSpeed's engine steps
    only on the last one. accelerate's `no_sync` does not tell DeepSpeed, which would otherwise step its engine
    (optimizer, zero_grad) after every micro-batch."""
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed:
        accelerator.gradient_state._set_sync_gradients(last)
    try:
        if last or deepspeed:
            yield
        else:
            with accelerator.no_sync(model):
                yield
    finally:
        if deepspeed:
            accelerator.gradient_state._set_sync_gradients(True)


def full_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (gathered) state dict under FSDP / DeepSpeed, else None (the unwrapped model holds it all).
    Collective: every process must call it."""
    if accelerator.distributed_type not in SHARDED:
        return None
    return accelerator.get_state_dict(model)


def save_output(save: Callable[..., Path], accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any,
                out: Path, finetuning: str) -> None:
    """The route's save on the main process, from the full state dict when the weights are sharded. Collective."""
    state = full_state_dict(accelerator, model)
    if accelerator.is_main_process:
        kwargs = {}
        if state is not None:
            if "state_dict" not in inspect.signature(save).parameters:
                raise ValueError("this route cannot save a sharded (FSDP / DeepSpeed) model: use DDP")
            kwargs["state_dict"] = state
        save(accelerator.unwrap_model(model), tokenizer, out, finetuning, **kwargs)
    accelerator.wait_for_everyone()


def evaluate_once(evaluator: Callable[[torch.nn.Module, Any, int], dict[str, float]], accelerator: Accelerator,
                  model: torch.nn.Module, tokenizer: Any, step: int) -> dict[str, float]:
    """The task evaluator's metrics. With sharded weights every process must take part in each forward pass,
    so all run the whole sample. With replicated weights (DDP) an evaluator that `splits_across_ranks` (the
    generative one) runs on every process, each answering its share of the rows; any other runs on the main
    process only, which sends its metrics to the others."""
    unwrapped = accelerator.unwrap_model(model)
    split = getattr(evaluator, "splits_across_ranks", False)
    if accelerator.num_processes == 1 or accelerator.distributed_type in SHARDED:
        return evaluator(unwrapped, tokenizer, step)
    if split:
        if accelerator.is_main_process:
            print(f"\nevaluation split across {accelerator.num_processes} processes", flush=True)
        return evaluator(unwrapped, tokenizer, step, split_across_ranks=True)
    metrics = [evaluator(unwrapped, tokenizer, step) if accelerator.is_main_process else None]
    torch.distributed.broadcast_object_list(metrics, src=0)
    return metrics[0]
