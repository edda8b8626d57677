"""Checks of a training config's values, all at once and before anything is loaded: one
message lists every problem, each naming its flag and the fix."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rmtrain.errors import RmtrainError


def _training_problems(cfg: Any) -> list[str]:
    """Values that would train nothing, or that transformers/torch reject mid-run."""
    problems = []
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        problems.append(f"--lr must be a positive number, got {cfg.lr} (0 trains nothing)")
    if not (math.isfinite(cfg.epochs) and cfg.epochs > 0):
        problems.append(f"--epochs must be above 0, got {cfg.epochs}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        problems.append(f"--max-steps must be -1 (all epochs) or at least 1, got {cfg.max_steps}")
    if cfg.keep_best and not cfg.eval_steps:
        problems.append("--keep-best chooses among evaluations: set --eval-steps N (N >= 1)")
    if cfg.logging_steps < 1:
        problems.append(f"--logging-steps must be at least 1, got {cfg.logging_steps}")
    if not 0 <= cfg.warmup_ratio <= 1:
        problems.append(f"--warmup-ratio must be in [0, 1], got {cfg.warmup_ratio}")
    for flag, value in (
        ("--weight-decay", cfg.weight_decay),
        ("--max-grad-norm", cfg.max_grad_norm),
        ("--center-rewards-coef", cfg.center_rewards_coef),
        ("--lm-loss-coef", cfg.lm_loss_coef),
        ("--lora-r", cfg.lora_r),
    ):
        if not (math.isfinite(value) and value >= 0):
            problems.append(f"{flag} must be 0 or more, got {value}")
    if not 0 <= cfg.lora_dropout < 1:
        problems.append(f"--lora-dropout must be in [0, 1), got {cfg.lora_dropout}")
    if not 0 <= cfg.seed < 2**32:
        problems.append(f"--seed must be in [0, 2**32), got {cfg.seed}")
    if cfg.eval_batch is not None and cfg.eval_batch < 1:
        problems.append(f"--eval-batch must be at least 1, got {cfg.eval_batch}")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        problems.append(f"--save-total-limit must be at least 1, got {cfg.save_total_limit}")
    if cfg.row_budget is not None and cfg.row_budget < 0:
        problems.append(f"--row-budget must be 0 or more, got {cfg.row_budget}")
    if cfg.min_prompt_length is not None and not 0 <= cfg.min_prompt_length < cfg.max_length:
        problems.append(
            f"--min-prompt-length must be in [0, --max-length), got {cfg.min_prompt_length}"
        )
    return problems


def bound_problems(cfg: Any) -> list[str]:
    """Options declared with `low` / `high` (inclusive) or `above` (exclusive) bounds: a value
    outside them, or not a finite number, is named with its flag."""
    problems = []
    for f in dataclasses.fields(cfg):
        low, high, above = (f.metadata.get(k) for k in ("low", "high", "above"))
        value = getattr(cfg, f.name)
        if value is None or (low is None and high is None and above is None):
            continue
        flag = "--" + f.name.replace("_", "-")
        ok = isinstance(value, int | float) and math.isfinite(value)
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
        ok = ok and (above is None or value > above)
        if not ok:
            span = [
                f">= {low}" if low is not None else "",
                f"> {above}" if above is not None else "",
            ]
            span += [f"<= {high}" if high is not None else ""]
            problems.append(f"{flag} must be {' and '.join(x for x in span if x)}, got {value}")
    return problems


def value_problems(cfg: Any) -> list[str]:
    """Every config's declared bounds, and registry names where it has them."""
    from rmtrain.tracking.names import registry_name_problems

    name, alias = getattr(cfg, "register_model", None), getattr(cfg, "model_alias", None)
    return bound_problems(cfg) + registry_name_problems(name, alias)


def _choice_problems(cfg: Any) -> list[str]:
    """Options declared with `choices` (YAML bypasses argparse's own check)."""
    problems = []
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            flag = "--" + f.name.replace("_", "-")
            problems.append(f"{flag} must be one of {', '.join(choices)}")
    return problems


def check_ranges(cfg: Any) -> None:
    problems = _training_problems(cfg)
    if cfg.length_head and cfg.lora_r:
        problems.append(
            "--length-head trains a second head beside the full model: not with --lora-r"
        )
    if cfg.augment:
        from rmtrain.data.augment import augmentation_names

        try:
            augmentation_names(cfg.augment)
        except RmtrainError as exc:
            problems.append(str(exc))
    if any(not str(spec).strip() for spec in cfg.datasets()):
        problems.append("--dataset is empty; pass a data file, folder or hub data set name")
    if cfg.overwrite and cfg.resume:
        problems.append(
            "--overwrite replaces the run in --output, --resume continues it: pass only one"
        )
    if cfg.frac is not None and not 0 < cfg.frac <= 1:
        problems.append(f"--frac must be in (0, 1], got {cfg.frac}")
    if not 0 < cfg.test_size < 1:
        problems.append(f"--test-size must be in (0, 1), got {cfg.test_size}")
    if cfg.batch < 1 or cfg.grad_accum < 1:
        problems.append("--batch and --grad-accum must be at least 1")
    if cfg.max_length < 8:
        problems.append(f"--max-length must be at least 8, got {cfg.max_length}")
    if not 0 <= cfg.max_bad_fraction <= 1:
        problems.append(f"--max-bad-fraction must be in [0, 1], got {cfg.max_bad_fraction}")
    problems += _choice_problems(cfg) + value_problems(cfg)
    if cfg.checkpoint_every < 1:
        problems.append(f"--checkpoint-every must be at least 1, got {cfg.checkpoint_every}")
    if cfg.save_steps is not None and cfg.save_steps < 1:
        problems.append(f"--save-steps must be at least 1, got {cfg.save_steps}")
    if cfg.chat_template not in ("auto", "plain"):
        problems.append(f"--chat-template must be 'auto' or 'plain', got {cfg.chat_template!r}")
    if cfg.packing not in ("none", "padding_free", "prefix_sharing"):
        problems.append(f"--packing must be none, padding_free or prefix_sharing: {cfg.packing!r}")
    elif cfg.group_by_prompt and cfg.packing != "prefix_sharing":
        problems.append(
            "--group-by-prompt shares prompts through prefix trees: use it with "
            "--packing prefix_sharing"
        )
    problems += _tree_problems(cfg)
    if cfg.eval_steps < 0 or cfg.eval_sample < 1:
        problems.append("--eval-steps must be 0 or more and --eval-sample at least 1")
    if (cfg.register_model or cfg.model_alias) and "mlflow" not in cfg.report_to:
        problems.append("--register-model and --model-alias need --report-to mlflow")
    if cfg.model_alias and not cfg.register_model:
        problems.append("--model-alias needs --register-model NAME")
    if cfg.speed not in ("auto", "off"):
        problems.append(f"--speed must be auto or off, got {cfg.speed!r}")
    if cfg.block_attention not in ("auto", "on", "off", "flex"):
        problems.append(f"--block-attention must be auto, on, off or flex: {cfg.block_attention!r}")
    attn = ("sdpa", "eager", "flash_attention_2")
    if cfg.attn_implementation in ("flex", "flex_attention"):
        # FlexAttention has no backward on CPU, and its unfused fallback does not take the
        # packed 4-D masks; on GPUs it is unverified (docs/speed.md).
        problems.append(
            "--attn-implementation flex is not supported yet (no backward on CPU, unverified "
            "on GPU); use sdpa (prefix sharing, the default) or flash_attention_2 with "
            "--packing padding_free"
        )
    elif cfg.attn_implementation not in attn:
        problems.append(f"--attn-implementation must be one of {attn}")
    elif cfg.attn_implementation == "flash_attention_2" and cfg.packing == "prefix_sharing":
        problems.append(
            "flash_attention_2 cannot express the prefix-sharing mask; use --packing "
            "padding_free (or none), or --attn-implementation sdpa"
        )
    if cfg.bf16 and cfg.fp16:
        problems.append("choose one of --bf16 and --fp16")
    if (cfg.merge_lora or cfg.load_in_4bit) and cfg.lora_r <= 0:
        problems.append("--merge-lora and --load-in-4bit need LoRA: set --lora-r (e.g. 16)")
    bad = set(cfg.report_to) - {"mlflow", "wandb", "none"}
    if bad:
        problems.append(f"--report-to accepts mlflow, wandb, none; got {sorted(bad)}")
    if problems:
        raise RmtrainError("; ".join(problems))


def _tree_problems(cfg: Any) -> list[str]:
    """Prefix-tree training needs prefix sharing and plain next-token targets."""
    if cfg.prefix_trees not in ("auto", "on", "off"):
        return [f"--prefix-trees must be auto, on or off: {cfg.prefix_trees!r}"]
    trees = "--group-by-prompt" if cfg.group_by_prompt else None
    trees = trees or ("--prefix-trees on" if cfg.prefix_trees == "on" else None)
    if trees and cfg.lm_loss_coef > 0:
        return [f"{trees} trains on prefix trees, which --lm-loss-coef cannot use: drop one"]
    if trees and cfg.packing != "prefix_sharing" and not cfg.group_by_prompt:
        return [f"{trees} needs --packing prefix_sharing"]
    return []
