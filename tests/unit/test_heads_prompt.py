"""task.head_prompt: a classify head on a chat model reads the generative route's prompt and starts as the
model's own answer (its rows are the output embeddings of the labels' first tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_head_predictions

from tasktune.config import load_config
from tasktune.config.schema import ConfigError
from tasktune.data.report import RejectReport
from tasktune.evaluate.generate import prompt_ids
from tasktune.evaluate.heads import predict_rows
from tasktune.model.head_data import encode_rows
from tasktune.model.heads import build_head, load_head
from tasktune.tasks import get_task, task_rows
from tasktune.train.loop import train

LABELS = ["negative", "positive"]


class _Report:
    def add(self, *_):
        raise AssertionError("test rows are valid")

    def add_truncated(self, *_):
        pass


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    rows = [{"text": f"{word} film number {i}", "label": label}
            for i in range(8) for word, label in (("great", "positive"), ("awful", "negative"))]
    path = tmp_path_factory.mktemp("prompt_head") / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(model_dir: Path, data: Path, out: Path, *extra: str):
    return load_config(None, [
        f"model.name_or_path={model_dir}", "task.name=classify", "task.method=head", "task.head_prompt=true",
        f"task.labels={json.dumps(LABELS)}", f"task.train_file={data}", f"task.eval_file={data}",
        f"output.dir={out}", "train.batch_size=4", "train.learning_rate=5e-3", "train.mixed_precision=no",
        "train.logging_steps=1", "lora.r=4", "lora.alpha=8", "task.max_seq_length=96", "model.dtype=float32",
        *extra,
    ])


def _untied_llama(tmp_path: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("tied", [True, False])
def test_prompted_head_starts_as_the_language_model(tiny_llama_dir, smol_tokenizer, reviews, tmp_path, tied):
    """The unit is the generative route's prompt token for token, and the new head's scores at the last
    position equal the causal LM's logits for the labels' first tokens (tied embedding or a separate lm_head)."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_llama_dir if tied else _untied_llama(tmp_path / "untied", smol_tokenizer)
    cfg = _cfg(model_dir, reviews, tmp_path / "run", "train.finetuning=full")
    rows = task_rows(cfg.task, reviews, _Report())[:4]
    units = encode_rows(rows, cfg.task, smol_tokenizer, targets=True).units
    conversations = [get_task("classify").to_messages(r, cfg.task).as_dicts()[:-1] for r in rows]
    assert [u["input_ids"] for u in units] == prompt_ids(smol_tokenizer, conversations)
    assert [u["labels"] for u in units] == [LABELS.index(r.label) for r in rows]

    head = build_head(cfg).eval()
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    first = [smol_tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in LABELS]
    with torch.no_grad():
        for unit in units:
            ids = torch.tensor([unit["input_ids"]])
            scores = head(ids, torch.ones_like(ids))["logits"][0]
            expected = lm(ids).logits[0, -1, first]
            torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


def test_long_texts_are_cut_inside_the_prompt(tiny_llama_dir, smol_tokenizer, reviews, tmp_path):
    cfg = _cfg(tiny_llama_dir, reviews, tmp_path / "run")
    short = encode_rows(task_rows(cfg.task, reviews, _Report())[:1], cfg.task, smol_tokenizer).units[0]
    row = task_rows(cfg.task, reviews, _Report())[0]
    short_text = row.text
    row.text = " ".join(["long"] * 200)
    report = RejectReport()
    encoded = encode_rows([row], cfg.task, smol_tokenizer, report=report)
    ids = encoded.units[0]["input_ids"]
    assert len(ids) == cfg.task.max_seq_length and encoded.truncated == 1
    # reported as the whole input's length (prompt + 200 words) against the limit it was cut to
    text_tokens = len(smol_tokenizer(row.text, add_special_tokens=False)["input_ids"])
    prompt_tokens = len(short["input_ids"]) - len(smol_tokenizer(short_text, add_special_tokens=False)["input_ids"])
    assert report.truncated == [(row.source, prompt_tokens + text_tokens, cfg.task.max_seq_length)]
    tail = len(smol_tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    assert ids[-tail:] == short["input_ids"][-tail:]  # the assistant's turn is still opened at the end
    cfg.task.max_seq_length = 16
    with pytest.raises(ConfigError, match="no room for the text"):
        encode_rows([row], cfg.task, smol_tokenizer)


def test_prompted_head_trains_saves_and_reloads(tiny_llama_dir, reviews, tmp_path):
    cfg = _cfg(tiny_llama_dir, reviews, tmp_path / "run", "train.batch_size=16")  # every step sees all rows
    rows = task_rows(cfg.task, reviews, _Report())
    captured = {}

    def capture(model, tokenizer, step):
        captured["predictions"] = predict_rows(model, tokenizer, rows, cfg.task)
        return {}

    cfg.train.max_steps = cfg.train.eval_steps = 6
    result = train(cfg, evaluator=capture)
    assert result.last_loss < result.first_loss
    info = json.loads((tmp_path / "run" / "adapter" / "head.json").read_text())
    assert info["prompt_instruction"].startswith("Classify the text as one of: negative, positive")
    model, tokenizer = load_head(tmp_path / "run")
    assert model.info.spec().head_prompt
    reloaded = predict_rows(model, tokenizer, rows, model.info.spec())
    # an eval config without the option still gives the head the prompt it was trained on
    unprompted = predict_rows(model, tokenizer, rows, _cfg(tiny_llama_dir, reviews, tmp_path / "x",
                                                           "task.head_prompt=false").task)
    assert_same_head_predictions(captured["predictions"], reloaded, unprompted)


def test_head_prompt_needs_a_classify_head_and_a_chat_template(reviews, tmp_path):
    with pytest.raises(ConfigError, match="head_prompt"):
        load_config(None, ["task.name=classify", "task.head_prompt=true"]).task.check()
    with pytest.raises(ConfigError, match="head_prompt"):
        load_config(None, ["task.name=ner", "task.method=head", "task.head_prompt=true"]).task.check()
    from transformers import AutoTokenizer

    from tasktune.model.load import resolve_model_dir

    cfg = _cfg(resolve_model_dir("minilm-l6"), reviews, tmp_path / "run")
    encoder_tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("minilm-l6"))
    with pytest.raises(ConfigError, match="no chat template"):
        encode_rows(task_rows(cfg.task, reviews, _Report())[:1], cfg.task, encoder_tokenizer)


def test_shared_prefix_gives_the_same_loss_and_gradients(tiny_llama_dir, smol_tokenizer, reviews, tmp_path):
    """The prompt prefix encoded once for the batch (its keys and values expanded to every row) equals every
    row encoding it, in logits, loss and every trained gradient; rows of different lengths are right-padded."""
    from tasktune.model.head_data import collate

    cfg = _cfg(tiny_llama_dir, reviews, tmp_path / "run")
    rows = task_rows(cfg.task, reviews, _Report())[:5]
    rows[1].text = "a much longer review of this film " * 3
    batch = collate(encode_rows(rows, cfg.task, smol_tokenizer, targets=True).units, smol_tokenizer.pad_token_id)
    assert int(batch["attention_mask"].sum(1).min()) < batch["input_ids"].shape[1]
    torch.manual_seed(0)
    head = build_head(cfg).eval()  # no dropout: both passes see the same weights
    for parameter in head.parameters():  # LoRA's B starts at zero: give the adapter an effect
        if parameter.requires_grad:
            parameter.data.normal_(0, 0.05)
    results = []
    for prefix in (head.prefix_ids, []):
        head.prefix_ids = prefix
        head.zero_grad()
        out = head(**batch)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters() if p.requires_grad}
        results.append((out["logits"].detach(), out["loss"].detach(), grads))
    assert len(results[0][2]) > 4 and head.prefix_ids == []
    (logits, loss, grads), (logits2, loss2, grads2) = results
    torch.testing.assert_close(logits, logits2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, loss2, rtol=1e-4, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads2[name], rtol=1e-3, atol=1e-6, msg=name)
