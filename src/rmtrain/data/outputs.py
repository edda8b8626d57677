"""Output files that never destroy an input or look complete when they are not.

An output is checked against the inputs before anything is read (same path, symlink or hard
link all count), written to a temporary file beside it, and renamed into place only when the
whole file is written: a failed or killed run leaves the old file (or none), never a partial one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rmtrain.errors import RmtrainError


def same_file(a: Path, b: Path) -> bool:
    """True when both name one file (also through a symlink or a hard link)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(output: str, inputs: list[str], flag: str = "--output") -> Path:
    """The output path, refused when it is an input or its folder does not exist."""
    out = Path(output).expanduser()
    for src in inputs:
        if same_file(out, Path(src).expanduser()) or out.resolve() == Path(src).resolve():
            raise RmtrainError(f"{flag} {output} is the input file; choose another output path")
    if out.is_dir():
        raise RmtrainError(f"{flag} {output} is a folder; pass a file path")
    if not out.parent.resolve().is_dir():
        raise RmtrainError(f"{flag} {output}: folder {out.parent} does not exist; create it first")
    return out


@contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file handle whose content replaces `path` only when the block ends without error."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
