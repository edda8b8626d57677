"""Reward model = a causal LM backbone + a scalar value head, stored as a standard HF
`*ForSequenceClassification` checkpoint (num_labels=1).

rmtrain never uses the stock head's pooling (it reads the last token whose id differs from the
pad id, wrong when pad == eos or with left padding). It runs the backbone, applies the value head
to every position (the per-token values), and reads the reward at the last position the
attention mask marks real.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from rmtrain.attention import additive_mask, block_sizes
from rmtrain.attention import install as install_block_attention
from rmtrain.errors import RmtrainError
from rmtrain.last_layer import only_rows

PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>", "<unk>")


def resolve_dtype(name: str) -> torch.dtype:
    """'auto': bf16 on GPUs that support it, else fp32 (bf16 on CPUs without bf16 units is
    many times slower)."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise RmtrainError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return table[name]


def _split_gguf(model_id: str) -> tuple[str, dict[str, Any]]:
    """A `.gguf` file path -> (its folder, {'gguf_file': name}) for `from_pretrained`."""
    if model_id.endswith(".gguf"):
        path = Path(model_id).expanduser()
        if not path.is_file():
            raise RmtrainError(f"model file {model_id} does not exist; pass an existing .gguf file")
        return str(path.parent), {"gguf_file": path.name}
    return model_id, {}


def _hub_error(model_id: str, exc: Exception) -> RmtrainError:
    if Path(model_id).expanduser().exists():
        return RmtrainError(f"cannot load model from {model_id}: {exc}")
    looks_local = model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
    if looks_local:
        return RmtrainError(
            f"model path {model_id} does not exist; pass a model folder, a .gguf file or a hub name"
        )
    return RmtrainError(
        f"model {model_id!r} is not a local folder and could not be fetched from the Hugging Face "
        f"Hub (offline, or not a model). Pass a local folder or .gguf file, or connect and unset "
        f"HF_HUB_OFFLINE. [{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]"
    )


def choose_pad_token(tokenizer: Any, requested: str | None = None) -> None:
    """Give the tokenizer a pad token distinct from eos, so that the saved checkpoint's stock
    head (which pools at the last token != pad_token_id) agrees with rmtrain's mask pooling."""
    if requested is not None:
        if tokenizer.convert_tokens_to_ids(requested) in (None, tokenizer.unk_token_id) and (
            requested != tokenizer.unk_token
        ):
            raise RmtrainError(f"--pad-token {requested!r} is not in the tokenizer's vocabulary")
        tokenizer.pad_token = requested
        return
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is not None and pad != eos:
        return
    vocab = tokenizer.get_vocab()
    for candidate in (tokenizer.unk_token, *PAD_CANDIDATES):
        if candidate and candidate in vocab and vocab[candidate] != eos:
            tokenizer.pad_token = candidate
            return
    if pad is None:
        raise RmtrainError(
            "the tokenizer has no pad token and no spare special token to use as one; pass "
            "--pad-token TOKEN with a token from its vocabulary"
        )


def load_tokenizer(model_id: str, pad_token: str | None = None, trust_remote_code: bool = False):
    """The model's tokenizer with a usable pad token and right padding."""
    from transformers import AutoTokenizer

    if model_id.startswith("builtin:"):
        from rmtrain.builtin import builtin_tokenizer

        tokenizer = builtin_tokenizer(model_id)
    else:
        path, extra = _split_gguf(model_id)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                path, trust_remote_code=trust_remote_code, **extra
            )
        except (OSError, ValueError) as exc:
            raise _hub_error(model_id, exc) from None
    choose_pad_token(tokenizer, pad_token)
    tokenizer.padding_side = "right"
    return tokenizer


def load_reward_model(
    model_id: str,
    pad_token_id: int,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    quantization_config: Any = None,
):
    """A `*ForSequenceClassification` model with one label; the value head is new if absent."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)  # the new value head's initialisation is part of the run's seed
    if model_id.startswith("builtin:"):
        from rmtrain.builtin import builtin_model

        model = builtin_model(model_id, pad_token_id).to(dtype)
        model.config._attn_implementation = attn_implementation
    else:
        path, extra = _split_gguf(model_id)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=1,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if extra else _prefers_safetensors(path),
                attn_implementation=attn_implementation,
                quantization_config=quantization_config,
                **extra,
            )
        except (OSError, ValueError) as exc:
            raise _hub_error(model_id, exc) from None
        if extra:
            _drop_gguf_quantizer(model)
    model.config.pad_token_id = pad_token_id
    model.config.use_cache = False
    return model


def _drop_gguf_quantizer(model: Any) -> None:
    """GGUF weights arrive dequantized to plain tensors, but transformers still marks the model
    quantized, which blocks training and would save a GGUF config. Make it an ordinary model."""
    model.is_quantized = False
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _prefers_safetensors(path: str) -> bool | None:
    """Local folders load only from safetensors when they have them (no pickle execution)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return any(f.suffix == ".safetensors" for f in folder.iterdir()) or None
    return None


def value_head(model: Any) -> torch.nn.Module:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise RmtrainError(f"{type(model).__name__} has no scalar head (score/classifier)")


def lm_head_weight(model: Any, model_id: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weights for the auxiliary LM loss: the (trained) input embeddings when the model ties
    them to its LM head, else the pretrained LM head, frozen. Never part of the saved model."""
    inner = unwrap(model)
    if getattr(inner.config, "tie_word_embeddings", False):
        return inner.get_input_embeddings().weight
    from transformers import AutoModelForCausalLM

    path, extra = _split_gguf(model_id)
    try:
        causal = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        raise RmtrainError(f"--lm-loss-coef needs the model's LM head: {exc}") from None
    return causal.get_output_embeddings().weight.detach().clone()


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
) -> Any:
    """The value head applied at every position: [batch, seq] (the seed's per-token values);
    with `return_hidden`, also the final hidden states (for an auxiliary LM loss). With `keep`
    (flat indices into [batch x seq]) the values are right only at those positions: the last
    layer's output projection and MLP run there alone (`rmtrain.last_layer`).

    The model's own forward runs (so DDP, FSDP, DeepSpeed ZeRO-3 and PEFT see a normal call and
    gather / sync as usual); a forward hook keeps the head's output at every position before
    the stock pooling discards it. `attention_mask` may be 2-D (padding) or a 4-D mask
    (packed / prefix-shared rows); `blocks` [rows, k], the sizes of a packed row's independent
    blocks, lets SDPA on CPU attend within each block alone (`rmtrain.attention`).
    """
    if attention_mask is not None and position_ids is None and attention_mask.dim() == 2:
        position_ids = position_ids_from_mask(attention_mask)
    inner = unwrap(model)
    extra: dict[str, Any] = {}
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = _mask_for_attention(inner, attention_mask)
        per_block = getattr(inner, "_rmtrain_block_attention", None)
        if per_block is None:  # auto: measured on CPU only (see `use_block_attention`)
            per_block = input_ids.device.type == "cpu"
        sdpa = inner.config._attn_implementation == "sdpa"
        flex = per_block == "flex"
        if per_block and (flex or blocks is not None) and sdpa and _passes_attention_kwargs(inner):
            install_block_attention()
            extra |= {"attention_flex": True} if flex else {"attention_blocks": block_sizes(blocks)}
    kept: list[torch.Tensor] = []
    handle = value_head(inner).register_forward_hook(lambda _m, _i, out: kept.append(out))
    backends = attention_backends(input_ids.device)
    try:
        with backends, only_rows(inner, None if return_hidden else keep):
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,  # with the cache on, transformers skips packed-mask handling
                output_hidden_states=return_hidden,
                **extra,
            )
    finally:
        handle.remove()
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
) -> torch.Tensor:
    """The values at the tokens (rows[i], cols[i]) only, in that order: the last layer runs at
    those tokens alone. A token may be listed more than once (prefix trees read one response
    for several pairs); it is computed once."""
    at = rows * input_ids.shape[1] + cols
    values = token_values(
        model, input_ids, attention_mask, position_ids, blocks=blocks, keep=at.unique()
    )
    return values.flatten()[at]


def use_block_attention(model: Any, when: str) -> None:
    """--block-attention auto / on / off / flex for `token_values` on packed rows. auto: per
    block on CPU only. There it is measured; on an H200 at 32 pairs a step the dense masked call
    over 2,048-token rows took 41% of the GPU time (benchmarks/README.md, GPU session 8), but
    the per-block path's extra kernel launches there are unmeasured, as is flex (one
    FlexAttention call per layer that skips the blocked tiles; no backward on CPU)."""
    setting = {"auto": None, "on": True, "off": False, "flex": "flex"}[when]
    unwrap(model)._rmtrain_block_attention = setting


def attention_backends(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA, SDPA may pick flash, memory-efficient or math kernels but not cuDNN.

    cuDNN attention builds a graph for every new input shape. Packed and prefix-shared rows (and
    padded batches) change shape nearly every batch, so it rebuilds all the time: on an H100
    (torch 2.11, bf16, Qwen3-0.6B shape, 8 HH pairs a step) its forward and backward took 14 ms
    of CPU time per call against 0.12 / 0.29 ms on the GPU, 72% of a prefix-sharing step's wall
    time (benchmarks/README.md, GPU section). The backward kernel follows the forward's choice.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def _passes_attention_kwargs(model: Any) -> bool:
    """transformers' generic classification heads (Llama, Qwen, Mistral, ...) hand extra keyword
    arguments down to the attention function; other heads may reject them."""
    from transformers.modeling_layers import GenericForSequenceClassification

    return isinstance(model, GenericForSequenceClassification)


def _mask_for_attention(model: Any, mask: torch.Tensor) -> torch.Tensor:
    """Boolean 4-D masks become one additive float mask (0 = attend, dtype minimum = blocked).

    Eager attention adds the mask. SDPA would convert a boolean mask to float in every layer,
    and every layer keeps its copy for backward; one shared float mask saved 94 MB of peak
    memory on ~950-token SmolLM2 rows. Under autocast, and for SDPA off the CPU, the boolean
    mask stays (a float mask must match the query dtype there).
    """
    if mask.dtype != torch.bool:
        return mask
    if model.config._attn_implementation == "sdpa" and (
        mask.device.type != "cpu" or torch.is_autocast_enabled("cpu")
    ):
        return mask
    return additive_mask(mask, next(value_head(model).parameters()).dtype)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row, from the mask alone (any padding side)."""
    seq = attention_mask.shape[-1]
    positions = torch.arange(seq, device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def sequence_rewards(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """One reward per row: the value at the last real token."""
    values = token_values(model, input_ids, attention_mask)
    index = last_token_index(attention_mask)
    return values.gather(1, index.unsqueeze(1)).squeeze(1)


def attention_cost_ratio(config: Any) -> float:
    """FLOPs of attention per query-key pair over linear FLOPs per token, in one layer: what a
    dense masked attention over n tokens costs (n^2 pairs) against the work per token.

    Q K^T and P V take 4 x heads x head_dim FLOPs per pair; the projections and a gated MLP
    take 2 x their parameters per token. SmolLM2-135M: 3.3e-4 (measured on this CPU: 3.2e-4).
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
