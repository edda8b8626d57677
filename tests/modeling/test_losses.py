import math

import pytest
import torch

from rmtrain.modeling.losses import pairwise_loss


def nls(x: float) -> float:
    """-log(sigmoid(x)) by hand."""
    return math.log(1 + math.exp(-x))


def test_pairwise_loss_hand_worked():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    # -log sigmoid(2) = 0.126928, -log sigmoid(0) = ln 2 = 0.693147
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(
        (0.126928 + 0.693147) / 2, abs=1e-6
    )


def test_margin_shifts_the_difference():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    loss = pairwise_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0])).item()
    assert loss == pytest.approx((nls(1.0) + nls(0.0)) / 2, abs=1e-6)
    assert nls(1.0) == pytest.approx(0.313262, abs=1e-6)


def test_centering_adds_mean_square_of_sums():
    chosen, rejected = torch.tensor([2.0, 1.0]), torch.tensor([0.0, -3.0])
    base = (nls(2.0) + nls(4.0)) / 2
    # (2+0)^2 = 4, (1-3)^2 = 4 -> mean 4; times 0.1 = 0.4
    loss = pairwise_loss(chosen, rejected, center_coef=0.1).item()
    assert loss == pytest.approx(base + 0.4, abs=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    pairwise_loss(chosen, rejected).backward()
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)


def test_hinge_by_hand_and_chosen_by_name():
    from rmtrain.modeling.losses import LOSSES

    chosen, rejected = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([0.0, 0.0, 0.0])
    # max(0, 1 - d) for d = 2, 0.5, -1: 0, 0.5, 2 -> mean 0.8333
    assert pairwise_loss(chosen, rejected, kind="hinge").item() == pytest.approx(2.5 / 3)
    # with margins 0, 1, 0: d = 2, -0.5, -1 -> 0, 1.5, 2 -> mean 1.1667
    margin = torch.tensor([0.0, 1.0, 0.0])
    assert pairwise_loss(chosen, rejected, margin, kind="hinge").item() == pytest.approx(3.5 / 3)
    assert set(LOSSES) >= {"bt", "hinge"}


def test_the_loss_option_trains_with_the_registered_function(tmp_path):
    import json

    from rmtrain.cli import main
    from tests.helpers import tiny_train_args, write_demo

    data = write_demo(tmp_path / "d.jsonl", 40, seed=1)
    out = {k: tmp_path / k for k in ("bt", "hinge")}
    for kind, folder in out.items():
        args = ["--max-steps", "1", "--logging-steps", "1", "--loss", kind]
        assert main(tiny_train_args(data, folder, *args)) == 0
    first = {
        k: next(h["loss"] for h in json.loads((f / "metrics.json").read_text())["log_history"])
        for k, f in out.items()
    }
    # the same untrained model and batch: the hinge loss of margins near 0 is near 1, BT near ln 2
    assert first["bt"] == pytest.approx(math.log(2), abs=0.15)
    assert first["hinge"] == pytest.approx(1.0, abs=0.2)
    assert json.loads((out["hinge"] / "config.json").read_text())["rmtrain"]


def test_length_terms_by_hand():
    from rmtrain.modeling.losses import length_terms, pearson

    lengths = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # the length head follows length exactly: 1 - 1 = 0; the value head [1, 0, 0, 1] has
    # correlation 0 with [1, 2, 3, 4] (deviations -1.5 -.5 .5 1.5 against .5 -.5 -.5 .5)
    quality = torch.tensor([1.0, 0.0, 0.0, 1.0])
    part = torch.tensor([0.1, 0.2, 0.3, 0.4])
    got = length_terms(quality, part, lengths, torch.tensor(0.0))
    assert got.item() == pytest.approx(0.0, abs=1e-6)
    # value head [4, 3, 2, 1]: correlation -1, |.| = 1; cosine -0.5 adds 0.5
    got = length_terms(torch.tensor([4.0, 3.0, 2.0, 1.0]), part, lengths, torch.tensor(-0.5))
    assert got.item() == pytest.approx(1.5, abs=1e-6)
    # Pearson of [1, 2, 4] and [1, 3, 2]: deviations (-4/3, -1/3, 5/3) and (-1, 1, 0):
    # sum of products 1; norms sqrt(42/9) and sqrt(2) -> 1 / sqrt(84/9) = 0.327327
    r = pearson(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 2.0]))
    assert r.item() == pytest.approx(0.327327, abs=1e-6)
    assert pearson(torch.ones(3), lengths[:3]).item() == 0.0  # constant: no correlation


def test_the_options_help_lists_every_registered_loss_and_augmentation():
    """`--loss` and `--augment` describe themselves from their registries: a new loss or
    augmentation appears in `--help` and docs/options.md without another edit."""
    import dataclasses

    from rmtrain.config import TrainConfig
    from rmtrain.data.augment import AUGMENTATIONS
    from rmtrain.modeling.losses import LOSSES, loss_formula

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}
    assert loss_formula("bt") == "-log sigmoid(d)" and loss_formula("hinge") == "max(0, 1 - d)"
    assert "bt (-log sigmoid(d)); hinge (max(0, 1 - d))" in helps["loss"]
    for name in LOSSES:
        assert f"{name} ({loss_formula(name)})" in helps["loss"]
    for name, aug in AUGMENTATIONS.items():
        assert f"{name} ({aug.doc})" in helps["augment"]
