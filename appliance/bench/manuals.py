"""The test manuals and question sets of the knowledge benches, and a generated corpus.

The question set (``tests/knowledge_questions.yaml``) asks about the test manuals
(``tests/manuals``) in other words than theirs; the off-topic set
(``tests/knowledge_offtopic.yaml``) asks what they do not answer. Both live in a
source checkout. :func:`generate_corpus` writes as many Markdown sections as a
speed measurement needs, in the manuals' own words and a long tail of made-up ones.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

import appliance
from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.index import KnowledgeIndex

_TESTS = Path(appliance.__file__).resolve().parent.parent / "tests"
MANUALS = _TESTS / "manuals"
QUESTIONS = _TESTS / "knowledge_questions.yaml"
OFF_TOPIC = _TESTS / "knowledge_offtopic.yaml"
SECTIONS_PER_FILE = 100


def load_questions(path: Path) -> list[Any]:
    """The question set at ``path`` (a YAML list)."""
    if not path.is_file():
        raise KnowledgeError(f"{path}: the question set is missing; bench knowledge runs in a "
                             "source checkout (tests/knowledge_questions.yaml, tests/manuals)")
    return list(yaml.safe_load(path.read_text()))


def add_manuals(index: KnowledgeIndex, manuals: Path) -> None:
    """Index every manual in the directory ``manuals`` (its ``.py`` helpers are no manuals)."""
    for doc in sorted(p for p in manuals.iterdir() if p.suffix != ".py"):
        index.add(doc, max_file_mb=50)


def _vocabulary(manuals: Path, rng: random.Random) -> list[str]:
    """The manuals' own words (so questions find matches) and made-up ones (a long tail)."""
    words = sorted({w.lower().strip(".,:;()") for p in manuals.iterdir() if p.suffix != ".py"
                    for w in p.read_text(errors="ignore").split() if w.isascii()})
    syllables = ["ka", "lo", "ve", "tri", "son", "mar", "dex", "pu", "ran", "gel", "fo", "zin"]
    made_up = {"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(20000)}
    return [w for w in words if w.isalpha()] + sorted(made_up)


def generate_corpus(directory: Path, chunks: int, manuals: Path, seed: int = 7) -> float:
    """Write Markdown manuals with ``chunks`` sections of 110 to 200 words; returns MB."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(manuals, rng)
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf-like frequencies
    rng.shuffle(vocabulary)
    size = 0
    for number in range(0, chunks, SECTIONS_PER_FILE):
        lines = [f"# Generated manual {number // SECTIONS_PER_FILE}", ""]
        for section in range(number, min(chunks, number + SECTIONS_PER_FILE)):
            if section % 10 == 0:
                lines += [f"## Chapter {section // 10}", ""]
            title = " ".join(rng.choices(vocabulary, weights, k=3)).capitalize()
            words = rng.choices(vocabulary, weights, k=rng.randint(110, 200))
            cut = len(words) // 2
            lines += [f"### {title}", "", " ".join(words[:cut]) + ".", "",
                      " ".join(words[cut:]) + ".", ""]
        text = "\n".join(lines)
        (directory / f"generated-{number // SECTIONS_PER_FILE:03d}.md").write_text(text)
        size += len(text.encode())
    return size / 1e6
