"""Write the demo preference set: for each demo NER instruction row, the correct answer (chosen) against a
corrupted one (rejected): an entity left out, a wrong type, or an invented entity added.

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

SEED = 7
TYPES = ("PER", "LOC", "ORG")
INVENTED = {"PER": ["John Smith", "Anna Berg"], "LOC": ["Paris", "Berlin"], "ORG": ["Acme Corp", "Globex"]}


def corrupt(entities: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """A plausible wrong answer: drop one entity, change one type, or add an entity not in the text."""
    kinds = ["add"] + (["drop", "retype"] if entities else [])
    kind = rng.choice(kinds)
    out = [dict(e) for e in entities]
    if kind == "drop":
        out.pop(rng.randrange(len(out)))
    elif kind == "retype":
        item = out[rng.randrange(len(out))]
        item["type"] = rng.choice([t for t in TYPES if t != item["type"]])
    else:
        kind_type = rng.choice(TYPES)
        out.insert(rng.randrange(len(out) + 1), {"type": kind_type, "text": rng.choice(INVENTED[kind_type])})
    return out


def preference_rows(rows: list[dict[str, str]], seed: int = SEED) -> list[dict[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        entities = json.loads(row["output"])
        rejected = json.dumps(corrupt(entities, rng), ensure_ascii=False)
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
