"""RoPE as one autograd node: transformers' values bit for bit, its gradients, its layout."""

import torch
from transformers.models.llama import modeling_llama
from transformers.models.qwen3 import modeling_qwen3

from rmtrain.speed import rotary


def _inputs(dtype=torch.float64, rows: int = 2, length: int = 37):
    """q [2, 4 heads, 37, 16] and k [2, 2 heads, 37, 16] as transposed views of token-major
    tensors (the projections' layout), and per-position cos / sin [2, 37, 16]."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, length, 4, 16, dtype=dtype, generator=g, requires_grad=True)
    k = torch.randn(rows, length, 2, 16, dtype=dtype, generator=g, requires_grad=True)
    cos, sin = (torch.randn(rows, length, 16, dtype=dtype, generator=g) for _ in range(2))
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
    # finite differences on a small input (one perturbation per element), then the analytic
    # gradients of the full-size input against autograd through the formula
    q, k, cos, sin = _inputs(rows=1, length=3)
    fn = lambda q, k: rotary.apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k))
    q, k, cos, sin = _inputs()
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


def test_bind_is_per_instance_and_leaves_transformers_alone():
    """`bind` gives one attention instance RoPE as one node; the modeling module's function and
    every other instance stay transformers' own, and the outputs are bit-identical."""
    import copy

    from tests.helpers import make_model

    stock = modeling_qwen3.apply_rotary_pos_emb
    model, _ = make_model("qwen3", "sdpa")
    reference = copy.deepcopy(model)
    first, second = (layer.self_attn for layer in model.model.layers)
    assert rotary.bind(first)
    assert not rotary.bind(torch.nn.Linear(2, 2))  # no such call in its forward: untouched
    assert first.forward.__func__.__globals__["apply_rotary_pos_emb"] is rotary.apply_rotary
    assert modeling_qwen3.apply_rotary_pos_emb is stock
    assert "forward" in first.__dict__ and "forward" not in second.__dict__
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_make_lean_binds_every_attention_of_the_model_it_changes():
    from rmtrain.speed.lean import make_lean
    from tests.helpers import make_model

    stock = modeling_qwen3.apply_rotary_pos_emb
    model, _ = make_model("qwen3", "sdpa")
    lean = make_lean(model)
    for layer in model.model.layers:
        forward = layer.self_attn.forward
        assert forward.__func__.__globals__["apply_rotary_pos_emb"] is rotary.apply_rotary
    assert modeling_qwen3.apply_rotary_pos_emb is stock
    lean.remove()
    assert all("forward" not in layer.self_attn.__dict__ for layer in model.model.layers)
