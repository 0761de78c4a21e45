"""`tasktune export --gguf`: llama.cpp's converter output read back with gguf.GGUFReader (and llama_cpp, if any)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tasktune.cli import main
from tasktune.export import gguf as gguf_export
from tasktune.export.gguf import GGUFToolsMissingError, export_gguf, find_converter, find_quantizer

try:
    find_converter()
    HAVE_CONVERTER = True
except GGUFToolsMissingError:
    HAVE_CONVERTER = False
needs_converter = pytest.mark.skipif(not HAVE_CONVERTER, reason="llama.cpp's converter is absent: make gguf-tools")

LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_llama_dir, tiny_adapter_dir) -> Path:
    """tiny Llama + LoRA adapter exported through the CLI with --gguf f16."""
    if not HAVE_CONVERTER:
        pytest.skip("llama.cpp's converter is absent: make gguf-tools")
    out = tmp_path_factory.mktemp("gguf") / "tiny-merged"
    assert main(["export", "--model", str(tiny_llama_dir), "--adapter", str(tiny_adapter_dir), "--out", str(out),
                 "--gguf", "f16"]) == 0
    return out


def _reader(path: Path):
    from gguf import GGUFReader

    return GGUFReader(path)


def _hf_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


@needs_converter
def test_f16_gguf_round_trip(exported, smol_tokenizer):
    reader = _reader(exported / "model-f16.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items()
              if name.startswith(("general.", "llama.", "tokenizer.ggml.eos", "tokenizer.chat"))}
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny-merged"
    assert (fields["llama.block_count"], fields["llama.embedding_length"]) == (2, 64)
    assert fields["tokenizer.ggml.eos_token_id"] == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(2) for name in LAYER_TENSORS}
    assert set(tensors) == expected  # tied output head: no separate output.weight
    hf = _hf_weights(exported)
    # GGUF lists dimensions fastest-first: the reverse of torch's shape
    assert list(tensors["token_embd.weight"].shape) == [64, len(smol_tokenizer)]
    for gguf_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                               ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
                               ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight")):
        assert list(tensors[gguf_name].shape) == list(reversed(hf[hf_name].shape)), gguf_name
        # the merged (adapter-included) weights, rounded once to f16
        np.testing.assert_array_equal(tensors[gguf_name].data, hf[hf_name].half().numpy(), err_msg=gguf_name)
    report = json.loads((exported / "export_report.json").read_text())
    assert report["gguf"]["bytes"] == (exported / "model-f16.gguf").stat().st_size


@needs_converter
def test_q8_0_gguf_is_smaller_and_dequantizes_close(exported, tmp_path):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    target = export_gguf(exported, tmp_path / "tiny-q8_0.gguf", "q8_0")
    reader = _reader(target)
    assert reader.fields["general.file_type"].contents() == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    f16_bytes = sum(int(t.n_bytes) for t in _reader(exported / "model-f16.gguf").tensors)
    assert sum(int(t.n_bytes) for t in reader.tensors) < 0.6 * f16_bytes  # 8.5 bits a weight instead of 16
    down = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert down.tensor_type == GGMLQuantizationType.Q8_0
    weight = _hf_weights(exported)["model.layers.0.mlp.down_proj.weight"].numpy()
    restored = dequantize(down.data, down.tensor_type).reshape(weight.shape)
    step = np.abs(weight).max() / 127  # one q8_0 step at most, per 32-value block it is smaller
    assert 0 < np.abs(restored - weight).max() <= step


def test_missing_converter_says_how_to_get_it(tiny_llama_dir, tmp_path):
    with pytest.raises(GGUFToolsMissingError, match="make gguf-tools"):
        export_gguf(tiny_llama_dir, tmp_path / "x.gguf", "f16", folder=tmp_path)


def test_q4_k_m_without_quantizer_fails_before_converting(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "find_quantizer", lambda: None)
    with pytest.raises(GGUFToolsMissingError, match="llama-quantize.*gguf-run"):
        export_gguf(tiny_llama_dir, tmp_path / "x.gguf", "q4_k_m")
    assert list(tmp_path.iterdir()) == []
    assert main(["export", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "out"), "--gguf", "q4_k_m"]) == 1
    assert not (tmp_path / "out").exists()  # refused before writing anything


@needs_converter
@pytest.mark.skipif(find_quantizer() is None, reason="no llama.cpp quantizer (llama-quantize or llama_cpp)")
def test_q4_k_m_gguf(exported, tmp_path):
    target = export_gguf(exported, tmp_path / "tiny-q4_k_m.gguf", "q4_k_m")
    assert _reader(target).fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert list(tmp_path.iterdir()) == [target]  # the intermediate f16 file is gone


@needs_converter
def test_llama_cpp_runs_the_gguf_like_transformers(exported):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama_cpp is not installed (the gguf-run extra)")
    from transformers import AutoModelForCausalLM

    ids = [1, 504, 2240, 314, 3150, 30]
    llm = llama_cpp.Llama(model_path=str(exported / "model-f16.gguf"), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    ours = torch.tensor(np.array(llm.scores[: len(ids)]))
    model = AutoModelForCausalLM.from_pretrained(exported, local_files_only=True)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0]
    assert (ours - theirs).abs().max() < 0.01 * theirs.abs().max()  # f16 weights vs float32 (5e-4 seen)
    generated = list(itertools.islice(llm.generate(ids, temp=0.0), 5))
    assert len(generated) == 5 and generated[0] == int(theirs[-1].argmax())
