"""A token head on sparse entities (most sentences without any, as in social-media NER) must still find them.

The set is built from the bundled demo NER data: a fifth of the sentences keep one entity, the others have
every entity replaced by a common noun phrase, so about 3 % of the words are entity words. With the shipped
recipe (MiniLM, LoRA, CRF) and no logit adjustment the head predicts O everywhere and the evaluation says so
loudly; with the default task.logit_adjustment it finds entities.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasktune.config import load_config
from tasktune.evaluate.heads import run_head_eval
from tasktune.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
FILLERS = {"PER": "a friend", "LOC": "the town", "ORG": "the company"}

pytestmark = pytest.mark.integration  # trains the real (small) MiniLM encoder twice, about 30 s each


def sparse_rows(rows: list[dict], with_entity: int, without: int) -> list[dict]:
    """The first rows; the first `with_entity` keep their first entity, every other entity becomes a filler."""
    out = []
    for i, row in enumerate(rows[: with_entity + without]):
        text, pieces, entities, position = row["text"], [], [], 0
        for k, entity in enumerate(sorted(row["entities"], key=lambda e: e["start"])):
            pieces.append(text[position : entity["start"]])
            start = sum(map(len, pieces))
            if i < with_entity and k == 0:
                pieces.append(entity["text"])
                entities.append({"type": entity["type"], "start": start, "end": start + len(entity["text"])})
            else:
                pieces.append(FILLERS[entity["type"]])
            position = entity["end"]
        out.append({"text": "".join(pieces) + text[position:], "entities": entities})
    return out


@pytest.fixture(scope="module")
def sparse_file(tmp_path_factory) -> Path:
    rows = [json.loads(line) for line in (ROOT / "data" / "demo" / "ner_train.jsonl").read_text().splitlines()]
    path = tmp_path_factory.mktemp("sparse") / "train.jsonl"
    data = sparse_rows(rows, 30, 120)
    assert 20 < sum(bool(r["entities"]) for r in data) <= 30  # a few demo sentences hold no entity
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


def run(sparse_file: Path, out: Path, *extra: str) -> dict:
    cfg = load_config(ROOT / "examples" / "ner-conll2003-head.yaml", [
        f"task.train_file={sparse_file}", f"task.eval_file={ROOT}/data/demo/ner_dev.jsonl", "task.test_file=null",
        "task.train_range=null", "task.labels=[PER,LOC,ORG]", f"output.dir={out}", "train.max_steps=30",
        "train.batch_size=8", "train.eval_steps=0", "train.save_steps=0", "task.max_seq_length=64",
        "task.doc_stride=16", "eval.limit=40", *extra,
    ])
    train(cfg)
    return run_head_eval(cfg)


def test_sparse_entities_collapse_without_logit_adjustment_and_are_found_with_it(sparse_file, tmp_path, capsys):
    collapsed = run(sparse_file, tmp_path / "plain", "task.logit_adjustment=0")
    assert collapsed["predicted_entities"] == 0
    assert "WARNING: the model predicted NO entity" in capsys.readouterr().out
    fixed = run(sparse_file, tmp_path / "adjusted")  # the default task.logit_adjustment
    assert fixed["predicted_entities"] > 10 and fixed["f1"] > 0.05
    assert "WARNING" not in capsys.readouterr().out
