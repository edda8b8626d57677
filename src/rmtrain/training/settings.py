"""What a `TrainConfig` means for the pieces it drives: transformers' `TrainingArguments`, the
speed door's options, the training collator and the allocator. Only orchestration reads config;
these turn it into the plain arguments the components take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rmtrain import speed
from rmtrain.batching.collate import make_collator, tree_cap
from rmtrain.config import TrainConfig
from rmtrain.modeling.loading import resolve_dtype
from rmtrain.training.arguments import RewardTrainingArguments

CHECKPOINT_DIR = "checkpoints"


def checkpointing(cfg: TrainConfig, n_params: int) -> bool:
    """--gradient-checkpointing, by default on for models over 1B parameters."""
    return n_params > 1e9 if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing


def training_arguments(
    cfg: TrainConfig, output: Path, report_to: list[str], n_params: int = 0
) -> RewardTrainingArguments:
    on_gpu = torch.cuda.is_available()
    auto_bf16 = cfg.dtype == "auto" and on_gpu and torch.cuda.is_bf16_supported()
    mixed_bf16 = auto_bf16 and not cfg.fp16 if cfg.bf16 is None else cfg.bf16
    args = RewardTrainingArguments(
        output_dir=str(output / CHECKPOINT_DIR),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch,
        per_device_eval_batch_size=cfg.eval_batch or 4 * cfg.batch,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if cfg.eval_steps else "no",
        eval_steps=cfg.eval_steps or None,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=None,  # `SealCheckpoints` rotates, after a checkpoint is sealed
        report_to=report_to,
        run_name=cfg.run_name,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=mixed_bf16,
        fp16=cfg.fp16,
        activation_checkpointing=checkpointing(cfg, n_params),
        activation_checkpointing_kwargs={
            "use_reentrant": False,
            "every_n_layers": cfg.checkpoint_every,
        },
        use_cpu=not on_gpu,
        remove_unused_columns=False,
        label_names=["pair_index"],
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        disable_tqdm=False,
        **reward_options(cfg),
    )
    say_one_device(args)
    return args


def reward_options(cfg: TrainConfig) -> dict[str, Any]:
    """`RewardTrainingArguments`' own fields: the options of the same name, and two derived."""
    names = RewardTrainingArguments.reward_options()
    options = {k: getattr(cfg, k) for k in names if hasattr(cfg, k)}
    # augmented pairs train beside their source pair: its prompt is computed once
    options["group_by_prompt"] = cfg.group_by_prompt or bool(cfg.augment)
    options["fold_clipping"] = cfg.speed == "auto"
    return options


def say_one_device(args: RewardTrainingArguments) -> None:
    """One process drives one GPU (`RewardTrainingArguments.n_gpu`); say so where it sees
    several, and how to use them all."""
    if args.visible_gpus > 1:
        print(
            f"[rmtrain] {args.visible_gpus} GPUs visible in one process: training on "
            f"{args.device} only; launch with `accelerate launch` or torchrun to use them all",
            flush=True,
        )


def speed_options(cfg: TrainConfig, training: bool = True) -> speed.SpeedOptions:
    """The speed group of the config as `rmtrain.speed` takes it."""
    return speed.SpeedOptions(
        enabled=cfg.speed == "auto",
        training=training,
        lean_activations=cfg.lean_activations,
        cap_activations=cfg.cap_activations and cfg.lora_r == 0,  # LoRA: few gradients
        fuse_elementwise=cfg.fuse_elementwise,
        block_attention=cfg.block_attention,
    )


def tune_allocator(cfg: TrainConfig) -> bool:
    """--retain-freed-memory, for training on CPU (on a GPU the step's memory is CUDA's)."""
    return cfg.speed == "auto" and cfg.retain_freed_memory and speed.retain_memory()


def train_collator(cfg: TrainConfig, pad_id: int, attention_cost: float) -> Any:
    """The training collator the config asks for: `--packing`, and with `--group-by-prompt` or
    `--prefix-trees` prefix trees of up to two max lengths (any pair fits one tree). On CPU a
    tree's attention runs branch by branch (`speed.flash.TreeFlash`), so sharing a prefix
    never widens it: every shared prefix is shared (no attention cost weighed against it)."""
    varlen = cfg.attn_implementation == "flash_attention_2"
    trees = trains_on_trees(cfg)
    cap = tree_cap(cfg.max_length) if trees else 0
    per_block = cfg.speed == "auto" and cfg.block_attention in ("auto", "on")
    cpu = not torch.cuda.is_available() and per_block
    cost = 0.0 if trees and cpu else attention_cost
    return make_collator(cfg.packing, pad_id, row_budget(cfg), varlen, cap, cost)


def trains_on_trees(cfg: TrainConfig) -> bool:
    """`--prefix-trees` resolved: auto is on for CPU training without an LM loss."""
    if cfg.packing != "prefix_sharing" or cfg.lm_loss_coef > 0:
        return False
    if cfg.group_by_prompt or cfg.prefix_trees == "on":
        return True
    auto = cfg.prefix_trees == "auto" and cfg.speed == "auto"  # a speed layout: off with speed
    return auto and not torch.cuda.is_available()


def row_budget(cfg: TrainConfig) -> int:
    return 4 * cfg.max_length if cfg.row_budget is None else cfg.row_budget


def resolve_dtype_for_weights(name: str) -> torch.dtype:
    """'auto' keeps fp32 master weights; on bf16 GPUs the Trainer adds bf16 autocast."""
    return torch.float32 if name == "auto" else resolve_dtype(name)
