"""The last decoder layer computed only where a reward is read.

A reward model reads one value per response, at its last token. Every layer but the last must
run at all positions (the next layer's keys and values read them), but the last layer's
attention output projection and MLP feed nothing except the final norm and the value head at
the same position. `only_rows` runs those two modules at the reward tokens alone; keys, values
and queries still run everywhere.

The outputs at the other positions lack the two modules' contribution, so values read there
are not rewards: callers pass the positions they read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from rmtrain.speed.lean import GATED_MLPS


class _Rows:
    """Forward hooks that run a module on the rows `keep` of its input [*, seq, hidden] (as one
    [1, n, hidden] sequence) and put its outputs back at those rows, zero elsewhere."""

    def __init__(self, keep: torch.Tensor) -> None:
        self.keep, self.shape = keep, torch.Size()

    def gather(self, _module: Any, args: tuple) -> tuple:
        x = args[0]
        self.shape = x.shape[:-1]
        return (x.reshape(-1, x.shape[-1]).index_select(0, self.keep).unsqueeze(0), *args[1:])

    def scatter(self, _module: Any, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        flat = out.new_zeros(self.shape.numel(), out.shape[-1])
        return flat.index_copy(0, self.keep, out[0]).view(*self.shape, out.shape[-1])


def last_layer_modules(model: Any) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The last decoder layer's attention output projection and (dense, gated) MLP, or None for
    layouts this does not know (MoE blocks return router logits too) and under gradient
    checkpointing, which reruns the layer in backward after the hooks are gone."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        return None
    if getattr(model, "is_activation_checkpointing", False):
        return None
    o_proj = getattr(getattr(layers[-1], "self_attn", None), "o_proj", None)
    mlp = getattr(layers[-1], "mlp", None)
    if not isinstance(o_proj, torch.nn.Module) or type(mlp).__name__ not in GATED_MLPS:
        return None
    return o_proj, mlp


@contextlib.contextmanager
def only_rows(model: Any, keep: torch.Tensor | None) -> Iterator[bool]:
    """Within the block, `model`'s last layer runs its output projection and MLP only at `keep`
    (flat indices into [rows x seq], on the model's device); yields whether it does."""
    modules = last_layer_modules(model) if keep is not None else None
    if modules is None:
        yield False
        return
    handles = []
    for module in modules:
        rows = _Rows(keep)
        handles.append(module.register_forward_pre_hook(rows.gather))
        handles.append(module.register_forward_hook(rows.scatter))
    try:
        yield True
    finally:
        for handle in handles:
            handle.remove()
