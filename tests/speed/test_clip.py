"""Clipping folded into the fused optimizer step gives clip_grad_norm_'s gradients and weights."""

import pytest
import torch

from rmtrain.speed.clip import FoldedClip, folds_into


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))


def _backward(model: torch.nn.Module, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=g)
    (model(x).sum() * scale).backward()


def _run(folded: bool, scales: list[float], accumulate: int = 1) -> tuple:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    clip = FoldedClip(opt, model.parameters()) if folded else None
    norms, grads = [], []
    for step, scale in enumerate(scales):
        for micro in range(accumulate):
            _backward(model, 10 * step + micro, scale)
        if clip is not None:
            norms.append(clip.clip(1.0))
        else:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.zero_grad(set_to_none=True)
    return model, norms, grads, opt


@pytest.mark.parametrize("accumulate", [1, 2])
def test_folded_clip_gives_clip_grad_norm_s_norms_gradients_and_weights(accumulate):
    """Steps whose norm is far above the limit (scaled), below it (no clipping) and above it
    again; with one or two backward passes (gradient accumulation) per step."""
    scales = [50.0, 0.01, 20.0]
    want_model, want_norms, want_grads, _ = _run(False, scales, accumulate)
    got_model, got_norms, got_grads, opt = _run(True, scales, accumulate)
    assert float(want_norms[0]) > 10 and float(want_norms[1]) < 1  # both cases happen
    for a, b in zip(want_norms, got_norms, strict=True):
        assert abs(float(a) - float(b)) <= 1e-6 * float(a)
    for want, got in zip(want_grads, got_grads, strict=True):  # the kernel writes them back
        for a, b in zip(want, got, strict=True):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
    for a, b in zip(want_model.parameters(), got_model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")


def test_the_scale_is_set_for_one_step_only():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    _backward(model, 0, 50.0)
    want = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    clip = FoldedClip(opt, model.parameters())
    assert float(clip.clip(1.0)) == pytest.approx(float(want), rel=1e-6)
    assert float(opt.grad_scale) == pytest.approx(float(want) + 1e-6, rel=1e-6)
    opt.step()
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    clip.remove()


def test_folds_only_into_a_fused_adam_on_cpu():
    params = list(_model().parameters())
    assert folds_into(torch.optim.AdamW(params, fused=True))
    assert folds_into(torch.optim.Adam(params, fused=True))
    assert not folds_into(torch.optim.AdamW(params))  # foreach: no grad_scale
    assert not folds_into(torch.optim.SGD(params, lr=0.1))
    scaled = torch.optim.AdamW(params, fused=True)
    scaled.grad_scale = torch.tensor(2.0)  # an AMP scaler already uses it
    assert not folds_into(scaled)


def test_trainer_folds_clipping_with_the_same_weights_and_logged_norm(tmp_path, monkeypatch):
    """PairwiseRewardTrainer on CPU folds clipping into fused AdamW; with folding turned off it
    clips as Trainer does: the same grad norms in the log and the same weights."""
    from rmtrain.batching.collate import PairCollator
    from rmtrain.training.arguments import RewardTrainingArguments
    from rmtrain.training.trainer import PairwiseRewardTrainer
    from tests.helpers import FEATURES, make_model

    def train(fold: bool) -> tuple:
        model, pad = make_model("llama", "sdpa")
        args = RewardTrainingArguments(
            output_dir=str(tmp_path / str(fold)),
            use_cpu=True,
            report_to=[],
            remove_unused_columns=False,
            per_device_train_batch_size=1,
            max_steps=3,
            learning_rate=1e-2,
            max_grad_norm=1e-3,  # every step clips
            logging_steps=1,
            optim="adamw_torch_fused",
            save_strategy="no",
            fold_clipping=fold,
        )
        trainer = PairwiseRewardTrainer(
            model=model, args=args, train_dataset=FEATURES[:3], data_collator=PairCollator(pad)
        )
        trainer.train()
        norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
        return model, norms, trainer._folded_clip

    got_model, got_norms, folded = train(True)
    want_model, want_norms, unfolded = train(False)
    assert isinstance(folded, FoldedClip) and unfolded is False
    assert len(got_norms) == 3 and min(want_norms) > 1e-3
    assert got_norms == pytest.approx(want_norms, rel=1e-5)
    for a, b in zip(want_model.parameters(), got_model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_total_norm_sums_row_by_row_exactly_to_float_rounding():
    """Against the float64 norm: a 4M-element gradient (where one float accumulator drifts),
    a 1-D one and a 0-dim one."""
    from rmtrain.speed.clip import total_norm

    g = torch.Generator().manual_seed(0)
    grads = [
        torch.randn(8192, 512, generator=g) + 3.0,
        torch.randn(7, generator=g),
        torch.tensor(2.0),
    ]
    want = torch.stack([t.double().square().sum() for t in grads]).sum().sqrt()
    got = total_norm(grads)
    assert got.dtype == torch.float32
    assert abs(float(got) / float(want) - 1) < 1e-6
    assert abs(float(torch.nn.utils.get_total_norm(grads)) / float(want) - 1) < 1e-3
