"""Methods that train, all through the normal training loop (`train.loop.train`):

- healing: a short LoRA fine-tune of a pruned variant on the task data, merged back (sparse ones re-masked);
- logit distillation: the uncompressed model teaches a smaller student (default: itself with layers dropped)
  through the KD route (`train.route.logit_distill_route`, losses in `train.distill`).
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import torch

from tasktune.compress.prune import prunable_linears
from tasktune.compress.variant import Variant
from tasktune.config.schema import Config, ModelConfig
from tasktune.export.merge import load_merged, save_model_dir
from tasktune.model.load import load_model, load_tokenizer


def training_config(cfg: Config, model_dir: Path, out: Path, steps: int, finetuning: str) -> Config:
    """A copy of `cfg` that trains `model_dir` for `steps` optimizer steps into `out` (task data and the
    lora / train settings of `cfg`; no eval during training, no checkpoints, no held-out split)."""
    run = copy.deepcopy(cfg)
    run.model = ModelConfig(name_or_path=str(model_dir), template=cfg.model.template, dtype=cfg.model.dtype,
                            attn_implementation=cfg.model.attn_implementation)
    run.train.finetuning = finetuning
    run.train.max_steps = steps
    run.train.eval_steps = 0
    run.train.save_steps = 0
    run.train.resume_from_checkpoint = None
    run.data.val_size = 0.0
    run.output.dir = str(out)
    run.output.overwrite = True
    return run


def trained_output(run_dir: Path) -> tuple[str | None, Path]:
    """(adapter dir or None, model dir to load) of a finished run in `run_dir`."""
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return str(run_dir / "adapter"), run_dir / "adapter"
    return None, run_dir / "model"


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def _zero_masks(model_dir: Path) -> dict[str, torch.Tensor]:
    model = load_model(ModelConfig(name_or_path=str(model_dir)))
    masks = {name: module.weight == 0 for name, module in prunable_linears(model).items()}
    del model
    return masks


def heal(cfg: Config, variant: Variant, out_dir: Path, runs_dir: Path, steps: int) -> Variant:
    """`<variant>+heal`: LoRA on the task data for `steps` steps, merged; weights that pruning set to zero
    are set to zero again after the merge (the LoRA update is dense), so the sparsity is kept."""
    from tasktune.train.loop import train

    assert variant.path is not None
    run_dir = runs_dir / f"{variant.name}+heal"
    result = train(training_config(cfg, variant.path, run_dir, steps, "lora"))
    adapter, _ = trained_output(run_dir)
    sparse = variant.details.get("sparsity") is not None
    masks = _zero_masks(variant.path) if sparse else {}
    model, tokenizer = load_merged(str(variant.path), adapter, cfg.model.template)
    with torch.no_grad():
        for name, module in prunable_linears(model).items():
            if name in masks:
                module.weight.masked_fill_(masks[name], 0.0)
    save_model_dir(model, tokenizer, out_dir)
    del model
    details = {**variant.details, "heal_steps": result.global_step,
               "heal_loss": [result.first_loss, result.last_loss]}
    notes = ["healed: LoRA merged, pruned weights zeroed again"] if sparse else []
    return Variant(f"{variant.name}+heal", out_dir, notes=notes, details=details)


def distill_logits(cfg: Config, teacher_dir: Path, student_dir: Path, out_dir: Path, runs_dir: Path) -> Variant:
    """Train `student_dir` on the task data with `alpha * KD + (1 - alpha) * CE` against the teacher's logits
    (same vocabulary), for compress.distill_steps steps; the student (merged when LoRA) goes to `out_dir`."""
    from tasktune.data.collate import collate
    from tasktune.train.distill import KDSettings, TopKCache
    from tasktune.train.loop import train
    from tasktune.train.route import build_sft_data, logit_distill_route, resolve_task

    cc = cfg.compress
    kd = KDSettings(cc.kd_loss, cc.kd_alpha, cc.kd_temperature, cc.kd_beta)
    run_dir = runs_dir / "distill-logits"
    run = training_config(cfg, student_dir, run_dir, cc.distill_steps, cc.distill_finetuning)
    teacher_tokenizer = load_tokenizer(ModelConfig(name_or_path=str(teacher_dir)))
    student_tokenizer = load_tokenizer(run.model)
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ValueError(f"distill-logits: the student {student_dir} does not share the teacher's vocabulary; "
                         "use distill-head, or a student of the same family")
    teacher = load_model(ModelConfig(name_or_path=str(teacher_dir)))
    details: dict = {"student_init": str(student_dir), "kd": vars(kd) | {}, "steps": cc.distill_steps,
                     "finetuning": cc.distill_finetuning}
    if cc.kd_top_k:
        resolve_task(run)
        data = build_sft_data(run, student_tokenizer, None)
        for index, unit in enumerate(data.train):
            unit["kd_index"] = index
        topk = TopKCache.build(teacher, data.train, cc.kd_top_k, collate, student_tokenizer.pad_token_id,
                               run.train.batch_size)
        details["topk_cache"] = str(topk.save(run_dir.parent / "distill-logits-topk.pt"))
        del teacher
        _free()
        result = train(run, data=data, route=logit_distill_route(kd, topk=topk))
    else:
        result = train(run, route=logit_distill_route(kd, teacher=teacher))
        del teacher
    adapter, model_dir = trained_output(run_dir)
    model, tokenizer = load_merged(str(student_dir) if adapter else str(model_dir), adapter, cfg.model.template)
    save_model_dir(model, tokenizer, out_dir)
    del model
    _free()
    details["loss"] = [result.first_loss, result.last_loss]
    return Variant("distill-logits", out_dir, details=details)
