"""Classification by log-likelihood: the label whose tokens (and end-of-turn) the model finds most likely."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from tasktune.evaluate.constrain import label_token_ids
from tasktune.evaluate.generate import left_pad, prompt_ids


@dataclass
class LoglikResult:
    choices: list[int]
    """Index of the most likely label for each conversation."""
    scores: list[list[float]]
    """Summed log-likelihood of every label (its tokens plus the end-of-turn token) per conversation."""
    seconds: float


def score_choices(
    model, tokenizer, conversations: list[list[dict]], labels: list[str], batch_size: int = 16,
    progress: bool = True,
) -> LoglikResult:
    """Sum of log p(label tokens + end-of-turn | prompt) for every (conversation, label) pair, batched.

    Pairs are left-padded, so every continuation ends at the last position and only the last logits are
    computed (`logits_to_keep`); positions follow the attention mask, as in generation.
    """
    started = time.perf_counter()
    label_ids, end_id = label_token_ids(tokenizer, labels)
    continuations = [ids + [end_id] for ids in label_ids]
    prompts = prompt_ids(tokenizer, conversations)
    pairs = [(c, k) for c in range(len(prompts)) for k in range(len(labels))]
    pairs.sort(key=lambda p: -(len(prompts[p[0]]) + len(continuations[p[1]])))
    scores = [[0.0] * len(labels) for _ in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(pairs), desc="loglik", unit="pair", disable=not progress, leave=False)
    try:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            ids, mask = left_pad([prompts[c] + continuations[k] for c, k in batch], pad_id)
            keep = max(len(continuations[k]) for _, k in batch) + 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = model(
                    input_ids=ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    position_ids=positions.to(model.device),
                    logits_to_keep=keep,
                    use_cache=False,
                ).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1).cpu()  # predicts the last keep-1 tokens
            for row, (c, k) in enumerate(batch):
                target = continuations[k]
                predicted = logprobs[row, keep - 1 - len(target) :]
                scores[c][k] = float(predicted.gather(-1, torch.tensor(target)[:, None]).sum())
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    choices = [max(range(len(labels)), key=lambda k, s=s: s[k]) for s in scores]
    return LoglikResult(choices, scores, time.perf_counter() - started)
