"""What a run needs from the machine: which process leads, free disk for a checkpoint, and the
peak memory it used."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rmtrain.errors import RmtrainError


def peak_memory_gib() -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def is_main_process() -> bool:
    """Rank 0 (before the Trainer exists, from the launcher's environment)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_free_disk(
    output: Path, model: Any, with_optimizer: bool, tokenizer_bytes: int = 0
) -> None:
    """Fail before training when the disk cannot hold one checkpoint (weights + AdamW state)
    and the final folder (weights, tokenizer files, reports: a margin of 5% and 1 MiB)."""
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    need = n_bytes * (3 if with_optimizer else 1) + tokenizer_bytes
    need = int(need * 1.05) + 2**20
    free = shutil.disk_usage(output).free
    if free < need:
        raise RmtrainError(
            f"{output} has {free / 2**20:.0f} MiB free; one checkpoint needs about "
            f"{need / 2**20:.0f} MiB. Free some space or choose another --output"
        )
