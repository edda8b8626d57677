"""`rmtrain train`: the recipe, read top to bottom.

config -> tokenizer -> data (read, sample, split, tokenise once, cut, count) -> model ->
PairwiseRewardTrainer -> final evaluation -> atomic save of model, tokenizer, config, metrics.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import ProgressCallback, set_seed

from rmtrain import speed
from rmtrain.batching.collate import make_eval_collator
from rmtrain.config import TrainConfig, save_config
from rmtrain.data.layout import default_prompt_floor, residue_token, uses_chat_template
from rmtrain.data.pairs import DataCounts
from rmtrain.data.splits import parse_dataset_spec
from rmtrain.data.validation import check_bad_rows, write_data_report
from rmtrain.errors import RmtrainError
from rmtrain.evaluation.evaluate import summarise, write_report
from rmtrain.evaluation.model_card import render_model_card
from rmtrain.modeling.loading import (
    lm_head_weight,
    load_reward_model,
    load_tokenizer,
)
from rmtrain.modeling.lora import apply_lora, merged, quantization_config
from rmtrain.modeling.rewards import (
    attach_length_head,
    attention_cost_ratio,
    detach_length_head,
)
from rmtrain.tracking.runs import (
    MlflowMetrics,
    finish_tracking,
    log_final,
    log_report_to_wandb,
    start_tracking,
    trainer_report_to,
)
from rmtrain.training.atomic_save import (
    STAGE_NAME,
    check_output_dir,
    claim_output,
    publish,
    staging_dir,
)
from rmtrain.training.checkpoints import (
    collapsed,
    diverged,
    divergence_reason,
    latest_checkpoint,
)
from rmtrain.training.console import ConsoleProgress
from rmtrain.training.data_setup import (
    NoUsablePairs,
    PreparedData,
    eval_sample,
    prepare_data,
)
from rmtrain.training.resources import check_free_disk, is_main_process, peak_memory_gib
from rmtrain.training.selection import KeepBest
from rmtrain.training.settings import (
    CHECKPOINT_DIR,
    checkpointing,
    resolve_dtype_for_weights,
    speed_options,
    train_collator,
    training_arguments,
    tune_allocator,
)
from rmtrain.training.trainer import (
    CHECKS_GRAD_NORM,
    NonFiniteGuard,
    PairwiseRewardTrainer,
    WholeSplitAtTheEnd,
    make_compute_metrics,
)

REPORT_DIR = "eval_report"


def _print_counts(counts: DataCounts, per_dataset: dict[str, DataCounts]) -> None:
    """Every row on the console: sampled, then malformed, dropped, train, test or left out."""
    for source, c in per_dataset.items():
        name = f"{source}: " if len(per_dataset) > 1 else ""
        print(
            f"[rmtrain] data: {name}using {c.rows_read} of {c.rows_in_source} rows "
            f"(--frac {c.frac:g})",
            flush=True,
        )
    c = counts.to_dict()
    left = f", {c['not_mixed']} left out by the mixing weights" if c["not_mixed"] else ""
    print(
        f"[rmtrain] data: {c['rows_read']} rows read, {c['malformed_total']} malformed "
        f"{c['malformed']}, {c['truncated']} truncated, {c['dropped_total']} dropped "
        f"{c['dropped']}, {c['train_pairs']} train / {c['test_pairs']} test pairs{left}",
        flush=True,
    )
    if c["augmented_total"] or c["augmented_dropped"]:
        print(
            f"[rmtrain] data: +{c['augmented_total']} augmented training pairs "
            f"{c['augmented']} ({c['augmented_dropped']} did not fit --max-length)",
            flush=True,
        )


def _save(trainer: Any, tokenizer: Any, cfg: TrainConfig, result: dict[str, Any], output: Path):
    """All ranks take part (ZeRO-3 / FSDP gather the full weights); rank 0 writes the rest."""
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
    trainer.save_model(str(stage))
    trainer.accelerator.wait_for_everyone()
    if not main:
        return
    saved_pad = tokenizer.pad_token
    if pad is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    tokenizer.save_pretrained(str(stage))
    tokenizer.pad_token = saved_pad
    save_config(replayable(cfg), stage / "rmtrain_config.yaml")
    (stage / "metrics.json").write_text(json.dumps(result, indent=2))
    (stage / "README.md").write_text(render_model_card(cfg.to_dict(), result, REPORT_DIR))
    publish(stage, output)


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


def _held_out(sink: dict[str, Any], data: PreparedData, eval_out: dict, n_rows: int) -> Any:
    """One report section from an evaluation's rewards (gathered over all ranks, so it works
    under DDP, ZeRO-3 and FSDP alike)."""
    kept = [data.test_pairs[i] for i in sink["index"]]
    counts = {
        "rows_read": n_rows,
        "malformed": {},
        "malformed_total": 0,
        "truncated": data.test_truncated,
        "dropped_total": n_rows - len(kept),
        "scored_pairs": len(kept),
    }
    seconds = float(next((v for k, v in eval_out.items() if k.endswith("_runtime")), 0.0))
    return summarise(kept, sink["chosen"], sink["rejected"], counts, seconds)


def _evaluate(trainer: Any, data: PreparedData, sink: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Final evaluation: each data set's held-out split apart (when several), then all together.
    Returns (overall metrics, per-data-set metrics, report sections)."""
    per, sections = {}, {}
    if len(data.test_sets) > 1:
        for i, (source, feats) in enumerate(data.test_sets.items()):
            raw = trainer.evaluate(eval_dataset=feats, metric_key_prefix=f"eval_set{i}")
            per[source] = {k.removeprefix(f"eval_set{i}_"): v for k, v in raw.items()}
            sections[source] = _held_out(sink, data, raw, len(feats))
    raw = trainer.evaluate(eval_dataset=data.test)  # the whole split, logged at the last step
    overall = _held_out(sink, data, raw, len(data.test_pairs))
    if not sections:
        sections["held-out split"] = overall
    metrics = {k.removeprefix("eval_"): v for k, v in raw.items()}
    return {**metrics, **overall.report["length"]}, per, sections


def _probe_held_out(output: Path, data: PreparedData) -> None:
    """`--robustness`: the probes on each held-out set with the saved model, into the report."""
    from rmtrain.evaluation.evaluate import add_robustness_to_report
    from rmtrain.evaluation.probes import PROBES
    from rmtrain.serving.scorer import load_scorer

    by_set = {
        name: [data.test_pairs[f["pair_index"]] for f in feats]
        for name, feats in data.test_sets.items()
    }
    if len(by_set) <= 1:
        by_set = {"held-out split": data.test_pairs}
    add_robustness_to_report(output / REPORT_DIR, load_scorer(str(output)), by_set, list(PROBES))


def _inputs(cfg: TrainConfig) -> list[str]:
    """The local paths a run reads: the output may be none of them, nor hold or sit in one."""
    paths = [cfg.model, *(parse_dataset_spec(s)[0] for s in cfg.datasets())]
    return [p for p in paths if Path(p).expanduser().exists()]


def _resume_path(cfg: TrainConfig, output: Path) -> str | None:
    if not cfg.resume:
        return None
    if cfg.resume != "latest":
        if not (Path(cfg.resume) / "trainer_state.json").is_file():
            raise RmtrainError(f"--resume {cfg.resume} is not a checkpoint folder")
        return cfg.resume
    last = latest_checkpoint(output / CHECKPOINT_DIR)
    if last is None:
        raise RmtrainError(
            f"--resume: no complete checkpoint in {output / CHECKPOINT_DIR}; start without "
            "--resume (and with --save-steps N to write checkpoints)"
        )
    return str(last)


def run_train(
    cfg: TrainConfig,
    callbacks: list[Any] | None = None,
    nested: bool = False,
    mlflow_uri: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save; returns {'metrics': ..., 'data': ...} as in metrics.json."""
    output = Path(cfg.output).expanduser()
    main = is_main_process()
    if main:  # other ranks would see rank 0's first files and refuse the folder
        check_output_dir(output, cfg.overwrite, bool(cfg.resume), _inputs(cfg))
    resume = _resume_path(cfg, output)
    if main:
        claim_output(output, cfg.to_dict(), bool(resume), TrainConfig.run_keys())
    if cfg.block_attention == "flex" and not torch.cuda.is_available():
        raise RmtrainError(
            "--block-attention flex trains on a CUDA GPU only: FlexAttention has no backward on "
            "CPU. Use --block-attention auto (per block on CPU)"
        )
    tune_allocator(cfg)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.pad_token, cfg.trust_remote_code)
    try:
        data = prepare_data(cfg, tokenizer)
    except NoUsablePairs as exc:
        if main:  # the report says which rows are bad and why
            write_data_report(exc.counts, output / "data_report.json")
        raise
    _print_counts(data.counts, data.per_dataset)
    if main:
        write_data_report(data.counts, output / "data_report.json", data.per_dataset)
    check_bad_rows(data.counts, cfg.max_bad_fraction, cfg.strict, str(output / "data_report.json"))
    model = build_model(cfg, tokenizer.pad_token_id)
    check_free_disk(output, model, with_optimizer=bool(cfg.save_steps))
    run_name = cfg.run_name or f"rmtrain-{time.strftime('%Y%m%d-%H%M%S')}"
    trackers = (
        start_tracking(cfg.report_to, output, run_name, cfg.to_dict(), nested, mlflow_uri)
        if main
        else [r for r in cfg.report_to if r != "none"] or ["none"]
    )
    if main and "mlflow" in trackers:
        callbacks = [*(callbacks or []), MlflowMetrics()]
    failed, step = True, 0
    sink: dict[str, Any] = {}
    result: dict[str, Any] = {"metrics": {}, "data": data.counts.to_dict()}
    try:
        trainer = _make_trainer(cfg, model, tokenizer, data, output, trackers, sink, callbacks)
        train_out = trainer.train(resume_from_checkpoint=resume)
        step = train_out.global_step
        metrics, per_dataset, sections = _evaluate(trainer, data, sink)
        if not metrics.get("reward_std", 1.0) > 1e-6 * max(1.0, abs(metrics["reward_mean"])):
            what = f"every held-out reward is {metrics['reward_mean']:.6g} (std 0)"
            raise collapsed(what, trainer.args)
        diverged_why = divergence_reason(
            trainer.loss_trace.ends(), metrics.get("loss", 0.0), metrics.get("win_rate", 1.0)
        )
        keeper = next(
            (c for c in trainer.callback_handler.callbacks if isinstance(c, KeepBest)), None
        )
        if keeper and keeper.best_step is not None:
            metrics["kept_step"] = keeper.best_step
        metrics.update(
            train_loss=train_out.training_loss,
            train_steps=train_out.global_step,
            train_runtime=train_out.metrics.get("train_runtime"),
            train_tokens=trainer.tokens_seen * trainer.args.world_size,
            train_peak_memory_gib=peak_memory_gib(),
        )
        result["metrics"] = metrics
        if diverged_why:  # kept for inspection, marked: metrics.json, config.json, the card
            result["diverged"] = diverged_why
        if per_dataset:
            result["per_dataset"] = per_dataset
            result["data_per_dataset"] = {k: c.to_dict() for k, c in data.per_dataset.items()}
        logs = trainer.state.log_history  # training losses and the evaluations during training
        result["log_history"] = [h for h in logs if "loss" in h or "eval_win_rate" in h]
        if trainer.is_world_process_zero():
            write_report(sections, output / REPORT_DIR, cfg.model)
        _save(trainer, tokenizer, cfg, result, output)
        if diverged_why:
            raise diverged(diverged_why, cfg.lr, output)
        if cfg.robustness and trainer.is_world_process_zero():
            _probe_held_out(output, data)
        failed = False
    finally:
        log_final(trackers, result["metrics"], result["data"], step)
        problem = None if failed or not main else _publish(trackers, cfg, output)
        finish_tracking(trackers, failed)
    if main:
        print(f"[rmtrain] held-out metrics: {json.dumps(_headline(result['metrics']))}")
        print(f"[rmtrain] saved model, tokenizer, rmtrain_config.yaml, metrics.json to {output}")
    if problem:
        raise RmtrainError(problem)
    return result


def _publish(trackers: list[str], cfg: TrainConfig, output: Path) -> str | None:
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
        retry = f"rmtrain log-model {output}"
        if cfg.register_model:
            retry += f" --register-model {cfg.register_model}"
        if cfg.model_alias:
            retry += f" --model-alias {cfg.model_alias}"
        return (
            f"the model is saved in {output}, but logging it to MLflow failed "
            f"({type(exc).__name__}: {str(exc)[:160]}); to log it later: {retry}"
        )
    return None


def _make_trainer(
    cfg: TrainConfig,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    output: Path,
    trackers: list[str],
    sink: dict[str, Any],
    callbacks: list[Any] | None,
) -> PairwiseRewardTrainer:
    pad = tokenizer.pad_token_id
    varlen = cfg.attn_implementation == "flash_attention_2"
    cost = attention_cost_ratio(model.config)
    trainer = PairwiseRewardTrainer(
        model=model,
        args=training_arguments(cfg, output, trainer_report_to(trackers), model.num_parameters()),
        train_dataset=data.train,
        eval_dataset=eval_sample(data.test, cfg.eval_sample, cfg.seed),
        data_collator=train_collator(cfg, pad, cost),
        eval_collator=make_eval_collator(cfg.packing, pad, cfg.max_length, varlen, cost),
        compute_metrics=make_compute_metrics(
            [p.group for p in data.test_pairs],
            sink,
            [p.margin for p in data.test_pairs],
            cfg.center_rewards_coef,
        ),
        callbacks=[
            *([] if CHECKS_GRAD_NORM else [NonFiniteGuard()]),
            # --keep-best: the last step's weights are a candidate, evaluated like the others
            KeepBest() if cfg.keep_best else WholeSplitAtTheEnd(),
            *(callbacks or []),
        ],
        center_rewards_coef=cfg.center_rewards_coef,
        loss_kind=cfg.loss,
        lm_loss_coef=cfg.lm_loss_coef,
        lm_head_weight=lm_head_weight(model, cfg.model) if cfg.lm_loss_coef > 0 else None,
        # augmented pairs train beside their source pair: its prompt is computed once
        group_by_prompt=cfg.group_by_prompt or bool(cfg.augment),
        fold_clipping=cfg.speed == "auto",
        head_lr_multiplier=cfg.head_lr_multiplier,
        warmup_ratio=cfg.warmup_ratio,
    )
    if trainer.pop_callback(ProgressCallback) is not None:  # the console's own lines
        trainer.add_callback(ConsoleProgress)
    return trainer


def build_model(cfg: TrainConfig, pad_token_id: int) -> Any:
    """The reward model as configured: dtype, attention kernel, optional (Q)LoRA."""
    model = load_reward_model(
        cfg.model,
        pad_token_id,
        resolve_dtype_for_weights(cfg.dtype),
        cfg.trust_remote_code,
        cfg.seed,
        cfg.attn_implementation,
        quantization_config(cfg.load_in_4bit),
    )
    if cfg.length_head:  # trained beside the value head, dropped before the final save
        attach_length_head(model, cfg.seed)
    speed.install(model, speed_options(cfg), checkpointing(cfg, model.num_parameters()))
    if cfg.lora_r > 0:
        if cfg.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target)
    return model


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "win_rate",
        "kendall_tau",
        "loss",
        "margin_mean",
        "reward_mean",
        "reward_std",
        "num_pairs",
    )
    return {
        k: round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k]
        for k in keys
        if k in metrics
    }
