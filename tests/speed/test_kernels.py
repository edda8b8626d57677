"""The lean modules' elementwise kernels: hand-worked values, gradients equal to autograd's on
the eager formulas, the compiled versions equal to the eager ones, and the eager fallback."""

import math
import shutil

import pytest
import torch

from rmtrain.speed import kernels
from rmtrain.speed.kernels import EAGER, fused

HAS_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++", "cc"))


def test_silu_mul_and_rms_norm_by_hand():
    # silu(1) = 1 / (1 + e^-1) = 0.7310586; silu(-2) = -2 / (1 + e^2) = -0.2384058
    got = EAGER.silu_mul(torch.tensor([1.0, -2.0, 0.0]), torch.tensor([2.0, 1.0, 5.0]))
    assert torch.allclose(got, torch.tensor([1.4621172, -0.2384058, 0.0]))
    # x = (3, 4): rms = sqrt((9 + 16) / 2) = 3.5355339; x / rms = (0.8485281, 1.1313708)
    out, rstd = EAGER.rms_norm(torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 2.0]), 0.0)
    assert torch.allclose(rstd, torch.tensor([[1 / math.sqrt(12.5)]]))
    assert torch.allclose(out, torch.tensor([[0.8485281, 2.2627417]]))


def _autograd(fn, args, grad):
    leaves = [a.clone().requires_grad_() for a in args]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    return torch.autograd.grad(out, leaves, grad)


@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_backward_kernels_equal_autograd_of_the_forward(impl):
    k = EAGER if impl == "eager" else fused()
    torch.manual_seed(0)
    gate, up, grad = torch.randn(3, 1, 7, 12).unbind(0)
    want = _autograd(EAGER.silu_mul, (gate, up), grad)
    for a, b in zip(want, k.silu_mul_backward(grad, gate, up), strict=True):
        assert (a - b).abs().max().item() < 1e-6
        # eagerly, the very ops autograd runs for the stock MLP: bit for bit
        assert impl == "fused" or torch.equal(a, b)
    x, g = torch.randn(2, 2, 5, 16).unbind(0)
    w = torch.rand(16) + 0.5
    rstd = EAGER.rms_norm(x, w, 1e-6)[1]
    want = _autograd(lambda x, w: EAGER.rms_norm(x, w, 1e-6), (x, w), g)
    for a, b in zip(want, k.rms_norm_backward(g, x, w, rstd, True), strict=True):
        assert (a - b).abs().max().item() < 1e-5
    grad_x, grad_w = k.rms_norm_backward(g, x, w, rstd, False)  # a frozen norm: no reduction
    assert grad_w is None and (grad_x - want[0]).abs().max().item() < 1e-5


def test_fused_kernels_equal_eager_for_any_token_count():
    k = fused()
    for tokens in (3, 17, 40):
        torch.manual_seed(tokens)
        gate, up = torch.randn(2, 1, tokens, 24).unbind(0)
        assert torch.allclose(k.silu_mul(gate, up), EAGER.silu_mul(gate, up), atol=1e-6)
        x, w = torch.randn(1, tokens, 8), torch.rand(8)
        for a, b in zip(k.rms_norm(x, w, 1e-6), EAGER.rms_norm(x, w, 1e-6), strict=True):
            assert torch.allclose(a, b, atol=1e-6)
    # compiled, not the eager fallback (where a C++ compiler exists)
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler: the kernels fall back to eager (checked above)")
    assert k.silu_mul.compiled is not None and k.rms_norm.compiled is not None


def test_a_failed_compilation_warns_once_and_runs_eagerly(monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    compiled = kernels._Compiled(kernels.silu_mul)
    monkeypatch.setattr(compiled, "compiled", broken)
    gate, up = torch.randn(4, 6), torch.randn(4, 6)
    with pytest.warns(UserWarning, match="compiling silu_mul failed .*no C\\+\\+ compiler"):
        got = compiled(gate, up)
    assert torch.equal(got, kernels.silu_mul(gate, up)) and compiled.compiled is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(compiled(gate, up), kernels.silu_mul(gate, up))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: nothing is compiled")
def test_evaluation_and_new_lengths_after_training_compile_nothing_new():
    """Once a training step compiled the kernels, scoring without gradients and batches of
    other lengths or several rows reuse them (a recompilation costs seconds inside a step)."""
    from torch._dynamo.utils import counters

    from rmtrain.batching.collate import PackedCollator, PairCollator
    from rmtrain.modeling.rewards import pair_rewards
    from rmtrain.speed.lean import make_lean
    from tests.helpers import FEATURES, loss_and_grads, make_model

    torch._dynamo.reset()  # count this test's compilations only
    counters.clear()
    model, pad = make_model("llama", "sdpa")
    make_lean(model, fuse=True)
    batches = [PackedCollator(pad, "prefix_sharing", 64)(FEATURES[:n]) for n in (3, 2)]
    batches.append(PairCollator(pad)(FEATURES))  # padded: several rows of another width
    loss_and_grads(model, batches[0])
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > 0
    for batch in batches:
        with torch.no_grad():
            pair_rewards(model, batch)
        loss_and_grads(model, batch)
    assert counters["stats"]["unique_graphs"] == compiled
