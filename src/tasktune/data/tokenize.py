"""Conversation -> input_ids + labels with the tokenizer's own chat template; loss only on trained turns.

A trained message's characters are the difference between the text rendered up to it (with the generation
prompt for assistant turns, so the role header is excluded) and the text including it, minus the
whitespace after its end-of-turn token. The full text is tokenized once, with character offsets, and
every token starting inside a trained range keeps its id as label; all others get IGNORE_INDEX.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from tasktune.data.messages import Conversation, Message, RowError
from tasktune.data.registry import did_you_mean
from tasktune.data.report import DataError, RejectReport

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "registry" / "templates"
FALLBACK_TEMPLATE = "chatml"
Span = tuple[int, int]


def load_template(name_or_path: str | Path) -> str:
    """A chat template: registry/templates/NAME.jinja, or a .jinja file path."""
    path = Path(name_or_path)
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise DataError(f"template file {path} does not exist")
        return path.read_text(encoding="utf-8")
    candidate = TEMPLATES_DIR / f"{name_or_path}.jinja"
    if candidate.is_file():
        return candidate.read_text(encoding="utf-8")
    known = sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))
    raise DataError(f"unknown chat template {str(name_or_path)!r}: {did_you_mean(str(name_or_path), known)}")


def resolve_template(tokenizer: Any, chat_template: str | None = None) -> str:
    """The override, else the tokenizer's own template, else the ChatML fallback (with a warning)."""
    if chat_template:
        return chat_template
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    logger.warning("the tokenizer has no chat template: using %s.jinja", FALLBACK_TEMPLATE)
    return load_template(FALLBACK_TEMPLATE)


def render(tokenizer: Any, template: str, messages: list[dict], tools: Any, generation: bool = False) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation, **kwargs
    )


def _span(full: str, before: str, upto: str, message: Message, cursor: int, eos: str) -> Span:
    """Characters of one trained message in `full`: content + end-of-turn, without trailing whitespace."""
    if full.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
        start, end = len(before), len(upto)
        if message.role != "assistant":  # no generation prompt to cut the role header: start at the content
            found = full.find(message.content, start, end)
            start = found if found >= 0 else start
    else:  # the template renders earlier turns differently once later ones follow: find the content
        start = full.find(message.content, cursor)
        if start < 0:
            raise RowError("template_error", "a trained message does not appear in the rendered text")
        end = start + len(message.content)
        end += len(eos) if eos and full.startswith(eos, end) else 0
    while end > start and full[end - 1].isspace():
        end -= 1
    return start, end


def render_conversation(conv: Conversation, tokenizer: Any, template: str) -> tuple[str, list[Span]]:
    """The full text and the character ranges of its trained messages (content + end-of-turn token)."""
    messages, tools = conv.as_dicts(), conv.tools
    eos = getattr(tokenizer, "eos_token", None) or ""
    try:
        full = render(tokenizer, template, messages, tools)
        spans: list[Span] = []
        for i, message in enumerate(conv.messages):
            if not message.trained:
                continue
            assistant = message.role == "assistant"
            before = render(tokenizer, template, messages[:i], tools, assistant) if i else ""
            upto = full if i == len(messages) - 1 else render(tokenizer, template, messages[: i + 1], tools)
            spans.append(_span(full, before, upto, message, spans[-1][1] if spans else 0, eos))
    except TemplateError as err:
        raise RowError("template_error", str(err)) from None
    return full, spans


def label_tokens(ids: list[int], offsets: list[Span], spans: list[Span]) -> list[int]:
    """Each token's id where it starts inside a trained span, else IGNORE_INDEX (the first token never)."""
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for t, (start, _) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if t and spans[k][0] <= start:
            labels[t] = ids[t]
    return labels


def fit_length(
    ids: list[int], labels: list[int], cutoff_len: int, overlong: str, prompt: list[int] | None = None
) -> tuple[list[int], list[int], int]:
    """Fit to cutoff_len: cut the end (overlong="truncate"), cut the end of the prompt's text (`prompt`: the
    positions of its tokens; "truncate_prompt", the end when it holds too few), or reject. Returns ids,
    labels and the length before."""
    length = len(ids)
    if length > cutoff_len:
        if overlong == "reject":
            raise RowError("overlong", f"{length} tokens > cutoff_len={cutoff_len}")
        excess = length - cutoff_len
        if overlong == "truncate_prompt" and prompt and len(prompt) > excess:
            keep = prompt[-excess]  # the prompt's last `excess` tokens go (they are consecutive)
            ids, labels = ids[:keep] + ids[keep + excess :], labels[:keep] + labels[keep + excess :]
        else:
            ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    if all(label == IGNORE_INDEX for label in labels):
        cut = f" after truncation to {cutoff_len} tokens (from {length})" if length > cutoff_len else ""
        if cut and overlong == "truncate":
            cut += "; data.overlong=truncate_prompt cuts the prompt's text instead"
        raise RowError("no_target_tokens", f"no trained tokens{cut}")
    return ids, labels, length


def prompt_tokens(conv: Conversation, full: str, spans: list[Span], offsets: list[Span]) -> list[int]:
    """Positions of the tokens inside the content of the last user message before the first trained one."""
    first_trained = next((i for i, m in enumerate(conv.messages) if m.trained), None)
    if first_trained is None or not spans:
        return []
    user = next((m for m in reversed(conv.messages[:first_trained]) if m.role == "user" and m.content), None)
    start = full.rfind(user.content, 0, spans[0][0]) if user is not None else -1
    if start < 0:
        return []
    end = start + len(user.content)
    return [t for t, (a, _) in enumerate(offsets) if start <= a < end]


def _tokenize(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[Span]]]:
    try:
        enc = tokenizer(
            texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False
        )
    except NotImplementedError as err:
        raise DataError(f"loss masks need a fast tokenizer with offsets ({err})") from None
    return [
        (list(ids), [tuple(o) for o in offsets])
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]


def _warn_if_tools_ignored(convs: list[Conversation], tokenizer: Any, template: str) -> None:
    conv = next((c for c in convs if c.tools), None)
    if conv and render(tokenizer, template, conv.as_dicts(), conv.tools) == render(
        tokenizer, template, conv.as_dicts(), None
    ):
        n = sum(1 for c in convs if c.tools)
        logger.warning(
            "the chat template ignores `tools`: %d conversations carry tool schemas the model will not see "
            "(set model.template=chatml to show them)",
            n,
        )


def encode_many(
    convs: list[Conversation],
    tokenizer: Any,
    cutoff_len: int,
    overlong: str,
    report: RejectReport,
    chat_template: str | None = None,
    batch_size: int = 512,
) -> list[dict[str, Any]]:
    """Encode conversations (tokenizing in batches); failures and truncations go to `report`."""
    template = resolve_template(tokenizer, chat_template)
    _warn_if_tools_ignored(convs, tokenizer, template)
    rendered: list[tuple[Conversation, str, list[Span]]] = []
    for conv in convs:
        try:
            conv.check()
            rendered.append((conv, *render_conversation(conv, tokenizer, template)))
        except RowError as err:
            report.add(conv.source, err, conv.as_dicts())
    examples = []
    for chunk_start in range(0, len(rendered), batch_size):
        chunk = rendered[chunk_start : chunk_start + batch_size]
        for (conv, text, spans), (ids, offsets) in zip(
            chunk, _tokenize(tokenizer, [text for _, text, _ in chunk]), strict=True
        ):
            try:
                cut_prompt = overlong == "truncate_prompt" and len(ids) > cutoff_len
                prompt = prompt_tokens(conv, text, spans, offsets) if cut_prompt else None
                ids, labels, length = fit_length(ids, label_tokens(ids, offsets, spans), cutoff_len, overlong, prompt)
            except RowError as err:
                report.add(conv.source, err, conv.as_dicts())
                continue
            if length > cutoff_len:
                report.add_truncated(conv.source, length, cutoff_len)
            examples.append({"input_ids": ids, "labels": labels, "source": conv.source})
    return examples


def encode_conversation(
    conv: Conversation,
    tokenizer: Any,
    cutoff_len: int,
    overlong: str = "truncate",
    chat_template: str | None = None,
    report: RejectReport | None = None,
) -> dict[str, Any]:
    """`input_ids` and `labels` of one conversation; RowError when it cannot be used.

    Truncation (overlong="truncate" or "truncate_prompt") is recorded in `report` when one is given.
    """
    template = resolve_template(tokenizer, chat_template)
    conv.check()
    text, spans = render_conversation(conv, tokenizer, template)
    ((ids, offsets),) = _tokenize(tokenizer, [text])
    prompt = prompt_tokens(conv, text, spans, offsets) if overlong == "truncate_prompt" else None
    ids, labels, length = fit_length(ids, label_tokens(ids, offsets, spans), cutoff_len, overlong, prompt)
    if length > cutoff_len and report is not None:
        report.add_truncated(conv.source, length, cutoff_len)
    return {"input_ids": ids, "labels": labels, "source": conv.source}
