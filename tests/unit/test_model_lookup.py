"""Prompt lookup decoding: guesses copied from the prompt are verified in one pass and change no reply."""

from __future__ import annotations

import random
import re

import pytest
import torch

from tasktune.model.decode import Decoder, Request
from tasktune.model.lookup import PromptLookup
from tasktune.model.prefix_store import common_prefix


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def test_lookup_proposes_what_followed_the_longest_latest_match():
    lookup = PromptLookup([5, 6, 7, 8, 9, 6, 7, 1, 2, 3])
    assert lookup.propose([6, 7], 3) == [1, 2, 3]  # the latest "6 7" wins
    assert lookup.propose([5, 6, 7], 2) == [8, 9]  # the longest tail wins over the later "6 7"
    assert lookup.propose([4, 8, 9], 5) == [6, 7, 1, 2, 3]  # falls back to the last two tokens
    assert lookup.propose([4, 4, 9], 5) == []  # one token alone is no match
    assert lookup.propose([1, 2], 4) == [3]  # cut at the prompt's end
    assert lookup.propose([2, 3], 4) == []  # the prompt's last tokens have no follower
    assert lookup.propose([42, 6], 4) == [] and lookup.propose([6], 4) == [] and lookup.propose([6, 7], 0) == []


class _Oracle:
    """Guesses the true continuation of a reply, spoiled at every `spoil`-th position (a wrong token)."""

    def __init__(self, truth: list[int], spoil: int):
        self.truth, self.spoil = truth, spoil

    def propose(self, generated, k: int) -> list[int]:
        start = len(generated)
        guess = self.truth[start:start + k]
        return [t + 1 if (start + j) % self.spoil == self.spoil - 1 else t for j, t in enumerate(guess)]


def _prompts() -> list[list[int]]:
    torch.manual_seed(5)
    shared = torch.randint(10, 900, (6,)).tolist()
    return [shared + torch.randint(10, 900, (n,)).tolist() for n in (3, 8, 1, 5, 2)]


def _run(model, prompts, limits, draft_tokens, max_batch, lookups=None):
    decoder = Decoder(model, [5], pad_id=0, max_batch=max_batch, prefix_ids=common_prefix(prompts),
                      draft_tokens=draft_tokens)
    requests = [Request(p, n) for p, n in zip(prompts, limits, strict=True)]
    for r, lookup in zip(requests, lookups or [None] * len(requests), strict=True):
        r._lookup = lookup
    decoder.run(requests)
    return decoder, requests


@pytest.mark.parametrize("max_batch,spoil", [(2, 3), (5, 4), (5, 1000)])
def test_drafted_decoding_gives_the_same_replies_in_fewer_passes(tiny, max_batch, spoil):
    prompts, limits = _prompts(), [9, 14, 6, 11, 13]
    plain, expected = _run(tiny, prompts, limits, 0, max_batch)
    truths = [r.generated + [5] for r in expected]  # the stop token too: a guess may run into the end
    drafted, got = _run(tiny, prompts, limits, 4, max_batch, [_Oracle(t, spoil) for t in truths])
    assert [r.generated for r in got] == [r.generated for r in expected]
    assert [r.finish_reason for r in got] == [r.finish_reason for r in expected]
    assert drafted.accepted > 0 and drafted.forward_passes < plain.forward_passes
    if spoil < 1000:  # spoiled guesses are turned down, not kept
        assert drafted.drafted > drafted.accepted


def test_guesses_under_a_copy_constraint_change_no_reply(noisy_llama, monkeypatch):
    """Through the evaluation path (generate_texts), constrained rows, partly wrong guesses: same replies."""
    import tasktune.model.lookup as lookup
    from tasktune.evaluate.generate import generate_texts

    model, tokenizer = noisy_llama
    decoders: list[tuple[Decoder, list[Request]]] = []
    run = Decoder.run

    def spy(self, requests, progress=None):
        run(self, requests, progress)
        decoders.append((self, list(requests)))

    monkeypatch.setattr(Decoder, "run", spy)
    rng = random.Random(0)
    words = ["Maria", "Lopez", "flew", "to", "Madrid", "with", "Acme", "Corp", "on", "Monday", "the", "team"]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(6)]
    conversations = [[{"role": "user", "content": f"Tag: {s}"}] for s in sentences]
    constraint = [{"type": "copy_inline", "text": s, "labels": ["PER", "LOC", "ORG"]} for s in sentences]
    plain = generate_texts(model, tokenizer, conversations, 40, 3, constraint, False, draft_tokens=0)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    truths = {tuple(r.prompt_ids): r.generated + [stop] for r in decoders[0][1]}
    monkeypatch.setattr(lookup, "PromptLookup", lambda prompt: _Oracle(truths[tuple(prompt)], spoil=3))
    guessed = generate_texts(model, tokenizer, conversations, 40, 3, constraint, False, draft_tokens=4)
    assert guessed.texts == plain.texts and guessed.truncated == plain.truncated
    decoder = decoders[1][0]
    assert decoder.accepted > 0 and decoder.drafted > decoder.accepted
    assert decoder.forward_passes < decoders[0][0].forward_passes
    for text, sentence in zip(plain.texts, sentences, strict=True):  # each reply copies its sentence
        assert sentence.startswith(re.sub(r"\|[A-Z]+\]", "", text).replace("[", "").replace("  ", " ").strip())


def test_a_full_batch_guesses_only_once_it_has_drained(tiny):
    """64 token positions per pass: 40 rows take no guesses; as they finish, the rest do (same replies)."""
    from tasktune.model.lookup import DRAFT_POSITIONS

    torch.manual_seed(7)
    prompts = [torch.randint(10, 900, (4,)).tolist() for _ in range(40)]
    limits = [2] * 30 + [10] * 10  # 30 rows leave after two tokens, 10 go on
    _, expected = _run(tiny, prompts, limits, 0, 40)
    truths = [r.generated + [5] for r in expected]
    seen: list[int] = []
    drafts = Decoder._drafts

    def spy(self, rows):
        guessed = drafts(self, rows)
        if guessed is not None:  # a pass with guesses
            seen.append(len(rows))
        return guessed

    decoder = Decoder(tiny, [5], pad_id=0, max_batch=40, draft_tokens=4)
    decoder._drafts = spy.__get__(decoder)
    requests = [Request(p, n) for p, n in zip(prompts, limits, strict=True)]
    for r, truth in zip(requests, truths, strict=True):
        r._lookup = _Oracle(truth, 1000)
    decoder.run(requests)
    assert [r.generated for r in requests] == [r.generated for r in expected]
    assert seen and max(seen) * 2 <= DRAFT_POSITIONS and decoder.accepted > 0
