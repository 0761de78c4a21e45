"""Packing and collate: packs respect cutoff_len; packed or padded batches keep each example's loss."""

from __future__ import annotations

import pytest
import torch

from tasktune.data.collate import collate, count_target_tokens
from tasktune.data.messages import Conversation, Message
from tasktune.data.pack import pack_examples, pack_groups, with_positions
from tasktune.data.tokenize import IGNORE_INDEX, encode_conversation

PAIRS = [
    ("Hi", "Hello there, friend."),
    ("What is two plus two?", "Four."),
    ("Name three colors, please.", "Red, green and blue are three colors."),
    ("Say yes.", "Yes."),
]


def fake(n: int, tag: int) -> dict:
    return {"input_ids": [tag] * n, "labels": [IGNORE_INDEX] + [tag] * (n - 1)}


def test_pack_groups_best_fit_decreasing_is_deterministic_and_complete():
    lengths = [5, 9, 3, 7, 1, 5, 10]
    groups = pack_groups(lengths, cutoff_len=10)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 10 for g in groups)
    assert groups == [[6], [1, 4], [3, 2], [0, 5]]  # 40 tokens in 4 full bins of 10
    assert groups == pack_groups(lengths, cutoff_len=10)
    with pytest.raises(ValueError, match="cutoff_len"):
        pack_groups([11], cutoff_len=10)


def test_packed_units_concatenate_with_restarting_positions():
    packs = pack_examples([fake(3, 1), fake(6, 2), fake(4, 3)], cutoff_len=10)
    assert [p["input_ids"] for p in packs] == [[2] * 6 + [3] * 4, [1] * 3]
    assert packs[0]["position_ids"] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert packs[0]["labels"][6] == IGNORE_INDEX  # an example's first token is never a target
    assert with_positions(fake(3, 1))["position_ids"] == [0, 1, 2]


def test_collate_pads_as_its_own_segment_without_attention_mask():
    batch = collate([with_positions(fake(2, 5)), with_positions(fake(4, 6))], pad_token_id=0)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[5, 5, 0, 0], [6, 6, 6, 6]]
    assert batch["labels"].tolist() == [[-100, 5, -100, -100], [-100, 6, 6, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 2, 3]]
    assert count_target_tokens(batch) == 4


def token_losses(model, batch) -> torch.Tensor:
    """Per-position cross-entropy (0 where there is no target), as the training step computes it."""
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
    targets = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses


def per_segment(losses: torch.Tensor, positions: torch.Tensor) -> list[float]:
    """Summed loss per example of a packed row: position t's loss belongs to the example of token t + 1."""
    segment = (positions == 0).cumsum(0)[1:] - 1
    return [losses[segment == s].sum().item() for s in range(int(segment.max()) + 1)]


@pytest.fixture(scope="module")
def model_and_examples(tiny_llama_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    convs = [Conversation([Message("user", q), Message("assistant", a)]) for q, a in PAIRS]
    return model.eval(), [encode_conversation(c, smol_tokenizer, 256) for c in convs]


def test_packed_batch_gives_each_example_its_own_loss(model_and_examples, smol_tokenizer):
    model, examples = model_and_examples
    alone = [token_losses(model, collate([with_positions(e)], 0))[0].sum().item() for e in examples]
    packs = pack_examples(examples, cutoff_len=256)
    assert len(packs) == 1
    batch = collate(packs, smol_tokenizer.pad_token_id)
    order = pack_groups([len(e["input_ids"]) for e in examples], 256)[0]
    packed = per_segment(token_losses(model, batch)[0], batch["position_ids"][0])
    assert packed == pytest.approx([alone[i] for i in order], rel=1e-4)

    # control: the same row with one running position sequence lets examples see each other
    leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    leaked = token_losses(model, leaky)[0]
    restart = batch["position_ids"][0]
    assert per_segment(leaked, restart) != pytest.approx([alone[i] for i in order], rel=1e-4)


def test_padding_does_not_change_per_example_losses(model_and_examples, smol_tokenizer):
    model, examples = model_and_examples
    alone = [token_losses(model, collate([with_positions(e)], 0))[0].sum().item() for e in examples]
    batch = collate([with_positions(e) for e in examples], smol_tokenizer.pad_token_id)
    assert len({len(e["input_ids"]) for e in examples}) > 1  # rows really are padded
    padded = token_losses(model, batch).sum(dim=1).tolist()
    assert padded == pytest.approx(alone, rel=1e-4)
    assert count_target_tokens(batch) == sum(
        sum(lab != IGNORE_INDEX for lab in e["labels"]) for e in examples
    )
