"""Outputs that never destroy what a user owns, or look complete when they are not.

One rule for every subcommand: an output is checked against the inputs before anything is read
(same path, symlink or hard link, inside an input folder, or holding an input all count); an
existing file is replaced only with `--overwrite`; a folder is written into only when it is new,
empty, or carries rmtrain's marker of the same kind (and with `--overwrite` when it holds a
result). Files are written beside their target and renamed into place when whole: a failed or
killed run leaves the old file (or none), never a partial one.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rmtrain.errors import RmtrainError, first_line

REPORT_DIR = "eval_report"  # in a trained model's folder: the held-out evaluation report


def same_file(a: Path, b: Path) -> bool:
    """True when both name one file (also through a symlink or a hard link)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


OWNER = ".rmtrain-output"  # in every folder rmtrain writes: its kind (and a run's options)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _input_clash(out: Path, inputs: Sequence[str], flag: str) -> None:
    """Refuse an output that is an input, lies inside an input folder (the model being scored or
    fine-tuned), or holds an input."""
    here = out.expanduser().resolve()
    for src in inputs:
        if not src:
            continue
        path = Path(src).expanduser()
        if same_file(out, path) or here == path.resolve():
            what = "folder" if path.is_dir() else "file"
            raise RmtrainError(f"{flag} {out} is the input {what}; choose another output path")
        if path.resolve().is_dir() and _inside(here, path.resolve()):
            raise RmtrainError(f"{flag} {out} is inside the input {src}; choose a path outside it")
        if path.exists() and _inside(path.resolve(), here):
            raise RmtrainError(f"{flag} {out} holds the input {src}; choose another output path")


def check_output_file(
    output: str, inputs: Sequence[str], flag: str = "--output", overwrite: bool = False
) -> Path:
    """The output path of a file: never an input or inside an input folder; an existing file
    is replaced only when the user asked (`--overwrite`)."""
    out = Path(output).expanduser()
    if not str(output).strip():
        raise RmtrainError(f"{flag} is empty; pass a file path")
    _input_clash(out, inputs, flag)
    if out.is_dir():
        raise RmtrainError(f"{flag} {output} is a folder; pass a file path")
    if not out.parent.resolve().is_dir():
        raise RmtrainError(f"{flag} {output}: folder {out.parent} does not exist; create it first")
    if out.exists() and not overwrite:
        raise RmtrainError(
            f"{flag} {output} exists; pass --overwrite to replace it, or choose another path"
        )
    return out


def default_mode(folder: bool = False) -> int:
    """The mode a new file (or folder) gets under the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def read_owner(folder: Path) -> dict[str, Any] | None:
    """What rmtrain wrote in its marker, or None for a folder that is not rmtrain's."""
    try:
        owner = json.loads((folder / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and owner.get("written_by") == "rmtrain" else None


def check_output_folder(
    output: Path,
    kind: str,
    inputs: Sequence[str] = (),
    overwrite: bool = False,
    has_results: Callable[[Path], bool] = lambda p: True,
    flag: str = "--output",
) -> dict[str, Any] | None:
    """The one rule for output folders of every subcommand: a folder rmtrain may write into.

    Never the working directory, home or root, never an input or a folder holding one, never a
    non-empty folder without rmtrain's marker, never another kind's folder; an existing result
    (`has_results`) is replaced only with `overwrite`. Returns the folder's marker (None when
    new or empty); the caller writes its own with `write_owner` once it starts."""
    if output.exists() and not output.is_dir():
        raise RmtrainError(f"{flag} {output} is a file; pass a folder path")
    here = output.expanduser().resolve()
    if not str(output).strip() or here in (
        Path.cwd().resolve(),
        Path.home().resolve(),
        Path(here.anchor),
    ):
        raise RmtrainError(
            f"{flag} {str(output) or '(empty)'} is the working directory, home or root; pass "
            f"a folder of its own (e.g. outputs/{kind})"
        )
    _input_clash(output, inputs, flag)
    if not (output.is_dir() and any(output.iterdir())):
        return None
    owner = read_owner(output)
    if owner is None:
        names = ", ".join(sorted(p.name for p in output.iterdir())[:5])
        raise RmtrainError(
            f"{flag} {output} holds files rmtrain did not write ({names}); choose an empty or "
            "new folder"
        )
    if owner.get("kind", "train") != kind:
        raise RmtrainError(
            f"{flag} {output} holds an rmtrain {owner.get('kind', 'train')} output, not {kind}; "
            "choose another folder"
        )
    if has_results(output) and not overwrite:
        raise RmtrainError(
            f"{flag} {output} is not empty; pass --overwrite to replace it, or choose another "
            f"{flag}"
        )
    return owner


def write_owner(output: Path, kind: str, **fields: Any) -> None:
    """Mark `output` as rmtrain's (creating it): the proof `check_output_folder` asks for."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        record = {"written_by": "rmtrain", "kind": kind, **fields}
        (output / OWNER).write_text(json.dumps(record, default=str))
    except OSError as exc:
        raise RmtrainError(f"cannot write to --output {output}: {exc}") from None


# A full disk, a quota or the file-size limit (`ulimit -f`): OSError from Python, a message
# with the OS error from safetensors (Rust) and torch.save (its zip writer's position check).
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_ROOM_WORDS = (
    "os error 27",
    "os error 28",
    "os error 122",
    "file too large",
    "no space left",
    "pytorchstreamwriter failed writing",
    "unexpected pos",
)


def write_failure(exc: BaseException) -> str | None:
    """What ran out when a write failed for lack of room (disk, quota, file-size limit), in a
    few words; None for any other error."""
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    text = first_line(exc, limit=160)
    return text if any(w in text.lower() for w in _NO_ROOM_WORDS) else None


@contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file handle whose content replaces `path` only when the block ends without error; a
    place that cannot be written is one line."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise RmtrainError(
            f"cannot write {path} ({exc.strerror}); choose a writable output path"
        ) from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, default_mode())  # mkstemp makes 0600: readable as any new file instead
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


LOCK = ".rmtrain-lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def output_lock(folder: Path, flag: str = "--output") -> Iterator[None]:
    """One run at a time writes `folder`: a lock file holding the holder's pid, taken with an
    exclusive create; a lock whose holder is dead is taken over. Released when the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _alive(holder):
                raise RmtrainError(
                    f"{flag} {folder} is being written by another rmtrain run (pid {holder}); "
                    "wait for it or choose another output"
                ) from None
            lock.unlink(missing_ok=True)  # its holder died: take it over
    else:
        raise RmtrainError(f"{flag} {folder}: cannot take its lock {lock}")
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
