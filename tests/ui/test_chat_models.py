"""The web UI's chat loads a model as `tasktune eval` does: adapter folded in, lean forward, same replies."""

from __future__ import annotations

from tasktune.config.schema import ModelConfig
from tasktune.model.fold import fold_adapter
from tasktune.model.generate import chat_once
from tasktune.model.lean import lean_forward, prepare_lean
from tasktune.model.load import load_model, load_tokenizer
from tasktune.ui.chat_tab import ModelCache, stream_reply

HELLO = [{"role": "user", "content": "Say hello."}]


def test_chat_model_is_folded_with_a_lean_forward_and_replies_like_the_folded_adapter(tiny_llama_dir,
                                                                                       tiny_adapter_dir):
    cache = ModelCache()
    model, _ = cache.get(str(tiny_llama_dir), str(tiny_adapter_dir))
    assert not hasattr(model, "peft_config") and lean_forward(model) is not None
    assert cache.get(str(tiny_llama_dir), str(tiny_adapter_dir))[0] is model  # loaded once
    *_, reply = stream_reply(cache, str(tiny_llama_dir), str(tiny_adapter_dir), HELLO, 12, 0.0, 1.0)
    # the reference: the same adapter folded the same way, with its own lean forward, as `tasktune eval` runs it
    # (in bf16 the lean forward's post-ops round differently from transformers' forward and from an unmerged
    # peft model, which may part from it at a near-tie of this random model)
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(tiny_adapter_dir))
    folded, how = fold_adapter(load_model(cfg, next(model.parameters()).dtype))
    assert how in ("merged", "factored") and prepare_lean(folded)
    expected = chat_once(folded, load_tokenizer(cfg), HELLO, max_new_tokens=12)
    assert reply == expected and reply
