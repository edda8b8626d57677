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
