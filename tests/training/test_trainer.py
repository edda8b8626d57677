import numpy as np
import pytest
from transformers import EvalPrediction

from rmtrain.training.samplers import EpochSeededRandomSampler
from rmtrain.training.trainer import make_compute_metrics


def test_eval_metrics_are_exact_over_pairs_and_deduplicated():
    sink = {}
    compute = make_compute_metrics(["a", "a", "b"], sink, margins=[0.0, 1.0, 0.0])
    # pair 2 appears twice (padding of the last batch across ranks): counted once
    preds = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0], [1.0, 3.0]])
    m = compute(EvalPrediction(predictions=preds, label_ids=np.array([0, 1, 2, 2])))
    assert m["num_pairs"] == 3 and m["win_rate"] == pytest.approx(1 / 3)
    # -log sigmoid(2) = 0.126928, -log sigmoid(0 - 1) = 1.313262, -log sigmoid(-2) = 2.126928
    assert m["loss"] == pytest.approx((0.126928 + 1.313262 + 2.126928) / 3, abs=1e-5)
    # prompt a: pair 0 right, pair 1 tie -> (1 + 0) / 2; prompt b: -1 -> mean -0.25
    assert m["kendall_tau"] == pytest.approx(-0.25)
    assert sink["index"].tolist() == [0, 1, 2]


def test_seeded_sampler_is_the_same_in_every_process_and_epoch_dependent():
    a, b = EpochSeededRandomSampler(10, 5), EpochSeededRandomSampler(10, 5)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(1)
    assert list(a) != list(b)


def test_training_step_runs_backward_under_the_attention_backends(tmp_path, monkeypatch):
    """Checkpointed layers recompute their forward during backward: the SDPA kernel choice must
    hold there too, so the whole step, backward included, runs inside `speed.sdpa_backends`."""
    import contextlib

    import rmtrain.training.trainer as trainer_mod
    from rmtrain.batching.collate import PairCollator
    from rmtrain.training.arguments import RewardTrainingArguments
    from rmtrain.training.trainer import PairwiseRewardTrainer
    from tests.helpers import FEATURES, make_model

    model, pad = make_model("llama", "sdpa")
    state = {"inside": 0, "grad_seen_inside": []}

    @contextlib.contextmanager
    def recording(device):  # nested: the step's, and each forward's own
        state["inside"] += 1
        try:
            yield
        finally:
            state["inside"] -= 1

    monkeypatch.setattr(trainer_mod.speed, "sdpa_backends", recording)
    model.model.embed_tokens.weight.register_hook(
        lambda g: state["grad_seen_inside"].append(state["inside"] > 0)
    )
    args = RewardTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False
    )
    trainer = PairwiseRewardTrainer(model=model, args=args, data_collator=PairCollator(pad))
    trainer.current_gradient_accumulation_steps = 1  # set by train() in a real run
    loss = trainer.training_step(trainer.model, PairCollator(pad)(FEATURES[:2]))
    assert float(loss) > 0 and state["grad_seen_inside"] == [True] and not state["inside"]


def test_prompt_grouped_sampler_keeps_a_prompts_pairs_together():
    from rmtrain.training.samplers import PromptGroupedSampler

    keys = ["a", "b", "a", "c", "b", "a", "d"]
    sampler = PromptGroupedSampler(keys, seed=7)
    order = list(sampler)
    assert sorted(order) == list(range(7)) and len(sampler) == 7
    runs = [keys[i] for i in order]
    # each prompt's pairs are one contiguous run
    assert len([k for j, k in enumerate(runs) if j == 0 or runs[j - 1] != k]) == 4
    assert list(PromptGroupedSampler(keys, seed=7)) == order  # same in every process
    orders = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        orders.add(tuple(sampler))
    assert len(orders) > 1  # reshuffled per epoch


def test_options_the_trainer_reads_are_declared_once_and_reach_its_arguments(tmp_path):
    """A `TrainConfig` option marked `trainer=True` is a `RewardTrainingArguments` field of the
    same name and default, and `rmtrain train`'s arguments carry the value it was given."""
    import dataclasses

    from rmtrain.config import TrainConfig
    from rmtrain.training.arguments import RewardTrainingArguments
    from rmtrain.training.settings import training_arguments

    marked = {f.name: f for f in dataclasses.fields(TrainConfig) if f.metadata.get("trainer")}
    assert set(marked) == {
        "warmup_ratio", "head_lr_multiplier", "loss", "center_rewards_coef", "lm_loss_coef"
    }  # fmt: skip
    fields = {f.name: f for f in dataclasses.fields(RewardTrainingArguments)}
    assert set(RewardTrainingArguments.reward_options()) == {
        *marked, "group_by_prompt", "fold_clipping"
    }  # fmt: skip
    for name, f in marked.items():
        assert fields[name].default == f.default and fields[name].type == f.type, name
    given = {"warmup_ratio": 0.25, "head_lr_multiplier": 3.0, "loss": "hinge",
             "center_rewards_coef": 0.01, "lm_loss_coef": 0.5}  # fmt: skip
    cfg = TrainConfig(model="builtin:tiny-qwen3", dataset=["builtin:demo"], **given)
    args = training_arguments(cfg, tmp_path, report_to=[])
    assert {name: getattr(args, name) for name in given} == given
    assert args.get_warmup_steps(10) == 3  # ceil(0.25 x 10)
