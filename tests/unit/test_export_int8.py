"""`tasktune export --int8`: torchao int8 weight-only, measured against the float export, reloadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasktune.export.run import ExportOptions, export_model, format_summary

pytest.importorskip("torchao", reason="int8 export needs the `quantize` extra (make setup installs it)")

IDS = torch.tensor([[1, 504, 2240, 314, 3150, 30, 2, 17, 9000, 42]])


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, tiny_llama_dir, tiny_adapter_dir) -> tuple[Path, dict, list[Path]]:
    out = tmp_path_factory.mktemp("int8") / "out"
    seen: list[Path] = []

    def metric_fn(model_dir: Path) -> dict[str, float]:  # the lead's task-metric hook
        seen.append(model_dir)
        return {"weights_mb": sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e6}

    opts = ExportOptions(model=str(tiny_llama_dir), adapter=str(tiny_adapter_dir), out=out, int8=True)
    return out, export_model(opts, metric_fn=metric_fn), seen


def test_int8_report_measures_size_perplexity_and_speed(int8_export):
    out, report, seen = int8_export
    q = report["int8"]
    assert q["library"].startswith("torchao ")
    assert q["weights_bytes"]["after"] < q["weights_bytes"]["before"]  # the float embedding dominates a tiny model
    for key in ("perplexity", "forward_tokens_per_s", "generate_tokens_per_s"):
        assert q[key]["before"] > 0 and q[key]["after"] > 0, key
    # a random tiny model: near-uniform predictions, and int8 weights barely move them
    assert q["perplexity"]["after"] == pytest.approx(q["perplexity"]["before"], rel=0.05)
    assert q["eval_tokens"] > 300
    assert json.loads((out / "export_report.json").read_text())["int8"] == q
    assert seen[1] == out and report["metrics"]["int8"]["weights_mb"] < report["metrics"]["float"]["weights_mb"]
    summary = format_summary(report)
    assert "int8 (torchao" in summary and "perplexity" in summary and "model.safetensors" in summary


def test_int8_safetensors_hold_int8_codes_for_every_decoder_linear(int8_export):
    from safetensors import safe_open

    out, _, _ = int8_export
    with safe_open(out / "model.safetensors", "pt") as handle:
        codes = {key: handle.get_tensor(key) for key in handle.keys() if key.endswith("_weight_qdata")}
        assert handle.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert len(codes) == 2 * 7  # q k v o gate up down in each of the 2 layers
    assert all(code.dtype == torch.int8 for code in codes.values())


def test_int8_export_reloads_with_transformers(int8_export, tiny_llama_dir, tiny_adapter_dir):
    from torchao.quantization import Int8Tensor
    from transformers import AutoModelForCausalLM

    from tasktune.export.merge import load_merged

    out, _, _ = int8_export
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert isinstance(reloaded.model.layers[0].self_attn.q_proj.weight, Int8Tensor)
    assert not isinstance(reloaded.lm_head.weight, Int8Tensor)
    merged, _ = load_merged(str(tiny_llama_dir), str(tiny_adapter_dir))
    base, _ = load_merged(str(tiny_llama_dir))
    with torch.no_grad():
        got, want, without_adapter = reloaded(IDS).logits, merged(IDS).logits, base(IDS).logits
    error = (got - want).abs().max()
    assert 0 < error < 0.1 * want.abs().max()  # really quantized, and close
    assert error < 0.2 * (without_adapter - want).abs().max()  # the adapter's effect survives int8
