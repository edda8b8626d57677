"""Reading preference rows from a built-in set, a local file or folder, or the Hugging Face Hub."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


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


def _columns(rows: Sequence[Any]) -> set[str]:
    names = getattr(rows, "column_names", None)
    if names is not None:
        return set(names)
    cols: set[str] = set()
    for row in rows[:1000]:
        if isinstance(row, dict):
            cols |= set(row)
    return cols
