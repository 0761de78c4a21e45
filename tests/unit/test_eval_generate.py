"""Batched generation, constrained decoding (label choice, NER JSON) and label log-likelihood on tiny models."""

from __future__ import annotations

import random

import pytest
import torch

from tasktune.config.schema import ModelConfig
from tasktune.config.task import TaskConfig
from tasktune.evaluate import generate as generation
from tasktune.evaluate.constrain import ChoiceConstraint, enforcer_data, label_token_ids
from tasktune.evaluate.generate import generate_texts, kv_bytes_per_token, prompt_ids, rows_that_fit
from tasktune.evaluate.loglik import score_choices
from tasktune.model.load import load_model
from tasktune.tasks import ner

WORDS = "the cat dog runs fast slow red blue green house tree river mountain city Paris Acme".split()
LABELS = ["positive", "negative", "very negative", "very positive", "no"]
NER_SPEC = TaskConfig(name="ner", labels=["PER", "LOC", "ORG"], ner_output_format="json")


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir, noisy_llama):
    """The tiny random Llama (replies are all alike) and the same with larger weights (replies differ)."""
    return load_model(ModelConfig(name_or_path=str(tiny_llama_dir))), *noisy_llama


def prompts(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    return [
        [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))}]
        for _ in range(n)
    ]


def test_batched_replies_keep_input_order_and_equal_batch_of_one(tiny):
    _, model, tokenizer = tiny
    conversations = prompts(7)
    lengths = [len(ids) for ids in prompt_ids(tokenizer, conversations)]
    assert lengths != sorted(lengths, reverse=True)  # length sorting really reorders them
    batched = generate_texts(model, tokenizer, conversations, 6, batch_size=4, progress=False)
    alone = [generate_texts(model, tokenizer, [c], 6, batch_size=1, progress=False) for c in conversations]
    assert batched.texts == [r.texts[0] for r in alone]
    assert len(set(batched.texts)) > 3  # distinct replies, so a mix-up would show
    assert batched.generated_tokens == sum(r.generated_tokens for r in alone)
    reverse = generate_texts(model, tokenizer, conversations[::-1], 6, batch_size=3, progress=False)
    assert reverse.texts == batched.texts[::-1]
    assert batched.seconds > 0 and len(batched.truncated) == 7


def test_rows_at_once_are_capped_by_the_memory_their_cache_would_take(tiny, monkeypatch, capsys):
    _, model, tokenizer = tiny
    config = model.config  # 2 layers, keys and values of 2 heads of 16 dims, float32
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * 16 * 4
    assert config.hidden_size // config.num_attention_heads == 16 and kv_bytes_per_token(model) == per_token
    monkeypatch.setattr(generation, "available_memory", lambda: generation.KV_SHARE * per_token * 100 * 3)
    assert rows_that_fit(model, 128, tokens_per_row=100) == 3  # three rows of 100 tokens fit the share
    assert rows_that_fit(model, 2, tokens_per_row=100) == 2 and rows_that_fit(model, 128, 10**6) == 1
    conversations = prompts(7, seed=3)
    expected = generate_texts(model, tokenizer, conversations, 6, batch_size=7, progress=False)
    seen: list[int] = []
    decoder = generation.Decoder
    monkeypatch.setattr(generation, "Decoder", lambda *a, **k: seen.append(k["max_batch"]) or decoder(*a, **k))
    monkeypatch.setattr(generation, "available_memory", lambda: generation.KV_SHARE * per_token * 60 * 2)
    capped = generate_texts(model, tokenizer, conversations, 6, batch_size=7, progress=False)
    longest = max(len(ids) for ids in prompt_ids(tokenizer, conversations)) + 6
    assert seen == [min(7, 60 * 2 // longest)] and seen[0] < 7
    assert capped.texts == expected.texts  # fewer rows at once, the same replies
    assert f"generating {seen[0]} rows at once, not 7" in capsys.readouterr().out
    monkeypatch.setattr(generation, "available_memory", lambda: None)  # unknown: as asked
    assert rows_that_fit(model, 128, 100) == 128


def test_training_mode_is_restored(tiny):
    _, model, tokenizer = tiny
    model.train()
    generate_texts(model, tokenizer, prompts(1), 2, progress=False)
    assert model.training
    model.eval()


def test_token_count_stops_at_the_stop_token_not_the_padding(tiny):
    _, model, tokenizer = tiny
    labels = ["yes", "not at all sure, really"]
    ids, _ = label_token_ids(tokenizer, labels)
    assert len(ids[1]) > len(ids[0]) + 2
    constraint = {"type": "choice", "choices": labels}
    result = generate_texts(model, tokenizer, prompts(12, seed=3), 20, batch_size=6, constraint=constraint,
                            progress=False)
    assert not any(result.truncated)
    expected = sum(len(ids[labels.index(text)]) + 1 for text in result.texts)
    assert result.generated_tokens == expected


def test_label_tokens_are_those_after_the_generation_prompt(smol_tokenizer):
    ids, end = label_token_ids(smol_tokenizer, LABELS)
    assert [smol_tokenizer.decode(i) for i in ids] == LABELS
    assert end == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    conversation = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "very negative"}]
    full = smol_tokenizer.apply_chat_template(conversation, tokenize=False)
    full_ids = smol_tokenizer(full, add_special_tokens=False)["input_ids"]
    assert any(full_ids[i : i + len(ids[2]) + 1] == ids[2] + [end] for i in range(len(full_ids)))


def test_choice_trie_walks_every_label_then_stops(smol_tokenizer):
    constraint = ChoiceConstraint(smol_tokenizer, LABELS, stop_ids=[2])
    ids, _ = label_token_ids(smol_tokenizer, LABELS)
    assert set(constraint.allowed(())) == {i[0] for i in ids}
    for label_ids in ids:
        for k in range(len(label_ids)):
            assert label_ids[k] in constraint.allowed(tuple(label_ids[:k]))
        assert list(constraint.allowed(tuple(label_ids))) == [2]
    assert list(constraint.allowed((12345, 678))) == [2]  # off the trie: only stopping is allowed


@pytest.mark.parametrize("which", [0, 1])
def test_choice_constraint_only_ever_yields_a_label(tiny, which):
    model, tokenizer = tiny[which], tiny[2]
    result = generate_texts(model, tokenizer, prompts(40, seed=which), 8, batch_size=16,
                            constraint={"type": "choice", "choices": LABELS}, progress=False)
    assert all(text in LABELS for text in result.texts), result.texts
    assert not any(result.truncated)


def _is_valid_prefix(text: str, schema: dict, tokenizer) -> bool:
    from lmformatenforcer import CharacterLevelParserConfig, JsonSchemaParser

    parser = JsonSchemaParser(schema, CharacterLevelParserConfig(alphabet=enforcer_data(tokenizer).tokenizer_alphabet))
    for char in text:
        if char not in parser.get_allowed_characters():
            return False
        parser = parser.add_character(char)
    return True


def test_ner_json_constraint_gives_json_lists_or_valid_prefixes_when_cut(tiny):
    """The rule: a reply that ended before max_new_tokens is a schema-valid JSON list (it parses); one cut
    by the budget is a valid prefix of such a list (and counts as a parse failure)."""
    _, model, tokenizer = tiny
    constraint = ner.output_constraint(NER_SPEC)
    result = generate_texts(model, tokenizer, prompts(12, seed=5), 12, batch_size=6, constraint=constraint,
                            progress=False)
    assert any(result.truncated)
    for text, cut in zip(result.texts, result.truncated, strict=True):
        if cut:
            assert _is_valid_prefix(text, constraint["schema"], tokenizer), text
        else:
            assert isinstance(ner.parse(text, None, NER_SPEC), list), text


def test_json_constraint_closes_lists_within_the_budget(tiny):
    """With a finite schema (at most 2 items, texts from a list) every reply ends in time and parses."""
    _, model, tokenizer = tiny
    schema = ner.output_constraint(NER_SPEC)["schema"]
    names = ["John", "Paris", "Acme Corp"]
    properties = {**schema["items"]["properties"], "text": {"type": "string", "enum": names}}
    schema = {**schema, "maxItems": 2, "items": {**schema["items"], "properties": properties}}
    result = generate_texts(model, tokenizer, prompts(8, seed=6), 48, batch_size=8,
                            constraint={"type": "json_schema", "schema": schema}, progress=False)
    assert not any(result.truncated)
    for text in result.texts:
        entities = ner.parse(text, None, NER_SPEC)
        assert isinstance(entities, list) and len(entities) <= 2, text
        assert all(e["type"] in NER_SPEC.labels and e["text"] in names for e in entities)
    assert any(ner.parse(text, None, NER_SPEC) for text in result.texts)  # not only empty lists


def _brute_force_loglik(model, tokenizer, conversation, label_ids, end_id) -> float:
    ids = prompt_ids(tokenizer, [conversation])[0]
    sequence = torch.tensor([ids + label_ids + [end_id]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=sequence).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(ids) - 1 + k, token]) for k, token in enumerate(label_ids + [end_id]))


def test_loglik_picks_the_label_with_the_highest_summed_loglikelihood(tiny):
    _, model, tokenizer = tiny
    conversations = prompts(5, seed=7)
    result = score_choices(model, tokenizer, conversations, LABELS, batch_size=4, progress=False)
    ids, end = label_token_ids(tokenizer, LABELS)
    for conversation, scores, choice in zip(conversations, result.scores, result.choices, strict=True):
        expected = [_brute_force_loglik(model, tokenizer, conversation, i, end) for i in ids]
        assert scores == pytest.approx(expected, abs=1e-3)
        assert choice == max(range(len(LABELS)), key=expected.__getitem__)
    assert len(set(result.choices)) > 1  # the scores really depend on the prompt
