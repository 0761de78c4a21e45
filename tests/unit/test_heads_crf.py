"""The CRF layer against brute force: every tag path enumerated for small sequences."""

from __future__ import annotations

import itertools

import pytest
import torch

from tasktune.model.crf import CRF
from tasktune.model.head_data import allowed_transitions


def _path_score(crf: CRF, emissions: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    total = crf.start[path[0]] + crf.end[path[-1]]
    for t, tag in enumerate(path):
        total = total + emissions[t, tag]
        if t:
            total = total + crf.moves()[path[t - 1], tag]
    return total


def _random_crf(tags: int, seed: int, allowed: torch.Tensor | None = None) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(tags, allowed)
    with torch.no_grad():
        for param in crf.parameters():
            param.normal_()
    return crf


IOB2 = ["O", "B-X", "I-X"]


@pytest.mark.parametrize("constrained", [False, True])
def test_nll_and_viterbi_match_brute_force(constrained):
    tags, width = 3, 4
    allowed = allowed_transitions(IOB2) if constrained else None
    crf = _random_crf(tags, 0, allowed)
    lengths = [4, 1, 3, 2]
    emissions = torch.randn(len(lengths), width, tags)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    gold = torch.randint(0, tags, (len(lengths), width))
    nll = crf.nll(emissions, gold, mask)
    paths = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        every = list(itertools.product(range(tags), repeat=n))
        scores = torch.stack([_path_score(crf, emissions[b], p) for p in every])
        expected = torch.logsumexp(scores, 0) - _path_score(crf, emissions[b], tuple(gold[b, :n].tolist()))
        assert torch.allclose(nll[b], expected, atol=1e-5)
        assert tuple(paths[b]) == every[int(scores.argmax())]
        if constrained:  # never O -> I-X
            assert all(not (a == 0 and c == 2) for a, c in zip(paths[b], paths[b][1:], strict=False))


def test_iob2_transitions():
    allowed = allowed_transitions(["O", "B-A", "I-A", "B-B", "I-B"])
    assert allowed[:, 2].tolist() == [False, True, True, False, False]
    assert allowed[:, 4].tolist() == [False, False, False, True, True]
    assert allowed[:, [0, 1, 3]].all()


def test_gradients_flow_and_empty_sequences_cost_nothing():
    crf = _random_crf(2, 1)
    emissions = torch.randn(2, 3, 2, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    nll = crf.nll(emissions, torch.zeros(2, 3, dtype=torch.long), mask)
    assert nll[1] == 0 and nll[0] > 0
    nll.sum().backward()
    assert crf.transitions.grad is not None and emissions.grad[0, :2].abs().sum() > 0
    assert emissions.grad[0, 2].abs().sum() == 0
    assert crf.decode(emissions, mask) == [crf.decode(emissions[:1, :2], mask[:1, :2])[0], []]


def test_likelihood_is_a_distribution():
    """exp(-nll) summed over every path of a sequence is 1."""
    crf = _random_crf(3, 2)
    emissions = torch.randn(1, 3, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    total = sum(torch.exp(-crf.nll(emissions, torch.tensor([p]), mask)) for p in itertools.product(range(3), repeat=3))
    assert torch.allclose(total, torch.ones(1), atol=1e-5)
