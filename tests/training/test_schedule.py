"""The learning-rate schedule as logged: warmup as a share of the steps, the value head's own
learning rate, the schedule's shape."""

import pytest
from transformers import TrainerCallback

from rmtrain.config import build_config
from rmtrain.training.recipe import run_train


class Capture(TrainerCallback):
    def __init__(self):
        self.lrs, self.groups, self.losses = [], [], []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "learning_rate" in logs:
            self.lrs.append(logs["learning_rate"])
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])

    def on_train_begin(self, args, state, control, optimizer=None, **kw):
        inner = getattr(optimizer, "optimizer", optimizer)
        self.groups = [(g["lr"], len(g["params"])) for g in inner.param_groups]


def run(tmp_path, **options):
    cfg = build_config(
        {
            "model": "builtin:tiny-qwen3",
            "dataset": "builtin:demo",
            "frac": 0.2,
            "max_length": 64,
            "batch": 4,
            "lr": 1e-3,
            "max_steps": 4,
            "logging_steps": 1,
            "eval_steps": 0,
            "report_to": ["none"],
            "output": str(tmp_path / "out"),
            **options,
        }
    )
    cap = Capture()
    run_train(cfg, [cap])
    return cap


def test_warmup_ratio_is_a_share_of_the_steps(tmp_path):
    # the logged lr is the one step k (1-based) ran with: (k - 1) / warmup steps of the peak
    cap = run(tmp_path, warmup_ratio=1.0)  # 4 warmup steps of 4
    assert cap.lrs == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4])
    cap = run(tmp_path / "b", warmup_ratio=0.5)  # 2 warmup steps, then linear decay over 2
    assert cap.lrs == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])


def test_cosine_schedule_and_head_learning_rate(tmp_path):
    cap = run(tmp_path, lr_scheduler="cosine", head_lr_multiplier=10.0)
    # cosine without warmup over 4 steps: step k runs at 0.5 (1 + cos(pi (k - 1) / 4))
    assert cap.lrs == pytest.approx([1e-3, 8.5355339e-4, 5e-4, 1.4644661e-4])
    head = [g for g in cap.groups if g[0] == pytest.approx(1e-2)]
    assert head and sum(n for _, n in head) == 1  # score.weight alone, at 10 x lr
    assert all(lr == pytest.approx(1e-3) for lr, _ in cap.groups if (lr, _) not in head)


def test_center_rewards_coef_adds_its_term_end_to_end(tmp_path):
    """At step 1 (same weights, same batch) the logged loss is BT + coef * mean((r_c + r_r)^2):
    the added part grows linearly with the coefficient and is positive."""
    first = {}
    for coef in (0.0, 0.5, 1.0):
        cap = run(tmp_path / str(coef), center_rewards_coef=coef, lr=1e-12)
        first[coef] = cap.losses[0]
    added = first[0.5] - first[0.0]
    assert added > 1e-4
    assert first[1.0] - first[0.0] == pytest.approx(2 * added, rel=1e-3)
