"""Pairwise Bradley-Terry loss: pure functions of reward tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """mean(-log sigmoid(r_c - r_r - margin)) + center_coef * mean((r_c + r_r)^2).

    The margin asks chosen to win by at least that much (Llama 2 style); the centering term
    keeps rewards near zero so their scale stays comparable across runs (Eisenstein et al.).
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss
