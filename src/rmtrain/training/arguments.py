"""`RewardTrainingArguments`: transformers' `TrainingArguments` plus what the reward trainer
reads, one object for the trainer, its scheduler and its metrics (as TRL's `RewardConfig`).

The options the trainer reads are declared once, in `TrainConfig`, with `trainer=True`: each
becomes a field here with the same name, type, default and help, and `rmtrain train` fills it.
A new such option is its `TrainConfig` field and the line of the trainer that reads it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from rmtrain.config import TrainConfig


def _trainer_options() -> list[tuple[str, str, dataclasses.Field]]:
    """`TrainConfig`'s options marked `trainer=True`, as dataclass fields."""
    return [
        (f.name, f.type, field(default=f.default, metadata={"help": f.metadata["help"]}))
        for f in dataclasses.fields(TrainConfig)
        if f.metadata.get("trainer")
    ]


_TrainerOptions = dataclasses.make_dataclass(
    "_TrainerOptions", _trainer_options(), bases=(TrainingArguments,)
)


@dataclass
class RewardTrainingArguments(_TrainerOptions):
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
