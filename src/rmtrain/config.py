"""Typed training configuration: one dataclass is the single source of every option.

The same field metadata builds the CLI (`rmtrain train --help`), validates YAML files (unknown
keys are errors) and is saved beside the model as `rmtrain_config.yaml`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rmtrain.coerce import coerce_all
from rmtrain.config_checks import check_ranges, value_problems
from rmtrain.data.augment import AUGMENTATIONS
from rmtrain.data.layout import REWARD_POSITIONS
from rmtrain.data.splits import ORIGINAL_DATASET
from rmtrain.errors import RmtrainError
from rmtrain.modeling.losses import LOSSES, loss_formula


def option(default: Any, help: str, run: bool = False, **extra: Any) -> Any:
    """A dataclass field: everything about an option is declared here. `help` feeds the CLI;
    `group` (TrainConfig) its heading in `--help`, YAML and the saved config; `choices`, `low`,
    `high`, `above` the checks run before any work; `run`: a checkpoint belongs to the run only
    while this option is unchanged (`--resume` refuses another value); `trainer`: the reward
    trainer reads it (a `RewardTrainingArguments` field of the same name)."""
    extra = {**extra, "run": True} if run else extra
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything `rmtrain train` can be told. Flags override YAML, YAML overrides defaults."""

    model: str = option(
        "Qwen/Qwen3-0.6B",
        "Hub name, local model folder, or a .gguf file (dequantized on load), also inside an "
        "installed package as pkg:<package>/<file>; 'builtin:tiny-qwen3' is the offline demo "
        "model.",
        run=True,
        group="model",
    )
    dataset: list[str] = option(
        [ORIGINAL_DATASET],
        "Hub name or local .json/.jsonl/.parquet/.csv file ('builtin:demo': the offline demo "
        "set). Repeat to use several; 'file:0.7' gives a mixing weight (all or none weighted).",
        action="append",
        run=True,
        group="data",
    )
    dataset_split: str = option(
        "train", "Split to read from a hub data set.", run=True, group="data"
    )
    dataset_dir: str | None = option(
        None,
        "A folder of a parquet data set's repository (hub or a local copy laid out like it) "
        "to read, from its first file, only as far as --frac needs: the first rows, for a set "
        "shuffled once. Default for lvwerra/stack-exchange-paired: data/reward, its "
        "reward-modelling part (as StackLLaMA); other data sets are read whole.",
        run=True,
        group="data",
    )
    output: str = option(
        "./outputs/reward_model", "Output folder for model, config and metrics.", group="output"
    )
    lr: float = option(5e-6, "Peak learning rate (AdamW).", run=True, group="training")
    epochs: float = option(1.0, "Number of training epochs.", run=True, group="training")
    batch: int = option(2, "Preference pairs per device per step.", run=True, group="training")
    eval_batch: int | None = option(
        None, "Pairs per evaluation batch (default: 4 x --batch).", group="training"
    )
    grad_accum: int = option(1, "Gradient accumulation steps.", run=True, group="training")
    max_length: int = option(
        512, "Maximum tokens of prompt + response (longer pairs are cut).", run=True, group="data"
    )
    min_prompt_length: int | None = option(
        None,
        "Prompt tokens kept before the response is cut (default: max_length // 4).",
        run=True,
        group="data",
    )
    packing: str = option(
        "prefix_sharing",
        "Batch layout: prefix_sharing ([prompt][chosen][rejected], prompt computed once), "
        "padding_free (sequences packed, no pad tokens) or none (padded double batch).",
        group="speed",
    )
    row_budget: int | None = option(
        None,
        "Tokens per packed row (default: 4 x max_length; 0 = one pair per row).",
        group="speed",
    )
    group_by_length: bool = option(
        True, "Batch pairs of similar length together (less padding).", group="training"
    )
    group_by_prompt: bool = option(
        False,
        "Put the pairs of one prompt into the same training steps (InstructGPT-style; replaces "
        "length grouping) and compute each prompt, and an answer repeated across its pairs, once "
        "per step. Needs --packing prefix_sharing. Changes which pairs share a step.",
        run=True,
        group="training",
    )
    prefix_trees: str = option(
        "auto",
        "With --packing prefix_sharing: lay each training batch out as prefix trees, so that a "
        "prefix several of its sequences share (a template's system prompt, a prompt or answer "
        "that two pairs repeat) is computed once. auto: on when training on CPU (with --speed "
        "auto); off on GPUs and with --lm-loss-coef (next-token targets need plain sequences). "
        "on / off: always / never. Same rewards and gradients either way.",
        group="speed",
    )
    frac: float | None = option(
        None,
        "Fraction of each data set's rows to use, sampled deterministically (default: 0.01 of "
        "the multi-million-pair default hub set lvwerra/stack-exchange-paired, the original "
        "recipe; all rows of any other data set).",
        run=True,
        group="data",
    )
    test_size: float = option(
        0.2, "Held-out fraction (split by prompt, deterministic).", run=True, group="data"
    )
    max_steps: int = option(
        -1, "Stop after this many optimizer steps (-1: run all epochs).", run=True, group="training"
    )
    seed: int = option(
        42,
        "Seed for sampling, splitting, initialisation and shuffling.",
        run=True,
        group="training",
    )
    logging_steps: int = option(
        100, "Log loss to console / MLflow / W&B every N steps.", group="tracking"
    )
    eval_steps: int = option(
        100,
        "Held-out win rate, Kendall's tau and loss every N steps, on --eval-sample pairs (0: "
        "only at the end, on the whole held-out split, as always).",
        group="training",
    )
    robustness: bool = option(
        False,
        "At the end, run the robustness probes (rmtrain eval --robustness) on the held-out "
        "split; the probe table goes into the report, MLflow and W&B.",
        group="training",
    )
    keep_best: bool = option(
        False,
        "Save the weights with the best held-out win rate seen at the --eval-steps evaluations "
        "(ties: lower held-out loss), not the last ones; says which step it kept.",
        group="training",
    )
    eval_sample: int = option(
        1000,
        "Held-out pairs (a fixed seeded sample) for the evaluations during training.",
        group="training",
    )
    report_to: list[str] = option(
        ["mlflow", "wandb"], "Trackers: any of mlflow, wandb, or none.", nargs="+", group="tracking"
    )
    warmup_ratio: float = option(
        0.0,
        "Share of steps with linear learning-rate warmup.",
        run=True,
        group="training",
        trainer=True,
    )
    lr_scheduler: str = option(
        "linear",
        "Learning-rate schedule after warmup.",
        choices=("linear", "cosine", "constant", "constant_with_warmup"),
        run=True,
        group="training",
    )
    head_lr_multiplier: float = option(
        1.0,
        "Learning rate of the value head relative to --lr (a new head often needs a higher "
        "one than the pretrained backbone).",
        run=True,
        above=0,
        high=1e6,
        group="training",
        trainer=True,
    )
    weight_decay: float = option(0.0, "AdamW weight decay.", run=True, group="training")
    max_grad_norm: float = option(
        1.0, "Gradient clipping norm (0 turns clipping off).", run=True, group="training"
    )
    augment: str | None = option(
        None,
        "Augmentations that add training pairs, comma-separated (or all): "
        + "; ".join(f"{a.name} ({a.doc})" for a in AUGMENTATIONS.values())
        + ". Never in the held-out split.",
        run=True,
        group="training",
    )
    augment_rate: float = option(
        0.5,
        "Share of training pairs each augmentation rewrites (seeded by --seed).",
        run=True,
        group="training",
        low=0,
        high=1,
    )
    length_head: bool = option(
        False,
        "Train a second head beside the value head that absorbs response length (ODIN): the "
        "preference is fitted by their sum, the length head is pulled towards length and the "
        "value head away from it. Only the value head is saved.",
        run=True,
        group="training",
    )
    loss: str = option(
        "bt",
        "Pairwise loss of d = r_c - r_r - margin: "
        + "; ".join(f"{name} ({loss_formula(name)})" for name in LOSSES)
        + "; see rmtrain.modeling.losses.",
        choices=tuple(LOSSES),
        run=True,
        group="training",
        trainer=True,
    )
    center_rewards_coef: float = option(
        0.0,
        "Weight of the reward-centering term mean((r_c + r_r)^2); 0 turns it off.",
        run=True,
        group="training",
        trainer=True,
    )
    lm_loss_coef: float = option(
        0.0,
        "Weight of an auxiliary LM loss on the chosen responses (multi-task regulariser, Yang "
        "et al. 2024); 0 turns it off. The saved model stays sequence classification.",
        run=True,
        group="training",
        trainer=True,
    )
    margin_column: str = option(
        "margin", "Optional per-row margin column used when present.", run=True, group="data"
    )
    chat_template: str = option(
        "auto",
        "Text layout: 'auto' (chat template when the tokenizer has one) or 'plain'.",
        run=True,
        group="model",
    )
    reward_position: str = option(
        "end_of_turn",
        "Token the reward is read at: end_of_turn (the template's end-of-turn token, where a "
        "generation stops: OpenRLHF, TRL and stock forwards all read there) or template_end (the "
        "last token of the template's closing).",
        choices=REWARD_POSITIONS,
        run=True,
        group="model",
    )
    pad_token: str | None = option(
        None, "Pad token to use when the tokenizer has none.", group="model"
    )
    bf16: bool | None = option(
        None, "bf16 mixed precision (default: on for bf16-capable GPUs).", group="training"
    )
    fp16: bool = option(False, "fp16 mixed precision (GPUs without bf16).", group="training")
    gradient_checkpointing: bool | None = option(
        None,
        "Recompute activations in backward (default: on for models over 1B parameters).",
        group="training",
    )
    checkpoint_every: int = option(
        1,
        "With gradient checkpointing: recompute every N-th decoder layer only (1: all; 2: half, "
        "less recomputation for more memory).",
        group="training",
    )
    speed: str = option(
        "auto",
        "auto: rmtrain's speed-ups where they apply (each exact: same rewards and gradients to "
        "float rounding); off: the plain transformers path, to bisect a problem or compare.",
        group="speed",
    )
    lean_activations: bool = option(
        True,
        "Keep fewer activations for backward in Llama / Qwen-style RMSNorm, SiLU MLPs and the "
        "projections reading them: same gradients, less memory, a few elementwise ops redone "
        "in backward. Turn off to compare or to bisect.",
        group="speed",
    )
    cap_activations: bool = option(
        True,
        "With lean activations and no gradient checkpointing: when a batch would keep more "
        "activations than the gradients take, recompute the MLPs of its first layers in backward "
        "(two matrix products each), just enough that memory peaks with the gradients, as in "
        "any trainer, not with the activations. Batches within that size recompute nothing.",
        group="speed",
    )
    fuse_elementwise: bool = option(
        False,
        "With lean activations: compile their elementwise work (RMSNorm, SiLU gate, forward and "
        "backward) with torch.compile, once per process for any length. Off by default: no "
        "gain end to end on CPU. Without a C++ compiler it warns and runs eagerly.",
        group="speed",
    )
    retain_freed_memory: bool = option(
        True,
        "Training on CPU with glibc: keep the memory a step frees for the next step instead of "
        "handing it back to the kernel and faulting it in again; peak memory is unchanged. "
        "Skipped where MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES is set.",
        group="speed",
    )
    block_attention: str = option(
        "auto",
        "Packed rows' attention one pair (block) at a time instead of one masked call over the "
        "whole row: auto (on CPU; on GPUs the dense call runs), on, off; or flex: one "
        "FlexAttention call per layer that skips the tiles the mask blocks (training on CUDA "
        "only: FlexAttention has no backward on CPU).",
        group="speed",
    )
    attn_implementation: str = option(
        "sdpa",
        "Attention kernel: sdpa, eager, flash_attention_2 (padding_free / none packing only).",
        group="model",
    )
    lora_r: int = option(0, "LoRA rank (0: full fine-tuning).", run=True, group="model")
    lora_alpha: int = option(16, "LoRA alpha.", run=True, group="model")
    lora_dropout: float = option(0.0, "LoRA dropout.", run=True, group="model")
    lora_target: list[str] | None = option(
        None,
        "Modules that get adapters (default: all linear layers but the head).",
        nargs="+",
        run=True,
        group="model",
    )
    merge_lora: bool = option(False, "Save LoRA merged into an ordinary checkpoint.", group="model")
    load_in_4bit: bool = option(
        False, "QLoRA: load the base model in 4-bit (GPU + bitsandbytes).", group="model"
    )
    dtype: str = option(
        "auto",
        "Weights dtype: auto (fp32 on CPU, bf16 on capable GPUs), float32, ...",
        group="model",
    )
    trust_remote_code: bool = option(
        False, "Allow model code from the hub (off for safety).", group="model"
    )
    save_steps: int | None = option(
        None, "Save a resumable checkpoint every N steps.", group="training"
    )
    save_total_limit: int | None = option(
        2, "Keep only the newest K checkpoints.", group="training"
    )
    resume: str | None = option(
        None,
        "Continue from the latest checkpoint in --output (bare --resume) or from a given path.",
        nargs="?",
        const="latest",
        group="training",
    )
    max_bad_fraction: float = option(
        0.01, "Stop when more than this share of rows is bad.", group="data"
    )
    strict: bool = option(False, "Stop on any bad row.", group="data")
    overwrite: bool = option(False, "Replace an existing non-empty --output.", group="output")
    run_name: str | None = option(None, "Run name for MLflow / W&B.", group="tracking")
    register_model: str | None = option(
        None,
        "Register the logged model in the MLflow Model Registry under this name.",
        group="tracking",
    )
    model_alias: str | None = option(
        None,
        "With --register-model: point this alias (e.g. candidate) at the new version.",
        group="tracking",
    )

    def __post_init__(self) -> None:
        check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def run_keys() -> tuple[str, ...]:
        """Options whose change makes a checkpoint belong to a different run."""
        return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("run"))

    def datasets(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)


# How options are grouped in `--help`, in YAML files and in the saved `rmtrain_config.yaml`:
# read from each field's `group`, in field order.
GROUP_ORDER = ("model", "data", "training", "speed", "output", "tracking")
GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["group"] == g)
    for g in GROUP_ORDER
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file of options, grouped as in `--help` (model:, data:, training:, speed:,
    output:, tracking:) or flat; returns flat keys."""
    p = Path(path)
    if not p.is_file():
        raise RmtrainError(
            f"config file {p} does not exist; pass an existing YAML file to --config"
        )
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RmtrainError(f"config file {p} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise RmtrainError(f"config file {p} is not UTF-8 text; save it as UTF-8") from None
    if not isinstance(data, dict):
        raise RmtrainError(f"config file {p} must hold a mapping of option: value")
    return flatten_groups({str(k).replace("-", "_"): v for k, v in data.items()}, str(p))


def flatten_groups(data: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """`{group: {key: value}}` sections to flat keys (a flat key is taken as it is). `speed`
    is both a group and an option: a mapping is the group, a value the option."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            for inner, v in value.items():
                name = str(inner).replace("-", "_")
                if name not in GROUPS[key]:
                    home = next((g for g, names in GROUPS.items() if name in names), None)
                    hint = f"; it belongs under {home}:" if home else ""
                    raise RmtrainError(f"{where}: {key}.{name} is not a {key} option{hint}")
                flat[name] = v
        else:
            flat[key] = value
    return flat


def grouped(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat option values as the grouped mapping YAML files use."""
    return {g: {n: values[n] for n in names if n in values} for g, names in GROUPS.items()}


def build_config(overrides: dict[str, Any], cls: type = TrainConfig) -> Any:
    """Build a config from a mapping, rejecting unknown keys with the list of valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise RmtrainError(
            f"unknown config keys {unknown}; valid keys are: {', '.join(sorted(names))}"
        )
    values, problems = coerce_all(dict(overrides), cls)
    if problems:
        raise RmtrainError("bad config values: " + "; ".join(problems))
    try:
        built = cls(**values)
    except TypeError as exc:
        raise RmtrainError(f"bad config value: {exc}") from None
    problems = [] if cls is TrainConfig else value_problems(built)  # TrainConfig checks its own
    if problems:
        raise RmtrainError("; ".join(problems))
    return built


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig) -> Any:
    """YAML from --config (if any), then the flags given on the command line."""
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        values.update(load_yaml(config_path))
    values.update(given_options(args, cls))
    return build_config(values, cls)


def given_options(args: argparse.Namespace, cls: type = TrainConfig) -> dict[str, Any]:
    """The options of `cls` given as flags (the parser's own entries left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def save_config(cfg: Any, path: str | Path) -> None:
    """The resolved config as YAML, grouped (a TrainConfig) as `--config` reads it."""
    values = dataclasses.asdict(cfg)
    data = grouped(values) if isinstance(cfg, TrainConfig) else values
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
