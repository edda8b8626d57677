"""What `PairwiseRewardTrainer` relies on in transformers' private `Trainer` methods: each
override is listed with its reason, and each fails here if a transformers release renames it,
changes its arguments or stops calling it where the trainer expects."""

import inspect

import torch
from transformers import Trainer

from rmtrain.batching.collate import PairCollator
from rmtrain.training.arguments import RewardTrainingArguments
from rmtrain.training.samplers import PromptGroupedSampler
from rmtrain.training.trainer import PRIVATE_OVERRIDES, PairwiseRewardTrainer
from tests.helpers import FEATURES, SHARED, make_model

SIGNATURES = {
    "_clip_grad_norm": ["self", "model"],
    "_get_grad_norm": ["self", "model", "grad_norm"],
    "_get_train_sampler": ["self", "train_dataset"],
}


def test_private_overrides_are_the_listed_ones_with_the_signatures_relied_on():
    mine = {
        name
        for name, value in vars(PairwiseRewardTrainer).items()
        if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)
        if callable(value)
    }
    assert mine == set(PRIVATE_OVERRIDES) == set(SIGNATURES)
    for name, params in SIGNATURES.items():
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == params, name


def _trainer(tmp_path, cls=PairwiseRewardTrainer, data=None, **options):
    model, pad = make_model("llama", "sdpa")
    args = RewardTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        remove_unused_columns=False,
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        **options,
    )
    data = data or [dict(f, pair_index=i) for i, f in enumerate(FEATURES + SHARED)]
    return cls(
        model=model.train(True), args=args, train_dataset=data, data_collator=PairCollator(pad)
    )


class Recording(PairwiseRewardTrainer):
    calls: list

    def _clip_grad_norm(self, model):
        norm = super()._clip_grad_norm(model)
        self.calls.append(("clip", float(norm)))
        return norm

    def _get_grad_norm(self, model, grad_norm=None):
        self.calls.append(("norm", None if grad_norm is None else float(grad_norm)))
        return super()._get_grad_norm(model, grad_norm=grad_norm)


def test_each_step_clips_then_reads_that_norm_before_the_optimizer_step(tmp_path):
    """The non-finite check sits in `_get_grad_norm`: the Trainer must call it every step,
    after clipping and with the clipped norm (or None without clipping)."""
    for max_norm, expect_clip in ((1e-3, True), (0.0, False)):
        trainer = _trainer(
            tmp_path / str(max_norm),
            Recording,
            FEATURES,
            max_grad_norm=max_norm,
            fold_clipping=False,
        )
        trainer.calls = []
        trainer.train()
        if expect_clip:
            clips = trainer.calls[0::2]
            assert [c[0] for c in trainer.calls] == ["clip", "norm", "clip", "norm"]
            assert [n[1] for n in trainer.calls[1::2]] == [c[1] for c in clips]
        else:
            assert trainer.calls == [("norm", None), ("norm", None)]


def test_the_training_dataloader_draws_from_the_trainers_sampler(tmp_path):
    """`_get_train_sampler` decides the order: with group_by_prompt, a prompt's pairs are
    consecutive, in `PromptGroupedSampler`'s order for the seed."""
    trainer = _trainer(tmp_path, group_by_prompt=True, seed=3, data_seed=3)
    seen = [int(i) for batch in trainer.get_train_dataloader() for i in batch["pair_index"]]
    keys = [tuple(f["prompt_ids"]) for f in trainer.train_dataset]
    assert seen == list(PromptGroupedSampler(keys, 3))
    assert torch.equal(torch.tensor(sorted(seen)), torch.arange(len(keys)))
