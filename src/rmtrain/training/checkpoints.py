"""Checkpoints: the newest complete one, rotation, and the newest *good* one (finite, sane
weights and a loss not far above the run's start), which is what a stopped run points the
user to."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError
from rmtrain.training.atomic_save import option_changes

MAX_SANE_WEIGHT = 1e4  # far beyond any trained weight; 1e30 is finite but diverged


class NonFiniteError(RmtrainError):
    """Training produced a NaN or infinite loss or gradient."""


RUN_FILE = "rmtrain_run.json"  # the options of the run that wrote a checkpoint; its seal


def checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Every `checkpoint-N` folder, by step."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [(p.name.removeprefix("checkpoint-"), p) for p in root.iterdir() if p.is_dir()]
    return sorted((int(step), p) for step, p in found if step.isdigit())


def sealed(path: Path) -> bool:
    """Written to the end: `seal_checkpoint` writes the run file last, after every file of the
    Trainer and of the other callbacks."""
    return (path / RUN_FILE).is_file() and (path / "trainer_state.json").is_file()


def seal_checkpoint(folder: str, options: dict[str, Any], keep: int | None) -> None:
    """Mark a just-written checkpoint complete (the run file, written whole by a rename), then
    delete all but the newest `keep` sealed ones: a run killed while saving leaves its
    previous checkpoints and an unsealed folder that resuming skips."""
    tmp = os.path.join(folder, RUN_FILE + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(options, fh, default=str)
    os.replace(tmp, os.path.join(folder, RUN_FILE))
    if keep and keep >= 1:
        done = [p for _, p in checkpoints(Path(folder).parent) if sealed(p)]
        for path in done[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


def remove_unsealed(folder: str | Path, keep: str | None) -> None:
    """Delete the checkpoint folders a killed run left half-written (all but `keep`, the one
    being resumed from), with a line each."""
    kept = Path(keep).resolve() if keep else None
    for _, path in checkpoints(folder):
        if not sealed(path) and path.resolve() != kept:
            print(f"[rmtrain] removing {path}: its run stopped while writing it")
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest sealed `checkpoint-N` whose files all read back (a disk can still corrupt
    one): a damaged newest one is skipped, with a line saying so."""
    found = [(step, p) for step, p in checkpoints(folder) if sealed(p)]
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(f"[rmtrain] skipping {path}: {problem}")
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (a file that does not read back), or None."""
    import zipfile

    from safetensors import safe_open

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "trainer_state.json does not read back"
    for file in path.glob("*.safetensors"):
        try:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    f.get_slice(key)
        except Exception:  # noqa: BLE001 - any failure to read it back
            return f"{file.name} does not read back"
    for file in [*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.bin")]:
        if not zipfile.is_zipfile(file):
            return f"{file.name} does not read back"
    return None


def saved_checkpoint(args: Any, state: Any) -> str | None:
    """The checkpoint folder the Trainer has just written (`on_save`), where this process may
    add files to it (the main process); None otherwise."""
    folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
    return folder if args.should_save and os.path.isdir(folder) else None


def check_resume_options(
    checkpoint: Path, options: dict[str, Any], run_keys: tuple[str, ...]
) -> None:
    """Resuming continues the run that wrote the checkpoint: refuse other run options (the
    saved config would describe a run that never happened)."""
    try:
        before = json.loads((checkpoint / RUN_FILE).read_text())
    except (OSError, ValueError):
        return  # a checkpoint from before this file: the output's own marker was checked
    changes = option_changes(before, options, run_keys)
    if changes:
        raise RmtrainError(
            f"--resume {checkpoint} was written by a run with other options ({changes}); "
            "resume with the same options or start a new run"
        )


def non_finite(what: str, step: int, args: Any) -> NonFiniteError:
    last = good_checkpoint(args.output_dir)
    where = (
        f"the last good checkpoint is {last}"
        if last
        else "there is no good checkpoint (none saved, or all with diverged weights or loss)"
    )
    return NonFiniteError(
        f"non-finite {what} at step {step}: training stopped and {where} (resume from it with "
        f"--resume). Try a lower --lr (now {args.learning_rate:g}), keep gradient clipping on "
        "(--max-grad-norm 1.0), or use --dtype float32 or bf16 instead of float16"
    )


def checkpoint_is_good(path: Path) -> bool:
    """Finite weights of sane size, and a last logged loss that is finite and no more than
    twice the run's first (or ln 2, the loss of a model that knows nothing)."""
    from safetensors import safe_open

    try:
        state = json.loads((path / "trainer_state.json").read_text())
        losses = [e["loss"] for e in state.get("log_history", []) if "loss" in e]
        if losses and not (
            math.isfinite(losses[-1]) and losses[-1] <= 2 * max(losses[0], math.log(2))
        ):
            return False
        for file in path.glob("*.safetensors"):
            with safe_open(str(file), "pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    t = f.get_tensor(key).float()
                    if not bool(t.isfinite().all()) or float(t.abs().max()) > MAX_SANE_WEIGHT:
                        return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def good_checkpoint(folder: str | Path) -> Path | None:
    """The newest sealed checkpoint whose weights and loss are sane."""
    steps = [p for _, p in checkpoints(folder) if sealed(p)]
    return next((p for p in reversed(steps) if checkpoint_is_good(p)), None)


class CollapseError(RmtrainError):
    """Training collapsed: the rewards stopped depending on the input."""


def collapsed(what: str, args: Any) -> CollapseError:
    return CollapseError(
        f"training collapsed: {what}. The model no longer tells responses apart; this is "
        f"divergence, usually a learning rate far too high (now {args.learning_rate:g}): "
        "lower --lr (1e-5 to 1e-4 is typical for full fine-tuning)"
    )


# A held-out loss above this many times ln 2 (the loss of a model that rates every pair a tie)
# means the model is confidently wrong: it learnt the opposite of the data or blew up.
FAR_ABOVE_CHANCE = 4.0
# The training loss "rose" when its last logged value is this far above its first.
ROSE_BY = 0.25


def divergence_reason(
    train_losses: list[float], held_out_loss: float, win_rate: float
) -> str | None:
    """Why a run whose losses stayed finite did not learn, or None when it did.

    Diverged: a held-out loss far above chance or above 4x the run's first training loss, or
    a held-out win rate at or below chance while the training loss rose (by more than 25% of
    its start, and at least 0.1)."""
    first = train_losses[0] if train_losses else math.log(2)
    last = train_losses[-1] if train_losses else first
    limit = FAR_ABOVE_CHANCE * max(math.log(2), first)
    if not held_out_loss <= limit:
        return f"held-out loss {held_out_loss:.4g} is far above chance (ln 2 = 0.693)"
    if win_rate <= 0.5 and last > first + max(0.1, ROSE_BY * first):
        return (
            f"held-out win rate {win_rate:.3f} is at or below chance while the training loss "
            f"rose from {first:.4g} to {last:.4g}"
        )
    return None


def diverged(reason: str, lr: float, output: Any) -> RmtrainError:
    return RmtrainError(
        f"training diverged: {reason}. {output} is kept for inspection, marked as diverged "
        f"and not logged as a model; lower --lr (now {lr:g}) and keep gradient clipping on "
        "(--max-grad-norm 1.0)"
    )
