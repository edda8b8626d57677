"""Gradient clipping folded into a fused Adam(W) step.

`clip_grad_norm_` reads every gradient once for the norm, then reads and writes every one
again to scale it, before the optimizer reads them a third time: on a CPU these are passes over
memory (every gradient, each time). Here the scale goes to the fused kernel as its
`grad_scale` (the divisor it applies for AMP's loss scaling, writing the gradients back
unscaled), so scaling costs no pass of its own. Same clipped gradients and weights, to float
rounding (a division by 1 / coef in place of a multiplication by coef).

The norm is taken row by row (`total_norm`): `torch._foreach_norm`, which `clip_grad_norm_`
uses, sums each gradient in one float accumulator, which drifts on gradients of tens of millions
of elements; rows of the last dimension sum exactly to float rounding, and faster.

Taking each gradient's norm in a hook as backward makes it would save the norm's pass too, but
keeps per-parameter state alive through backward and raises peak memory, so it is not done.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class FoldedClip:
    """Clips into `optimizer`'s next step; `optimizer` must be a fused torch Adam or AdamW
    (`folds_into`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]):
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.handle = optimizer.register_step_post_hook(self._unset)

    def clip(self, max_norm: float) -> torch.Tensor:
        """The gradients' total norm before clipping (as `clip_grad_norm_` returns it); when it
        exceeds `max_norm`, the optimizer's next step scales them by max_norm / norm."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        total = total_norm(grads)
        coef = max_norm / (total + 1e-6)
        if coef < 1:  # as clip_grad_norm_: scale only down; a non-finite norm poisons, as there
            self.optimizer.grad_scale = (1 / coef).to(torch.float32)
            self.optimizer.found_inf = torch.zeros((), device=total.device)
        return total

    def _unset(self, optimizer: Any, *_: Any) -> None:
        optimizer.__dict__.pop("grad_scale", None)
        optimizer.__dict__.pop("found_inf", None)

    def remove(self) -> None:
        self.handle.remove()


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all `grads` together: each row's norm (one vectorised sum over the last
    dimension), then the norm of those, in float32."""
    rows = [g.reshape(-1, g.shape[-1]) if g.dim() > 1 else g.reshape(1, -1) for g in grads]
    norms = [torch.linalg.vector_norm(r, dim=1, dtype=torch.float32) for r in rows]
    return torch.linalg.vector_norm(torch.cat(norms))


def folds_into(optimizer: Any) -> bool:
    """Whether clipping can ride on `optimizer`'s step: a fused torch Adam / AdamW whose
    parameters are all on CPU and that no AMP scaler drives."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    if not optimizer.defaults.get("fused") or hasattr(optimizer, "grad_scale"):
        return False
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return bool(params) and all(p.device.type == "cpu" for p in params)
