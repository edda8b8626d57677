"""Rotary position embedding as one autograd node, for the Llama-style decoders `speed.lean`
makes lean.

transformers applies RoPE as `q * cos + rotate_half(q) * sin`, where `rotate_half` is a negation
and a concatenation: five full-size passes and as many autograd nodes for each of q and k, and
as many again in backward. Written on the two halves of the head dimension it is two products
and one subtraction (or addition) per half into one preallocated output, with the same values
bit for bit: rotate_half(q) * sin is (-q2) * s1 in the first half, and a + (-b) is a - b exactly
in IEEE arithmetic. Its backward is the rotation by the opposite angle, spelled the same way.

The decoders call `apply_rotary_pos_emb` from their modeling module's globals; `bind` gives one
attention module instance a forward that calls `apply_rotary` instead (the modeling module and
every other instance are untouched). Inputs this
path does not cover (mixed dtypes, an odd head dimension, cos / sin that need a gradient) run
transformers' formula as written.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch


class _Rotary(torch.autograd.Function):
    """q and k rotated by (cos, sin); backward rotates their gradients back."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: Any, sin: Any) -> Any:
        ctx.save_for_backward(cos, sin)
        return rotate(q, cos, sin), rotate(k, cos, sin)

    @staticmethod
    def backward(ctx: Any, grad_q: Any, grad_k: Any) -> tuple[Any, ...]:
        cos, sin = ctx.saved_tensors
        back = (None if g is None else rotate(g, cos, sin, inverse=True) for g in (grad_q, grad_k))
        return (*back, None, None)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> Any:
    """x * cos + rotate_half(x) * sin, or with `inverse` its transpose x * cos +
    rotate_half^T(x * sin), one half of the last dimension at a time into an output laid out
    like x (the attention kernels read the token-major layout of the projections)."""
    h = x.shape[-1] // 2
    x1, x2, out = x[..., :h], x[..., h:], torch.empty_like(x)
    (c1, c2), (s1, s2) = cos.split(h, -1), sin.split(h, -1)
    o1, o2 = torch.mul(x1, c1, out=out[..., :h]), torch.mul(x2, c2, out=out[..., h:])
    if inverse:  # rotate_half^T(y) = [y2, -y1]
        o1.add_(x2 * s2)
        o2.sub_(x1 * s1)
    else:  # rotate_half(x) = [-x2, x1]
        o1.sub_(x2 * s1)
        o2.add_(x1 * s2)
    return out


def _covered(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    same = q.dtype == k.dtype == cos.dtype == sin.dtype
    even = q.shape[-1] == k.shape[-1] == cos.shape[-1] == sin.shape[-1] and q.shape[-1] % 2 == 0
    return same and even and not (cos.requires_grad or sin.requires_grad)


def apply_rotary(q: Any, k: Any, cos: Any, sin: Any, unsqueeze_dim: int = 1) -> Any:
    """Drop-in for transformers' `apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)`."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    if not _covered(q, k, cos, sin):
        return tuple(
            t * cos + torch.cat((-t[..., t.shape[-1] // 2 :], t[..., : t.shape[-1] // 2]), -1) * sin
            for t in (q, k)
        )
    return _Rotary.apply(q, k, cos, sin)


def bind(module: torch.nn.Module) -> bool:
    """Run this attention module instance's forward with `apply_rotary` in place of its modeling
    module's `apply_rotary_pos_emb`: the class's own forward, rebuilt over a copy of its
    globals, set on the instance (other instances and models keep transformers' function).
    Returns whether it did (False where the forward does not call that function)."""
    forward = inspect.unwrap(type(module).forward)  # below decorators that only rename kwargs
    names = getattr(forward, "__globals__", {})
    if (
        "apply_rotary_pos_emb" not in forward.__code__.co_names
        or names.get("apply_rotary_pos_emb") is None
    ):
        return False
    own = types.FunctionType(
        forward.__code__,
        {**names, "apply_rotary_pos_emb": apply_rotary},
        forward.__name__,
        forward.__defaults__,
        forward.__closure__,
    )
    own.__kwdefaults__ = forward.__kwdefaults__
    module.forward = types.MethodType(own, module)
    return True
