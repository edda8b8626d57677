"""Reward model = a causal LM backbone + a scalar value head, stored as a standard HF
`*ForSequenceClassification` checkpoint (num_labels=1).

rmtrain never uses the stock head's pooling (it reads the last token whose id differs from the
pad id, wrong when pad == eos or with left padding). It runs the backbone, applies the value head
to every position (the per-token values), and reads the reward at the last position the
attention mask marks real.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from rmtrain import speed
from rmtrain.errors import RmtrainError


def value_head(model: Any) -> torch.nn.Module:
    """The scalar head (`score` in decoder classes, else `classifier` / `v_head`), also inside
    DDP / DeepSpeed / PEFT wrappers; under LoRA its trainable copy is the parameters with
    `requires_grad`."""
    inner = unwrap(model)
    for name in ("score", "classifier", "v_head"):
        head = getattr(inner, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise RmtrainError(f"{type(inner).__name__} has no scalar head (score/classifier)")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so left and right padding give the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def unwrap(model: Any) -> Any:
    """The transformers model inside DDP / DeepSpeed (`.module`) and PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def token_values(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    return_hidden: bool = False,
    blocks: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    head_inputs: list[torch.Tensor] | None = None,
) -> Any:
    """The value head applied at every position: [batch, seq] (the per-token values); with
    `return_hidden`, also the final hidden states (for an auxiliary LM loss). With `keep` (flat
    indices into [batch x seq]) the values need only be right at those positions, which lets a
    model prepared by `rmtrain.speed` skip work elsewhere.

    The model's own forward runs (so DDP, FSDP, DeepSpeed ZeRO-3 and PEFT see a normal call and
    gather / sync as usual); a forward hook keeps the head's output at every position before
    the stock pooling discards it. `attention_mask` may be 2-D (padding) or a 4-D mask
    (packed / prefix-shared rows); `blocks` [rows, k], the sizes of a packed row's independent
    blocks, lets a prepared model attend within each block alone.
    """
    if attention_mask is not None and position_ids is None and attention_mask.dim() == 2:
        position_ids = position_ids_from_mask(attention_mask)
    inner = unwrap(model)
    fast = speed.handle_of(inner)
    extra: dict[str, Any] = {}
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = _mask_for_attention(inner, attention_mask)
        if fast is not None:
            extra = fast.attention_kwargs(input_ids.device, blocks)
    trimmed = fast.only_rows(None if return_hidden else keep) if fast else contextlib.nullcontext()
    kept: list[torch.Tensor] = []

    def keep_output(_m: Any, args: tuple, out: torch.Tensor) -> None:
        kept.append(out)
        if head_inputs is not None:  # what the head read: a second head can read it too
            head_inputs.append(args[0])

    hook = value_head(inner).register_forward_hook(keep_output)
    try:
        with speed.sdpa_backends(input_ids.device), trimmed:
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,  # with the cache on, transformers skips packed-mask handling
                output_hidden_states=return_hidden,
                **extra,
            )
    finally:
        hook.remove()
    values = kept[-1].squeeze(-1).float()
    return (values, out.hidden_states[-1]) if return_hidden else values


def values_at(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    blocks: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
    head_inputs: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The values at the tokens (rows[i], cols[i]) only, in that order. A token may be listed
    more than once (prefix trees read one response for several pairs); it is computed once.
    With `head_inputs`, the value head's inputs at those tokens are appended to it."""
    at = rows * input_ids.shape[1] + cols
    taps: list[torch.Tensor] | None = [] if head_inputs is not None else None
    values = token_values(
        model, input_ids, attention_mask, position_ids, blocks=blocks, keep=at.unique(),
        head_inputs=taps,
    )  # fmt: skip
    if head_inputs is not None and taps:
        hidden = taps[-1]
        head_inputs.append(hidden.reshape(-1, hidden.shape[-1])[at])
    return values.flatten()[at]


def _mask_for_attention(model: Any, mask: torch.Tensor) -> torch.Tensor:
    """Boolean 4-D masks become one additive float mask (0 = attend, dtype minimum = blocked).

    Eager attention adds the mask. SDPA would convert a boolean mask to float in every layer,
    and every layer keeps its copy for backward; one shared float mask is kept once. Under
    autocast, and for SDPA off the CPU, the boolean mask stays (a float mask must match the
    query dtype there).
    """
    if mask.dtype != torch.bool:
        return mask
    if model.config._attn_implementation in speed.SDPA_NAMES and (
        mask.device.type != "cpu" or torch.is_autocast_enabled("cpu")
    ):
        return mask
    return speed.additive_mask(mask, next(value_head(model).parameters()).dtype)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row, from the mask alone (any padding side)."""
    seq = attention_mask.shape[-1]
    positions = torch.arange(seq, device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def pair_rewards(
    model: Any,
    batch: dict[str, torch.Tensor],
    with_hidden: bool = False,
    head_inputs: list[torch.Tensor] | None = None,
) -> Any:
    """(chosen, rejected) rewards of a collated batch in one forward pass (and the final hidden
    states when `with_hidden`): the one place a reward is read in training. With
    `head_inputs`, the value head's inputs at the reward tokens ([2 x pairs, hidden], chosen
    first) are appended to it, for a second head (`--length-head`).

    Packed batches (`PackedCollator`) carry the (row, column) of each reward token; padded
    double batches (`PairCollator`) are read at the last real token of each row.
    """
    args = (model, batch["input_ids"], batch.get("attention_mask"), batch["position_ids"])
    blocks = batch.get("attention_blocks")
    if with_hidden:
        values, hidden = token_values(*args, return_hidden=True, blocks=blocks)
        if head_inputs is not None:
            head_inputs.append(hidden[reward_positions(batch)])
        return (*read_rewards(values, batch), hidden)
    return _halves(values_at(*args, blocks, *reward_positions(batch), head_inputs=head_inputs))


LENGTH_HEAD = "rmtrain_length_head"  # a training-only module; never saved


def attach_length_head(model: Any, seed: int) -> torch.nn.Module:
    """A second scalar head beside the value head (ODIN, arXiv 2402.07319), reading the same
    inputs: it absorbs what length explains so the value head need not. A submodule, so it
    trains, checkpoints and resumes with the model; `detach_length_head` drops it before the
    final save."""
    inner = unwrap(model)
    head = value_head(inner)
    weight = next(head.parameters())
    generator = torch.Generator().manual_seed(seed)
    extra = torch.nn.Linear(weight.shape[-1], 1, bias=False)
    with torch.no_grad():
        extra.weight.copy_(torch.randn(extra.weight.shape, generator=generator) * 0.02)
    setattr(inner, LENGTH_HEAD, extra.to(weight.device, weight.dtype))
    return extra


def length_head(model: Any) -> torch.nn.Module | None:
    return getattr(unwrap(model), LENGTH_HEAD, None)


def detach_length_head(model: Any) -> None:
    """The saved model is the stock class with its value head only."""
    inner = unwrap(model)
    if hasattr(inner, LENGTH_HEAD):
        delattr(inner, LENGTH_HEAD)


def reward_positions(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every reward token, the chosen ones first, then the rejected."""
    if "chosen_index" in batch:
        both = torch.cat([batch["chosen_index"], batch["rejected_index"]])
        return both[:, 0], both[:, 1]
    cols = last_token_index(batch["attention_mask"])
    return torch.arange(cols.shape[0], device=cols.device), cols


def read_rewards(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple:
    """(chosen, rejected) rewards read from the values at every position."""
    rows, cols = reward_positions(batch)
    return _halves(values[rows, cols])


def _halves(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


def attention_cost_ratio(config: Any) -> float:
    """FLOPs of attention per query-key pair over linear FLOPs per token, in one layer: what a
    dense masked attention over n tokens costs (n^2 pairs) against the work per token.

    Q K^T and P V take 4 x heads x head_dim FLOPs per pair; the projections and a gated MLP
    take 2 x their parameters per token.
    """
    try:
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        params = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
        params += 3 * hidden * config.intermediate_size
    except (AttributeError, TypeError):
        return 3e-4  # not a decoder config we can read: a typical small-model value
    return 4 * heads * head_dim / (2 * params)
