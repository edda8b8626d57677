"""The end of a run: the model folder written (staged, then moved into place) and logged to
the trackers. The folder holds what a user publishes: weights, tokenizer, the replayable
config, metrics, the data and evaluation reports, and a card."""

from __future__ import annotations

import copy
import dataclasses
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from rmtrain.config import TrainConfig, save_config
from rmtrain.data.layout import default_prompt_floor, residue_token, uses_chat_template
from rmtrain.data.splits import parse_dataset_spec
from rmtrain.evaluation.model_card import render_model_card
from rmtrain.modeling.lora import merged
from rmtrain.modeling.rewards import detach_length_head
from rmtrain.outputs import REPORT_DIR
from rmtrain.tracking.runs import log_report_to_wandb
from rmtrain.training.atomic_save import STAGE_NAME, publish, staging_dir


def save_model_folder(
    trainer: Any, tokenizer: Any, cfg: TrainConfig, result: dict[str, Any], output: Path
) -> None:
    """The finished model as a standard folder, staged then published. All ranks take part
    (ZeRO-3 / FSDP gather the full weights); rank 0 writes the rest."""
    main = trainer.is_world_process_zero()
    stage = staging_dir(output) if main else output / STAGE_NAME
    trainer.accelerator.wait_for_everyone()
    model = trainer.model
    if cfg.lora_r and cfg.merge_lora:
        model = merged(model)
        trainer.model = model
    # reward_* for rmtrain, mean/std for OpenRLHF's --normalize_reward (same numbers)
    model.config.reward_mean = model.config.mean = result["metrics"]["reward_mean"]
    model.config.reward_std = model.config.std = result["metrics"]["reward_std"]
    model.config.rmtrain = {
        "max_length": cfg.max_length,
        "chat_template": cfg.chat_template,
        "prompt_floor": cfg.min_prompt_length or default_prompt_floor(cfg.max_length),
        "reward_position": cfg.reward_position,
        "base_model": cfg.model,
        **({"diverged": result["diverged"]} if "diverged" in result else {}),
    }
    chat = uses_chat_template(tokenizer, cfg.chat_template)
    adapter_only = bool(cfg.lora_r) and not cfg.merge_lora  # no stock head to steer
    pad = None if adapter_only else residue_token(tokenizer, chat, cfg.reward_position)
    if pad is not None:  # the stock head then reads the end-of-turn token (see layout)
        model.config.pad_token_id = pad
    detach_length_head(model)  # the saved folder is the stock class with its value head
    try:
        _write(trainer, tokenizer, cfg, result, stage, pad, adapter_only)
    except BaseException:
        if main:  # a full disk stays full with a half-written copy of the model on it
            shutil.rmtree(stage, ignore_errors=True)
        raise
    if main:
        publish(stage, output, cfg.to_dict())


def _write(
    trainer: Any,
    tokenizer: Any,
    cfg: TrainConfig,
    result: dict[str, Any],
    stage: Path,
    pad: int | None,
    adapter_only: bool,
) -> None:
    """Every file of the finished folder into `stage`."""
    trainer.save_model(str(stage))
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    if pad is not None:  # a copy: the run's own tokenizer keeps its pad token
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    tokenizer.save_pretrained(str(stage))
    save_config(replayable(cfg), stage / "rmtrain_config.yaml")
    (stage / "metrics.json").write_text(json.dumps(result, indent=2))
    card = render_model_card(cfg.to_dict(), result, REPORT_DIR, adapter=adapter_only)
    (stage / "README.md").write_text(card)


def replayable(cfg: TrainConfig) -> TrainConfig:
    """The config as saved beside the model: local paths made absolute (it replays from any
    folder), and never `overwrite` or `resume` (replaying it must not replace this model)."""

    def absolute(spec: str) -> str:
        path, weight = parse_dataset_spec(spec)
        if not Path(path).expanduser().exists():
            return spec  # a hub name or builtin
        full = str(Path(path).expanduser().resolve())
        return full if weight is None else f"{full}:{weight:g}"

    return dataclasses.replace(
        cfg,
        model=absolute(cfg.model),
        dataset=[absolute(d) for d in cfg.datasets()],
        overwrite=False,
        resume=None,
    )


def log_to_trackers(trackers: list[str], cfg: TrainConfig, output: Path) -> str | None:
    """The saved model, its report and files into the MLflow run (and the registry, and W&B's
    run); the reason and the command to retry when the tracking store fails."""
    if "wandb" in trackers:
        log_report_to_wandb(output / REPORT_DIR)
    if "mlflow" not in trackers:
        return None
    try:
        from rmtrain.tracking.models import log_run_outputs, register

        uri = log_run_outputs(output, REPORT_DIR)
        print(f"[rmtrain] logged the model to MLflow: {uri}")
        if cfg.register_model:
            version = register(uri, cfg.register_model, cfg.model_alias, output)
            print(f"[rmtrain] registered models:/{version}")
    except Exception as exc:  # noqa: BLE001 - the model is saved; only the tracking failed
        retry = ["rmtrain", "log-model", str(output)]
        if cfg.register_model:
            retry += ["--register-model", cfg.register_model]
        if cfg.model_alias:
            retry += ["--model-alias", cfg.model_alias]
        return (
            f"the model is saved in {output}, but logging it to MLflow failed "
            f"({type(exc).__name__}: {str(exc)[:160]}); to log it later: {shlex.join(retry)}"
        )
    return None
