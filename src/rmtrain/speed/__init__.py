"""The one door to rmtrain's speed machinery: `install(model, options)` prepares one model and
returns a handle whose `remove()` gives the model back as it was.

Everything here is an optimisation with an exact plain equivalent: with `SpeedOptions(enabled=
False)` (`--speed off`) nothing is installed and training, evaluation and scoring run on the
stock transformers path, with the same rewards and gradients to float rounding. What the door
may install, per model only (never a process-wide patch, so other models in the process behave
as stock):
- per-block attention for packed rows and prefix trees (`attention`, `flash`): the model's
  attention implementation is switched to rmtrain's own registered name, not "sdpa" replaced;
- activation-lean norms, MLPs and projections (`lean`, `kernels`) and RoPE as one autograd node
  (`rotary`), as forwards of this model's module instances;
- the last decoder layer run at reward tokens only (`last_layer`), per forward;
- the activation cap (a forward pre-hook on this model).
The trainer also asks here for clipping folded into fused AdamW (`clip`) and the allocator
setting for CPU training (`allocator`). docs/speed.md describes each, with its test and switch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from rmtrain.speed import attention, last_layer, lean
from rmtrain.speed.allocator import retain_freed_memory
from rmtrain.speed.clip import FoldedClip, folds_into
from rmtrain.speed.flash import additive_mask

__all__ = [
    "SDPA_NAMES",
    "SpeedHandle",
    "SpeedOptions",
    "additive_mask",
    "folded_clip",
    "handle_of",
    "install",
    "retain_memory",
    "sdpa_backends",
]

_ATTR = "_rmtrain_speed"
SDPA_NAMES = ("sdpa", attention.NAME)  # stock SDPA, and rmtrain's per-block SDPA


@dataclass(frozen=True)
class SpeedOptions:
    """What `install` may do. `enabled=False` installs nothing (the plain path)."""

    enabled: bool = True
    training: bool = True  # lean activations and the cap only matter with a backward
    lean_activations: bool = True
    cap_activations: bool = True
    fuse_elementwise: bool = False
    block_attention: str = "auto"  # auto (CPU) / on / off / flex


class SpeedHandle:
    """What `install` did to one model, and how to undo it."""

    def __init__(self, model: Any, options: SpeedOptions) -> None:
        self.model, self.options = model, options
        self.lean: lean.LeanModel | None = None
        self.cap: Any = None
        self.attention_was: str | None = None

    def attention_kwargs(self, device: torch.device, blocks: torch.Tensor | None) -> dict:
        """Keyword arguments for one forward over packed rows (4-D mask), carrying the batch's
        block layout and a fresh per-forward cache that every layer of this forward shares."""
        when = self.options.block_attention
        if self.attention_was is None or when == "off":
            return {}
        if when == "flex":
            return {"attention_flex": True, "attention_cache": {}}
        if blocks is None or (when == "auto" and device.type != "cpu"):
            return {}
        return {"attention_blocks": attention.block_sizes(blocks), "attention_cache": {}}

    def only_rows(self, keep: torch.Tensor | None) -> contextlib.AbstractContextManager:
        """The last layer's output projection and MLP at `keep` alone (None: everywhere)."""
        return last_layer.only_rows(self.model, keep)

    def remove(self) -> None:
        """Give the model back as loaded: stock forwards, stock attention, no hooks."""
        if self.cap is not None:
            self.cap.remove()
        if self.lean is not None:
            self.lean.remove()
        if self.attention_was is not None:
            attention.deselect(self.model, self.attention_was)
        self.model.__dict__.pop(_ATTR, None)


def install(model: Any, options: SpeedOptions, checkpointing: bool = False) -> SpeedHandle | None:
    """Prepare `model` (a transformers model, unwrapped) as `options` allow; None when speed is
    off. `checkpointing`: gradient checkpointing recomputes activations anyway (no cap)."""
    previous = handle_of(model)
    if previous is not None:  # prepared before: start again from the stock model
        previous.remove()
    if not options.enabled:
        return None
    handle = SpeedHandle(model, options)
    if options.block_attention != "off":
        handle.attention_was = attention.select(model)
    if options.training and options.lean_activations:
        handle.lean = lean.make_lean(model, fuse=options.fuse_elementwise)
        if options.cap_activations and not checkpointing:
            handle.cap = lean.cap_activations(model)
    model.__dict__[_ATTR] = handle
    return handle


def handle_of(model: Any) -> SpeedHandle | None:
    """The handle `install` left on this model, or None (a stock model)."""
    return model.__dict__.get(_ATTR)


def sdpa_backends(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA, SDPA may pick flash, memory-efficient or math kernels but not cuDNN, which
    builds a graph for every new input shape (packed rows change shape nearly every batch)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def folded_clip(optimizer: Any, params: Any, single_process: bool) -> FoldedClip | None:
    """Clipping that rides on a fused Adam(W) step on CPU, or None where it does not apply."""
    if single_process and folds_into(optimizer):
        return FoldedClip(optimizer, params)
    return None


def retain_memory() -> bool:
    """Keep the memory a CPU training step frees for the next step (glibc only)."""
    return not torch.cuda.is_available() and retain_freed_memory()
