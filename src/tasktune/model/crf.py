"""A linear-chain CRF over tag emissions: negative log-likelihood (forward algorithm) and Viterbi decoding.

Sequences are left-aligned: `mask[b, :n]` is True for the n positions of sequence b, False after them.
Ours rather than a package: the PyTorch CRF packages on PyPI are unmaintained (pytorch-crf 0.7.2, 2019;
torchcrf 1.1.0, 2020) and the algorithm is fifty lines, tested against brute-force enumeration
(tests/unit/test_heads_crf.py).
"""

from __future__ import annotations

import torch
from torch import nn

FORBIDDEN = -10000.0
"""Score added to a transition that `allowed` rules out (finite, so sums stay exact and gradients finite)."""


class CRF(nn.Module):
    """allowed: an optional [num_tags, num_tags] boolean matrix of permitted transitions (e.g. no I-PER after
    O in IOB2); forbidden ones are never decoded and take no probability mass."""

    def __init__(self, num_tags: int, allowed: torch.Tensor | None = None) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(num_tags))
        """Score of starting a sequence with each tag."""
        self.end = nn.Parameter(torch.zeros(num_tags))
        """Score of ending a sequence with each tag."""
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        """transitions[i, j]: score of tag j following tag i."""
        penalty = torch.zeros(num_tags, num_tags) if allowed is None else (~allowed).float() * FORBIDDEN
        self.register_buffer("penalty", penalty, persistent=False)

    def moves(self) -> torch.Tensor:
        """Transition scores with the forbidden ones penalised."""
        return self.transitions + self.penalty

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised score of the given tag paths, shape [batch]."""
        mask = mask.to(emissions.dtype)
        lengths = mask.sum(1).long()
        tags = tags.clamp(min=0)  # positions past a sequence's end are masked out below
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)
        moved = self.moves()[tags[:, :-1], tags[:, 1:]]
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        return (self.start[tags[:, 0]] + (emitted * mask).sum(1) + (moved * mask[:, 1:]).sum(1)
                + self.end[last])

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log of the summed exp-scores of every tag path, shape [batch]."""
        alpha, moves = self.start + emissions[:, 0], self.moves()
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha.unsqueeze(2) + moves + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t].unsqueeze(1), step, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of each sequence's tags, shape [batch] (0 for empty sequences)."""
        emissions = emissions.float()
        value = self.log_partition(emissions, mask) - self.score(emissions, tags, mask)
        return value * mask.any(1)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The highest-scoring tag path of each sequence (Viterbi), as lists of its true length."""
        emissions = emissions.float()
        best, moves = self.start + emissions[:, 0], self.moves()
        history = []
        for t in range(1, emissions.shape[1]):
            total = best.unsqueeze(2) + moves + emissions[:, t].unsqueeze(1)
            step, came_from = total.max(dim=1)
            history.append(came_from)
            best = torch.where(mask[:, t].unsqueeze(1), step, best)
        best = best + self.end
        paths = []
        for b, length in enumerate(mask.sum(1).tolist()):
            if length == 0:
                paths.append([])
                continue
            tag = int(best[b].argmax())
            path = [tag]
            for t in range(length - 1, 0, -1):
                tag = int(history[t - 1][b, tag])
                path.append(tag)
            paths.append(path[::-1])
        return paths
