"""Blocks of a packed row as direct calls of SDPA's CPU flash kernel, inside autograd Functions
that gather the keys each query run sees and gather them again in backward.

A prefix-shared pair [prompt p][chosen to c][rejected] and a prefix tree share one pattern:
runs of queries that see some earlier columns (their ancestors) and, causally, themselves. One
masked SDPA call over the block computes every query-key pair of it; here each run computes
only the pairs it sees (a tail of r tokens r x (p + r), not r x (c + r) with the chosen run
masked). Autograd would keep each run's gathered keys for backward; these Functions keep the
block's q, k, v (kept anyway) and each call's output and logsumexp, gather the keys again in
backward, and write each block's key and value gradients once. Same kernel and values as the
masked SDPA call, to float rounding (`tests/speed/test_attention.py`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# A tree block's runs: (first, end, the key columns run [first, end) sees (ancestors, then its
# own columns), or None for a root run that sees only itself, causally).
Segments = list[tuple[int, int, torch.Tensor | None]]


def _flash(q: Any, k: Any, v: Any, causal: bool, mask: Any, scale: Any) -> tuple:
    """The CPU flash kernel SDPA calls (grouped-query heads natively): output, logsumexp."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=mask, scale=scale
    )


def _flash_backward(grad: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, causal: bool, **kw):
    backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    return backward(grad, q, k, v, out, lse, 0.0, causal, **kw)


class ForkedFlash(torch.autograd.Function):
    """A forked block [prefix p][run to c][tail] as two flash calls: the causal run, then the
    tail's queries against the prefix's keys and its own, gathered (`mask`: [tail, p + tail])."""

    @staticmethod
    def forward(ctx: Any, q: Any, k: Any, v: Any, p: int, c: int, scale: Any, mask: Any) -> Any:
        head, head_lse = _flash(q[:, :, :c], k[:, :, :c], v[:, :, :c], True, None, scale)
        tail, tail_lse = _flash(q[:, :, c:], *_prefix_and_tail(k, v, p, c), False, mask, scale)
        ctx.save_for_backward(q, k, v, head, head_lse, tail, tail_lse, mask)
        ctx.fork = (p, c, scale)
        return head, tail

    @staticmethod
    def backward(ctx: Any, grad_head: Any, grad_tail: Any) -> tuple[Any, ...]:
        q, k, v, head, head_lse, tail, tail_lse, mask = ctx.saved_tensors
        p, c, scale = ctx.fork
        run = (q[:, :, :c], k[:, :, :c], v[:, :, :c], head, head_lse, True)
        dq_head, dk_head, dv_head = _flash_backward(grad_head, *run, scale=scale)
        seen = (q[:, :, c:], *_prefix_and_tail(k, v, p, c), tail, tail_lse, False)
        dq_tail, dk_tail, dv_tail = _flash_backward(grad_tail, *seen, attn_mask=mask, scale=scale)
        dq = torch.cat([dq_head, dq_tail], 2)
        return dq, _join(dk_head, dk_tail, p), _join(dv_head, dv_tail, p), None, None, None, None


def _prefix_and_tail(k: torch.Tensor, v: torch.Tensor, p: int, c: int) -> tuple:
    """The keys and values a tail sees: the prefix [0, p) and the tail [c, n)."""
    return tuple(torch.cat([t[:, :, :p], t[:, :, c:]], 2) for t in (k, v))


def _join(run: torch.Tensor, seen: torch.Tensor, p: int) -> torch.Tensor:
    """A block's key (or value) gradient from the run's [0, c) and the tail's gathered [prefix
    | tail] ones: the prefix gets both."""
    out = torch.cat([run, seen[:, :, p:]], 2)
    out[:, :, :p] += seen[:, :, :p]
    return out


class TreeFlash(torch.autograd.Function):
    """A prefix tree block run by run (`Segments`): a root run causally over its own keys, any
    other run against its gathered ancestors' keys and its own (aligned bottom right). Returns
    the runs' outputs in column order."""

    @staticmethod
    def forward(ctx: Any, q: Any, k: Any, v: Any, scale: Any, segments: Segments) -> Any:
        outs, lses = [], []
        for a, b, cols in segments:
            out, lse = _flash(
                q[:, :, a:b], *_seen(k, v, a, b, cols), cols is None, _mask(a, b, cols, q), scale
            )
            outs.append(out)
            lses.append(lse)
        ctx.save_for_backward(q, k, v, *outs, *lses)
        ctx.segments, ctx.scale = segments, scale
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
        q, k, v, *kept = ctx.saved_tensors
        n = len(ctx.segments)
        dk, dv, dq = torch.zeros_like(k), torch.zeros_like(v), []
        for (a, b, cols), out, lse, grad in zip(
            ctx.segments, kept[:n], kept[n:], grads, strict=True
        ):
            grad = torch.zeros_like(out) if grad is None else grad
            mask = _mask(a, b, cols, q)
            dq_run, dk_run, dv_run = _flash_backward(
                grad,
                q[:, :, a:b],
                *_seen(k, v, a, b, cols),
                out,
                lse,
                cols is None,
                attn_mask=mask,
                scale=ctx.scale,
            )
            dq.append(dq_run)
            if cols is None:
                dk[:, :, a:b] += dk_run
                dv[:, :, a:b] += dv_run
            else:
                dk.index_add_(2, cols, dk_run)
                dv.index_add_(2, cols, dv_run)
        return torch.cat(dq, 2), dk, dv, None, None


def _seen(k: torch.Tensor, v: torch.Tensor, a: int, b: int, cols: Any) -> tuple:
    """The keys and values run [a, b) sees: its own, or its gathered `cols`."""
    if cols is None:
        return k[:, :, a:b], v[:, :, a:b]
    return k.index_select(2, cols), v.index_select(2, cols)


def _mask(a: int, b: int, cols: Any, q: torch.Tensor) -> Any:
    return None if cols is None else lower_right(b - a, cols.numel(), q.device, q.dtype)


@functools.lru_cache(maxsize=256)
def lower_right(queries: int, keys: int, device: torch.device, dtype: torch.dtype) -> Any:
    """Query t sees keys 0 .. keys - queries + t: its ancestors, then its own run causally."""
    allowed = torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)
    return additive_mask(allowed, dtype)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = attend) as the float mask SDPA and eager attention add: 0 where
    allowed, the dtype's minimum where blocked (finite, so a fully blocked row gives no NaN)."""
    blocked = torch.finfo(dtype).min
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, blocked
    )
