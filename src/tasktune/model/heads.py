"""Task heads: a classification layer on a pre-trained encoder or decoder (transformers' AutoModelFor
SequenceClassification / TokenClassification / QuestionAnswering), optionally a CRF for ner tags.

Trained with LoRA on the backbone and the new head in full (peft `modules_to_save`), or fully. Saved as
OUTPUT/adapter (peft files) or OUTPUT/model (a transformers model), each with the tokenizer, head.json
(task, labels, windowing) and crf.safetensors when there is a CRF.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasktune.config.schema import Config, ConfigError, LoraConfig, ModelConfig, TrainConfig
from tasktune.config.task import TaskConfig
from tasktune.model.adapters import count_parameters
from tasktune.model.case_types import widen_token_types
from tasktune.model.crf import CRF
from tasktune.model.head_data import IGNORE, allowed_transitions, head_labels, prompt_frame, tag_log_prior
from tasktune.model.load import resolve_model_dir, weight_dtype

HEAD_FILE = "head.json"
CRF_FILE = "crf.safetensors"
AUTO_CLASSES = {
    "classify": "AutoModelForSequenceClassification",
    "ner": "AutoModelForTokenClassification",
    "qa": "AutoModelForQuestionAnswering",
}
PEFT_TASK_TYPES = {"classify": "SEQ_CLS", "ner": "TOKEN_CLS", "qa": "QUESTION_ANS"}


@dataclass
class HeadInfo:
    """What a saved head is (head.json): enough to rebuild it and to read inputs the way it was trained."""

    task: str
    labels: list[str] | None
    """classify: the labels; ner: the entity types; qa: None."""
    outputs: list[str]
    """Meaning of each output unit, in id order (the model config's id2label)."""
    base_model: str
    """model.name_or_path the head was trained on (a registry name or a directory)."""
    use_crf: bool = False
    max_seq_length: int = 384
    doc_stride: int = 128
    max_answer_length: int = 30
    text_field: str | None = None
    case_features: bool = False
    prompt_instruction: str | None = None
    """classify with task.head_prompt: the instruction of the prompt the head reads; None: the bare text."""

    @classmethod
    def from_spec(cls, spec: TaskConfig, base_model: str) -> HeadInfo:
        from tasktune.tasks.classify import instruction

        return cls(spec.name, list(spec.labels) if spec.labels else None, head_labels(spec), str(base_model),
                   spec.use_crf, spec.max_seq_length, spec.doc_stride, spec.max_answer_length, spec.text_field,
                   spec.case_features, instruction(spec) if spec.head_prompt else None)

    def reading(self, spec: TaskConfig) -> TaskConfig:
        """`spec` with what decides how this head reads its inputs taken from the head: its labels, case
        features and prompt, whatever the eval config says."""
        prompted = self.prompt_instruction is not None
        return replace(spec, labels=self.labels, case_features=self.case_features, head_prompt=prompted,
                       instruction=self.prompt_instruction if prompted else spec.instruction)

    def spec(self) -> TaskConfig:
        """A task config that reads and windows inputs as in training."""
        return TaskConfig(name=self.task, method="head", labels=self.labels, use_crf=self.use_crf,
                          max_seq_length=self.max_seq_length, doc_stride=self.doc_stride,
                          max_answer_length=self.max_answer_length, text_field=self.text_field,
                          case_features=self.case_features,
                          head_prompt=self.prompt_instruction is not None, instruction=self.prompt_instruction)


def _compact(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept positions of each row moved to the front, in order: (values [B, W, ...], mask [B, W])."""
    counts = keep.sum(1)
    width = max(1, int(counts.max()))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    index = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    mask = torch.arange(width, device=keep.device).unsqueeze(0) < counts.unsqueeze(1)
    return values.gather(1, index), mask


class TaskHead(nn.Module):
    """The transformers head model (`net`, a PeftModel under LoRA) plus an optional CRF; forward returns
    the logits and, given targets, the summed loss."""

    def __init__(self, net: nn.Module, info: HeadInfo, crf: CRF | None = None, new_modules: list[str] = ()):
        super().__init__()
        self.net = net
        self.info = info
        self.crf = crf
        self.prefix_ids: list[int] = []
        """The prompt's tokens before the text (task.head_prompt), encoded once per batch; empty: none."""
        self.new_modules = list(new_modules)
        """Modules of `net` the checkpoint did not have (the new head): trained in full under LoRA."""
        self.register_buffer("tag_shift", None, persistent=False)
        """ner training: added to the tag scores in the loss only (logit adjustment: task.logit_adjustment x
        log tag prior), so the plain scores a prediction uses are not biased towards O."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None, labels=None,
                weights=None, start_positions=None, end_positions=None) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self._backbone(inputs)
        if self.info.task == "qa":
            result = {"start_logits": out.start_logits, "end_logits": out.end_logits}
            if start_positions is not None:
                result["loss"] = (F.cross_entropy(out.start_logits.float(), start_positions, reduction="sum")
                                  + F.cross_entropy(out.end_logits.float(), end_positions, reduction="sum")) / 2
            return result
        result = {"logits": out.logits}
        if labels is not None:
            result["loss"] = self._loss(out.logits, labels, weights)
        return result

    def _backbone(self, inputs: dict[str, torch.Tensor]):
        """`net`'s output. With a prompt prefix every row starts with (task.head_prompt), the prefix is encoded
        once, as one row, and its keys and values serve every row: the same result for about half the work."""
        ids, p = inputs["input_ids"], len(self.prefix_ids)
        if not p or ids.shape[1] <= p or "token_type_ids" in inputs:
            return self.net(**inputs)
        if not bool((ids[:, :p] == torch.tensor(self.prefix_ids, device=ids.device)).all()):
            return self.net(**inputs)
        from transformers import DynamicCache

        rows = ids.shape[0]
        first = self.net(input_ids=ids[:1, :p], attention_mask=inputs["attention_mask"][:1, :p], use_cache=True)
        past = DynamicCache(ddp_cache_data=[
            (layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1))
            for layer in first.cache.layers])
        positions = torch.arange(p, ids.shape[1], device=ids.device).expand(rows, -1)
        return self.net(input_ids=ids[:, p:], attention_mask=inputs["attention_mask"], cache=past,
                        position_ids=positions, use_cache=True)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        if self.tag_shift is not None:
            logits = logits.float() + self.tag_shift
        if self.crf is not None:
            keep = labels != IGNORE
            emissions, mask = _compact(logits, keep)
            tags, _ = _compact(labels, keep)
            return self.crf.nll(emissions, tags, mask).sum()
        losses = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE,
                                 reduction="none")
        if weights is not None:
            losses = losses * weights.flatten()
        return losses.sum()

    def tag_paths(self, logits: torch.Tensor, keep: torch.Tensor) -> list[list[int]]:
        """ner: the tag id of each kept position, per row (Viterbi with a CRF, else the best tag)."""
        if self.crf is not None:
            emissions, mask = _compact(logits, keep)
            return self.crf.decode(emissions, mask)
        best = logits.argmax(-1)
        return [best[row][keep[row]].tolist() for row in range(len(best))]


def summed_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The route's loss: the head's summed cross-entropy (or CRF negative log-likelihood)."""
    return model(**batch)["loss"]


# ---- building ------------------------------------------------------------------------------------------


def _auto_class(task: str):
    import transformers

    return getattr(transformers, AUTO_CLASSES[task])


def _backbone_renaming(net: nn.Module, loading: dict[str, Any]) -> dict[str, str] | None:
    """The key mapping for a checkpoint that keeps the backbone under another name than the head class
    (transformers' LlamaForQuestionAnswering expects `transformer.*`, a Llama checkpoint has `model.*`)."""
    prefix = net.base_model_prefix
    missing = {key for key in loading["missing_keys"] if key.startswith(f"{prefix}.")}
    for key in loading["unexpected_keys"]:
        name, _, rest = key.partition(".")
        if f"{prefix}.{rest}" in missing:
            return {rf"^{re.escape(name)}\.": f"{prefix}."}
    return None


def _load_net(source: Path, info: HeadInfo, cfg: ModelConfig, pad_token_id: int | None):
    """The transformers head model from a model directory, and the modules it had to create."""
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(info.outputs))
    options = dict(
        num_labels=len(info.outputs),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        dtype=weight_dtype(cfg),
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
        local_files_only=True,
        output_loading_info=True,
    )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head is "missing" by design: said once by build_head instead
    try:
        net, loading = _auto_class(info.task).from_pretrained(source, **options)
        mapping = _backbone_renaming(net, loading)
        if mapping:
            net, loading = _auto_class(info.task).from_pretrained(source, key_mapping=mapping, **options)
    finally:
        hf_logging.set_verbosity(verbosity)
    if net.config.pad_token_id is None and pad_token_id is not None:
        net.config.pad_token_id = pad_token_id  # decoders pick their last non-pad token by it
    new = sorted({key.rsplit(".", 1)[0] for key in loading["missing_keys"]})
    return net, new


def _start_at_label_tokens(net: nn.Module, new: list[str], tokenizer, labels: list[str]) -> None:
    """task.head_prompt: the new classifier's row for each label = the output embedding of the label's first
    token, so its scores start as the LM's logits for those tokens (a tied embedding, else lm_head read from
    the checkpoint)."""
    layers = [net.get_submodule(name) for name in new]
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear) or layers[0].out_features != len(labels):
        raise ConfigError(f"task.head_prompt: expected one new linear layer with {len(labels)} outputs, "
                          f"found {new}")
    first = [tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in labels]
    if len(set(first)) < len(first):
        print("warning: task.head_prompt: labels share a first token, so the head starts with equal rows "
              "for them", flush=True)
    embedding = _output_embedding(net)
    with torch.no_grad():
        layers[0].weight.copy_(embedding[first].to(layers[0].weight.dtype))
        if layers[0].bias is not None:
            layers[0].bias.zero_()


def _output_embedding(net: nn.Module) -> torch.Tensor:
    """The LM's output embedding matrix: the input embedding when tied, else lm_head.weight from the files."""
    if getattr(net.config, "tie_word_embeddings", False):
        return net.get_input_embeddings().weight
    from safetensors import safe_open

    for file in sorted(Path(net.config._name_or_path).glob("*.safetensors")):
        with safe_open(file, "pt") as tensors:
            key = next((k for k in tensors.keys() if k.endswith("lm_head.weight")), None)
            if key is not None:
                return tensors.get_tensor(key)
    raise ConfigError(f"task.head_prompt: no lm_head.weight in {net.config._name_or_path} to start the head from")


def _read_prompt_prefix(head: TaskHead, tokenizer) -> None:
    """task.head_prompt: the prompt tokens before the text, which `TaskHead` encodes once per batch."""
    head.prefix_ids = prompt_frame(tokenizer, head.info.spec())[0]


def build_head(cfg: Config) -> TaskHead:
    """The route's model: a new head on model.name_or_path, prepared for train.finetuning."""
    from tasktune.model.load import load_tokenizer

    cfg.model.check()
    if cfg.model.adapter:
        raise ConfigError("model.adapter is a generative LoRA adapter; task.method=head trains a new head on "
                          "model.name_or_path (to score a trained head: tasktune eval with eval.checkpoint=DIR)")
    info = HeadInfo.from_spec(cfg.task, cfg.model.name_or_path)
    tokenizer = load_tokenizer(cfg.model)
    net, new = _load_net(resolve_model_dir(cfg.model.name_or_path), info, cfg.model, tokenizer.pad_token_id)
    if info.case_features:
        new = sorted({*new, widen_token_types(net)})
    print(f"{type(net).__name__}: new modules {', '.join(new) or 'none'}", flush=True)
    fresh = sum(p.numel() for name, p in net.named_parameters() if name.rsplit(".", 1)[0] in new)
    if fresh > 0.05 * sum(p.numel() for p in net.parameters()):
        print(f"warning: {fresh:,} parameters are new, not only a head: does {cfg.model.name_or_path} fit "
              f"{type(net).__name__}?", flush=True)
    crf = CRF(len(info.outputs), allowed_transitions(info.outputs)) if info.use_crf else None
    head = TaskHead(net, info, crf, new)
    if info.prompt_instruction is not None:
        _start_at_label_tokens(net, new, tokenizer, info.outputs)
        _read_prompt_prefix(head, tokenizer)
    if info.task == "ner" and cfg.task.logit_adjustment > 0:
        prior = torch.tensor(tag_log_prior(cfg.task, tokenizer))
        head.tag_shift = cfg.task.logit_adjustment * prior
        print("ner tag prior (logit adjustment): " + ", ".join(
            f"{name} {p:.1%}" for name, p in zip(info.outputs, prior.exp().tolist(), strict=True)), flush=True)
    return prepare_head(head, cfg.train, cfg.lora)


def prepare_head(model: TaskHead, train: TrainConfig, lora: LoraConfig) -> TaskHead:
    """lora: peft on the backbone, the new modules (and lora.modules_to_save) trained in full; full: all."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    train.check()
    if train.finetuning == "freeze":
        raise ConfigError("train.finetuning=freeze is not available for task heads: use lora or full")
    if train.gradient_checkpointing:
        model.net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if train.finetuning == "lora":
            model.net.enable_input_require_grads()
    if train.finetuning == "full":
        model.requires_grad_(True)
    else:
        lora.check()
        targets = lora.target_modules
        config = PeftLoraConfig(
            task_type=getattr(TaskType, PEFT_TASK_TYPES[model.info.task]),
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules="all-linear" if targets == ["all-linear"] else list(targets),
            modules_to_save=sorted(set(model.new_modules) | set(lora.modules_to_save or [])),
        )
        model.net = get_peft_model(model.net, config)
    model.train()
    trainable, total = count_parameters(model)
    print(f"{train.finetuning} ({model.info.task} head): trainable params {trainable:,} / {total:,} "
          f"({100 * trainable / total:.2f}%)", flush=True)
    return model


# ---- saving and loading --------------------------------------------------------------------------------


def save_head(model: TaskHead, tokenizer, out_dir: str | Path, finetuning: str) -> Path:
    """lora -> out_dir/adapter/, else out_dir/model/; with the tokenizer, head.json and the CRF."""
    from safetensors.torch import save_file

    target = Path(out_dir) / ("adapter" if finetuning == "lora" else "model")
    target.mkdir(parents=True, exist_ok=True)
    model.net.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    if model.crf is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.crf.state_dict().items()}, target / CRF_FILE)
    (target / HEAD_FILE).write_text(json.dumps(asdict(model.info), indent=2, ensure_ascii=False) + "\n")
    return target


def is_head_dir(path: str | Path) -> bool:
    return (Path(path) / HEAD_FILE).is_file()


def find_head_dir(path: str | Path) -> Path:
    """A saved head: the directory itself, else its best/adapter, best/model, adapter or model (a run's
    output directory)."""
    path = Path(path)
    for candidate in (path, path / "best" / "adapter", path / "best" / "model", path / "adapter", path / "model"):
        if is_head_dir(candidate):
            return candidate
    raise FileNotFoundError(f"{path}: no task head here ({HEAD_FILE} not found in it, nor in its best/, "
                            "adapter/ or model/): train one with task.method=head")


def load_head(path: str | Path, model_cfg: ModelConfig | None = None) -> tuple[TaskHead, Any]:
    """(the head in eval mode, its tokenizer) from a directory written by `save_head` (or a run's output
    directory). model_cfg gives dtype / attention / trust_remote_code (its name_or_path is not used)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path = find_head_dir(path)
    cfg = model_cfg or ModelConfig()
    info = HeadInfo(**json.loads((path / HEAD_FILE).read_text(encoding="utf-8")))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    adapter = (path / "adapter_config.json").is_file()
    source = resolve_model_dir(info.base_model) if adapter else path
    net, _ = _load_net(source, info, cfg, tokenizer.pad_token_id)
    if info.case_features:
        widen_token_types(net)  # before the adapter's saved copy of the widened embedding is loaded
    if adapter:
        net = PeftModel.from_pretrained(net, path, is_trainable=False)
    crf = None
    if info.use_crf:
        crf = CRF(len(info.outputs), allowed_transitions(info.outputs))
        crf.load_state_dict(load_file(path / CRF_FILE))
    head = TaskHead(net, info, crf).eval()
    if info.prompt_instruction is not None:
        _read_prompt_prefix(head, tokenizer)
    return head, tokenizer
