"""Export measurements: perplexity on our own text and the before/after comparison."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tasktune.export.measure import EVAL_TEXT_FILE, compare_model_dirs, perplexity


def test_perplexity_is_exp_of_the_mean_next_token_loss(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True).eval()
    ids = torch.tensor([[1, 504, 2240, 314, 3150, 30, 2]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    expected = math.exp(F.cross_entropy(logits, ids[0, 1:]).item())
    assert perplexity(model, ids) == pytest.approx(expected, rel=1e-5)
    assert expected > 1000  # random weights: close to the 49k-token vocabulary, so the check is not trivial


def test_compare_model_dirs_reports_both_sides(tiny_llama_dir):
    result = compare_model_dirs(tiny_llama_dir, tiny_llama_dir, repeats=1, new_tokens=4)
    assert result["eval_tokens"] > 300 and len(EVAL_TEXT_FILE.read_text().split()) > 250
    assert result["perplexity"]["before"] == result["perplexity"]["after"] > 1
    for key in ("forward_tokens_per_s", "generate_tokens_per_s"):
        assert set(result[key]) == {"before", "after"} and min(result[key].values()) > 0
