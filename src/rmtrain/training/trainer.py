"""`PairwiseRewardTrainer`: transformers' `Trainer` with the pairwise loss and reward metrics.

Public hooks carry the differences: the loss (one forward over chosen + rejected), the
prediction step (per-pair rewards and pair indices, so metrics are exact over the whole eval
set), the eval dataloader (the eval collator, in order), the optimizer (the head's learning
rate) and callbacks (sealed checkpoints); the options come in `RewardTrainingArguments`. Data
and model logic live in `batching/` and `modeling/`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import EvalPrediction, Trainer, TrainerCallback

from rmtrain import speed
from rmtrain.batching.collate import group_by_prompt
from rmtrain.evaluation.metrics import reward_metrics
from rmtrain.modeling.losses import length_terms, lm_loss, pairwise_loss
from rmtrain.modeling.rewards import length_head, pair_rewards, value_head
from rmtrain.training.arguments import RewardTrainingArguments
from rmtrain.training.checkpoints import (
    collapsed,
    non_finite,
    saved_checkpoint,
    seal_checkpoint,
)
from rmtrain.training.samplers import (
    EpochSeededLengthSampler,
    EpochSeededRandomSampler,
    PromptGroupedSampler,
)


def split_head_groups(optimizer: torch.optim.Optimizer, head: set[int], scale: float) -> None:
    """Move the head's parameters out of each param group into a copy with lr x `scale`."""
    groups = []
    for group in optimizer.param_groups:
        mine = [p for p in group["params"] if id(p) in head]
        rest = [p for p in group["params"] if id(p) not in head]
        groups.append({**group, "params": rest})
        if mine:
            groups.append({**group, "params": mine, "lr": group["lr"] * scale})
    optimizer.param_groups = [g for g in groups if g["params"]]


class LossTrace:
    """The first and the latest `window` training losses (tensors: no device sync per step),
    so the end of a run can say whether its loss rose, whatever --logging-steps is."""

    def __init__(self, window: int = 8) -> None:
        self.first: torch.Tensor | None = None
        self.last: deque[torch.Tensor] = deque(maxlen=window)

    def add(self, loss: torch.Tensor) -> None:
        if self.first is None:
            self.first = loss
        self.last.append(loss)

    def ends(self) -> list[float]:
        """[the first loss (before any update), mean of the latest half-window of losses]."""
        if self.first is None:
            return []
        k = max(1, len(self.last) // 2)
        return [self.first.item(), torch.stack(list(self.last)[-k:]).float().mean().item()]


ZERO_GRAD_STEPS = 3  # no real batch gives an exactly zero gradient; a saturated model does


class PairwiseRewardTrainer(Trainer):
    """Bradley-Terry reward-model training on `PairCollator` batches, configured by
    `RewardTrainingArguments`.

    Private `Trainer` methods are overridden only where no public hook exists, each named in
    `PRIVATE_OVERRIDES` with its reason; tests/training/test_transformers_contract.py fails if
    transformers changes what they rely on."""

    args: RewardTrainingArguments

    def __init__(
        self,
        *args: Any,
        eval_collator: Any = None,
        lm_head_weight: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, RewardTrainingArguments):
            raise TypeError("PairwiseRewardTrainer takes RewardTrainingArguments")
        self.eval_collator, self.lm_head_weight = eval_collator, lm_head_weight
        self._zero_grad_steps = 0  # consecutive steps with an exactly zero gradient
        self._parts: dict[str, list[float]] = {"rm_loss": [], "lm_loss": []}
        self.tokens_seen = 0  # real (non-pad) tokens computed in training, for tokens/s and MFU
        self.loss_trace = LossTrace()  # the run's first and last losses: did it learn?
        # clipping folded into a fused Adam(W) step where it applies (`speed.folded_clip`),
        # decided at the first clipping; False: the Trainer's own
        self._folded_clip: Any = None if self.args.fold_clipping else False

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean reward-model and LM losses since the last log (multi-task runs)."""
        if "loss" in logs and self._parts["lm_loss"]:
            for key, vals in self._parts.items():
                logs[key] = sum(vals) / len(vals)
                vals.clear()
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the value head in groups of its own at
        `head_lr_multiplier` x the learning rate (schedules scale every group alike)."""
        optimizer = super().create_optimizer(model)
        if self.args.head_lr_multiplier != 1.0:
            heads = [value_head(self.model), length_head(self.model)]
            head = {
                id(p) for h in heads if h is not None for p in h.parameters() if p.requires_grad
            }
            split_head_groups(optimizer, head, self.args.head_lr_multiplier)
        return optimizer

    def _clip_grad_norm(self, model: Any) -> Any:
        """Trainer's clipping, folded into the step of a fused Adam(W) on CPU in a single
        process (`speed.clip`: one pass over the gradients instead of three)."""
        if self._folded_clip is None:
            inner = getattr(self.optimizer, "optimizer", self.optimizer)
            single = self.accelerator.distributed_type == "NO" and self.accelerator.scaler is None
            self._folded_clip = speed.folded_clip(inner, model.parameters(), single) or False
        if not self._folded_clip:
            return super()._clip_grad_norm(model)
        return self._folded_clip.clip(self.args.max_grad_norm)

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        """Trainer's gradient norm, which it computes every step (for clipping, else for the
        log), checked before the optimizer step: a non-finite one stops training there, with
        no second pass over every gradient."""
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if norm is not None and not math.isfinite(float(norm)):
            raise non_finite("gradient", self.state.global_step + 1, self.args)
        self._zero_grad_steps = self._zero_grad_steps + 1 if norm is not None and not norm else 0
        if self._zero_grad_steps >= ZERO_GRAD_STEPS:
            step = self.state.global_step + 1
            what = f"the gradient was exactly zero for {ZERO_GRAD_STEPS} steps (to step {step})"
            raise collapsed(what, self.args)
        return norm

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any) -> Any:
        """Forward and backward (recomputed checkpointed layers too) under the SDPA kernel
        choice of every rmtrain forward (`speed.sdpa_backends`)."""
        with speed.sdpa_backends(self.args.device):
            return super().training_step(model, inputs, *args, **kw)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if model.training and "num_tokens" in inputs:
            self.tokens_seen += int(inputs["num_tokens"])
        multitask = self.args.lm_loss_coef > 0 and model.training
        second = length_head(model) if model.training else None
        taps: list[torch.Tensor] | None = [] if second is not None else None
        if multitask:
            chosen, rejected, hidden = pair_rewards(model, inputs, True, taps)
        else:
            chosen, rejected = pair_rewards(model, inputs, head_inputs=taps)
        terms = None
        if second is not None and taps:  # the preference is fitted by both heads together
            chosen, rejected, terms = self._length_head(
                model, second, taps[-1], chosen, rejected, inputs
            )
        loss = pairwise_loss(
            chosen, rejected, inputs.get("margin"), self.args.center_rewards_coef, self.args.loss
        )
        if terms is not None:
            loss = loss + terms
        if multitask:
            weight = self.lm_head_weight.to(hidden.device)
            aux = lm_loss(hidden, weight, inputs["input_ids"], inputs["lm_mask"])
            self._parts["rm_loss"].append(loss.item())
            self._parts["lm_loss"].append(aux.item())
            loss = loss + self.args.lm_loss_coef * aux
        if model.training and not torch.isfinite(loss):
            raise non_finite("loss", self.state.global_step + 1, self.args)
        if model.training:
            self.loss_trace.add(loss.detach())
        if return_outputs:
            return loss, {"chosen": chosen, "rejected": rejected}
        return loss

    @staticmethod
    def _length_head(
        model: Any,
        second: torch.nn.Module,
        head_in: torch.Tensor,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        inputs: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen, rejected) as value head + length head, and ODIN's disentangling terms."""
        part = second(head_in.to(second.weight.dtype)).squeeze(-1).float()
        main = value_head(model).weight
        cosine = torch.nn.functional.cosine_similarity(
            main.flatten().float(), second.weight.flatten().float(), dim=0
        )
        quality = torch.cat([chosen, rejected])
        terms = length_terms(quality, part, inputs["lengths"].to(part.device), cosine)
        half = chosen.shape[0]
        return chosen + part[:half], rejected + part[half:], terms

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Length grouping from each feature's token count (the features carry no input_ids)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if self.args.group_by_prompt:
            return PromptGroupedSampler([tuple(f["prompt_ids"]) for f in dataset], seed)
        if self.args.train_sampling_strategy == "random":
            return EpochSeededRandomSampler(len(dataset), seed)
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(dataset)
        return EpochSeededLengthSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[int(f["length"]) for f in dataset],
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """Batches of the eval collator, in the given order (rmtrain sorts eval pairs by
        length; ranks shard it as usual): without gradients, prefix trees (each prompt and each
        repeated response computed once) or one pair per row of a length-sorted batch; long
        packed rows cost more in attention than they save when there is no backward pass."""
        if self.eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        if getattr(self.eval_collator, "takes_prompt_groups", False):
            dataset = group_by_prompt(dataset)
        loader = DataLoader(
            dataset,
            batch_size=self.args.eval_batch_size,
            collate_fn=self.eval_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.args.device
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        with torch.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        index = inputs["pair_index"]  # [pairs], or [items, pairs per item] for prompt groups
        rewards = torch.stack([out["chosen"], out["rejected"]], dim=-1).reshape(*index.shape, 2)
        # No batch loss: Trainer would weight it by rows, not pairs (packed rows hold several
        # pairs). compute_metrics computes the exact eval loss over all pairs instead.
        del loss
        return None, rewards.detach(), index


def make_compute_metrics(
    groups: Sequence[str],
    sink: dict[str, np.ndarray] | None = None,
    margins: Sequence[float] | None = None,
    center_coef: float = 0.0,
    loss_kind: str = "bt",
) -> Callable[[EvalPrediction], dict[str, float]]:
    """Metrics over the whole eval set; `label_ids` hold each prediction's pair index.

    The eval `loss` is the training objective averaged over pairs (exact, whatever the batch
    layout). `sink` receives the per-pair rewards of the last evaluation (held-out report).
    """

    def compute(pred: EvalPrediction) -> dict[str, float]:
        rewards = np.asarray(pred.predictions).reshape(-1, 2)
        index = np.asarray(pred.label_ids).reshape(-1).astype(int)
        # A pair counted once, even if repeated; index -1 marks padding, not a pair.
        _, first = np.unique(index, return_index=True)
        first = first[index[first] >= 0]
        rewards, index = rewards[first], index[first]
        if sink is not None:
            sink.update(chosen=rewards[:, 0], rejected=rewards[:, 1], index=index)
        metrics = reward_metrics(rewards[:, 0], rewards[:, 1], [groups[i] for i in index])
        margin = torch.tensor([margins[i] for i in index]) if margins is not None else None
        chosen, rejected = torch.from_numpy(rewards[:, 0]), torch.from_numpy(rewards[:, 1])
        metrics["loss"] = float(pairwise_loss(chosen, rejected, margin, center_coef, loss_kind))
        return metrics

    return compute


# The private Trainer methods overridden above, and why no public hook serves.
PRIVATE_OVERRIDES = {
    "_clip_grad_norm": "no public hook clips; a fused Adam(W) step folds clipping in",
    "_get_grad_norm": "no public hook sees the norm; it stops a run at a non-finite one",
    "_get_train_sampler": "no public hook picks the training sampler short of a dataloader",
}


class SealCheckpoints(TrainerCallback):
    """Each checkpoint carries the options of the run that wrote it (`--resume` checks them),
    written last as its seal; then the oldest sealed ones beyond `keep` go. Add it after every
    other callback that writes into checkpoints."""

    def __init__(self, options: dict[str, Any], keep: int | None) -> None:
        self.options, self.keep = options, keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = saved_checkpoint(args, state)
        if folder:
            seal_checkpoint(folder, self.options, self.keep)


class WholeSplitAtTheEnd(TrainerCallback):
    """No evaluation of the sample at the last step: the recipe evaluates the whole held-out
    split there anyway (transformers would otherwise evaluate both)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= state.max_steps:
            control.should_evaluate = False
        return control
