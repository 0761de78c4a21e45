"""Write the demo NER data: short synthetic English sentences with PER, LOC and ORG entities.

    .venv/bin/python scripts/make_demo_data.py [--out data/demo]

Deterministic (fixed seed). Writes ner_train.jsonl and ner_dev.jsonl in the shared NER layout (text,
entities [{type, text, start, end}], end exclusive) and ner_instruct.json: the train rows turned into
conversations by `tasktune.tasks.ner.to_messages`, in LLaMA-Factory's alpaca layout (instruction, input,
output), so the generic SFT path trains on exactly the prompt and target the NER task scores.

For the multi-task example it also writes sentiment_{train,dev}.jsonl (text, label: negative | positive,
short synthetic reviews) and qa_{train,dev}.jsonl (SQuAD layout: id, title, context, question,
answers {text, answer_start}; short synthetic paragraphs built from the same names, places and companies).
`--only sentiment,qa` writes just those.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from tasktune.config.task import TaskConfig
from tasktune.tasks import ner

SEED = 2024
N_TRAIN, N_DEV = 320, 80
SPEC = TaskConfig(
    name="ner",
    labels=["PER", "LOC", "ORG"],
    label_descriptions={"PER": "person", "LOC": "place", "ORG": "organisation"},
)

# fmt: off
FILLERS = {
    "PER": [
        "Maria Lindqvist", "Tomas Okafor", "Priya Raman", "Jonas Weber", "Elena Petrova", "Samuel Achebe",
        "Hana Kobayashi", "Lucas Moreau", "Aisha Karimi", "Daniel Brooks", "Sofia Marquez", "Omar Haddad",
        "Grace Whitfield", "Mateo Rossi", "Ingrid Solberg", "Kwame Mensah", "Chen Wei", "Laura Novak",
        "Rafael Duarte", "Nadia Rahman", "Peter Holm", "Zara Ahmed", "Victor Lang", "Amelia Hart",
        "Ivan Sokolov", "Julia Berg", "Farid Nasser", "Clara Jensen", "Hugo Laurent", "Mina Park",
        "Oscar Vidal", "Leila Farouk", "Anton Kraus", "Ruth Adeyemi", "Felix Grant", "Nora Quinn",
        "Mr Dalton", "Dr Osei", "Professor Lind", "Ms Ferreira",
    ],
    "LOC": [
        "Lisbon", "Nairobi", "Oslo", "Kyoto", "Toronto", "Lima", "Krakow", "Marseille", "Hanoi", "Cairo",
        "Glasgow", "Perth", "Bergen", "Valencia", "Istanbul", "Montreal", "Accra", "Seoul", "Dublin",
        "Chile", "Norway", "Kenya", "Portugal", "Canada", "Vietnam", "Egypt", "Scotland", "Peru",
        "Lake Geneva", "Mount Kenya", "Sao Paulo", "New Delhi", "Cape Town",
    ],
    "ORG": [
        "Northwind Bank", "Bluefield Motors", "Harbor Health", "Greenline Rail", "Atlas Insurance",
        "Silverpine Labs", "Redstone Mining", "Clearwater Foods", "Summit Airlines", "Oakridge University",
        "Brightwave Media", "Ironbridge Steel", "Maple Street Bakery", "Falcon Logistics", "Coral Energy",
        "Unity Football Club", "Vega Telecom", "Red Cross", "Eastfield Council", "Pinecrest Hospital",
        "Orbit Software", "Riverside School", "Golden Gate Books",
    ],
    "DAY": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "NUM": ["two", "three", "five", "ten", "twelve", "forty", "several", "many"],
    "THING": ["bridge", "report", "garden", "museum", "factory", "festival", "library", "market", "road"],
}
# fmt: on

TEMPLATES = [
    # no entities
    "The {THING} was closed on {DAY} because of the rain.",
    "{NUM} people waited outside the {THING} all morning.",
    "Nobody expected the {THING} to be finished by {DAY}.",
    "The new {THING} opened on {DAY} after {NUM} years of work.",
    "Prices at the {THING} went up again this week.",
    "It was too cold to walk to the {THING} on {DAY}.",
    # one entity
    "{PER} arrived late to the meeting on {DAY}.",
    "{PER} said the {THING} needs more money.",
    "The {THING} in {LOC} attracts {NUM} visitors a day.",
    "Heavy snow fell in {LOC} on {DAY}.",
    "{ORG} reported higher profits this quarter.",
    "Shares of {ORG} fell sharply on {DAY}.",
    "We spent {NUM} days hiking near {LOC}.",
    "{ORG} will hire {NUM} new engineers next year.",
    "According to {PER}, the {THING} is safe.",
    # two entities
    "{PER} moved to {LOC} last spring.",
    "{PER} joined {ORG} as a senior analyst.",
    "{ORG} opened a new office in {LOC}.",
    "{PER} and {PER} met for lunch on {DAY}.",
    "The {THING} built by {ORG} stands near {LOC}.",
    "{PER} flew from {LOC} to {LOC} on {DAY}.",
    "{ORG} signed a deal with {ORG} on {DAY}.",
    "Officials in {LOC} praised {ORG} for the {THING}.",
    "{PER}, a spokesperson for {ORG}, declined to comment.",
    "Fans in {LOC} cheered for {PER} after the match.",
    # three entities
    "{PER} told {ORG} that the {THING} in {LOC} was ready.",
    "{ORG} sent {PER} to visit the {THING} in {LOC}.",
    "{PER} and {PER} founded {ORG} on {DAY}.",
    "On {DAY}, {PER} left {ORG} to work in {LOC}.",
    "{ORG} and {ORG} plan a joint {THING} in {LOC}.",
    "{PER} drove from {LOC} to {LOC} on {DAY}.",
    "After visiting {LOC}, {PER} wrote a report for {ORG}.",
]

ENTITY_TYPES = ("PER", "LOC", "ORG")
_SLOT = re.compile(r"\{([A-Z]+)\}")


def fill(template: str, rng: random.Random) -> dict:
    """One sentence from a template, with exact character offsets for the entity slots."""
    text, entities, used, position = "", [], set(), 0
    for match in _SLOT.finditer(template):
        text += template[position : match.start()]
        kind = match.group(1)
        value = rng.choice([v for v in FILLERS[kind] if v not in used])
        used.add(value)
        if kind in ENTITY_TYPES:
            entities.append({"type": kind, "text": value, "start": len(text), "end": len(text) + len(value)})
        text += value
        position = match.end()
    text += template[position:]
    return {"text": text[0].upper() + text[1:], "entities": entities}


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train rows, dev rows): unique sentences, dev sentences never seen in train."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < N_TRAIN + N_DEV:
        row = fill(rng.choice(TEMPLATES), rng)
        if row["text"] not in seen:
            seen.add(row["text"])
            rows.append(row)
    for i, row in enumerate(rows):
        split = "train" if i < N_TRAIN else "dev"
        row["id"] = f"demo-{split}-{i if i < N_TRAIN else i - N_TRAIN:04d}"
    return rows[:N_TRAIN], rows[N_TRAIN:]


def to_alpaca(rows: list[dict]) -> list[dict]:
    """Train rows as alpaca records whose user message (instruction + newline + input) and output are
    exactly those of ner.to_messages."""
    instruction = ner.instruction(SPEC)
    records = []
    for row in rows:
        entities = [ner.Entity(e["type"], e["text"], e["start"], e["end"]) for e in row["entities"]]
        conversation = ner.to_messages(ner.NerRow(row["id"], row["id"], row["text"], entities), SPEC)
        user, assistant = conversation.messages
        if user.content != f"{instruction}\n{row['text']}":
            raise AssertionError("ner.to_messages no longer joins instruction and input with a newline")
        records.append({"instruction": instruction, "input": row["text"], "output": assistant.content})
    return records


# ---- sentiment and QA, for the multi-task example --------------------------------------------------------

N_SENTIMENT = (240, 60)
N_QA = (200, 50)
# fmt: off
REVIEW_SUBJECTS = ["hotel room", "laptop", "novel", "restaurant", "phone", "train ride", "concert", "jacket",
                   "coffee", "museum tour", "headphones", "film", "bakery", "guided hike", "keyboard"]
REVIEW_WORDS = {
    "positive": (["great", "excellent", "lovely", "superb", "wonderful", "comfortable", "reliable", "delightful"],
                 ["I would gladly come back.", "Worth every penny.", "Highly recommended.",
                  "The staff were friendly and quick.", "Better than I expected.", "I will buy it again."]),
    "negative": (["awful", "disappointing", "noisy", "broken", "slow", "overpriced", "dirty", "boring"],
                 ["I want my money back.", "Never again.", "Not worth the price.",
                  "The staff ignored our complaints.", "Worse than I expected.", "I returned it the next day."]),
}
REVIEW_TEMPLATES = ["The {subject} was {adj}. {closing}", "What a {adj} {subject}! {closing}",
                    "{closing} The {subject} felt {adj} from start to finish.",
                    "Honestly, the {subject} was {adj} and {adj2}."]
QA_TEMPLATES = [
    ("{PER} moved to {LOC} in {YEAR} to work for {ORG}.",
     [("Where did {PER} move?", "LOC"), ("Who did {PER} work for?", "ORG"), ("When did {PER} move?", "YEAR"),
      ("Who moved to {LOC}?", "PER")]),
    ("{ORG} opened its first office in {LOC}. Its founder, {PER}, had studied there for {NUM} years.",
     [("Where did {ORG} open its first office?", "LOC"), ("Who founded {ORG}?", "PER"),
      ("How many years did {PER} study there?", "NUM")]),
    ("On {DAY}, {PER} visited the {THING} in {LOC} with a group from {ORG}.",
     [("What did {PER} visit?", "THING"), ("On which day was the visit?", "DAY"),
      ("Which group went with {PER}?", "ORG"), ("Where is the {THING}?", "LOC")]),
]
# fmt: on


def build_sentiment(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, dev) short reviews with a negative or positive label, balanced, no sentence in both."""
    rng = random.Random(seed + 1)
    rows, seen = [], set()
    while len(rows) < sum(N_SENTIMENT):
        label = "positive" if len(rows) % 2 == 0 else "negative"
        adjectives, closings = REVIEW_WORDS[label]
        adj, adj2 = rng.sample(adjectives, 2)
        text = rng.choice(REVIEW_TEMPLATES).format(subject=rng.choice(REVIEW_SUBJECTS), adj=adj, adj2=adj2,
                                                   closing=rng.choice(closings))
        if text not in seen:
            seen.add(text)
            rows.append({"id": "", "text": text[0].upper() + text[1:], "label": label})
    for i, row in enumerate(rows):
        row["id"] = f"demo-sent-{i:04d}"
    return rows[: N_SENTIMENT[0]], rows[N_SENTIMENT[0] :]


def build_qa(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, dev) SQuAD-layout questions; dev questions are about paragraphs never seen in train."""
    rng = random.Random(seed + 2)
    fillers = {**FILLERS, "YEAR": [str(y) for y in range(1995, 2024)]}
    paragraphs, seen = [], set()
    while sum(len(p[1]) for p in paragraphs) < sum(N_QA):
        template, questions = rng.choice(QA_TEMPLATES)
        values = {k: rng.choice(v) for k, v in fillers.items()}
        context = template.format(**values)
        if context in seen:
            continue
        seen.add(context)
        rows = []
        for question, answer_slot in questions:
            answer = values[answer_slot]
            if context.count(answer) == 1:  # an unambiguous span
                rows.append({"question": question.format(**values), "answers": {
                    "text": [answer], "answer_start": [context.index(answer)]}})
        paragraphs.append((context, rows))
    train, dev = [], []
    for p, (context, rows) in enumerate(paragraphs):
        target = train if len(train) < N_QA[0] else dev
        for q, row in enumerate(rows):
            target.append({"id": f"demo-qa-{p:03d}-{q}", "title": "demo", "context": context, **row})
    return train, dev[: N_QA[1]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_multitask(out: Path, seed: int = SEED) -> list[Path]:
    """sentiment_{train,dev}.jsonl and qa_{train,dev}.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (train, dev) in (("sentiment", build_sentiment(seed)), ("qa", build_qa(seed))):
        paths += [write_jsonl(out / f"{name}_train.jsonl", train), write_jsonl(out / f"{name}_dev.jsonl", dev)]
    return paths


def write(out: Path, seed: int = SEED) -> list[Path]:
    train, dev = build(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "ner_train.jsonl", out / "ner_dev.jsonl", out / "ner_instruct.json"]
    for path, rows in zip(paths[:2], (train, dev), strict=True):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    paths[2].write_text(json.dumps(to_alpaca(train), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "demo"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--only", help="comma-separated parts to write: ner, sentiment, qa (default: all)")
    args = parser.parse_args()
    parts = set(args.only.split(",")) if args.only else {"ner", "sentiment", "qa"}
    paths = write(Path(args.out), args.seed) if "ner" in parts else []
    if parts & {"sentiment", "qa"}:
        paths += [p for p in write_multitask(Path(args.out), args.seed) if p.name.split("_")[0] in parts]
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KB)")


if __name__ == "__main__":
    main()
