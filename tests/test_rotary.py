"""RoPE as one autograd node: transformers' values bit for bit, its gradients, its layout."""

import pytest
import torch
from transformers.models.llama import modeling_llama
from transformers.models.qwen3 import modeling_qwen3

from rmtrain import rotary


def _inputs(dtype=torch.float64):
    """q [2, 4 heads, 37, 16] and k [2, 2 heads, 37, 16] as transposed views of token-major
    tensors (the projections' layout), and per-position cos / sin [2, 37, 16]."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 4, 16, dtype=dtype, generator=g, requires_grad=True)
    k = torch.randn(2, 37, 2, 16, dtype=dtype, generator=g, requires_grad=True)
    cos, sin = (torch.randn(2, 37, 16, dtype=dtype, generator=g) for _ in range(2))
    return q, k, cos, sin


def _formula(q, k, cos, sin):
    """transformers' apply_rotary_pos_emb, spelled here so that no patch can change it."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return tuple(t * cos + modeling_llama.rotate_half(t) * sin for t in (q, k))


def test_forward_is_transformers_bit_for_bit_in_its_layout():
    q, k, cos, sin = _inputs(torch.float32)
    want = _formula(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    got = rotary.apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
        assert a.stride() == b.stride()  # token-major, as the projections left it


def test_gradients_are_the_rotation_back():
    q, k, cos, sin = _inputs()
    fn = lambda q, k: rotary.apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k))
    gq, gk = torch.randn(2, 4, 37, 16, dtype=q.dtype), torch.randn(2, 2, 37, 16, dtype=q.dtype)
    want = torch.autograd.grad(
        _formula(q.transpose(1, 2), k.transpose(1, 2), cos, sin), (q, k), (gq, gk)
    )
    got = torch.autograd.grad(fn(q, k), (q, k), (gq, gk))
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_inputs_it_does_not_cover_run_the_formula():
    q, k, cos, sin = _inputs(torch.float32)
    half = cos.to(torch.float64)  # mixed dtypes: transformers' type promotion applies
    want = _formula(q.transpose(1, 2), k.transpose(1, 2), half, sin)
    got = rotary.apply_rotary(q.transpose(1, 2), k.transpose(1, 2), half, sin)
    for a, b in zip(want, got, strict=True):
        assert a.dtype == b.dtype == torch.float64
        assert torch.equal(a, b)


# transformers' own functions, taken at collection, before any test's make_lean swaps them
STOCK = {m: m.apply_rotary_pos_emb for m in (modeling_llama, modeling_qwen3)}


@pytest.fixture
def stock_rope():
    """transformers' functions in place for the test, then back as they were."""
    saved = {m: m.apply_rotary_pos_emb for m in STOCK}
    for m, fn in STOCK.items():
        m.apply_rotary_pos_emb = fn
    yield
    for m, fn in saved.items():
        m.apply_rotary_pos_emb = fn


def test_install_routes_the_modeling_modules_and_is_idempotent(stock_rope):
    types = {modeling_llama.LlamaAttention, modeling_qwen3.Qwen3Attention}
    assert rotary.install(types) == 2
    assert rotary.install(types) == 2
    assert modeling_llama.apply_rotary_pos_emb is rotary.apply_rotary
    assert modeling_qwen3.apply_rotary_pos_emb is rotary.apply_rotary
    assert rotary.install({torch.nn.Linear}) == 0  # a module without the function: untouched


def test_make_lean_installs_it_for_the_model_it_changes(stock_rope):
    from rmtrain.lean import make_lean
    from tests.test_packing import make_model

    model, _ = make_model("qwen3", "sdpa")
    assert modeling_qwen3.apply_rotary_pos_emb is not rotary.apply_rotary
    make_lean(model)
    assert modeling_qwen3.apply_rotary_pos_emb is rotary.apply_rotary
