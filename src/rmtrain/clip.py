"""Gradient clipping folded into a fused Adam(W) step.

`clip_grad_norm_` reads every gradient once for the norm, then reads and writes every one
again to scale it, before the optimizer reads them a third time: on a CPU these are passes over
memory (540 MB of gradients for SmolLM2-135M). Here each gradient's norm is taken by a hook as
backward produces it (still in cache), and the scale goes to the fused kernel as its
`grad_scale` (the divisor it applies for AMP's loss scaling, then writes back), so the step is
one pass. Same clipped gradients and weights, to float rounding (a division by 1 / coef in place
of a multiplication by coef).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class FoldedClip:
    """Clips into `optimizer`'s next step; `optimizer` must be a fused torch Adam or AdamW
    (`folds_into`). Keeps one norm per parameter between backward and the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]):
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.norms: dict[int, torch.Tensor] = {}
        self.handles = [p.register_post_accumulate_grad_hook(self._record) for p in self.params]
        self.handles.append(optimizer.register_step_post_hook(self._unset))

    def _record(self, param: torch.Tensor) -> None:
        # the latest call sees the accumulated gradient (gradient accumulation calls it again)
        self.norms[id(param)] = torch.linalg.vector_norm(param.grad)

    def clip(self, max_norm: float) -> torch.Tensor:
        """The gradients' total norm before clipping (as `clip_grad_norm_` returns it); when it
        exceeds `max_norm`, the optimizer's next step scales them by max_norm / norm."""
        with_grad = [p for p in self.params if p.grad is not None]
        norms = [self.norms.get(id(p)) for p in with_grad]
        self.norms.clear()
        if not with_grad:
            return torch.tensor(0.0)
        if any(n is None for n in norms):  # a gradient the hooks did not see: measure them
            total = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
        else:
            total = torch.linalg.vector_norm(torch.stack(norms))
        coef = max_norm / (total + 1e-6)
        if coef < 1:  # as clip_grad_norm_: scale only down; a non-finite norm poisons, as there
            self.optimizer.grad_scale = (1 / coef).to(torch.float32)
            self.optimizer.found_inf = torch.zeros((), device=total.device)
        return total

    def _unset(self, optimizer: Any, *_: Any) -> None:
        optimizer.__dict__.pop("grad_scale", None)
        optimizer.__dict__.pop("found_inf", None)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def folds_into(optimizer: Any) -> bool:
    """Whether clipping can ride on `optimizer`'s step: a fused torch Adam / AdamW whose
    parameters are all on CPU (where it was measured) and that no AMP scaler drives."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    if not optimizer.defaults.get("fused") or hasattr(optimizer, "grad_scale"):
        return False
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return bool(params) and all(p.device.type == "cpu" for p in params)
