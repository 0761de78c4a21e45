"""The bundled demo NER data: valid offsets, small files, reproducible by the script, and the alpaca copy
holds exactly the prompt and target of `ner.to_messages`, as the generic SFT path reads it."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from tasktune.config.task import TaskConfig
from tasktune.data.messages import RowError
from tasktune.tasks import ner

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"
SPEC = TaskConfig(name="ner", labels=["PER", "LOC", "ORG"])


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_are_small_and_read_without_rejections():
    sizes = {p.name: p.stat().st_size for p in DEMO.glob("ner_*")}
    assert set(sizes) == {"ner_train.jsonl", "ner_dev.jsonl", "ner_instruct.json", "ner_pref.json"}
    assert max(sizes.values()) < 200_000
    train, dev = (list(ner.read(DEMO / f"ner_{split}.jsonl", SPEC)) for split in ("train", "dev"))
    assert not [r for r in train + dev if isinstance(r, RowError)]
    assert (len(train), len(dev)) == (320, 80)
    assert not {r.text for r in train} & {r.text for r in dev}
    counts = Counter(len(r.entities) for r in train + dev)
    assert set(counts) == {0, 1, 2, 3} and counts[0] >= 20
    assert {e.type for r in train for e in r.entities} == {"PER", "LOC", "ORG"}
    for line in (DEMO / "ner_dev.jsonl").read_text().splitlines():  # the offsets as written, checked directly
        row = json.loads(line)
        assert all(row["text"][e["start"] : e["end"]] == e["text"] for e in row["entities"])


def test_files_are_what_the_script_writes(script, tmp_path):
    for path in script.write(tmp_path):
        assert path.read_bytes() == (DEMO / path.name).read_bytes(), (
            f"{path.name}: run scripts/make_demo_data.py"
        )


def test_instruct_file_is_ner_to_messages_through_the_alpaca_reader(script):
    from tasktune.data.formats import alpaca
    from tasktune.data.registry import DatasetSpec

    records = json.loads((DEMO / "ner_instruct.json").read_text())
    rows = list(ner.read(DEMO / "ner_train.jsonl", script.SPEC))
    assert len(records) == len(rows)
    for record, row in zip(records, rows, strict=True):
        expected = ner.to_messages(row, script.SPEC)
        assert alpaca(record, DatasetSpec(name="demo_ner_instruct")).as_dicts() == expected.as_dicts()
        assert ner.parse(record["output"], row, script.SPEC) == expected.meta["reference"]
