"""Model directories and adapters that tasktune refuses: a one-line reason, no traceback, no code run."""

from __future__ import annotations

import json
import pathlib
import shutil
from pathlib import Path

import pytest
import torch

from tasktune.config.schema import ModelConfig
from tasktune.model.adapters import AdapterMismatchError
from tasktune.model.load import ModelError, load_model, load_tokenizer


class Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _copy_model(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for item in src.iterdir():
        if item.name not in skip:
            (dst / item.name).symlink_to(item)
    return dst


def _cli(capsys, *args) -> tuple[int, str]:
    from tasktune.cli import main

    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err


def test_a_model_directory_without_a_tokenizer(tiny_llama_dir, tmp_path, capsys):
    bare = _copy_model(tiny_llama_dir, tmp_path / "bare",
                       skip=("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                             "merges.txt", "chat_template.jinja"))
    with pytest.raises(ModelError, match="no tokenizer"):
        load_tokenizer(ModelConfig(name_or_path=str(bare)))
    code, err = _cli(capsys, "train", f"model.name_or_path={bare}", f"data.datasets={tmp_path}",
                     f"output.dir={tmp_path / 'out'}")
    assert code == 1 and "no tokenizer" in err


def test_pickled_bin_weights_are_refused_without_loading_them(tiny_llama_dir, tmp_path):
    model_dir = _copy_model(tiny_llama_dir, tmp_path / "bin", skip=("model.safetensors",))
    marker = tmp_path / "pwned"
    torch.save(Planted(marker), model_dir / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"only pickled weights \(pytorch_model.bin\)"):
        load_model(ModelConfig(name_or_path=str(model_dir)))
    assert not marker.exists()


def test_remote_code_is_refused_while_trust_remote_code_is_off(tiny_llama_dir, tmp_path):
    model_dir = _copy_model(tiny_llama_dir, tmp_path / "remote", skip=("config.json",))
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    config.update(model_type="evil-net", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                   "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (model_dir / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "pwned"
    (model_dir / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(ModelError, match="trust_remote_code"):
        load_model(ModelConfig(name_or_path=str(model_dir)))
    assert not marker.exists()


def test_an_adapter_of_another_base_with_the_same_shapes_is_refused(tiny_llama_dir, tiny_adapter_dir, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/other-model-1b"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterMismatchError, match="trained on 'someone/other-model-1b'"):
        load_model(ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(adapter)))


def test_an_adapter_of_a_base_with_other_shapes_is_refused(tiny_llama_dir, tiny_adapter_dir, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_llama_dir)
    config.hidden_size, config.intermediate_size = 32, 64
    other = _copy_model(tiny_llama_dir, tmp_path / "narrow", skip=("config.json", "model.safetensors",
                                                                   "generation_config.json"))
    LlamaForCausalLM(config).save_pretrained(other)
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    config_file = adapter / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": str(other)}))
    with pytest.raises(AdapterMismatchError, match="other shapes"):
        load_model(ModelConfig(name_or_path=str(other), adapter=str(adapter)))
