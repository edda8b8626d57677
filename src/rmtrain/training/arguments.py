"""`RewardTrainingArguments`: transformers' `TrainingArguments` plus what the reward trainer
reads, one object for the trainer, its scheduler and its metrics (as TRL's `RewardConfig`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class RewardTrainingArguments(TrainingArguments):
    loss: str = field(default="bt", metadata={"help": "pairwise loss (`modeling.losses`)"})
    center_rewards_coef: float = field(
        default=0.0, metadata={"help": "weight of mean((r_c + r_r)^2): rewards centred on 0"}
    )
    lm_loss_coef: float = field(
        default=0.0, metadata={"help": "weight of a causal LM loss on the chosen responses"}
    )
    head_lr_multiplier: float = field(
        default=1.0, metadata={"help": "the value head's learning rate over the body's"}
    )
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "warmup as a share of the run's steps (1.0: all)"}
    )
    group_by_prompt: bool = field(
        default=False, metadata={"help": "a prompt's pairs in the same steps (prefix trees)"}
    )
    fold_clipping: bool = field(
        default=True, metadata={"help": "clip inside a fused Adam(W) step where it applies"}
    )

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """ceil(warmup_ratio x steps), else transformers' `warmup_steps` (which it reads as a
        count from 1 up, so a ratio of 1.0 there would warm up for one step)."""
        if self.warmup_ratio > 0:
            return math.ceil(self.warmup_ratio * num_training_steps)
        return super().get_warmup_steps(num_training_steps)

    @classmethod
    def reward_options(cls) -> tuple[str, ...]:
        """The fields this class adds to `TrainingArguments` (a `TrainConfig` option of the
        same name fills each)."""
        base = {f.name for f in dataclasses.fields(TrainingArguments)}
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in base)

    @property
    def visible_gpus(self) -> int:
        """The GPUs this process sees (transformers' own `n_gpu`)."""
        return super().n_gpu

    @property
    def n_gpu(self) -> int:
        """At most one: with several GPUs visible and no launcher, the Trainer would wrap the
        model in `nn.DataParallel`, which splits a batch's rows across replicas; packed rows
        carry per-batch block sizes and reward positions, so rewards would be wrong. Several
        GPUs go through `accelerate launch` or torchrun (one process per GPU)."""
        return min(self.visible_gpus, 1)
