"""Weight averaging of reward models fine-tuned from one base (WARM, arXiv 2401.12187): the mean
of their weights is one model, as cheap to run as each, and more robust under policy
optimisation than any of them.

Only models that are the same function family can be averaged: same architecture and shapes,
same tokenizer, same text layout and reward position, same base model. Anything else is refused
with the difference named.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rmtrain.errors import RmtrainError

# config.json entries that must agree (shapes and the function computed), besides the weights
ARCH_KEYS = (
    "model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "intermediate_size", "vocab_size", "num_labels", "head_dim",
    "rope_theta", "tie_word_embeddings",
)  # fmt: skip
LAYOUT_KEYS = ("chat_template", "reward_position", "base_model")


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of same-shaped state dicts (in float64, cast back)."""
    if not states:
        raise ValueError("nothing to average")
    out = {}
    for key, first in states[0].items():
        total = sum(s[key].double() for s in states)
        out[key] = (total / len(states)).to(first.dtype)
    return out


def _tokenizer_digest(folder: Path) -> str:
    """The tokenizer's identity: its vocabulary and special tokens files."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        file = folder / name
        if file.is_file():
            text = file.read_text(encoding="utf-8")
            if name == "tokenizer_config.json":  # model-specific fields do not change tokens
                cfg = json.loads(text)
                text = json.dumps({k: cfg.get(k) for k in ("pad_token", "eos_token")})
            digest.update(name.encode() + text.encode())
    return digest.hexdigest()


def describe(folder: Path) -> dict[str, Any]:
    """What must agree between averaged models, read from a saved folder."""
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise RmtrainError(
            f"{folder} holds a LoRA adapter without merged weights; average merged models "
            "(train with --merge-lora true)"
        )
    if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
        raise RmtrainError(f"{folder} is not a saved model (config.json and .safetensors)")
    config = json.loads((folder / "config.json").read_text())
    layout = config.get("rmtrain") or {}
    return {
        "config": {k: config.get(k) for k in ARCH_KEYS},
        "layout": {k: layout.get(k) for k in LAYOUT_KEYS},
        "max_length": layout.get("max_length"),
        "tokenizer": _tokenizer_digest(folder),
        "diverged": layout.get("diverged"),
    }


def check_compatible(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """Each folder's description; refuses the first difference that makes a mean meaningless."""
    if len(folders) < 2:
        raise RmtrainError("rmtrain average needs at least two models")
    described = [describe(f) for f in folders]
    first = described[0]
    for folder, d in zip(folders, described, strict=True):
        if d["diverged"]:
            raise RmtrainError(f"{folder} is marked diverged ({d['diverged']}); leave it out")
        for part, what in (("config", "architecture"), ("layout", "layout or base model")):
            differ = [k for k in first[part] if first[part][k] != d[part][k]]
            if differ:
                k = differ[0]
                raise RmtrainError(
                    f"{folder} has another {what} than {folders[0]} ({k}: {d[part][k]!r} vs "
                    f"{first[part][k]!r}); average models fine-tuned from one base alike"
                )
        if d["tokenizer"] != first["tokenizer"]:
            raise RmtrainError(f"{folder} has another tokenizer than {folders[0]}")
    return described


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


def check_same_tensors(folders: Sequence[Path], states: Sequence[dict[str, torch.Tensor]]) -> None:
    for folder, state in zip(folders[1:], states[1:], strict=True):
        keys = set(state) ^ set(states[0])
        if keys:
            raise RmtrainError(f"{folder} has other weights than {folders[0]} ({sorted(keys)[0]})")
        shape = next((k for k in state if state[k].shape != states[0][k].shape), None)
        if shape:
            raise RmtrainError(f"{folder}: weight {shape} has another shape than {folders[0]}'s")
