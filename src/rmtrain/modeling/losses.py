"""The training losses, one registry: pure functions of reward tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

PairLoss = Callable[[torch.Tensor], torch.Tensor]
LOSSES: dict[str, PairLoss] = {}


def loss(name: str) -> Callable[[PairLoss], PairLoss]:
    """Register a pairwise loss under `name` (`--loss NAME`): a function of the margins
    d = r_chosen - r_rejected - margin, returning the per-pair loss. A new loss is one such
    function and its test."""

    def register(fn: PairLoss) -> PairLoss:
        LOSSES[name] = fn
        return fn

    return register


@loss("bt")
def bradley_terry(diff: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(d): the Bradley-Terry likelihood of the preference."""
    return -F.logsigmoid(diff)


@loss("hinge")
def hinge(diff: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - d): no gradient once chosen wins by 1 (a margin-ranking loss)."""
    return F.relu(1.0 - diff)


def loss_formula(name: str) -> str:
    """The formula a registered loss's docstring opens with (before its first colon)."""
    return (LOSSES[name].__doc__ or name).split(":")[0].strip()


def pairwise_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
    kind: str = "bt",
) -> torch.Tensor:
    """mean(LOSSES[kind](r_c - r_r - margin)) + center_coef * mean((r_c + r_r)^2).

    The margin asks chosen to win by at least that much (Llama 2 style); the centering term
    keeps rewards near zero so their scale stays comparable across runs (Eisenstein et al.).
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    total = LOSSES[kind](diff).mean()
    if center_coef:
        total = total + center_coef * ((chosen + rejected) ** 2).mean()
    return total


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors; 0 when either is constant."""
    x, y = x.float() - x.float().mean(), y.float() - y.float().mean()
    denom = (x.square().sum() * y.square().sum()).sqrt()
    return (x * y).sum() / denom if denom > 0 else x.sum() * 0.0


def length_terms(
    quality: torch.Tensor, length_part: torch.Tensor, lengths: torch.Tensor, cosine: torch.Tensor
) -> torch.Tensor:
    """ODIN's disentangling terms (arXiv 2402.07319) over a batch's responses:
    (1 - corr(length head, length)) + |corr(value head, length)| + |cos(w_value, w_length)|.

    The length head is pulled towards response length, the value head away from it, and the two
    heads' weights towards orthogonal directions; the preference loss is taken on their sum."""
    return (1 - pearson(length_part, lengths)) + pearson(quality, lengths).abs() + cosine.abs()


def lm_loss(
    hidden: torch.Tensor, lm_weight: torch.Tensor, input_ids: torch.Tensor, lm_mask: torch.Tensor
) -> torch.Tensor:
    """Next-token cross-entropy on the tokens `lm_mask` marks (the chosen responses).

    Logits are computed only at the positions that predict a marked token, so the vocabulary
    projection costs (marked tokens x vocab), not (all tokens x vocab).
    """
    target_mask = lm_mask[:, 1:]
    if not target_mask.any():
        return hidden.sum() * 0.0
    h = hidden[:, :-1][target_mask]
    logits = h.to(lm_weight.dtype) @ lm_weight.T
    return F.cross_entropy(logits.float(), input_ids[:, 1:][target_mask])
