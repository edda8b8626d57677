"""Reading preference rows from a built-in set, a local file or folder, or the Hugging Face Hub."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError

LOCAL_SUFFIXES = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".xml": "stackexchange",  # a Stack Exchange dump's Posts.xml, or the site's .7z archive
    ".7z": "stackexchange",
}


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


class Rows(list):
    """Rows read from a text file, with the file line (1-based) each came from."""

    lines: list[int]


def _open_binary(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        import bz2

        return bz2.open(path, "rb")
    if suffix == ".xz":
        import lzma

        return lzma.open(path, "rb")
    if suffix == ".zst":
        raise RmtrainError(f"{path}: .zst files are not read directly; decompress it first")
    return path.open("rb")


def _read_bytes(path: Path) -> bytes:
    try:
        fh = _open_binary(path)
    except OSError as exc:  # the file, not its content: permissions, a folder, gone
        raise RmtrainError(f"cannot read {path}: {exc.strerror or exc}; {_fix(exc)}") from None
    try:
        with fh:
            return fh.read()
    except OSError as exc:
        if exc.errno is not None:  # the disk or the file system failed, not the content
            raise RmtrainError(f"cannot read {path}: {exc.strerror}") from None
        raise _incomplete(path, exc) from None
    except (EOFError, ValueError) as exc:
        raise _incomplete(path, exc) from None


def _fix(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "make it readable by this user (chmod / chown) or pass a copy that is"
    if isinstance(exc, IsADirectoryError):
        return "pass a file (a folder of data files is not read as one data set)"
    return "pass a file that exists and can be read"


def _incomplete(path: Path, exc: BaseException) -> RmtrainError:
    kind = path.suffix.lstrip(".")
    return RmtrainError(
        f"{path}: not a complete {kind} file ({type(exc).__name__}: {exc}); re-download or "
        "re-compress it"
    )


def read_json_rows(path: Path) -> list[Any]:
    """JSON array or JSON lines, optionally compressed; bad lines are kept as malformed rows
    (with their reason) and each row knows its file line. A `.jsonl` file is always read line by
    line: a line such as `[` or `[1, 2]` is one malformed row, never the start of an array that
    would swallow or split lines. A UTF-8 BOM is dropped; only bytes that are not UTF-8 make a
    row `invalid_utf8`."""
    data = _read_bytes(path).removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        raise RmtrainError(f"{path} is empty: it holds no rows; pass a file with preference rows")
    lines_only = path.name.lower().split(".json")[-1].startswith("l")
    if data.lstrip().startswith(b"[") and not lines_only:
        try:
            rows = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RmtrainError(f"{path} is not valid JSON ({exc}); fix the file") from None
        out = Rows(rows if isinstance(rows, list) else [rows])
        out.lines = []
        return _with_objects(path, out)
    rows, lines = Rows(), []
    for number, raw in enumerate(data.split(b"\n"), start=1):  # \n only (not \x85, \u2028)
        if not raw.strip():
            continue
        lines.append(number)
        try:
            rows.append(json.loads(raw.decode("utf-8")))
        except UnicodeDecodeError:
            rows.append(InvalidRow("invalid_utf8"))
        except (json.JSONDecodeError, RecursionError):
            rows.append(InvalidRow("invalid_json"))
    rows.lines = lines
    return _with_objects(path, rows)


def _with_objects(path: Path, rows: Rows) -> Rows:
    if rows and all(getattr(r, "reason", None) == "invalid_utf8" for r in rows):
        raise RmtrainError(
            f"{path} is not UTF-8 text (no line decodes); convert it, e.g. "
            f"iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
        )
    if not any(isinstance(r, dict) for r in rows):
        raise RmtrainError(
            f"{path} holds no JSON objects ({len(rows)} rows, none a {{...}} row): not a "
            'preference file; pass rows like {"prompt": ..., "chosen": ..., "rejected": ...}'
        )
    return rows


class InvalidRow:
    """Placeholder for a line that did not parse; counted as malformed with its reason."""

    def __init__(self, reason: str = "invalid_json") -> None:
        self.reason = reason


def load_rows(source: str, split: str = "train", data_dir: str | None = None) -> Sequence[Any]:
    """Rows from a builtin set, a local file or folder, or the Hugging Face Hub; with
    `data_dir`, that folder's parquet files of a hub repository (or a local copy laid out like
    one), read from the start only as far as needed (`parquet_head`)."""
    if data_dir:
        from rmtrain.data.parquet_head import ParquetHead

        return ParquetHead(source, data_dir, split)  # type: ignore[return-value]
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
        if not any(path.iterdir()):
            raise RmtrainError(f"data folder {path} is empty; pass a file or a saved data set")
        try:
            return datasets.load_from_disk(str(path))[split]
        except Exception:
            return _guarded(path, lambda: datasets.load_dataset(str(path), split=split))
    try:  # a file this user cannot open is not a broken file
        path.open("rb").close()
    except OSError as exc:
        raise RmtrainError(f"cannot read {path}: {exc.strerror or exc}; {_fix(exc)}") from None
    kind = _local_kind(path)
    if kind is None:
        raise RmtrainError(
            f"cannot read {path}: use a .json, .jsonl, .parquet or .csv file (optionally .gz), "
            "or a Stack Exchange Posts.xml"
        )
    if kind == "json":
        return read_json_rows(path)
    if kind == "stackexchange":
        from rmtrain.data.stackexchange import dump_rows

        return dump_rows(path)
    if path.stat().st_size == 0:
        raise RmtrainError(f"{path} is empty: it holds no rows; pass a file with preference rows")
    return _guarded(path, lambda: datasets.load_dataset(kind, data_files=str(path), split="train"))


def _guarded(path: Path, load: Any) -> Any:
    """A reader's failure on a broken file as one line naming the file."""
    try:
        return load()
    except Exception as exc:  # datasets/pyarrow raise many kinds for broken files
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise RmtrainError(
            f"cannot read {path}: {type(exc).__name__}: {first}; check that the file is complete "
            "and in the format its name says"
        ) from None


def offline_hint(name: str) -> str:
    """What to do when a hub data set cannot be reached."""
    return (
        f"data set {name!r} is not a local file and the Hugging Face Hub cannot be reached "
        "(offline). Pass a local .jsonl/.parquet/.csv file, or connect and unset HF_HUB_OFFLINE "
        "/ HF_DATASETS_OFFLINE"
    )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def _load_hub(name: str, split: str) -> Sequence[Any]:
    if hub_offline():
        raise RmtrainError(offline_hint(name))
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise RmtrainError(f"{offline_hint(name)} [{type(exc).__name__}: {exc}]") from None
    except ValueError as exc:
        raise RmtrainError(f"cannot load data set {name!r} split {split!r}: {exc}") from None


def columns(rows: Sequence[Any]) -> set[str]:
    names = getattr(rows, "column_names", None)
    if names is not None:
        return set(names)
    cols: set[str] = set()
    for row in rows[:1000]:
        if isinstance(row, dict):
            cols |= set(row)
    return cols
