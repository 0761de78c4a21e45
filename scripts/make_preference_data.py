"""Write the demo preference set: for each demo NER instruction row, the correct answer (chosen) against a
corrupted one (rejected): an entity left out, a wrong type, or a word that is no entity bracketed as one
(answers in the task's default inline format, `[mention|TYPE]`).

    .venv/bin/python scripts/make_preference_data.py [--data data/demo]

Reads ner_instruct.json (written by make_demo_data.py) and writes ner_pref.json in LLaMA-Factory's alpaca
ranking layout (instruction, input, chosen, rejected), registered as `demo_ner_pref` (ranking: true) in
data/dataset_info.json. Deterministic (fixed seed).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tasktune.tasks.ner import Entity
from tasktune.tasks.ner_formats import parse_inline, render, words

SEED = 7
TYPES = ("PER", "LOC", "ORG")


def corrupt(text: str, entities: list[Entity], rng: random.Random) -> list[Entity]:
    """A plausible wrong answer: drop one entity, change one type, or bracket a word outside the entities."""
    free = [(a, b) for a, b in words(text) if text[a:b].isalpha() and all(b <= e.start or a >= e.end
                                                                          for e in entities)]
    kinds = (["add"] if free else []) + (["drop", "retype"] if entities else [])
    kind = rng.choice(kinds)
    out = list(entities)
    if kind == "drop":
        out.pop(rng.randrange(len(out)))
    elif kind == "retype":
        k = rng.randrange(len(out))
        out[k] = Entity(rng.choice([t for t in TYPES if t != out[k].type]), out[k].text, out[k].start, out[k].end)
    else:
        a, b = rng.choice(free)
        out = sorted([*out, Entity(rng.choice(TYPES), text[a:b], a, b)], key=lambda e: e.start)
    return out


def preference_rows(rows: list[dict[str, str]], seed: int = SEED) -> list[dict[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        found = parse_inline(row["output"], row["input"], TYPES) or []
        entities = [Entity(e["type"], e["text"], e["start"], e["end"]) for e in found]
        rejected = render(row["input"], corrupt(row["input"], entities, rng), "inline")
        if rejected == row["output"]:
            continue
        pairs.append({"instruction": row["instruction"], "input": row["input"], "chosen": row["output"],
                      "rejected": rejected})
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="folder with ner_instruct.json")
    args = parser.parse_args()
    folder = Path(args.data)
    rows = json.loads((folder / "ner_instruct.json").read_text(encoding="utf-8"))
    pairs = preference_rows(rows)
    (folder / "ner_pref.json").write_text(json.dumps(pairs, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    info_path = folder.parent / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info["demo_ner_pref"] = {"file_name": f"{folder.name}/ner_pref.json", "ranking": True,
                             "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                         "rejected": "rejected"}}
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(pairs)} pairs to {folder / 'ner_pref.json'}; registered demo_ner_pref in {info_path}")


if __name__ == "__main__":
    main()
