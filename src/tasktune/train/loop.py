"""The training loop: ours, explicit, on accelerate (devices, DDP/FSDP/DeepSpeed, mixed precision, state)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm

from tasktune.config.load import config_to_dict, save_config
from tasktune.config.schema import Config, ConfigError
from tasktune.data.pipeline import PreparedData
from tasktune.model.load import load_tokenizer
from tasktune.runtime import configure_threads, release_freed_memory, resolve_precision
from tasktune.train.checkpoint import (
    TrainerState,
    load_checkpoint,
    resolve_resume,
    run_fingerprint,
    save_checkpoint,
)
from tasktune.train.distributed import configure_plugins, evaluate_once, micro_batch, save_output, shared_data
from tasktune.train.logs import RunLogger, plot_loss, read_log, trim_log
from tasktune.train.optim import build_optimizer, build_scheduler
from tasktune.train.order import BatchPlan
from tasktune.train.route import Route, resolve_task, route_for
from tasktune.train.step import autocast_casts_inputs, tuner_layers
from tasktune.train.trackers import TRACKERS, TrackedLogger, open_trackers

# A scorer run during training: (unwrapped model, tokenizer, step) -> metrics; "metric" picks the best.
Evaluator = Callable[[torch.nn.Module, Any, int], dict[str, float]]


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None
    eval_loss_before: float | None
    tokens_per_s: float | None
    seconds: float
    best_step: int | None = None
    best_metric: float | None = None
    main_process: bool = True
    metrics: dict[str, float] = field(default_factory=dict)
    stopped: bool = False
    """Stopped by SIGTERM/SIGINT: a checkpoint was saved, no final adapter/model (resume to finish)."""


class StopSignals:
    """SIGTERM / SIGINT while training ask for a graceful stop: a checkpoint is saved at the end of the current
    step and `train` returns (continue with train.resume_from_checkpoint=latest); a second signal interrupts at
    once. Installed only from the main thread, where Python delivers signals."""

    def __init__(self) -> None:
        self.flag = self.stopped = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.flag:
            self.restore()
            raise KeyboardInterrupt
        self.flag = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              "(send it again to stop at once)", flush=True)

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop (reduced, so that all processes checkpoint together)."""
        flag = torch.tensor(float(self.flag))
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag.to(accelerator.device), "sum").cpu()
        self.stopped = bool(flag > 0)
        return self.stopped

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def new_accelerator(mixed_precision: str) -> Accelerator:
    """This run's Accelerator. accelerate keeps its settings in process-wide singletons, so a second run in
    one process (the demo, benchmarks, tests) could not pick another precision: they are reset first, the
    process group (if any) kept. Without a GPU, a torchrun/`accelerate launch` world (gloo) is recognised
    only with cpu=True, except under DeepSpeed (`accelerate launch` with a DeepSpeed config), which accelerate
    selects only with cpu=False and which then runs on DeepSpeed's CPU accelerator over gloo."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    cpu_only = not torch.cuda.is_available()
    launched_deepspeed = (os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
                          and int(os.environ.get("LOCAL_RANK", -1)) != -1)
    if cpu_only and launched_deepspeed:
        return Accelerator(mixed_precision=mixed_precision, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu_only)


def prepare_output_dir(cfg: Config, resuming: bool) -> Path:
    out = Path(cfg.output.dir)
    run_files = ("adapter", "model", "best", "train_log.jsonl", "checkpoints", "eval_steps", "dist", "tensorboard",
                 "loss.png", "rejected.jsonl", "wandb", "mlruns")
    used = [n for n in run_files if (out / n).exists()]
    if used and not resuming:
        if not cfg.output.overwrite:
            raise ConfigError(
                f"output.dir={out} already holds a run ({', '.join(used)}): set output.overwrite=true, "
                "choose another output.dir, or continue it with train.resume_from_checkpoint=latest"
            )
        for name in used:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out


def _eval_loss(route: Route, model, units: list[dict], pad_id: int, batch_size: int, accelerator: Accelerator) -> float:
    """Loss per target over the validation units, split across processes."""
    model.eval()
    total = torch.zeros(2)
    mine = units[accelerator.process_index :: accelerator.num_processes]
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = route.collate(mine[start : start + batch_size], pad_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            total += torch.tensor([route.summed_loss(model, batch).item(), route.count_targets(batch)])
    model.train()
    total = accelerator.reduce(total.to(accelerator.device), "sum").cpu()
    return float(total[0] / max(1.0, float(total[1])))


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def train(cfg: Config, evaluator: Evaluator | None = None, data: PreparedData | None = None,
          route: Route | None = None) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data` (or the task's data); write adapter/model, logs, plot and
    checkpoints to `cfg.output.dir`. `evaluator` scores the model at every train.eval_steps."""
    for section in (cfg.model, cfg.data, cfg.lora, cfg.train, cfg.output):
        section.check()
    configure_threads()
    resolve_task(cfg)
    route = route or route_for(cfg)  # a caller's route: e.g. logit distillation (train.route.logit_distill_route)
    tc = cfg.train
    if evaluator is None and tc.eval_steps and ((cfg.task.name and cfg.task.eval_file)
                                                or any(spec.eval_file for spec in cfg.tasks)):
        from tasktune.evaluate.runner import make_training_evaluator

        evaluator = make_training_evaluator(cfg)
    accelerator = new_accelerator(resolve_precision(tc.mixed_precision))
    main = accelerator.is_main_process
    if main and accelerator.num_processes > 1:  # which plugin accelerate picked: launchers can differ silently
        print(f"distributed: {accelerator.distributed_type.value}, {accelerator.num_processes} processes")
    set_seed(tc.seed)
    ckpt_root = Path(cfg.output.dir) / "checkpoints"
    resume = resolve_resume(tc.resume_from_checkpoint, ckpt_root, announce=main)
    out = Path(cfg.output.dir)
    if main:
        prepare_output_dir(cfg, resuming=resume is not None or tc.resume_from_checkpoint == "latest")
    accelerator.wait_for_everyone()

    tokenizer = load_tokenizer(cfg.model)
    if data is None:  # prepared once, on the main process; the others read its cache file
        data = shared_data(lambda where: route.build_data(cfg, tokenizer, where), out, accelerator)
    if not data.train:
        raise ConfigError("no training examples left after validation: see rejected.jsonl")

    model = route.build_model(cfg)
    optimizer = build_optimizer(model, tc, cfg.lora.plus_ratio)
    plan = BatchPlan([len(u["input_ids"]) for u in data.train], tc.batch_size, tc.grad_accum,
                     accelerator.num_processes, tc.seed)
    total_steps = plan.total_steps(tc.num_epochs, tc.max_steps)
    # The schedule counts optimizer steps of the whole job, so it is not wrapped by accelerate
    # (which would step it once per process); it is saved with the checkpoint instead.
    scheduler = build_scheduler(optimizer, tc, total_steps)
    configure_plugins(accelerator, tc)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainerState()
    fingerprint = run_fingerprint(cfg, accelerator.unwrap_model(model), plan)
    if resume is not None:
        load_checkpoint(accelerator, resume, state, model, optimizer, scheduler, fingerprint)
        if main:
            trim_log(out / "train_log.jsonl", state.global_step)  # the steps after it are replayed now
            print(f"resumed from {resume} at step {state.global_step}")

    logger = RunLogger(out, tc.report_to, enabled=main)
    if main and set(tc.report_to) & set(TRACKERS):  # wandb / mlflow through accelerate's trackers, offline
        logger = TrackedLogger(logger, open_trackers(tc.report_to, out, config_to_dict(cfg)))
    pad_id = tokenizer.pad_token_id
    rank, world = accelerator.process_index, accelerator.num_processes
    # Under autocast, peft's casts of LoRA inputs to fp32 are pure overhead (same numbers, ~10 % of a CPU step).
    lora_layers = tuner_layers(model) if accelerator.native_amp else []
    seen_units: list[int] = []
    first_loss = last_loss = eval_loss = tok_s = None
    window_tokens, window_start, started = 0, time.perf_counter(), time.perf_counter()
    tokens_seen = 0  # real tokens of this session (all processes), logged next to elapsed_s
    epoch_cache: dict[int, list[list[int]]] = {}
    eval_before = None
    if data.val and state.global_step == 0:
        eval_before = _eval_loss(route, model, data.val, pad_id, tc.batch_size, accelerator)
        logger.log({"step": 0, "eval_loss": round(eval_before, 5)})
    bar = tqdm(total=total_steps, initial=state.global_step, disable=not main, desc="train", unit="step")
    stop = StopSignals()
    model.train()
    while state.global_step < total_steps:
        epoch, step_in_epoch = divmod(state.global_step, plan.steps_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache = {epoch: plan.epoch_batches(epoch)}
        micro_ids = plan.step_batches(epoch_cache[epoch], step_in_epoch, rank)
        micro = [route.collate([data.train[i] for i in ids], pad_id) for ids in micro_ids]
        # Counted on the host before the copy to the device: no device sync for them on one process.
        counts = torch.tensor([float(sum(route.count_targets(mb) for mb in micro)),
                               float(sum(len(data.train[i]["input_ids"]) for ids in micro_ids for i in ids))])
        micro = [{k: v.to(accelerator.device) for k, v in mb.items()} for mb in micro]
        if world > 1:
            counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
        n_targets = max(1.0, float(counts[0]))
        # Loss normalised by the target tokens of the whole step (all micro-batches, all processes);
        # DDP averages gradients over processes, hence the factor `world`.
        step_loss = torch.zeros((), device=accelerator.device)
        for k, mb in enumerate(micro):
            with micro_batch(accelerator, model, last=k == len(micro) - 1):  # DeepSpeed steps on the last only
                with autocast_casts_inputs(lora_layers):
                    loss_sum = route.summed_loss(model, mb)
                accelerator.backward(loss_sum * (world / n_targets))
            step_loss += loss_sum.detach()
        seen_units.extend(i for ids in micro_ids for i in ids)
        grad_norm = None
        if tc.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.device.type == "cpu":
            release_freed_memory()
        state.global_step += 1
        step_loss = accelerator.reduce(step_loss, "sum")
        window_tokens += int(counts[1])
        tokens_seen += int(counts[1])
        bar.update(1)

        step = state.global_step
        log_now = step % tc.logging_steps == 0 or step == total_steps
        if log_now or first_loss is None:  # read back from the device only when it is reported
            last_loss = float(step_loss) / n_targets
            first_loss = last_loss if first_loss is None else first_loss
        if log_now:
            elapsed = time.perf_counter() - window_start
            tok_s = window_tokens / max(elapsed, 1e-9)
            record = {"step": step, "epoch": round(step / plan.steps_per_epoch, 4), "loss": round(last_loss, 5),
                      "lr": scheduler.get_last_lr()[0], "tokens_per_s": round(tok_s, 1),
                      "tokens_seen": tokens_seen, "elapsed_s": round(time.perf_counter() - started, 2)}
            if grad_norm is not None:
                record["grad_norm"] = round(float(grad_norm), 4)
            if route.step_metrics is not None:  # e.g. rewards/* of the preference stages, over all processes
                record.update(route.step_metrics(lambda t: accelerator.reduce(t.to(accelerator.device), "sum").cpu()))
            logger.log(record)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{tok_s:.0f}")
            window_tokens, window_start = 0, time.perf_counter()
        if tc.eval_steps and (step % tc.eval_steps == 0 or step == total_steps):
            eval_loss = _evaluate(cfg, route, model, tokenizer, data, accelerator, evaluator, state, logger, out)
        if tc.save_steps and step % tc.save_steps == 0 and step < total_steps:
            save_checkpoint(accelerator, ckpt_root, state, tc.save_total_limit, model, optimizer, scheduler,
                            fingerprint, {"epoch": epoch, "step_in_epoch": step_in_epoch + 1})
        if step < total_steps and stop.requested(accelerator):
            saved = save_checkpoint(accelerator, ckpt_root, state, tc.save_total_limit, model, optimizer, scheduler,
                                    fingerprint, {"epoch": epoch, "step_in_epoch": step_in_epoch + 1})
            logger.log({"step": step, "stopped": True, "checkpoint": str(saved)})
            break
    bar.close()
    stop.restore()
    if stop.stopped:
        if main:
            print(f"stopped at step {state.global_step}: checkpoint {saved}; continue with "
                  "train.resume_from_checkpoint=latest")
        logger.close()
        return TrainResult(out, state.global_step, first_loss, last_loss, eval_loss, eval_before, tok_s,
                           time.perf_counter() - started, state.best_step, state.best_metric, main, stopped=True)
    if not tc.eval_steps and data.val:
        eval_loss = _eval_loss(route, model, data.val, pad_id, tc.batch_size, accelerator)
        logger.log({"step": state.global_step, "eval_loss": round(eval_loss, 5)})

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if world > 1:
        _write_rank_record(out, rank, world, seen_units, unwrapped)
    save_output(route.save, accelerator, model, tokenizer, out, tc.finetuning)  # full state dict when sharded
    if main:
        plot_loss(read_log(out / "train_log.jsonl"), out / "loss.png")
    logger.close()
    accelerator.wait_for_everyone()
    return TrainResult(out, state.global_step, first_loss, last_loss, eval_loss, eval_before, tok_s,
                       time.perf_counter() - started, state.best_step, state.best_metric, main)


def _evaluate(cfg, route, model, tokenizer, data, accelerator, evaluator, state, logger, out) -> float | None:
    """Eval loss, plus the task metric when an evaluator is given; keeps the best checkpoint by that metric."""
    record: dict[str, Any] = {"step": state.global_step}
    eval_loss = None
    if data.val:
        eval_loss = _eval_loss(route, model, data.val, tokenizer.pad_token_id, cfg.train.batch_size, accelerator)
        record["eval_loss"] = round(eval_loss, 5)
    if evaluator is not None:
        metrics = evaluate_once(evaluator, accelerator, model, tokenizer, state.global_step)
        model.train()
        record.update({f"eval_{k}": v for k, v in metrics.items() if k != "metric"})
        if "metric" in metrics and (state.best_metric is None or metrics["metric"] > state.best_metric):
            state.best_metric, state.best_step = metrics["metric"], state.global_step
            accelerator.wait_for_everyone()
            save_output(route.save, accelerator, model, tokenizer, out / "best", cfg.train.finetuning)
            if accelerator.is_main_process:
                (out / "best" / "best.json").write_text(json.dumps(record, indent=2))
    if len(record) > 1:
        logger.log(record)
    return eval_loss


def _write_rank_record(out: Path, rank: int, world: int, seen: list[int], model: torch.nn.Module) -> None:
    """Per-process provenance of a distributed run: which units it trained on and a digest of its weights."""
    path = out / "dist" / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "world_size": world, "units": seen, "weights_sha256": _weights_digest(model)}
    path.write_text(json.dumps(record))
