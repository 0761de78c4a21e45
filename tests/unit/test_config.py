"""Config: YAML + overrides, typed coercion, helpful errors, help text, round-trip of the saved file."""

from pathlib import Path

import pytest

from tasktune.config import Config, ConfigError, help_text, load_config, save_config
from tasktune.config.load import describe

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_overrides_are_typed_and_applied_after_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 3\n  learning_rate: 1e-4\ndata:\n  datasets: [a]\n")
    cfg = load_config(path, ["train.max_steps=7", "data.datasets=x,y", "data.packing=false", "lora.r=4"])
    assert cfg.train.max_steps == 7
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.data.datasets == ["x", "y"]
    assert cfg.data.packing is False
    assert cfg.lora.r == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_stpes=3", "did you mean 'max_steps'"),
        ("trian.max_steps=3", "did you mean 'train'"),
        ("train.max_steps=abc", "expected int"),
        ("train.max_steps=1.5", "expected an integer"),
        ("data.packing=maybe", "expected true or false"),
        ("data.datasets={a: 1}", "expected a string"),
        ("train=3", "is a section"),
        ("train.max_steps", "section.key=value"),
    ],
)
def test_bad_keys_and_values_fail_with_a_useful_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_section_checks_reject_bad_values():
    cfg = load_config(None, ["train.finetuning=lorra"])
    with pytest.raises(ConfigError, match="lora, full, freeze"):
        cfg.train.check()
    cfg = load_config(None, ["data.weights=[1.0]", "data.datasets=a,b"])
    with pytest.raises(ConfigError, match="2 datasets"):
        cfg.data.check()


def test_eval_batch_size_defaults_differ_for_generating_and_forward_batches():
    cfg = load_config(None, [])
    assert cfg.eval.batch_size is None
    assert (cfg.eval.rows(generating=True), cfg.eval.rows(generating=False)) == (128, 64)
    cfg = load_config(None, ["eval.batch_size=12"])
    assert (cfg.eval.rows(generating=True), cfg.eval.rows(generating=False)) == (12, 12)
    cfg = load_config(None, ["eval.batch_size=0"])
    with pytest.raises(ConfigError, match="at least 1"):
        cfg.eval.check()


def test_every_field_has_help_from_its_docstring():
    rows = describe(Config)
    missing = [key for key, _, doc in rows if not doc]
    assert not missing, f"fields without a docstring: {missing}"
    assert "train.learning_rate" in help_text()
    assert "Peak learning rate of AdamW" in help_text()


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["train.max_steps=5", "lora.target_modules=q_proj,v_proj", "model.adapter=null"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_shipped_example_loads_and_validates(path):
    cfg = load_config(path)
    for name in ("model", "data", "lora", "train"):
        getattr(cfg, name).check()


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"lora-sft-demo.yaml", "full-sft-demo.yaml", "freeze-sft-demo.yaml", "llamafactory-demo.yaml"} <= names


def test_yaml_no_stays_a_string_for_string_fields():
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
