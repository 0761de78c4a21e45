"""Template step: exactly the assistant content + end-of-turn tokens carry labels (real SmolLM2 tokenizer)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tasktune.data.messages import Conversation, Message, RowError
from tasktune.data.report import DataError, RejectReport
from tasktune.data.tokenize import (
    IGNORE_INDEX,
    encode_conversation,
    encode_many,
    load_template,
    resolve_template,
)


def labelled_runs(tokenizer, example) -> list[str]:
    """The decoded text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def multi_turn() -> Conversation:
    return Conversation(
        [
            Message("system", "You answer briefly."),
            Message("user", "What is the capital of France?"),
            Message("assistant", "Paris."),
            Message("user", "And of Italy?"),
            Message("assistant", "Rome, since 1871."),
        ]
    )


def test_only_assistant_content_and_end_of_turn_are_labelled(smol_tokenizer):
    example = encode_conversation(multi_turn(), smol_tokenizer, cutoff_len=256)
    assert labelled_runs(smol_tokenizer, example) == ["Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"]
    text = smol_tokenizer.apply_chat_template(multi_turn().as_dicts(), tokenize=False)
    assert smol_tokenizer.decode(example["input_ids"]) == text
    unlabelled = smol_tokenizer.decode(
        [t for t, lab in zip(example["input_ids"], example["labels"], strict=True) if lab == IGNORE_INDEX]
    )
    assert "You answer briefly." in unlabelled and "capital of France" in unlabelled
    assert unlabelled.count("<|im_start|>assistant\n") == 2  # role headers are not trained


def test_default_system_prompt_and_untrained_turns_stay_unlabelled(smol_tokenizer):
    conv = Conversation(
        [
            Message("user", "Hi"),
            Message("assistant", "Hello!", train=False),
            Message("user", "Bye"),
            Message("assistant", "Goodbye!"),
        ]
    )
    example = encode_conversation(conv, smol_tokenizer, cutoff_len=256)
    assert "SmolLM" in smol_tokenizer.decode(example["input_ids"])  # the template's own default system turn
    assert labelled_runs(smol_tokenizer, example) == ["Goodbye!<|im_end|>"]
    conv.messages[0].train = True  # a trained user turn: its content, not its header
    assert labelled_runs(smol_tokenizer, encode_conversation(conv, smol_tokenizer, 256)) == [
        "Hi<|im_end|>",
        "Goodbye!<|im_end|>",
    ]


def test_tools_and_tool_turns_with_chatml_override(smol_tokenizer):
    tools = [
        {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {}}}
    ]
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    conv = Conversation(
        [
            Message("user", "Weather in Paris?"),
            Message("assistant", call),
            Message("tool", '{"temp": 18}'),
            Message("assistant", "18 degrees."),
        ],
        tools=tools,
    )
    example = encode_conversation(conv, smol_tokenizer, 512, chat_template=load_template("chatml"))
    text = smol_tokenizer.decode(example["input_ids"])
    assert '"name": "get_weather"' in text.split("<|im_end|>")[0]  # the schema is in the system turn
    assert "<|im_start|>tool\n" in text
    assert labelled_runs(smol_tokenizer, example) == [call + "<|im_end|>", "18 degrees.<|im_end|>"]


def test_overlong_truncate_reject_and_no_target_tokens(smol_tokenizer):
    long_answer = Conversation([Message("user", "Count."), Message("assistant", " ".join(["one"] * 100))])
    report = RejectReport()
    example = encode_conversation(long_answer, smol_tokenizer, 48, "truncate", report=report)
    assert len(example["input_ids"]) == 48 and example["labels"][-1] != IGNORE_INDEX
    assert report.truncated and report.truncated[0][1] > 48
    with pytest.raises(RowError) as err:
        encode_conversation(long_answer, smol_tokenizer, 48, "reject")
    assert err.value.reason == "overlong"
    long_prompt = Conversation([Message("user", " ".join(["word"] * 100)), Message("assistant", "Ok.")])
    with pytest.raises(RowError) as err:
        encode_conversation(long_prompt, smol_tokenizer, 48, "truncate")
    assert err.value.reason == "no_target_tokens" and "truncate_prompt" in str(err.value)


def test_truncate_prompt_cuts_the_users_text_and_keeps_the_answer(smol_tokenizer):
    words = " ".join(f"w{i}" for i in range(100))
    conv = Conversation([Message("system", "Label the review."), Message("user", words),
                         Message("assistant", "positive")], source="r.jsonl:3")
    full = encode_conversation(conv, smol_tokenizer, 1024)
    report = RejectReport()
    (example,) = encode_many([conv], smol_tokenizer, 64, "truncate_prompt", report)
    assert len(example["input_ids"]) == 64 and report.truncated == [("r.jsonl:3", len(full["input_ids"]), 64)]
    assert labelled_runs(smol_tokenizer, example) == ["positive<|im_end|>"]
    text = smol_tokenizer.decode(example["input_ids"])
    assert "Label the review." in text and "w0 w1" in text and "w99" not in text  # the end of the text went
    cut = len(full["input_ids"]) - 64  # everything but the cut tokens is unchanged, in order
    kept = full["input_ids"]
    at = next(i for i, (a, b) in enumerate(zip(kept, example["input_ids"], strict=False)) if a != b)
    assert example["input_ids"] == kept[:at] + kept[at + cut :]
    assert encode_conversation(conv, smol_tokenizer, 64, "truncate_prompt")["input_ids"] == example["input_ids"]
    with pytest.raises(RowError) as err:  # the answer alone is longer than the cutoff: cut from the end
        encode_conversation(conv, smol_tokenizer, 8, "truncate_prompt")
    assert err.value.reason == "no_target_tokens"


def test_encode_many_matches_single_encoding_and_reports(smol_tokenizer):
    good = multi_turn()
    bad = Conversation([Message("user", "Hi")], source="x.jsonl:7")
    report = RejectReport()
    examples = encode_many([good, bad, good], smol_tokenizer, 256, "truncate", report, batch_size=1)
    single = encode_conversation(good, smol_tokenizer, 256)
    assert [e["input_ids"] for e in examples] == [single["input_ids"]] * 2
    assert [e["labels"] for e in examples] == [single["labels"]] * 2
    assert [(r.source, r.reason) for r in report.rejects] == [("x.jsonl:7", "bad_turn_order")]


def test_load_template_names_paths_and_fallback(tmp_path):
    assert "<|im_start|>" in load_template("chatml")
    with pytest.raises(DataError, match="did you mean 'chatml'"):
        load_template("chatmll")
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert load_template(str(path)) == path.read_text()
    with pytest.raises(DataError, match="does not exist"):
        load_template(str(tmp_path / "absent.jinja"))
    assert resolve_template(SimpleNamespace(chat_template=None)) == load_template("chatml")
    assert resolve_template(SimpleNamespace(chat_template="own")) == "own"
