"""The first rows of a parquet data set folder: a Hugging Face Hub repository or a local copy
laid out like one, read only as far as `--frac` needs.

`lvwerra/stack-exchange-paired` is tens of GB in four parts (`data/finetune`, `data/reward`,
`data/rl`, `data/evaluation`); the original recipe trains on 1% of its reward-modelling part.
Its card says the set was shuffled once, globally, so its first rows are as random a sample as
any: here the part's files are listed, their parquet footers give the row count (a few KB per
file), and row groups are read in file order until the sample is complete. Nothing else is
downloaded. A split is the files named after it (`train-00000-of-00010.parquet`, or a `train/`
folder), as `datasets` resolves a `data_dir`; a folder whose names name no split is `train`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError, first_line

SPLIT_WORDS = ("train", "test", "validation", "valid", "dev", "eval", "evaluation")


class _Counting:
    """A file object that counts the bytes read through it."""

    def __init__(self, handle: Any, sink: list[int]) -> None:
        self._handle, self._sink = handle, sink

    def read(self, *args: Any) -> bytes:
        data = self._handle.read(*args)
        self._sink[0] += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _split_of(path: str) -> str | None:
    parts = re.split(r"[^a-z]+", path.lower())
    return next((p for p in reversed(parts) if p in SPLIT_WORDS), None)


class ParquetHead:
    """The rows of `split` in a folder's parquet files, in file order: `len()` from the
    footers, `head(k)` reads only the row groups the first `k` rows are in. `bytes_read`
    counts what was read (footers included)."""

    def __init__(self, source: str, data_dir: str, split: str) -> None:
        import pyarrow.parquet as pq

        local = Path(source).expanduser()
        if local.is_dir():
            from fsspec.implementations.local import LocalFileSystem

            self.fs: Any = LocalFileSystem()
            root = str(local.resolve() / data_dir)
        else:
            from huggingface_hub import HfFileSystem

            from rmtrain.data.reading import hub_offline, offline_hint

            if hub_offline():
                raise RmtrainError(offline_hint(source))
            self.fs, root = HfFileSystem(), f"datasets/{source}/{data_dir.strip('/')}"
        try:
            found = sorted(self.fs.glob(f"{root}/**/*.parquet"))
        except Exception as exc:  # noqa: BLE001 - the hub client's network errors vary
            hint = offline_hint(source) if not local.is_dir() else f"cannot list {root}"
            raise RmtrainError(f"{hint} [{type(exc).__name__}: {first_line(exc)}]") from None
        named = [f for f in found if _split_of(f[len(root) :]) == split]
        unnamed = not any(_split_of(f[len(root) :]) for f in found)
        self.files = named or (found if unnamed and split == "train" else [])
        if not self.files:
            raise RmtrainError(
                f"{source}: no parquet files of split {split!r} under {data_dir!r} "
                f"({len(found)} parquet files there); check --dataset-dir and --dataset-split"
            )
        self.bytes_read = [0]
        try:
            self._meta = [pq.ParquetFile(self._open(f)).metadata for f in self.files]
        except Exception as exc:  # noqa: BLE001 - a broken file or a dropped connection
            raise RmtrainError(
                f"cannot read the parquet footers under {root}: {type(exc).__name__}: "
                f"{first_line(exc)}; "
                "check the files (or the connection) and retry"
            ) from None
        self.rows_per_file = [m.num_rows for m in self._meta]

    def _open(self, path: str) -> Any:
        return _Counting(self.fs.open(path, "rb"), self.bytes_read)

    def __len__(self) -> int:
        return sum(self.rows_per_file)

    def head(self, k: int) -> list[dict[str, Any]]:
        """The first `k` rows as dicts, with a progress bar."""
        import pyarrow.parquet as pq
        from tqdm.auto import tqdm

        rows: list[dict[str, Any]] = []
        with tqdm(total=k, desc="reading rows", unit="row", disable=k < 10_000) as bar:
            for path, meta in zip(self.files, self._meta, strict=True):
                if len(rows) >= k:
                    break
                reader = pq.ParquetFile(self._open(path), metadata=meta)  # footer read once
                for group in range(meta.num_row_groups):
                    if len(rows) >= k:
                        break
                    table = reader.read_row_group(group)
                    got = table.slice(0, k - len(rows)).to_pylist()
                    rows += got
                    bar.update(len(got))
        return rows
