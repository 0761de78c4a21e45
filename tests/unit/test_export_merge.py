"""`tasktune export` to a Hugging Face directory: merged LoRA equals base+adapter, loads without tasktune."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasktune.cli import build_parser, main
from tasktune.config.schema import Config, ConfigError
from tasktune.export.args import options_from_args
from tasktune.export.merge import stop_token_ids
from tasktune.export.run import ExportOptions, export_model, source_from_config

IDS = [[1, 504, 2240, 314, 3150, 30, 2, 17, 9000, 42]]

# Runs in a fresh interpreter that never imports tasktune: plain transformers only.
PLAIN_LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
with torch.no_grad():
    logits = model(torch.tensor(ids)).logits
chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
torch.save({"logits": logits, "chat": chat, "eos": model.generation_config.eos_token_id,
            "tasktune_imported": any(m.startswith("tasktune") for m in sys.modules)}, out)
"""


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, tiny_llama_dir, tiny_adapter_dir) -> Path:
    out = tmp_path_factory.mktemp("export") / "merged"
    assert main(["export", "--model", str(tiny_llama_dir), "--adapter", str(tiny_adapter_dir),
                 "--out", str(out)]) == 0
    return out


def test_merged_export_loads_without_tasktune_and_equals_base_plus_adapter(merged_dir, tiny_llama_dir,
                                                                           tiny_adapter_dir, smol_tokenizer,
                                                                           tmp_path):
    from tasktune.config.schema import ModelConfig
    from tasktune.model.load import load_model

    result = tmp_path / "plain.pt"
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(merged_dir), json.dumps(IDS), str(result)], check=True,
                   cwd=tmp_path)
    plain = torch.load(result)
    assert plain["tasktune_imported"] is False
    peft_model = load_model(ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(tiny_adapter_dir)))
    base = load_model(ModelConfig(name_or_path=str(tiny_llama_dir)))
    with torch.no_grad():
        expected = peft_model(torch.tensor(IDS)).logits
        base_logits = base(torch.tensor(IDS)).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter matters, so the equality below means something
    torch.testing.assert_close(plain["logits"], expected, atol=1e-5, rtol=1e-5)
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert plain["eos"] == im_end or im_end in plain["eos"]
    assert plain["chat"].startswith("<|im_start|>") and plain["chat"].endswith("<|im_start|>assistant\n")


def test_export_writes_report_and_standard_files(merged_dir):
    names = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "export_report.json"} <= names
    assert not any("adapter" in name for name in names)
    report = json.loads((merged_dir / "export_report.json").read_text())
    assert report["shards"] == 1 and report["options"]["dtype"] == "float32"
    assert report["metrics"] == {}  # the task-metric hook is empty unless a metric_fn is passed
    assert {f["file"] for f in report["files"]} == names - {"export_report.json"}


def test_full_model_export_shards_and_casts(tiny_llama_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    report = export_model(ExportOptions(model=str(tiny_llama_dir), out=out, dtype="bfloat16",
                                        max_shard_size="40KB"))
    shards = sorted(out.glob("*.safetensors"))
    assert report["shards"] == len(shards) > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    with safe_open(shards[0], "pt") as handle:
        assert all(handle.get_tensor(key).dtype == torch.bfloat16 for key in handle.keys())
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True)
    assert reloaded.dtype == torch.bfloat16
    for (name, param), (_, ref) in zip(reloaded.named_parameters(), original.named_parameters(), strict=True):
        assert torch.equal(param, ref.to(torch.bfloat16)), name


def test_export_refuses_a_non_empty_directory(tiny_llama_dir, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_model(ExportOptions(model=str(tiny_llama_dir), out=tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_source_from_config_prefers_adapter_then_run_outputs(tmp_path):
    cfg = Config()
    cfg.output.dir = str(tmp_path)
    assert source_from_config(cfg) == (cfg.model.name_or_path, None)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert source_from_config(cfg) == (str(tmp_path / "model"), None)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert source_from_config(cfg) == (cfg.model.name_or_path, str(tmp_path / "adapter"))
    cfg.model.adapter = "elsewhere"
    assert source_from_config(cfg) == (cfg.model.name_or_path, "elsewhere")


def test_flags_win_over_the_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name_or_path: base-a\n  adapter: ad-a\n  dtype: bfloat16\n"
                      f"output:\n  dir: {tmp_path / 'run'}\n")
    parse = build_parser().parse_args
    opts = options_from_args(parse(["export", str(config)]))
    assert (opts.model, opts.adapter, opts.dtype) == ("base-a", "ad-a", "bfloat16")
    assert opts.out == tmp_path / "run" / "export"
    opts = options_from_args(parse(["export", str(config), "model.dtype=float16", "--model", "base-b", "--adapter",
                                    "ad-b", "--out", "x", "--int8", "--gguf", "q8_0", "--max-shard-size", "5MB"]))
    assert (opts.model, opts.adapter, opts.dtype, opts.out, opts.int8, opts.gguf, opts.max_shard_size) == (
        "base-b", "ad-b", "float16", Path("x"), True, "q8_0", "5MB")


class _Tokenizer:
    def __init__(self, eos: int | None, vocab: dict[str, int]):
        self.eos_token_id, self._vocab = eos, vocab

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._vocab.get(token)

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        return {i: t for t, i in self._vocab.items()}.get(token_id)


def test_stop_tokens_add_the_templates_end_of_turn_to_eos():
    assert stop_token_ids(_Tokenizer(0, {"<|endoftext|>": 0, "<|im_end|>": 7})) == [0, 7]
    assert stop_token_ids(_Tokenizer(7, {"<|endoftext|>": 0, "<|im_end|>": 7})) == [7]
    assert stop_token_ids(_Tokenizer(None, {"a": 1})) == []
