"""Atomic publication of a finished model into the output folder.

Files are written to a staging folder first, then moved into place with `os.replace`, with
`config.json` last: `from_pretrained` needs it, so a crash at any point leaves either the
complete new model or a folder that does not look like a model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError
from rmtrain.outputs import check_output_folder, default_mode, read_owner, write_owner

MARKER = "config.json"
MARKERS = (MARKER, "adapter_config.json")  # moved last: what makes a folder look complete


def has_model(output: Path) -> bool:
    return any((output / m).exists() for m in MARKERS)


def _has_run_state(output: Path) -> bool:
    """A finished model or a checkpoint: what a rerun must not silently replace."""
    ckpts = output / "checkpoints"
    return has_model(output) or (ckpts.is_dir() and any(ckpts.iterdir()))


def check_output_dir(
    output: Path, overwrite: bool, resume: bool = False, inputs: Sequence[str] = ()
) -> None:
    """The output rule (`rmtrain.outputs`) for a training run, checked before anything loads,
    and a write test (an unwritable path fails at once, not after training)."""
    check_output_folder(output, "train", inputs, overwrite or resume, _has_run_state)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".rmtrain-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RmtrainError(f"cannot write to --output {output}: {exc}") from None


def clear_previous_run(output: Path) -> None:
    """Under the run's lock: nothing of an old run may mix with the new one. `--overwrite`
    clears the old run's checkpoints (so they cannot be rotated into or resumed as the new
    run); a failed run's leftovers (a data report, no model, no checkpoint) need no flag."""
    for name in ("checkpoints", STAGE_NAME, NEXT):
        shutil.rmtree(output / name, ignore_errors=True)


NEXT = ".rmtrain-next"  # a new run's reports while the folder still holds the old model


def reports_dir(output: Path) -> Path:
    """Where a run writes its reports before its model is saved: the folder itself, or beside
    a finished model already there (`--overwrite`), so that a run that fails or is refused
    changes nothing of that model; they move in with the new model."""
    if not has_model(output):
        return output
    (output / NEXT).mkdir(parents=True, exist_ok=True)
    return output / NEXT


def claim_output(
    output: Path, options: dict[str, Any], resume: bool, run_keys: Sequence[str] = ()
) -> None:
    """Mark the folder as this run's (with its options), unless it still holds a finished model
    (then the mark moves in with the new model, `publish`); on resume, refuse a checkpoint that
    another run wrote, naming the `run_keys` options that differ."""
    owner = read_owner(output)
    changes = option_changes(owner.get("options", {}), options, run_keys) if owner else ""
    if resume and changes:
        raise RmtrainError(
            f"--resume: the checkpoints in {output} belong to a run with other options "
            f"({changes}); resume with the same options or start with --overwrite"
        )
    if resume or not has_model(output):
        write_owner(output, "train", options=options)


def option_changes(before: dict[str, Any], options: dict[str, Any], keys: Sequence[str]) -> str:
    """`key: old -> new` for each of `keys` whose value differs from the recorded run's."""
    differ = [k for k in keys if k in before and before[k] != options.get(k)]
    return ", ".join(f"{k}: {before[k]!r} -> {options.get(k)!r}" for k in differ)


STAGE_NAME = ".staging-final"


def staging_dir(output: Path) -> Path:
    stage = output / STAGE_NAME
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


NOT_PUBLISHED = ("training_args.bin",)  # a pickle of the Trainer's arguments: not a model file


def publish(stage: Path, output: Path, options: dict[str, Any] | None = None) -> None:
    """Move every staged file into `output`; the marker goes last, an old marker goes first.
    Files get the mode any new file gets (some writers make 0600: another account serving the
    model could not read it); an empty `checkpoints/` is removed."""
    for name in NOT_PUBLISHED:
        (stage / name).unlink(missing_ok=True)
    pending = output / NEXT
    if pending.is_dir():  # the run's reports, kept aside while the old model stood
        for item in pending.iterdir():
            if not (stage / item.name).exists():
                os.replace(item, stage / item.name)
        shutil.rmtree(pending)
    for path in stage.rglob("*"):
        path.chmod(default_mode(path.is_dir()))
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
    ckpts = output / "checkpoints"
    if ckpts.is_dir() and not any(ckpts.iterdir()):
        ckpts.rmdir()
    if options is not None:
        write_owner(output, "train", options=options)
