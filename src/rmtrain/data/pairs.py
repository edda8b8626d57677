"""Preference pairs and the count of what happened to every row read.

Every row read is accounted for: it becomes a `Pair` or is counted as malformed with a reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, str]]


Text = str | Messages


@dataclass
class Pair:
    """One preference: `chosen` beats `rejected` as an answer to `prompt`."""

    prompt: Text
    chosen: Text
    rejected: Text
    group: str  # identity of the prompt: per-prompt metrics and a leak-free split use it
    row: int  # index of the source row
    margin: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataCounts:
    """What happened to every row: the run reports these, nothing is lost silently.

    Of `rows_in_source` rows, `--frac` samples `rows_read`; each of those is malformed, dropped,
    a train or test pair, or left out by the mixing weights (`not_mixed`)."""

    rows_read: int = 0
    rows_in_source: int = 0
    frac: float = 1.0
    not_mixed: int = 0  # training pairs the mixing weights left out
    augmented: Counter = field(default_factory=Counter)  # training pairs added, by augmentation
    augmented_dropped: int = 0  # added pairs that did not fit --max-length (not rows)
    malformed: Counter = field(default_factory=Counter)
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    train_pairs: int = 0
    test_pairs: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (source row, reason)
    lines: list[int] | None = None  # file line (1-based) of each source row, for text files
    shared_prompts: int = 0  # prompts found in more than one data set (kept on one side)

    def bad_fraction(self) -> float:
        """Share of rows read that are unusable (malformed, or too long even after cutting)."""
        return len(self.bad_rows) / self.rows_read if self.rows_read else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in_source": self.rows_in_source,
            "frac": self.frac,
            "rows_read": self.rows_read,
            "malformed": dict(self.malformed),
            "malformed_total": sum(self.malformed.values()),
            "truncated": self.truncated,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "train_pairs": self.train_pairs,
            "not_mixed": self.not_mixed,
            "augmented": dict(self.augmented),
            "augmented_total": sum(self.augmented.values()),
            "augmented_dropped": self.augmented_dropped,
            "prompts_in_several_datasets": self.shared_prompts,
            "test_pairs": self.test_pairs,
        }
