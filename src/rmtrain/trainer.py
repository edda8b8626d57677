"""`PairwiseRewardTrainer`: transformers' `Trainer` with the pairwise loss and reward metrics.

Only the hooks that differ are overridden: the loss (one forward over chosen + rejected), the
prediction step (returns per-pair rewards and pair indices, so metrics are exact over the whole
eval set), and a guard that the model is called with our inputs. Data and model logic live in
`collate.py` and `model.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction, Trainer

from rmtrain.losses import pairwise_loss
from rmtrain.metrics import reward_metrics
from rmtrain.model import last_token_index, token_values


def pair_rewards(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards of a padded double batch in one forward pass."""
    values = token_values(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    index = last_token_index(batch["attention_mask"])
    rewards = values.gather(1, index.unsqueeze(1)).squeeze(1)
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


class PairwiseRewardTrainer(Trainer):
    """Bradley-Terry reward-model training on `PairCollator` batches."""

    def __init__(self, *args: Any, center_rewards_coef: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.center_rewards_coef = center_rewards_coef

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        chosen, rejected = pair_rewards(model, inputs)
        loss = pairwise_loss(chosen, rejected, inputs.get("margin"), self.center_rewards_coef)
        if return_outputs:
            return loss, {"chosen": chosen, "rejected": rejected}
        return loss

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        rewards = torch.stack([out["chosen"], out["rejected"]], dim=1)
        return loss.detach(), rewards.detach(), inputs["pair_index"]


def make_compute_metrics(groups: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """Metrics over the whole eval set; `label_ids` hold each prediction's pair index."""

    def compute(pred: EvalPrediction) -> dict[str, float]:
        rewards = np.asarray(pred.predictions).reshape(-1, 2)
        index = np.asarray(pred.label_ids).reshape(-1).astype(int)
        _, first = np.unique(index, return_index=True)  # a pair counted once, even if repeated
        rewards, index = rewards[first], index[first]
        return reward_metrics(rewards[:, 0], rewards[:, 1], [groups[i] for i in index])

    return compute
