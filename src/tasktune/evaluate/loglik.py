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


def right_aligned(sequences: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (len(sequences), width): each sequence at the right end, 0 / False before it."""
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
            mask[row, width - len(sequence) :] = True
    return ids, mask


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log p(target) over the positions where `mask` is set: the target's logit minus
    the log-sum-exp of the position's logits (in float32), without a log-softmax copy of the logits."""
    picked = logits.gather(-1, targets[..., None]).squeeze(-1).float()
    normaliser = torch.logsumexp(logits.float(), dim=-1)
    return ((picked - normaliser) * mask).sum(-1)


def score_choices(
    model, tokenizer, conversations: list[list[dict]], labels: list[str], batch_size: int = 16,
    progress: bool = True,
) -> LoglikResult:
    """Sum of log p(label tokens + end-of-turn | prompt) for every (conversation, label) pair, batched.

    Pairs are left-padded, so every continuation ends at the last position and only the last logits are
    computed (`logits_to_keep`): with a 262k vocabulary (Gemma 3) the prompt positions never reach the output
    layer. Each log-probability is the target's logit minus the log-sum-exp of its row, so no second
    vocabulary-sized tensor (log-softmax) is made and only the scores leave the device. Positions follow
    the attention mask, as in generation.
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
            targets, counted = right_aligned([continuations[k] for _, k in batch], keep - 1)
            with torch.inference_mode():
                logits = model(
                    input_ids=ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    position_ids=positions.to(model.device),
                    logits_to_keep=keep,
                    use_cache=False,
                ).logits[:, :-1]  # the last keep-1 positions predict the continuation tokens
                summed = target_logprobs(logits, targets.to(logits.device), counted.to(logits.device)).cpu()
            for row, (c, k) in enumerate(batch):
                scores[c][k] = float(summed[row])
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    choices = [max(range(len(labels)), key=lambda k, s=s: s[k]) for s in scores]
    return LoglikResult(choices, scores, time.perf_counter() - started)
