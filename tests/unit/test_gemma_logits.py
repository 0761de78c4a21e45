"""Gemma 3's 262k vocabulary: the output layer sees only the positions whose logits are used (training
targets, label continuations, the last prompt position), shown on a tiny random Gemma3ForCausalLM."""

from __future__ import annotations

import pytest
import torch

from tasktune.data.tokenize import encode_conversation, load_template


@pytest.fixture(scope="module")
def tiny_gemma(smol_tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
        pad_token_id=smol_tokenizer.pad_token_id, eos_token_id=smol_tokenizer.eos_token_id,
        bos_token_id=smol_tokenizer.bos_token_id,
    )  # fmt: skip
    return Gemma3ForCausalLM(config).eval()


class RowsIntoHead:
    """Counts the hidden-state rows entering `lm_head` (each one is a full-vocabulary logit row)."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.handle = model.lm_head.register_forward_hook(self._hook)

    def _hook(self, _module, inputs, _output):
        self.rows.append(inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_training_loss_projects_only_target_positions(tiny_gemma, smol_tokenizer):
    from tasktune.data.collate import collate
    from tasktune.data.messages import Conversation, Message
    from tasktune.train.step import count_targets, summed_loss

    conv = Conversation([Message("user", "Name a colour, please, with a long question around it."),
                         Message("assistant", "Teal.")])
    example = encode_conversation(conv, smol_tokenizer, 256, chat_template=load_template("gemma"))
    batch = collate([{**example, "position_ids": list(range(len(example["input_ids"])))}] * 2,
                    smol_tokenizer.pad_token_id)
    with RowsIntoHead(tiny_gemma) as head:
        loss = summed_loss(tiny_gemma, batch)
    # lm_head sees the target rows only (or none, when the projection is fused with the loss)
    assert head.rows in ([count_targets(batch)], [0]) and count_targets(batch) < batch["input_ids"].numel() // 4
    with torch.no_grad():
        logits = tiny_gemma(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 reduction="sum", ignore_index=-100)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-3)


def test_loglik_projects_only_the_continuation_positions(tiny_gemma, smol_tokenizer):
    from tasktune.evaluate.constrain import label_token_ids
    from tasktune.evaluate.loglik import score_choices

    labels = ["negative", "positive"]
    prompts = [[{"role": "user", "content": f"Review {i}: the room was quiet and the staff kind. Label?"}]
               for i in range(3)]
    label_ids, _ = label_token_ids(smol_tokenizer, labels)
    keep = max(map(len, label_ids)) + 2  # + end-of-turn + the position that predicts the first label token
    with RowsIntoHead(tiny_gemma) as head:
        result = score_choices(tiny_gemma, smol_tokenizer, prompts, labels, batch_size=6, progress=False)
    assert head.rows == [6 * keep]
    assert len(result.choices) == 3 and all(s < 0 for row in result.scores for s in row)


def test_target_logprobs_equal_log_softmax():
    from tasktune.evaluate.loglik import right_aligned, target_logprobs

    torch.manual_seed(1)
    logits = torch.randn(2, 4, 50)
    targets, mask = right_aligned([[3, 7], [1, 2, 9, 4]], 4)
    expected = [float(torch.log_softmax(logits[r], -1)[range(4), targets[r]][mask[r]].sum()) for r in range(2)]
    assert target_logprobs(logits, targets, mask).tolist() == pytest.approx(expected, abs=1e-5)


def test_generation_prefill_projects_one_position_per_row(tiny_gemma, smol_tokenizer, monkeypatch):
    from tasktune.evaluate.generate import generate_texts
    from tasktune.model.decode import Decoder

    projected: list[int] = []  # rows the decoder projects itself (it applies the output embedding for Gemma 3)
    own = Decoder._logits

    def counted(self, out, ids=None):
        projected.append(out.shape[0])
        return own(self, out, ids)

    monkeypatch.setattr(Decoder, "_logits", counted)
    prompts = [[{"role": "user", "content": "A fairly long prompt about the weather in Oslo " * 3}]] * 2
    with RowsIntoHead(tiny_gemma) as head:
        generate_texts(tiny_gemma, smol_tokenizer, prompts, max_new_tokens=3, batch_size=2, progress=False)
    seen = head.rows + projected
    assert seen and max(seen) <= 2  # each forward: at most the last position of each row
