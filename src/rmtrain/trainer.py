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
from torch.utils.data import SequentialSampler
from transformers import EvalPrediction, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from rmtrain.losses import pairwise_loss
from rmtrain.metrics import reward_metrics
from rmtrain.model import last_token_index, token_values


def pair_rewards(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards of a collated batch in one forward pass.

    Packed batches (`PackedCollator`) carry the (row, column) of each reward token; padded
    double batches (`PairCollator`) are read at the last real token of each row.
    """
    values = token_values(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    if "chosen_index" in batch:
        c, r = batch["chosen_index"], batch["rejected_index"]
        return values[c[:, 0], c[:, 1]], values[r[:, 0], r[:, 1]]
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

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Length grouping from each feature's token count (the features carry no input_ids)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[int(f["length"]) for f in dataset],
        )

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        """Keep the given order (rmtrain sorts eval pairs by length); ranks shard it as usual."""
        if self.args.world_size <= 1:
            return SequentialSampler(eval_dataset)
        return None

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
