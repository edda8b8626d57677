"""LoRA / QLoRA through PEFT. The value head is always trained and saved (`modules_to_save`);
adapters can be merged into an ordinary checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rmtrain.errors import RmtrainError
from rmtrain.modeling.rewards import value_head


def head_name(model: Any) -> str:
    head = value_head(model)
    for name, module in model.named_children():
        if module is head:
            return name
    raise RmtrainError(f"cannot find the value head of {type(model).__name__}")


def apply_lora(
    model: Any, r: int, alpha: int, dropout: float = 0.0, target: list[str] | None = None
) -> Any:
    """Wrap the model with LoRA adapters on `target` (default: every linear layer but the
    head); the head is fully trained."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target or "all-linear",
        modules_to_save=[head_name(model)],
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft's NoMatchingPeftModuleError is one
        if not target:
            raise
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"}
        )
        raise RmtrainError(
            f"--lora-target {','.join(target)} matches no module of this model "
            f"({exc.__class__.__name__}); its linear layers are {', '.join(linear)}"
        ) from None


def quantization_config(load_in_4bit: bool) -> Any:
    """4-bit NF4 (QLoRA) when asked; needs a CUDA GPU and bitsandbytes."""
    if not load_in_4bit:
        return None
    import importlib.util

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise RmtrainError(
            "--load-in-4bit needs a CUDA GPU and bitsandbytes (pip install "
            "bitsandbytes); drop it on this machine"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )


def merged(model: Any) -> Any:
    """An ordinary transformers model with the adapters folded into the weights."""
    return model.merge_and_unload()


def load_adapter_model(folder: Path, pad_token_id: int) -> Any:
    """Base model (re-created the way rmtrain loaded it) + saved adapters and head."""
    from peft import PeftModel

    from rmtrain.modeling.loading import load_reward_model, saved_options

    adapter = json.loads((folder / "adapter_config.json").read_text())
    base_id = adapter.get("base_model_name_or_path")
    seed = 0
    cfg = saved_options(folder)
    base_id, seed = cfg.get("model", base_id), cfg.get("seed", 0)
    if not base_id:
        raise RmtrainError(f"{folder}: adapter_config.json names no base model")
    base = load_reward_model(base_id, pad_token_id, torch.float32, seed=seed)
    return PeftModel.from_pretrained(base, str(folder))
