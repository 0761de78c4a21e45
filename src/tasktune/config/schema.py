"""The run configuration: nested dataclasses whose field docstrings are the `--help` text.

Each section validates only its own values (`check()`), called where the values are used.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path

from tasktune.config.compress import CompressConfig
from tasktune.config.errors import ConfigError, one_of
from tasktune.config.preference import STAGES, PreferenceConfig
from tasktune.config.task import EvalConfig, TaskConfig

__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "LoraConfig", "ModelConfig", "OutputConfig",
           "PreferenceConfig", "TaskConfig", "TrainConfig"]


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"
    """Model registry name (`tasktune models` lists them) or a local Hugging Face model directory."""
    adapter: str | None = None
    """A trained LoRA adapter directory to load on top of the model (eval, chat, further training)."""
    template: str | None = None
    """Chat template override: a name from registry/templates or a .jinja path; default: the tokenizer's own."""
    dtype: str = "auto"
    """Weight dtype when loading: auto | float32 | bfloat16 | float16. auto: the frozen base in bfloat16 when
    training an adapter under bf16 mixed precision (adapters stay float32), bfloat16 for generation where the
    hardware runs it, float32 otherwise (full/freeze training, export). Mixed precision is `train.mixed_precision`."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa | eager."""
    trust_remote_code: bool = False
    """Run Python code shipped with a model directory. Off unless you trust the model's source."""
    quantization: str = "nf4"
    """With train.finetuning=qlora: how the frozen base is loaded by bitsandbytes: nf4 | fp4 (4-bit) | int8."""

    def check(self) -> None:
        one_of("model", "dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        one_of("model", "quantization", self.quantization, ("nf4", "fp4", "int8"))
        one_of("model", "attn_implementation", self.attn_implementation, ("sdpa", "eager"))


@dataclass
class DataConfig:
    datasets: list[str] = field(default_factory=list)
    """Datasets to train on: names in `dataset_dir`/dataset_info.json, or json/jsonl/csv/parquet paths.
    May stay empty when task.train_file provides the data."""
    dataset_dir: str = "data"
    """Folder with a LLaMA-Factory style dataset_info.json; file names in it are relative to this folder."""
    weights: list[float] | None = None
    """Mixing weights, one per dataset (sampling with replacement to the weighted share); default: concatenate."""
    cutoff_len: int = 1024
    """Longest tokenized example; longer ones are handled by `overlong`."""
    overlong: str = "truncate"
    """What to do with examples longer than cutoff_len (each reported): truncate (cut the end; an answer cut
    away rejects the row) | truncate_prompt (cut the end of the user's text, keep the answer whole: for
    classification of long texts; not for tasks whose answer copies the text, inline NER, QA, MT) | reject."""
    packing: bool = True
    """Pack short examples into sequences of cutoff_len (no attention between them): no padding wasted."""
    max_samples: int | None = None
    """Use at most this many rows of each dataset (the first ones), for quick runs."""
    val_size: float = 0.0
    """Held-out share (<1) or count (>=1) of training examples for the eval loss."""
    max_rejected_share: float = 0.1
    """Stop before training when more than this share of rows is rejected."""
    seed: int = 42
    """Seed for shuffling, mixing and the validation split."""
    encoding: str | None = None
    """Text encoding of the data and task files (e.g. latin-1, cp1252, gb18030); default UTF-8 (a BOM is
    stripped). A file that does not decode is refused with the offset of the first bad byte."""

    def check(self) -> None:
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(f"data.encoding={self.encoding!r}: unknown encoding (e.g. utf-8, latin-1, "
                                  "cp1252, gb18030)") from None
        if self.weights is not None and len(self.weights) != len(self.datasets):
            raise ConfigError(
                f"data.weights has {len(self.weights)} values for {len(self.datasets)} datasets"
            )
        if self.cutoff_len < 8:
            raise ConfigError(f"data.cutoff_len={self.cutoff_len}: must be at least 8")
        one_of("data", "overlong", self.overlong, ("truncate", "truncate_prompt", "reject"))
        if not 0.0 <= self.max_rejected_share <= 1.0:
            raise ConfigError("data.max_rejected_share must be within [0, 1]")


@dataclass
class LoraConfig:
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt, or ["all-linear"] for every linear layer but the output head."""
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (e.g. a new classification head)."""
    variant: str = "lora"
    """lora | dora (weight-decomposed) | rslora (scale alpha/sqrt(r)) | pissa | olora (initialised from the
    weights' SVD / QR; saved converted to a plain LoRA of rank 2r that applies to the original base)."""
    layers_to_transform: list[int] | None = None
    """Adapt only these decoder layer indices (default: all)."""
    plus_ratio: float = 0.0
    """LoRA+: learning rate of the B matrices = plus_ratio x train.learning_rate (0: off; 16 is the paper's)."""

    def check(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError("lora.r and lora.alpha must be positive")
        one_of("lora", "variant", self.variant, ("lora", "dora", "rslora", "pissa", "olora"))
        if self.plus_ratio < 0:
            raise ConfigError("lora.plus_ratio must be >= 0 (0 turns LoRA+ off)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora.dropout must be within [0, 1)")


@dataclass
class TrainConfig:
    finetuning: str = "lora"
    """What is trained: lora (adapter) | qlora (adapter on a base quantized by model.quantization) | full (every
    weight) | freeze (only the last `freeze_trainable_layers`)."""
    stage: str = "sft"
    """sft (conversations) | dpo | orpo | simpo | kto (preference data, options in `pref`) | rm (reward model)."""
    freeze_trainable_layers: int = 2
    """With finetuning=freeze: how many of the last decoder layers are trained (negative: the first ones)."""
    learning_rate: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    lr_scheduler: str = "cosine"
    """Learning-rate schedule after warmup: cosine | linear | constant."""
    warmup_ratio: float = 0.05
    """Share of the optimizer steps spent warming up linearly from 0."""
    num_epochs: float = 1.0
    """Passes over the training data (fractions allowed). Ignored when max_steps > 0."""
    max_steps: int = -1
    """Stop after this many optimizer steps (> 0 overrides num_epochs)."""
    batch_size: int = 4
    """Sequences per micro-batch on each process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the loss is normalised by the target tokens of the whole step."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this value (0 disables)."""
    mixed_precision: str = "auto"
    """auto (bf16 where the hardware runs it, else fp16 on CUDA, else none) | bf16 | fp16 | no."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30 % slower."""
    fused_blocks: bool = True
    """Llama-family RMSNorm and SwiGLU blocks that keep less for backward (same numbers, less memory)."""
    seed: int = 42
    """Seed for weights of new modules, dropout and data order."""
    logging_steps: int = 5
    """Log loss, learning rate and tokens/s every this many optimizer steps."""
    save_steps: int = 0
    """Write a resumable checkpoint every this many optimizer steps (0: only the final output)."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints (oldest removed first)."""
    resume_from_checkpoint: str | None = None
    """`latest` or a checkpoint directory to continue exactly from."""
    eval_steps: int = 0
    """Compute the eval loss (and the task metric, when a task is set) every this many steps (0: never)."""
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])
    """Loggers: jsonl (always written) and optionally tensorboard | wandb (offline unless WANDB_MODE says
    otherwise) | mlflow (a local mlruns/ folder unless MLFLOW_TRACKING_URI is set) | none."""

    def check(self) -> None:
        one_of("train", "finetuning", self.finetuning, ("lora", "qlora", "full", "freeze"))
        one_of("train", "stage", self.stage, STAGES)
        one_of("train", "lr_scheduler", self.lr_scheduler, ("cosine", "linear", "constant"))
        one_of("train", "mixed_precision", self.mixed_precision, ("auto", "bf16", "fp16", "no"))
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be >= 1")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ConfigError("set train.num_epochs > 0 or train.max_steps > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("train.warmup_ratio must be within [0, 1)")
        unknown = set(self.report_to) - {"jsonl", "tensorboard", "wandb", "mlflow", "none"}
        if unknown:
            raise ConfigError(f"train.report_to: unknown logger(s) {sorted(unknown)}; "
                              "use jsonl, tensorboard, wandb, mlflow or none")


@dataclass
class OutputConfig:
    dir: str = "out/run"
    """Where the adapter or model, tokenizer, config.yaml, logs, plots and checkpoints are written."""
    overwrite: bool = False
    """Allow writing into a non-empty output directory (checkpoints are kept when resuming)."""

    def check(self) -> None:
        path = Path(self.dir)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"output.dir={self.dir}: is an existing file, not a folder; choose another output.dir")
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"output.dir={self.dir}: {parent} is a file, not a folder")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    tasks: list[TaskConfig] = field(default_factory=list)
    """Multi-task runs instead of `task`: a list of task sections (each takes the task.* keys: its files, a
    `weight`, an `alias`); one adapter is trained on their mixture and each is scored with its own metric."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    pref: PreferenceConfig = field(default_factory=PreferenceConfig)
