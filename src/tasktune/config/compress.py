"""The `compress` section: what `tasktune compress` makes from a tuned model, and how each variant is scored."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasktune.config.errors import ConfigError, one_of

QUANTIZE_METHODS = ("int8", "int8-dynamic", "int4", "nf4", "gguf-q8_0", "gguf-q4_k_m")
PRUNE_METHODS = ("magnitude", "wanda", "sparse-2:4", "drop-layers")
DISTILL_METHODS = ("distill-logits", "distill-head")
COMPRESS_METHODS = QUANTIZE_METHODS + PRUNE_METHODS + DISTILL_METHODS
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")


@dataclass
class CompressConfig:
    source: str = "auto"
    """Model compressed: auto (this run's best/ or final adapter/model in output.dir; trained first when there is
    none and train_if_missing is on) | base (model.name_or_path with model.adapter) | an adapter or model directory."""
    train_if_missing: bool = True
    """source=auto with no trained output in output.dir: run `tasktune train` on this config first."""
    methods: list[str] = field(default_factory=lambda: ["int8", "int8-dynamic", "wanda", "drop-layers"])
    """Variants, each written to OUTPUT_DIR/compress/<method>/ and scored: int8 | int8-dynamic | int4 | nf4 (torchao /
    bitsandbytes weights) | gguf-q8_0 | gguf-q4_k_m (llama.cpp) | magnitude | wanda | sparse-2:4 (Wanda scores,
    2 of every 4 weights) | drop-layers (depth pruning) | distill-logits (KD into a smaller student) | distill-head
    (LLM labels -> an encoder head)."""
    eval_limit: int | None = 50
    """Rows of the eval split scored for every variant (the same seeded sample for all; None: all rows)."""
    sparsity: float = 0.5
    """magnitude, wanda: share of the weights of every decoder Linear set to zero (sparse-2:4 is always 50 %)."""
    calibration_rows: int = 32
    """wanda, sparse-2:4, drop-layers: rows of the task's training data run through the model (activations)."""
    calibration_tokens: int = 256
    """Longest calibration row, in tokens (longer ones are cut)."""
    drop_layers: int = 2
    """drop-layers: how many consecutive decoder layers are removed (those whose removal changes the hidden state
    least on the calibration rows, by angular distance)."""
    int4_group_size: int = 32
    """int4: weights quantized in groups of this many input channels (32 or 64 for SmolLM2's hidden size 576)."""
    heal_steps: int = 0
    """After magnitude / wanda / sparse-2:4 / drop-layers: this many LoRA steps on the task data (lora and train
    sections, train.max_steps replaced) to recover quality; the healed model is another row, `<method>+heal`
    (0: no healing)."""
    measure_memory: bool = True
    """Peak RSS of loading each variant and scoring one row, in a fresh Python process (a few seconds each)."""
    speed_repeats: int = 3
    """Timed generation runs per variant (the fastest is kept)."""
    speed_new_tokens: int = 32
    """Tokens generated (greedy, forced length) in each timed run, after the same 32-token prompt."""
    student: str = "drop-layers"
    """distill-logits: the student: drop-layers (the model with drop_layers layers removed) | a model directory with the
    same vocabulary (e.g. a smaller model of the same family)."""
    distill_steps: int = 100
    """distill-logits: optimizer steps of the student (train.batch_size, train.learning_rate of this config)."""
    distill_finetuning: str = "full"
    """distill-logits: full (every student weight) | lora (merged into the student afterwards)."""
    kd_loss: str = "forward_kl"
    """distill-logits: forward_kl | reverse_kl | jsd (generalized Jensen-Shannon, see kd_beta)."""
    kd_alpha: float = 0.5
    """distill-logits: loss = kd_alpha * KD + (1 - kd_alpha) * cross-entropy on the target tokens."""
    kd_temperature: float = 1.0
    """distill-logits: softmax temperature of teacher and student (the KD term is scaled by its square)."""
    kd_beta: float = 0.5
    """distill-logits, jsd: the teacher's weight in the mixture distribution."""
    kd_top_k: int = 0
    """distill-logits: 0 runs the teacher on the fly; k > 0 caches its top-k log-probabilities once to
    OUTPUT_DIR/compress/runs/distill-logits/topk.pt (the teacher then leaves memory before training)."""
    head_model: str = "minilm-l6"
    """distill-head: the student encoder (registry name or directory) that gets a task head (classify, ner)."""
    head_epochs: float = 3.0
    """distill-head: epochs over the teacher-labelled texts."""
    head_learning_rate: float = 5.0e-4
    """distill-head: learning rate of the student (trained in full: it is small)."""
    teacher_label_limit: int | None = None
    """distill-head: label at most this many training texts with the teacher (None: all of train_range)."""
    extra_texts: str | None = None
    """distill-head: unlabeled texts (JSONL with a `text` field, or plain lines) the teacher labels too."""

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in COMPRESS_METHODS]
        if unknown or not self.methods:
            import difflib

            hints = [f"{m!r} (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(m, COMPRESS_METHODS, 1))
                     else repr(m) for m in unknown]
            raise ConfigError(f"compress.methods: unknown {', '.join(hints) or 'nothing listed'}; "
                              f"choose from {', '.join(COMPRESS_METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"compress.methods lists a method twice: {self.methods}")
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"compress.sparsity={self.sparsity}: must be within (0, 1)")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError("compress.eval_limit must be at least 1 (or null for all rows)")
        for name in ("calibration_rows", "calibration_tokens", "drop_layers", "speed_repeats", "speed_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"compress.{name} must be at least 1")
        if self.int4_group_size not in (32, 64, 128, 256):
            raise ConfigError(f"compress.int4_group_size={self.int4_group_size}: use 32, 64, 128 or 256 (and a "
                              "divisor of the hidden size: 32 or 64 for SmolLM2)")
        if self.heal_steps < 0 or self.distill_steps < 1 or self.kd_top_k < 0:
            raise ConfigError("compress.heal_steps and kd_top_k must be >= 0, distill_steps >= 1")
        one_of("compress", "distill_finetuning", self.distill_finetuning, ("full", "lora"))
        one_of("compress", "kd_loss", self.kd_loss, KD_LOSSES)
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"compress.kd_alpha={self.kd_alpha}: must be within [0, 1]")
        if self.kd_temperature <= 0:
            raise ConfigError(f"compress.kd_temperature={self.kd_temperature}: must be positive")
        if self.kd_loss == "jsd" and not 0.0 < self.kd_beta < 1.0:
            raise ConfigError(f"compress.kd_beta={self.kd_beta}: must be within (0, 1)")
        if self.head_epochs <= 0 or self.head_learning_rate <= 0:
            raise ConfigError("compress.head_epochs and compress.head_learning_rate must be positive")
