"""Preference data: load any supported source, normalise rows to `Pair`s, sample and split.

Every row read is accounted for: it becomes a `Pair` or is counted as malformed with a reason.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError

Messages = list[dict[str, str]]
Text = str | Messages

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
FORMATS = {
    "stack_exchange": ("question", "response_j", "response_k"),
    "explicit": ("prompt", "chosen", "rejected"),
    "implicit": ("chosen", "rejected"),
}


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
    """What happened to every row: the run reports these, nothing is lost silently."""

    rows_read: int = 0
    malformed: Counter = field(default_factory=Counter)
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    train_pairs: int = 0
    test_pairs: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (source row, reason)

    def bad_fraction(self) -> float:
        """Share of rows read that are unusable (malformed, or too long even after cutting)."""
        return len(self.bad_rows) / self.rows_read if self.rows_read else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "malformed": dict(self.malformed),
            "malformed_total": sum(self.malformed.values()),
            "truncated": self.truncated,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "train_pairs": self.train_pairs,
            "test_pairs": self.test_pairs,
        }


def _local_kind(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return LOCAL_SUFFIXES.get(suffixes[-1]) if suffixes else None


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or os.sep in source.strip("/").split("/", 1)[-1]
        or _local_kind(Path(source)) is not None
    )


def read_json_rows(path: Path) -> list[Any]:
    """JSON array or JSON lines, optionally gzipped; undecodable lines are kept as errors.
    A `.jsonl` file is always read line by line: a line such as `[` or `[1, 2]` is one
    malformed row, never the start of an array that would swallow or split lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    stripped = text.lstrip()
    lines_only = path.name.removesuffix(".gz").endswith(".jsonl")
    if stripped.startswith("[") and not lines_only:
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise RmtrainError(f"{path} is not valid JSON ({exc}); fix the file") from None
        return rows
    rows: list[Any] = []
    for line in text.split("\n"):  # JSON Lines splits on \n only (not \x85, \u2028)
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            rows.append(_InvalidJson())
    return rows


class _InvalidJson:
    """Placeholder for a JSON line that did not parse; counted as malformed."""


def load_rows(source: str, split: str = "train") -> Sequence[Any]:
    """Rows from a builtin set, a local file or folder, or the Hugging Face Hub."""
    if source.startswith("builtin:"):
        from rmtrain.data.builtin import builtin_dataset

        return builtin_dataset(source)
    path = Path(source).expanduser()
    if path.exists():
        return _load_local(path, split)
    if _looks_like_path(source):
        raise RmtrainError(
            f"data file {source} does not exist; pass an existing .json/.jsonl/.parquet/.csv "
            "file or a Hugging Face Hub data set name"
        )
    return _load_hub(source, split)


def _load_local(path: Path, split: str) -> Sequence[Any]:
    import datasets

    if path.is_dir():
        try:
            return datasets.load_from_disk(str(path))[split]
        except Exception:
            return datasets.load_dataset(str(path), split=split)
    kind = _local_kind(path)
    if kind is None:
        raise RmtrainError(
            f"cannot read {path}: use a .json, .jsonl, .parquet or .csv file (optionally .gz)"
        )
    if kind == "json":
        return read_json_rows(path)
    return datasets.load_dataset(kind, data_files=str(path), split="train")


def _load_hub(name: str, split: str) -> Sequence[Any]:
    offline_hint = (
        f"data set {name!r} is not a local file and the Hugging Face Hub cannot be reached "
        "(offline). Pass a local .jsonl/.parquet/.csv file, or connect and unset HF_HUB_OFFLINE "
        "/ HF_DATASETS_OFFLINE"
    )
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise RmtrainError(offline_hint)
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise RmtrainError(f"{offline_hint} [{type(exc).__name__}: {exc}]") from None
    except ValueError as exc:
        raise RmtrainError(f"cannot load data set {name!r} split {split!r}: {exc}") from None


def detect_format(columns: set[str]) -> str:
    """The first known column layout the rows carry."""
    for name, needed in FORMATS.items():
        if set(needed) <= columns:
            return name
    raise RmtrainError(
        f"data has columns {sorted(columns)}; rmtrain reads (question, response_j, response_k), "
        "(prompt, chosen, rejected) or (chosen, rejected) columns: rename yours to one of these"
    )


def _columns(rows: Sequence[Any]) -> set[str]:
    names = getattr(rows, "column_names", None)
    if names is not None:
        return set(names)
    cols: set[str] = set()
    for row in rows[:1000]:
        if isinstance(row, dict):
            cols |= set(row)
    return cols


def is_messages(value: Any) -> bool:
    """A non-empty list of {role, content} chat messages."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )


def _check_text(value: Any, allow_empty: bool = False) -> str | None:
    """Reason the value is unusable as a prompt or response, or None when it is fine."""
    if value is None:
        return "missing_field"
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            return "empty_text"
        if "\ufffd" in value:
            return "invalid_utf8"
        return None
    if isinstance(value, list) and (value == [] and allow_empty or is_messages(value)):
        return None
    return "not_text"


HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def parse_hh_transcript(text: str) -> Messages | None:
    """`\\n\\nHuman: a\\n\\nAssistant: b` -> chat messages; None when the text is not one."""
    if not text.startswith(HH_HUMAN):
        return None
    messages: Messages = []
    rest = text
    while rest:
        for marker, role in ((HH_HUMAN, "user"), (HH_ASSISTANT, "assistant")):
            if rest.startswith(marker):
                rest = rest[len(marker) :]
                nxt = [i for i in (rest.find(HH_HUMAN), rest.find(HH_ASSISTANT)) if i >= 0]
                end = min(nxt) if nxt else len(rest)
                messages.append({"role": role, "content": rest[:end].strip()})
                rest = rest[end:]
                break
        else:
            return None
    return messages


def split_common_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit-prompt rows: the shared beginning is the prompt, cut at a turn or word boundary."""
    n = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        n += 1
    head = chosen[:n]
    cut = head.rfind(HH_ASSISTANT)
    if cut >= 0:
        cut += len(HH_ASSISTANT)
    else:
        cut = (
            max(head.rfind(" "), head.rfind("\n")) + 1 if n < min(len(chosen), len(rejected)) else n
        )
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _implicit_to_pair(chosen: Any, rejected: Any) -> tuple[Text, Text, Text]:
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    prompt, c, r = split_common_prefix(chosen, rejected)
    messages = parse_hh_transcript(prompt)
    if messages and messages[-1] == {"role": "assistant", "content": ""}:
        return messages[:-1], c.strip(), r.strip()
    return prompt, c, r


def _group_key(prompt: Text) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def row_to_pair(row: Any, index: int, fmt: str, margin_column: str) -> Pair | str:
    """A `Pair`, or the reason the row is malformed."""
    if isinstance(row, _InvalidJson):
        return "invalid_json"
    if not isinstance(row, dict):
        return "not_a_mapping"
    cols = FORMATS[fmt]
    for i, col in enumerate(cols):
        reason = _check_text(row.get(col), allow_empty=(fmt != "implicit" and i == 0))
        if reason:
            return reason
    if fmt == "implicit":
        if type(row["chosen"]) is not type(row["rejected"]):
            return "not_text"
        prompt, chosen, rejected = _implicit_to_pair(row["chosen"], row["rejected"])
    else:
        prompt, chosen, rejected = (row[c] for c in cols)
    if chosen == rejected:
        return "identical"
    if (isinstance(chosen, str) and not chosen.strip()) or (
        isinstance(rejected, str) and not rejected.strip()
    ):
        return "empty_text"
    margin = row.get(margin_column)
    if margin is not None and (
        isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin)
    ):
        return "bad_margin"
    group = str(row["qid"]) if fmt == "stack_exchange" and "qid" in row else _group_key(prompt)
    extra = {k: row[k] for k in ("subset", "score_j", "score_k") if k in row}
    return Pair(prompt, chosen, rejected, group, index, float(margin or 0.0), extra)


def sample_indices(n: int, frac: float, seed: int) -> list[int]:
    """A deterministic sample of round(frac * n) rows (at least one), in source order."""
    if n == 0:
        raise RmtrainError("the data set is empty; pass a file with preference rows")
    k = max(1, round(frac * n))
    return sorted(random.Random(seed).sample(range(n), k))


def read_pairs(
    rows: Sequence[Any], frac: float, seed: int, margin_column: str = "margin"
) -> tuple[list[Pair], DataCounts]:
    """Sample rows and normalise them, counting every malformed row by reason."""
    fmt = detect_format(_columns(rows))
    indices = sample_indices(len(rows), frac, seed)
    if hasattr(rows, "select"):
        picked = rows.select(indices).to_list()
    else:
        picked = [rows[i] for i in indices]
    counts = DataCounts(rows_read=len(picked))
    pairs: list[Pair] = []
    for index, row in zip(indices, picked, strict=True):
        result = row_to_pair(row, index, fmt, margin_column)
        if isinstance(result, str):
            counts.malformed[result] += 1
            counts.bad_rows.append((index, result))
        else:
            pairs.append(result)
    return pairs, counts


def split_by_group(pairs: list[Pair], test_size: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Deterministic split where all pairs of one prompt land on the same side (no leakage)."""
    groups = sorted({p.group for p in pairs})
    random.Random(seed).shuffle(groups)
    target = round(test_size * len(pairs))
    by_group = Counter(p.group for p in pairs)
    test_groups: set[str] = set()
    taken = 0
    for g in groups:
        if taken >= target:
            break
        test_groups.add(g)
        taken += by_group[g]
    if len(test_groups) == len(groups) and len(groups) > 1:
        test_groups.discard(groups[-1])
    train = [p for p in pairs if p.group not in test_groups]
    test = [p for p in pairs if p.group in test_groups]
    return train, test


def parse_dataset_spec(spec: str) -> tuple[str, float | None]:
    """`path:0.7` -> ('path', 0.7); a spec without a numeric suffix is a whole data set."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return spec, None
        if not weight > 0:
            raise RmtrainError(f"mixing weight in {spec!r} must be positive")
        return head, weight
    return spec, None


def mix_weighted(
    parts: dict[str, list[Pair]], weights: dict[str, float], seed: int
) -> dict[str, list[Pair]]:
    """The largest mixture that honours the weights without repeating a pair.

    With shares w_k (normalised) and n_k pairs available, the mixture has T = min_k n_k / w_k
    pairs, round(w_k * T) drawn deterministically from data set k.
    """
    total = sum(weights.values())
    shares = {k: w / total for k, w in weights.items()}
    size = min(len(parts[k]) / shares[k] for k in parts)
    out = {}
    for i, (name, pairs) in enumerate(parts.items()):
        take = min(len(pairs), round(shares[name] * size))
        picked = sorted(random.Random(seed + i).sample(range(len(pairs)), take))
        out[name] = [pairs[j] for j in picked]
    return out
