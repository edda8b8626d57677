"""Data validation before training: every bad row counted by reason, with its row index.

Bad rows: missing or non-string fields, empty responses, chosen identical to rejected, invalid
UTF-8 (replacement characters after decoding), bad margins, and pairs that do not fit the
length limit even after cutting. Pairs that become identical only because of cutting are
reported as dropped, not as bad data. A run stops when the bad share exceeds
`--max-bad-fraction` (or on any bad row with `--strict`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rmtrain.data.formats import read_pairs
from rmtrain.data.layout import encode_pairs
from rmtrain.data.pairs import DataCounts, Pair
from rmtrain.data.reading import load_rows
from rmtrain.errors import RmtrainError


def record_dropped(counts: DataCounts, pairs: list[Pair], dropped: list[tuple[int, str]]) -> None:
    """Fold pairs dropped at tokenisation into the counts: too long is bad data."""
    for index, reason in dropped:
        counts.dropped[reason] += 1
        if reason == "too_long":
            counts.bad_rows.append((pairs[index].row, reason))


def data_report(counts: DataCounts) -> dict[str, Any]:
    by_reason = Counter(reason for _, reason in counts.bad_rows)
    return {
        "rows_in_source": counts.rows_in_source,
        "frac": counts.frac,
        "rows_read": counts.rows_read,
        "bad_rows": len(counts.bad_rows),
        "bad_fraction": counts.bad_fraction(),
        "bad_by_reason": dict(sorted(by_reason.items())),
        "truncated": counts.truncated,
        "dropped": dict(counts.dropped),
        "train_pairs": counts.train_pairs,
        "test_pairs": counts.test_pairs,
        "not_mixed": counts.not_mixed,
        "augmented": dict(counts.augmented),
        "augmented_dropped": counts.augmented_dropped,
        "prompts_in_several_datasets": counts.shared_prompts,
        "position": "line: file line (1-based)" if counts.lines else "row: row index (0-based)",
        "rows": [
            {"line": counts.lines[row], "reason": reason}
            if counts.lines
            else {"row": row, "reason": reason}
            for row, reason in sorted(counts.bad_rows)
        ],
    }


def write_data_report(
    counts: DataCounts, path: Path, per_dataset: dict[str, DataCounts] | None = None
) -> dict[str, Any]:
    """All rows together; with several data sets, each one's report too (its row indices)."""
    report = data_report(counts)
    if per_dataset and len(per_dataset) > 1:
        report["datasets"] = {name: data_report(c) for name, c in per_dataset.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return report


def check_bad_rows(counts: DataCounts, max_bad_fraction: float, strict: bool, where: str) -> None:
    """Stop with a clear message when the data is too dirty to train on."""
    n, frac = len(counts.bad_rows), counts.bad_fraction()
    if not n:
        return
    reasons = dict(Counter(r for _, r in counts.bad_rows))
    if strict:
        raise RmtrainError(
            f"{n} bad rows {reasons} and --strict is on; see {where} for their indices, fix the "
            "data or drop --strict"
        )
    if frac > max_bad_fraction:
        raise RmtrainError(
            f"{n} of {counts.rows_read} rows are bad ({frac:.1%} > --max-bad-fraction "
            f"{max_bad_fraction:.1%}): {reasons}; see {where}, fix the data or raise "
            "--max-bad-fraction"
        )


def validate_dataset(
    source: str,
    tokenizer: Any | None = None,
    max_length: int = 512,
    chat: bool = True,
    split: str = "train",
    margin_column: str = "margin",
) -> DataCounts:
    """Read and check every row of a data set (the length check needs a tokenizer)."""
    try:
        pairs, counts = read_pairs(load_rows(source, split), 1.0, 0, margin_column)
    except RmtrainError as exc:
        raise RmtrainError(exc.args[0] if source in str(exc) else f"{source}: {exc}") from None
    if tokenizer is not None and pairs:
        _, truncated, dropped = encode_pairs(tokenizer, pairs, max_length, chat)
        counts.truncated = truncated
        record_dropped(counts, pairs, dropped)
    return counts
