"""The speed door's equality on a CUDA device: every layout, `--speed auto` (with
`--block-attention on`, which auto leaves off on GPUs) against `--speed off`, in float32 with
TF32 off. Skipped without CUDA; `pytest -m gpu` runs only these."""

from __future__ import annotations

import copy

import pytest
import torch

from rmtrain import speed
from tests.helpers import FEATURES, LAYOUTS, SHARED, loss_and_grads, make_model, tiny_gpt2

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _on_cuda(batch: dict) -> dict:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
@pytest.mark.parametrize("block_attention", ["auto", "on"])
def test_speed_auto_equals_speed_off_on_cuda(arch, layout, block_attention, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    plain, pad = tiny_gpt2() if arch == "gpt2" else make_model(arch, "sdpa")
    plain = plain.cuda()
    fast = copy.deepcopy(plain)
    speed.install(fast, speed.SpeedOptions(training=True, block_attention=block_attention))
    batch = _on_cuda(LAYOUTS[layout](pad)(FEATURES + SHARED))
    want, got = loss_and_grads(plain, batch), loss_and_grads(fast, batch)
    for a, b in zip(want[:3], got[:3], strict=True):
        assert (a - b).abs().max().item() < 1e-4, (a, b)
    assert max((want[3][k] - got[3][k]).abs().max().item() for k in want[3]) < 1e-4
