"""The shared decoding core gives exactly what transformers' own greedy `generate` gives, row by row,
whatever the batch size, prefix sharing or the order rows join and leave."""

from __future__ import annotations

import pytest
import torch

from tasktune.model.decode import Decoder, Request
from tasktune.model.prefix_store import common_prefix


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def _reference(model, prompt: list[int], max_new: int, stop: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new, do_sample=False, eos_token_id=stop, pad_token_id=stop)
    new = out[0, len(prompt):].tolist()
    return new[: new.index(stop)] if stop in new else new


def _prompts() -> list[list[int]]:
    torch.manual_seed(3)
    shared = torch.randint(10, 900, (7,)).tolist()
    return [shared + torch.randint(10, 900, (n,)).tolist() for n in (1, 5, 2, 9, 3, 4, 12)]


@pytest.mark.parametrize("max_batch,use_prefix", [(1, False), (3, True), (3, False), (16, True)])
def test_decoder_equals_generate(tiny, max_batch, use_prefix):
    prompts = _prompts()
    limits = [4, 9, 6, 12, 3, 8, 5]  # rows leave at different steps, so waiting rows join mid-flight
    stop = 5
    expected = [_reference(tiny, p, n, stop) for p, n in zip(prompts, limits, strict=True)]
    prefix = common_prefix(prompts) if use_prefix else []
    if use_prefix:
        assert len(prefix) == 7
    decoder = Decoder(tiny, [stop], pad_id=0, max_batch=max_batch, prefix_ids=prefix)
    requests = [Request(p, n) for p, n in zip(prompts, limits, strict=True)]
    finished = []
    decoder.run(requests, progress=finished.append)
    assert sorted(map(id, finished)) == sorted(map(id, requests))
    assert [r.generated for r in requests] == expected
    for r, n in zip(requests, limits, strict=True):
        assert r.finish_reason == ("length" if len(r.generated) == n else "stop")
    if max_batch == 16:  # all rows in one batch: one prefill, then one pass per token of the longest row
        assert decoder.forward_passes <= 1 + max(limits) + 1


def test_prompts_without_the_prefix_prefill_whole_beside_those_that_share_it(tiny):
    """One admission of rows with and without the decoder's prefix: the rows that start with it prefill only
    the rest of their prompt (the prefix's cache is computed once), the others their whole prompt, in a pass of
    their own; the replies are transformers' own."""
    prompts = _prompts()
    prefix = common_prefix(prompts)
    torch.manual_seed(8)
    others = [torch.randint(10, 900, (n,)).tolist() for n in (4, 9)]
    assert all(o[:len(prefix)] != prefix for o in others)
    rows = prompts[:3] + others + prompts[3:]
    limits = [4, 9, 6, 3, 7, 12, 3, 8, 5]
    expected = [_reference(tiny, p, n, 5) for p, n in zip(rows, limits, strict=True)]
    decoder = Decoder(tiny, [5], pad_id=0, max_batch=16, prefix_ids=prefix)
    computed: list[int] = []  # real new tokens of each forward pass
    forward = decoder._forward

    def counting(input_ids, mask, *args, **kwargs):
        computed.append(int(mask[:, -input_ids.shape[1]:].sum()))
        return forward(input_ids, mask, *args, **kwargs)

    decoder._forward = counting
    requests = [Request(p, n) for p, n in zip(rows, limits, strict=True)]
    for r in requests:
        decoder.add(r)
    decoder.step()  # the admission: the prefix, then one prefill per group
    suffixes = sum(len(p) - len(prefix) for p in prompts)
    assert sorted(computed) == sorted([len(prefix), suffixes, sum(map(len, others))])
    decoder.run([])
    assert [r.generated for r in requests] == expected


def test_a_next_turn_prefills_only_what_follows_a_finished_rows_prompt_and_reply(tiny):
    """With a byte budget, finished rows keep their cache: prompts that continue them (a conversation's next
    turn) prefill only their new tokens, several such rows in one pass whatever prefix each starts from (one
    row shares only part of a reply); the replies are transformers' own."""
    torch.manual_seed(11)
    first = [torch.randint(10, 900, (n,)).tolist() for n in (12, 9)]
    decoder = Decoder(tiny, [5], pad_id=0, max_batch=4, keep_bytes=1 << 22)
    turns = [Request(p, 6) for p in first]
    decoder.run(turns)
    cached = [r.prompt_ids + r.generated for r in turns]
    assert all(len(r.generated) == 6 for r in turns)
    nexts = [cached[0] + [17, 18, 19], cached[1][:-2] + [21, 22], cached[1] + [23]]
    computed: list[int] = []
    forward = decoder._forward

    def counting(input_ids, mask, *args, **kwargs):
        computed.append(int(mask[:, -input_ids.shape[1]:].sum()))
        return forward(input_ids, mask, *args, **kwargs)

    decoder._forward = counting
    requests = [Request(p, 7) for p in nexts]
    for r in requests:
        decoder.add(r)
    decoder.step()  # the admission: one prefill of the new tokens (the last generated token was never run)
    assert computed == [4 + 2 + 2]
    assert decoder.store.hits == 3 and decoder.store.reused == sum(map(len, nexts)) - 8
    decoder.run([])
    assert [r.generated for r in requests] == [_reference(tiny, p, 7, 5) for p in nexts]


def test_without_a_budget_finished_rows_are_not_kept(tiny):
    decoder = Decoder(tiny, [5], pad_id=0, max_batch=2, prefix_ids=[1, 2, 3])
    decoder.run([Request([1, 2, 3, 40, 41], 4), Request([50, 51, 52], 4)])
    assert [e.pinned for e in decoder.store.entries] == [True] and decoder.store.hits == 0


def test_finished_rows_ride_along_until_enough_make_room(tiny):
    """With 16 rows at most, two finished rows make room together (one copy of the cache, one prefill for the
    waiting rows that join); a row that finished meanwhile is reported at once and its tokens are not touched."""
    torch.manual_seed(5)
    prompts = [torch.randint(10, 900, (int(n),)).tolist() for n in torch.randint(2, 12, (22,))]
    limits = [int(n) for n in torch.randint(2, 14, (22,))]
    expected = [_reference(tiny, p, n, 5) for p, n in zip(prompts, limits, strict=True)]
    decoder = Decoder(tiny, [5], pad_id=0, max_batch=16)
    assert decoder._compact_after == 2
    requests = [Request(p, n) for p, n in zip(prompts, limits, strict=True)]
    for r in requests:
        decoder.add(r)
    finished, rode_along = [], set()
    while decoder.busy:
        finished += decoder.step()
        if decoder.batch is not None:
            dead = sum(r.done for r in decoder.batch.rows)
            if decoder.waiting:
                rode_along.add(dead)
            else:  # nobody waiting: dropped once as many finished as still run
                assert dead < decoder.active
            assert all(r in finished for r in decoder.batch.rows if r.done)  # reported while riding along
    assert rode_along == {0, 1}  # with requests waiting, two finished rows make room
    assert sorted(map(id, finished)) == sorted(map(id, requests)) and len(finished) == len(requests)
    assert [r.generated for r in requests] == expected


def test_common_prefix_leaves_a_token_of_each_prompt():
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2]
    assert common_prefix([[1, 2, 3, 4], [1, 2, 9]]) == [1, 2]
    assert common_prefix([[7], [1, 2]]) == []


def test_callback_and_cancel_end_a_row(tiny):
    prompts = _prompts()
    decoder = Decoder(tiny, [5], pad_id=0, max_batch=4)
    stopper = Request(prompts[0], 50, on_token=lambda r, t: "stop_string" if len(r.generated) == 2 else None)
    other = Request(prompts[1], 3)
    decoder.run([stopper, other])
    assert stopper.finish_reason == "stop_string" and len(stopper.generated) == 2
    assert other.done


def test_a_request_cancelled_while_waiting_is_reported_by_the_next_step(tiny):
    prompts = _prompts()
    decoder = Decoder(tiny, [5], pad_id=0, max_batch=1)
    running, waiting = Request(prompts[0], 4), Request(prompts[1], 4)
    decoder.add(running)
    decoder.add(waiting)
    decoder.step()  # admits the first only (max_batch=1)
    decoder.cancel(waiting)
    finished = decoder.step()
    assert waiting in finished and waiting.finish_reason == "cancelled" and not waiting.generated
    decoder.run([])
    assert running.done and len(running.generated) <= 4


def test_allowed_token_scoring_equals_full_logits_and_takes_fp32_hidden_states(tiny_llama_dir):
    """The decoder applies the output embedding itself: over a subset of ids it gives the same logits as the
    model's own head, and a training model's fp32 hidden states meet a bf16 head without autocast."""
    import copy

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    decoder = Decoder(model, [2], 0)
    assert decoder._own_head
    hidden = torch.randn(3, model.config.hidden_size)
    ids = [5, 17, 400, 1200]
    with torch.no_grad():
        full = model.lm_head(hidden)
        torch.testing.assert_close(decoder._logits(hidden, ids), full[:, ids])
        torch.testing.assert_close(decoder._logits(hidden), full)
        half = copy.deepcopy(model)
        half.lm_head.weight = torch.nn.Parameter(half.lm_head.weight.detach().to(torch.bfloat16))
        scored = Decoder(half, [2], 0)._logits(hidden, ids)  # fp32 in, bf16 weight: no dtype error
    assert scored.dtype == torch.float32
    torch.testing.assert_close(scored, full[:, ids], rtol=0.05, atol=0.05)
