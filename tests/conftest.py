"""Shared fixtures: the real SmolLM2 tokenizer and model, tiny random models, a tiny LoRA adapter."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def needs_shared(sub: str = "") -> pytest.MarkDecorator:
    """Skip cleanly when ../shared/data (or a part of it) is absent, as on a user's fresh clone."""
    path = SHARED_DATA / sub
    return pytest.mark.skipif(not path.exists(), reason=f"real data not available: {path} is absent")


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """A directory holding only the SmolLM2 tokenizer (special tokens fixed from the GGUF metadata).

    Copied from the converted model cache when it exists (fast), else read from the GGUF (about 7 s).
    """
    from transformers import AutoTokenizer

    from tasktune.model.convert import cached_dir, gguf_tokenizer
    from tasktune.model.load import model_entry

    out = tmp_path_factory.mktemp("smol_tokenizer")
    converted = cached_dir(model_entry("smollm2-135m-instruct"))
    tokenizer = AutoTokenizer.from_pretrained(converted) if converted else gguf_tokenizer()
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer Llama with random weights and the real SmolLM2 tokenizer, saved as a model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=smol_tokenizer.bos_token_id,
        eos_token_id=smol_tokenizer.eos_token_id,
        pad_token_id=smol_tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def noisy_llama(tiny_llama_dir):
    """The tiny random Llama with large weights (its replies differ and wander) and its left-padding tokenizer."""
    import torch

    from tasktune.config.schema import ModelConfig
    from tasktune.model.load import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    model = load_model(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    return model, load_tokenizer(cfg, padding_side="left")


def random_reply(constraint, rng, stop_id: int = 2) -> tuple[int, ...]:
    """Token ids drawn uniformly from what a decoding constraint allows at each step, until it stops."""
    generated: tuple[int, ...] = ()
    while (choice := rng.choice(list(constraint.allowed(generated)))) != stop_id:
        generated += (choice,)
    return generated


def allowed_along_a_walk(constraint, rng, steps: int = 4, stop_id: int = 2) -> list[tuple[frozenset, set]]:
    """(states, allowed tokens) at each step of a random walk under a byte-grammar constraint, checking at
    each that the allowed tokens (stop aside) are exactly those whose bytes the grammar reads, and not none."""
    seen, generated = [], ()
    for _ in range(steps):
        states = constraint.states_after(generated)
        allowed = set(constraint.allowed(generated))
        brute = {t for t, data in constraint.table.by_id.items() if constraint._read(states, data)}
        assert allowed - {stop_id} == brute and brute
        seen.append((states, allowed))
        generated += (rng.choice(sorted(brute)),)
    return seen


def assert_same_head_predictions(trained, reloaded, other) -> None:
    """Per row, the same prediction (entities, label) from a head at training time, after reloading it and
    read with another eval config; scores within 1e-4 of training time's, and within 1e-6 between the last two."""
    import pytest

    for (predicted, scores), (predicted2, scores2), (predicted3, scores3) in zip(trained, reloaded, other,
                                                                                  strict=True):
        assert predicted == predicted2 == predicted3
        assert scores == pytest.approx(scores2, abs=1e-4) and scores2 == pytest.approx(scores3, abs=1e-6)


def make_tiny_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter (r=4, all-linear) for a tiny model with random non-zero B (it changes the logits),
    saved by `save_trained`: the adapter files and the tokenizer in one directory. Seeds give different ones."""
    import torch

    from tasktune.config.schema import LoraConfig, ModelConfig, TrainConfig
    from tasktune.model.adapters import prepare_for_training, save_trained
    from tasktune.model.load import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=str(model_dir))
    torch.manual_seed(seed)  # lora_A's initialisation too: the same adapter whichever tests ran before
    model = prepare_for_training(load_model(cfg), TrainConfig(finetuning="lora"), LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return save_trained(model, load_tokenizer(cfg), out, "lora")


@contextlib.contextmanager
def slow_steps(model, seconds: float):
    """Every forward pass of `model` (a PeftModel's base too, and its lean forward, model/lean.py) sleeps first:
    a long generation on demand."""
    from tasktune.model.lean import lean_forward

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    patched = [m for m in (base, lean_forward(model) or lean_forward(base)) if m is not None]

    def slowed(original):
        @functools.wraps(original)
        def slow(*args, **kwargs):
            time.sleep(seconds)
            return original(*args, **kwargs)
        return slow

    for m in patched:
        m.forward = slowed(m.forward)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    return make_tiny_adapter(tiny_llama_dir, tmp_path_factory.mktemp("tiny_run"), seed=1)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as a safetensors folder (converted once into $TASKTUNE_HOME, ~20 s)."""
    from tasktune.model.load import resolve_model_dir

    return resolve_model_dir("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT with random weights and the MiniLM (uncased WordPiece) tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tasktune.model.load import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("minilm-l6"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny_bert")
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
