"""Attention over the independent blocks of a packed row.

A packed row (pairs side by side, or prefix trees side by side) is block diagonal: no token
attends outside its own block. SDPA given the row's dense 4-D mask computes every query-key pair
of the row, masked or not (on CPU there is no variable-length kernel). Here each block runs
alone, so a row of k blocks of n tokens costs k n^2 instead of (k n)^2, and grouped-query
models keep their keys and values un-repeated (SDPA's `enable_gqa`) instead of copying them
per query head and keeping the copies for backward. Within a block, a prefix-shared pair or a
prefix tree runs run by run, each run of queries against only the keys it sees (on CPU
through `speed.flash`, in training too; elsewhere a tree trains as one masked call).

With `attention_flex` the row runs as one FlexAttention call instead, with a block mask built
once per batch from the row's 4-D mask: the kernel skips the 128 x 128 tiles the mask blocks
entirely, in one launch per layer (for GPUs, where many small SDPA calls are launch-bound;
FlexAttention has no backward on CPU, and unfused there it is for scoring only).

transformers picks the attention function by the name in a model's config at every call:
`select(model)` registers `block_sdpa` under its own name and points only that model at it (no
global entry is replaced), and `deselect` points it back. A call without `attention_blocks` or
`attention_flex` runs stock SDPA, so rmtrain's padded path sees plain SDPA.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from rmtrain.speed.flash import ForkedFlash, TreeFlash, additive_mask, lower_right
from rmtrain.speed.lean import autocast_dtype

__all__ = [
    "GATHER_ON_CPU",
    "NAME",
    "additive_mask",
    "block_sdpa",
    "block_sizes",
    "deselect",
    "flex_rows",
    "select",
    "tree_segments",
]

NAME = "rmtrain_sdpa"  # the attention implementation a prepared model selects
# Forked and tree blocks on CPU run through `speed.flash` (keys gathered per run); False runs
# them as masked SDPA calls, the path every other device takes (read at every call).
GATHER_ON_CPU = True

# Per row, its blocks from column 0: a size n (any mask within the block), or (n, p, c) for a
# forked block: its first c tokens are one causal sequence and the n - c after them see the
# first p tokens and, causally, themselves (a prefix-shared pair: [prompt][chosen][rejected]).
Blocks = tuple[tuple[int | tuple[int, int, int], ...], ...]
# Attention arguments the per-block path does not apply: with any of them the dense call runs.
_DENSE_ONLY = ("position_bias", "softcap", "s_aux", "sliding_window")


def block_sizes(sizes: torch.Tensor) -> Blocks:
    """[rows, k] block sizes or [rows, k, 3] forked blocks (size 0 = no block) as the plain
    tuples the attention call takes."""
    if sizes.dim() == 2:
        return tuple(tuple(n for n in row if n > 0) for row in sizes.tolist())
    return tuple(tuple(tuple(b) for b in row if b[0] > 0) for row in sizes.tolist())


def block_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    attention_blocks: Blocks | None = None,
    attention_flex: bool = False,
    attention_cache: dict | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, one block at a time when `attention_blocks` is given, or
    one FlexAttention call over the mask's tiles with `attention_flex`.

    query [rows, heads, L, d], key / value [rows, kv_heads, L, d], attention_mask a 4-D mask
    whose off-block entries are all blocked. Columns after a row's last block are padding:
    their output is zero (nothing reads it). `attention_cache`: one dict per forward, shared by
    its layers, for what is derived once per batch (tail masks, tree segments, block masks).
    """
    cache = {} if attention_cache is None else attention_cache
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    special = any(kwargs.get(k) is not None for k in _DENSE_ONLY)
    four_d = attention_mask is not None and attention_mask.dim() == 4
    if attention_flex and four_d and not special and not dropout:
        return flex_rows(query, key, value, attention_mask, scaling, cache), None
    dense = not four_d or not any(attention_blocks or ())
    if dense or special:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    sdpa = functools.partial(
        F.scaled_dot_product_attention, dropout_p=dropout, scale=scaling, enable_gqa=gqa
    )
    gathered = _gathers(query, key, value, dropout)
    # the masks in the dtype SDPA runs in: no cast, no copy per layer
    dtype = autocast_dtype(query.device.type) or query.dtype
    if "tails" not in cache:
        cache["tails"] = _tail_masks(attention_blocks, query.device, dtype, gathered)
    masks = cache["tails"]
    width, pieces, layout = query.shape[2], [], []
    # unbind / split, not indexing: their backward is one stack / cat, where each indexed
    # block's backward would zero-fill and add a gradient the size of the whole batch.
    per_row = zip(query.unbind(0), key.unbind(0), value.unbind(0), strict=True)
    for r, (q_row, k_row, v_row) in enumerate(per_row):
        sizes = [b if isinstance(b, int) else b[0] for b in attention_blocks[r]]
        pad, before = width - sum(sizes), len(pieces)
        splits = (t.split(sizes + [pad] if pad else sizes, dim=1) for t in (q_row, k_row, v_row))
        start = 0
        for block, q, k, v in zip(attention_blocks[r], *splits, strict=False):  # no pad piece
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
            if isinstance(block, int):
                s = slice(start, start + block)
                whole = attention_mask[r : r + 1, :, s, s]
                training = torch.is_grad_enabled()
                segments = _segments(whole, cache) if gathered or not training else None
                if training and segments is not None:
                    pieces.extend(TreeFlash.apply(q, k, v, scaling, segments))
                else:
                    pieces.extend(_tree(sdpa, q, k, v, segments, whole))
            else:
                pieces.extend(_forked(sdpa, q, k, v, *block[1:], masks, gathered, scaling))
            start += q.shape[2]
        layout.append((len(pieces) - before, pad))
    shape = (query.shape[1], value.shape[-1])
    assemble = functools.partial(_assemble, tuple(layout), shape)
    out = assemble(*pieces)
    recipes = getattr(module, "_rmtrain_recipes", None)  # set on the lean model's attentions
    if recipes is not None and torch.is_grad_enabled() and out._base is None:
        recipes.keep(out, assemble, pieces)  # a copy: o_proj (lean) keeps the pieces instead
    return out.unflatten(-1, shape), None


def _assemble(
    layout: tuple[tuple[int, int], ...], shape: tuple[int, int], *pieces: torch.Tensor
) -> torch.Tensor:
    """The blocks' outputs ([1, heads, n, d] each; per row: how many, then padding columns) as
    one [rows, L, heads x d] tensor. The CPU kernel writes its output token-major (the layout
    of transformers' queries), so each piece transposed is contiguous and one plain `cat`
    copies it; a row of one block is a view, no copy."""
    rows, i = [], 0
    for count, pad in layout:
        row = [p.transpose(1, 2).flatten(-2) for p in pieces[i : i + count]]
        i += count
        if pad:
            row.append(pieces[0].new_zeros(1, pad, shape[0] * shape[1]))
        rows.append(torch.cat(row, dim=1) if len(row) > 1 else row[0])
    return (torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]).contiguous()


def _forked(
    sdpa: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    p: int,
    c: int,
    masks: dict,
    gathered: bool = False,
    scale: float | None = None,
) -> list:
    """Attention of a forked block as two calls: the causal run [0, c) with `is_causal` (the
    CPU kernel skips the blocks above the diagonal), then the tail's queries. A dense masked
    call computes every pair of the block. `gathered` (CPU): both in `ForkedFlash`, whose tail
    reads only the prefix's and its own keys. Otherwise the tail reads views of all the
    block's keys and values with the run after the prefix masked: a copy of just the prefix
    and tail keys would be kept for backward (more memory)."""
    tail = q.shape[2] - c
    if tail == 0:
        return [sdpa(q, k, v, is_causal=True)]
    if gathered:
        return list(ForkedFlash.apply(q, k, v, p, c, scale, masks[tail, p, c]))
    q_head, q_tail = q.split([c, tail], dim=2)
    head = sdpa(q_head, k[:, :, :c], v[:, :, :c], is_causal=True)
    return [head, sdpa(q_tail, k, v, attn_mask=masks[tail, p, c])]


def _gathers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> bool:
    """Whether forked blocks run as `speed.flash.ForkedFlash` (and, training, tree blocks as
    `TreeFlash`): on CPU (its flash kernel is the one SDPA picks there), one dtype, no
    dropout."""
    on_cpu = GATHER_ON_CPU and q.device.type == "cpu"
    return on_cpu and not dropout and q.dtype == k.dtype == v.dtype


def _tail_masks(blocks: Blocks, device: torch.device, dtype: torch.dtype, gathered: bool) -> dict:
    """The additive masks of a batch's forked tails, by (tail, p, c), built once per batch.

    [tail, c + tail]: tail token i sees keys 0..p-1 (the prefix) and c..c+i (itself);
    `gathered`: [tail, p + tail] over the prefix's keys and the tail's. SDPA turns a boolean
    mask into a float copy in every call and keeps that copy for backward: one per layer,
    one mask per layer. One float mask of the query's dtype is used
    as is, so every layer keeps the same tensor (the forward's cache holds them)."""
    masks = {}
    for n, p, c in (b for row in blocks for b in row if not isinstance(b, int) and b[0] > b[2]):
        if (n - c, p, c) not in masks:
            if gathered:
                seen = torch.ones(n - c, p + n - c, dtype=torch.bool, device=device).tril(p)
            else:
                seen = torch.ones(n - c, n, dtype=torch.bool, device=device).tril(c)
                seen[:, p:c] = False
            masks[n - c, p, c] = additive_mask(seen, dtype)
    return masks


def _tree(sdpa: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Any, mask: Any):
    """Attention of a prefix tree (a block whose mask lets each token see its ancestors) one
    segment at a time: a segment's queries against its ancestors' keys and values, gathered,
    then its own, causally (aligned bottom right), instead of one masked call over the whole
    tree, which computes every pair of the tree's tokens. Without gradients (scoring): the
    gathered copies would be kept for backward (training on CPU runs the segments in
    `speed.flash.TreeFlash`, which gathers again in backward). `segments` None: one call
    with the block's `mask`."""
    if segments is None:
        return [sdpa(q, k, v, attn_mask=mask)]
    out = []
    for a, b, cols in segments:
        if cols is None:  # a root segment: a plain causal run
            out.append(sdpa(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True))
        else:
            keys, values = k.index_select(2, cols), v.index_select(2, cols)
            seen = lower_right(b - a, cols.numel(), q.device, q.dtype)
            out.append(sdpa(q[:, :, a:b], keys, values, attn_mask=seen))
    return out


def _segments(block: torch.Tensor, cache: dict) -> list | None:
    """The segments of the tree whose mask is `block` (a [1, 1, n, n] slice of a batch's 4-D
    mask), found once per forward (every layer passes the same mask; `cache` is the forward's):
    (a, b, ancestor and own key columns, None for a root) for each run of tokens that see
    exactly the previous token's keys and themselves; None where the segments do not reproduce
    the block's mask exactly."""
    found = cache.setdefault("segments", {})
    where = (block.storage_offset(), tuple(block.shape), block.stride())  # the slice of the mask
    if where not in found:
        found[where] = tree_segments(_allowed(block)[0, 0])
    return found[where]


def tree_segments(allowed: torch.Tensor) -> list | None:
    """Segments of an [n, n] tree mask (see `_segments`), None if they do not give it back."""
    n = allowed.shape[0]
    steps = torch.arange(1, n, device=allowed.device)
    same = ((allowed[1:] ^ allowed[:-1]).sum(-1) == 1) & allowed[steps, steps - 1]
    starts = [0] + (torch.nonzero(~same).flatten() + 1).tolist()
    segments, rebuilt = [], torch.zeros_like(allowed)
    for a, b in zip(starts, starts[1:] + [n], strict=True):
        cols = torch.nonzero(allowed[b - 1]).flatten()
        ancestors = cols[cols < a]
        rebuilt[a:b, ancestors] = True
        rebuilt[a:b, a:b] = torch.ones(b - a, b - a, dtype=torch.bool, device=rebuilt.device).tril()
        segments.append((a, b, None if ancestors.numel() == 0 else cols))
    return segments if torch.equal(rebuilt, allowed) else None


def flex_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scaling: float | None,
    cache: dict | None = None,
) -> torch.Tensor:
    """FlexAttention over packed rows with `mask` (4-D, boolean or additive) as its block mask:
    [rows, L, heads, d] like transformers' attention functions. Compiled on GPUs (once, then
    for any length); eager elsewhere, where it has no backward."""
    from torch.nn.attention.flex_attention import flex_attention

    run = _compiled_flex() if query.device.type == "cuda" else flex_attention
    gqa = key.shape[1] != query.shape[1]
    cache = {} if cache is None else cache
    if "block_mask" not in cache:  # every layer of a forward passes the same mask
        cache["block_mask"] = _block_mask(mask)
    blocks = cache["block_mask"]
    out = run(query, key, value, block_mask=blocks, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous()


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _block_mask(mask: torch.Tensor) -> Any:
    """The FlexAttention block mask of a 4-D mask ([rows, 1, L, L]; True or 0 = attend), built
    once per batch: every layer of a forward passes the same mask tensor."""
    from torch.nn.attention.flex_attention import create_block_mask

    allowed = _allowed(mask)[:, 0]
    rows, length = allowed.shape[0], allowed.shape[-1]

    def mask_mod(b: Any, _h: Any, q: Any, kv: Any) -> Any:
        return allowed[b, q, kv]

    return create_block_mask(mask_mod, rows, None, length, length, device=mask.device)


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """A boolean (True = attend) or additive (0 = attend) mask as a boolean one; the inverse of
    `additive_mask`."""
    return mask if mask.dtype == torch.bool else mask == 0


def select(model: Any) -> str | None:
    """Make `model` (only this one) run its attention through `block_sdpa`: registered under
    rmtrain's own name, selected per model as transformers' AttentionInterface allows. Returns
    the implementation it replaces, or None where the model is not one this applies to (not
    SDPA, or a head that does not pass attention kwargs down)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_layers import GenericForSequenceClassification

    was = model.config._attn_implementation
    if was != "sdpa" or not isinstance(model, GenericForSequenceClassification):
        return None
    AttentionInterface.register(NAME, block_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # 2-D masks become SDPA's masks, as stock
    model.set_attn_implementation(NAME)
    return was


def deselect(model: Any, was: str) -> None:
    """Back to the implementation `select` replaced."""
    model.set_attn_implementation(was)
