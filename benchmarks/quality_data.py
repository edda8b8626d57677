"""The quality benchmark's data: the shared real samples split by prompt, once, for every tool.

    python benchmarks/quality_data.py            # writes benchmarks/.quality/data/*.jsonl

Stack Exchange pairs are converted from the beer.stackexchange.com dump with the published
recipe; HH-RLHF harmless rows are read as transcripts. Prompts (questions, conversations up to
the last assistant turn) are shuffled with a fixed seed and whole prompts go to the test set
until it holds at least `TEST_PAIRS[set]` pairs, so no test prompt is ever trained on. The
training split is the only data `rmtrain hpo` and the recipes see.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, load_pairs  # noqa: E402

DATA = ROOT / "benchmarks" / ".quality" / "data"
TEST_PAIRS = {"hh": 300, "se": 400}
SEED = 0


def split(dataset: str, test_pairs: int, seed: int = SEED) -> tuple[list[Any], list[Any]]:
    pairs = load_pairs(dataset)
    groups: dict[str, list[Any]] = {}
    for p in pairs:
        groups.setdefault(p.group, []).append(p)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    test: list[Any] = []
    train: list[Any] = []
    for key in keys:
        (test if len(test) < test_pairs else train).extend(groups[key])
    return train, test


def _row(p: Any) -> dict[str, Any]:
    return {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}


def write_splits(out: Path = DATA) -> dict[str, dict[str, int]]:
    """`{set}_train.jsonl` and `{set}_test.jsonl` (explicit prompt/chosen/rejected rows)."""
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, dict[str, int]] = {}
    for name, n in TEST_PAIRS.items():
        train, test = split(name, n)
        for part, rows in (("train", train), ("test", test)):
            with (out / f"{name}_{part}.jsonl").open("w", encoding="utf-8") as f:
                for p in rows:
                    f.write(json.dumps(_row(p), ensure_ascii=False) + "\n")
        sizes[name] = {"train": len(train), "test": len(test)}
    return sizes


def path(dataset: str, part: str) -> Path:
    return DATA / f"{dataset}_{part}.jsonl"


if __name__ == "__main__":
    print(json.dumps(write_splits()))
