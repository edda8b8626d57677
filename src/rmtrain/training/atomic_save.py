"""Atomic publication of a finished model into the output folder.

Files are written to a staging folder first, then moved into place with `os.replace`, with
`config.json` last: `from_pretrained` needs it, so a crash at any point leaves either the
complete new model or a folder that does not look like a model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rmtrain.errors import RmtrainError

MARKER = "config.json"
MARKERS = (MARKER, "adapter_config.json")  # moved last: what makes a folder look complete


def check_output_dir(output: Path, overwrite: bool) -> None:
    """Refuse to replace an existing model unless asked, and fail early on unwritable paths."""
    if output.exists() and not output.is_dir():
        raise RmtrainError(f"--output {output} is a file; pass a folder path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise RmtrainError(
            f"--output {output} is not empty; pass --overwrite to replace it, --resume to "
            "continue its run, or choose another --output"
        )
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".rmtrain-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RmtrainError(f"cannot write to --output {output}: {exc}") from None


STAGE_NAME = ".staging-final"


def staging_dir(output: Path) -> Path:
    stage = output / STAGE_NAME
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def publish(stage: Path, output: Path) -> None:
    """Move every staged file into `output`; the marker goes last, an old marker goes first."""
    for marker in MARKERS:
        (output / marker).unlink(missing_ok=True)
    names = sorted(p.name for p in stage.iterdir())
    names = [n for n in names if n not in MARKERS] + [m for m in MARKERS if m in names]
    for name in names:
        target = output / name
        if target.is_dir() or ((stage / name).is_dir() and target.exists()):
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(stage / name, target)
    stage.rmdir()
