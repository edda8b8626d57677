"""`rmtrain train`: the recipe, read top to bottom.

setup (output checked and locked, tokenizer, data read, sampled, split, tokenised once, cut and
counted, model, trackers) -> train (PairwiseRewardTrainer) -> evaluate (held-out split, length
numbers, collapse and divergence checks) -> publish (the model folder, staged and moved into
place; the trackers).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import ProgressCallback, set_seed

from rmtrain import speed
from rmtrain.batching.collate import make_eval_collator
from rmtrain.config import TrainConfig
from rmtrain.data.splits import parse_dataset_spec
from rmtrain.data.validation import check_bad_rows, write_data_report
from rmtrain.errors import Interrupted, RmtrainError
from rmtrain.evaluation.evaluate import write_report
from rmtrain.modeling.loading import lm_head_weight, load_reward_model, load_tokenizer
from rmtrain.modeling.lora import apply_lora, quantization_config
from rmtrain.modeling.rewards import attach_length_head, attention_cost_ratio
from rmtrain.outputs import REPORT_DIR, output_lock, write_failure
from rmtrain.tracking.runs import (
    MlflowMetrics,
    check_sqlite_store,
    finish_tracking,
    log_final,
    start_tracking,
    tracking_uri,
    trainer_report_to,
)
from rmtrain.training.atomic_save import (
    check_output_dir,
    claim_output,
    clear_previous_run,
    has_model,
    reports_dir,
)
from rmtrain.training.checkpoints import (
    check_resume_options,
    checkpoint_problem,
    collapsed,
    diverged,
    divergence_reason,
    latest_checkpoint,
    remove_unsealed,
)
from rmtrain.training.console import ConsoleProgress
from rmtrain.training.data_setup import NoUsablePairs, PreparedData, eval_sample, prepare_data
from rmtrain.training.publish import log_to_trackers, save_model_folder
from rmtrain.training.reporting import (
    evaluate_held_out,
    final_metrics,
    headline,
    print_counts,
    probe_held_out,
)
from rmtrain.training.resources import check_free_disk, is_main_process
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
    PairwiseRewardTrainer,
    SealCheckpoints,
    WholeSplitAtTheEnd,
    make_compute_metrics,
)


@dataclass
class Run:
    """What `setup` prepares for training."""

    cfg: TrainConfig
    output: Path
    main: bool  # rank 0: writes files and talks to the trackers
    resume: str | None
    tokenizer: Any
    data: PreparedData
    model: Any
    trackers: list[str]
    callbacks: list[Any] = field(default_factory=list)


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
    lock = output_lock(output) if main else contextlib.nullcontext()
    with lock:
        run = setup(cfg, output, main, callbacks or [], nested, mlflow_uri)
        return train_and_publish(run)


def setup(
    cfg: TrainConfig,
    output: Path,
    main: bool,
    callbacks: list[Any],
    nested: bool,
    mlflow_uri: str | None,
) -> Run:
    """Everything before the first step: the output claimed, data and model ready, trackers
    open. Fails early and in one line on what a user can fix."""
    if main and "mlflow" in cfg.report_to:  # before data and model: a bad store fails at once
        check_sqlite_store(mlflow_uri or tracking_uri())
    if main and not cfg.resume:
        clear_previous_run(output)
    resume = _resume_path(cfg, output)
    if main:
        remove_unsealed(output / CHECKPOINT_DIR, resume)
        claim_output(output, cfg.to_dict(), bool(resume), TrainConfig.run_keys())
    if cfg.block_attention == "flex" and not torch.cuda.is_available():
        raise RmtrainError(
            "--block-attention flex trains on a CUDA GPU only: FlexAttention has no backward on "
            "CPU. Use --block-attention auto (per block on CPU)"
        )
    tune_allocator(cfg)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.pad_token, cfg.trust_remote_code)
    report = (reports_dir(output) if main else output) / "data_report.json"
    try:
        data = prepare_data(cfg, tokenizer)
    except NoUsablePairs as exc:
        if main:  # the report says which rows are bad and why
            write_data_report(exc.counts, report)
        raise
    print_counts(data.counts, data.per_dataset)
    if main:
        write_data_report(data.counts, report, data.per_dataset)
    check_bad_rows(data.counts, cfg.max_bad_fraction, cfg.strict, str(report))
    model = build_model(cfg, tokenizer.pad_token_id)
    check_free_disk(output, model, bool(cfg.save_steps), _tokenizer_bytes(tokenizer))
    run_name = cfg.run_name or _run_name(cfg, output)
    trackers = (
        start_tracking(cfg.report_to, output, run_name, cfg.to_dict(), nested, mlflow_uri)
        if main
        else [r for r in cfg.report_to if r != "none"] or ["none"]
    )
    if main and "mlflow" in trackers:
        callbacks = [*callbacks, MlflowMetrics()]
    return Run(cfg, output, main, resume, tokenizer, data, model, trackers, callbacks)


def train_and_publish(run: Run) -> dict[str, Any]:
    """Train, evaluate on the held-out split, save the folder, log it; a run that collapsed or
    diverged is never reported as a model."""
    cfg, output, data = run.cfg, run.output, run.data
    failed, step, problem = True, 0, None
    sink: dict[str, Any] = {}
    result: dict[str, Any] = {"metrics": {}, "data": data.counts.to_dict()}
    try:
        trainer = _make_trainer(run, sink)
        train_out = trainer.train(resume_from_checkpoint=run.resume)
        step = train_out.global_step
        metrics, per_dataset, sections = evaluate_held_out(trainer, data, sink)
        if not metrics.get("reward_std", 1.0) > 1e-6 * max(1.0, abs(metrics["reward_mean"])):
            what = f"every held-out reward is {metrics['reward_mean']:.6g} (std 0)"
            raise collapsed(what, trainer.args)
        why = divergence_reason(
            trainer.loss_trace.ends(), metrics.get("loss", 0.0), metrics.get("win_rate", 1.0)
        )
        result["metrics"] = final_metrics(trainer, train_out, metrics)
        if why:  # kept for inspection, marked: metrics.json, config.json, the card
            result["diverged"] = why
        if per_dataset:
            result["per_dataset"] = per_dataset
            result["data_per_dataset"] = {k: c.to_dict() for k, c in data.per_dataset.items()}
        logs = trainer.state.log_history  # training losses and the evaluations during training
        result["log_history"] = [h for h in logs if "loss" in h or "eval_win_rate" in h]
        if trainer.is_world_process_zero():
            write_report(sections, reports_dir(output) / REPORT_DIR, cfg.model)
        save_model_folder(trainer, run.tokenizer, cfg, result, output)
        if why:
            raise diverged(why, cfg.lr, output)
        if cfg.robustness and trainer.is_world_process_zero():
            probe_held_out(output, data)
        failed = False
    except (KeyboardInterrupt, Exception) as exc:
        stop = _stopped(exc, run)
        if stop is None:
            raise
        raise stop from None
    finally:
        log_final(run.trackers, result["metrics"], result["data"], step)
        problem = None if failed or not run.main else log_to_trackers(run.trackers, cfg, output)
        finish_tracking(run.trackers, failed)
    if run.main:
        print(f"[rmtrain] held-out metrics: {json.dumps(headline(result['metrics']))}")
        print(f"[rmtrain] saved model, tokenizer, rmtrain_config.yaml, metrics.json to {output}")
    if problem:
        raise RmtrainError(problem)
    return result


def _stopped(exc: BaseException, run: Run) -> RmtrainError | None:
    """A run stopped from outside, as one line: Ctrl-C, or a disk, quota or file-size limit
    that ran out while writing; None for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(f"interrupted; {run.output} holds no new model: {_go_on(run.output)}")
    room = write_failure(exc)
    if room is None:
        return None
    if run.main:  # a checkpoint cut off by the failure would only take more room
        remove_unsealed(run.output / CHECKPOINT_DIR, None)
    return RmtrainError(
        f"writing to {run.output} failed: {room}. Free disk space or raise the file-size limit "
        f"(ulimit -f); {_go_on(run.output)}"
    )


def _go_on(output: Path) -> str:
    """How a stopped run goes on: from its newest sealed checkpoint, or from the start."""
    last = latest_checkpoint(output / CHECKPOINT_DIR)
    if last is None:
        return "no checkpoint was saved, run it again"
    return f"the same command with --resume continues from {last.name}"


def _make_trainer(run: Run, sink: dict[str, Any]) -> PairwiseRewardTrainer:
    cfg, model, data = run.cfg, run.model, run.data
    pad = run.tokenizer.pad_token_id
    varlen = cfg.attn_implementation == "flash_attention_2"
    cost = attention_cost_ratio(model.config)
    args = training_arguments(
        cfg, run.output, trainer_report_to(run.trackers), model.num_parameters()
    )
    run_options = {k: cfg.to_dict()[k] for k in TrainConfig.run_keys()}
    trainer = PairwiseRewardTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=eval_sample(data.test, cfg.eval_sample, cfg.seed),
        data_collator=train_collator(cfg, pad, cost),
        eval_collator=make_eval_collator(cfg.packing, pad, cfg.max_length, varlen, cost),
        compute_metrics=make_compute_metrics(
            [p.group for p in data.test_pairs],
            sink,
            [p.margin for p in data.test_pairs],
            args.center_rewards_coef,
            args.loss,
        ),
        callbacks=[
            # --keep-best: the last step's weights are a candidate, evaluated like the others
            KeepBest(run.resume) if cfg.keep_best else WholeSplitAtTheEnd(),
            *run.callbacks,
            SealCheckpoints(run_options, cfg.save_total_limit),  # after all that write there
        ],
        lm_head_weight=lm_head_weight(model, cfg.model) if cfg.lm_loss_coef > 0 else None,
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


def _tokenizer_bytes(tokenizer: Any) -> int:
    """About what `save_pretrained` writes for the tokenizer (its vocabulary as JSON)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return len(backend.to_str(pretty=True).encode()) if backend is not None else 0


def _run_name(cfg: TrainConfig, output: Path) -> str:
    """What tells runs apart in a run list: the output folder, the data, the time."""
    data = "+".join(Path(parse_dataset_spec(d)[0]).name for d in cfg.datasets())
    return f"{output.name} | {data[:60]} | {time.strftime('%m-%d %H:%M')}"


def _inputs(cfg: TrainConfig) -> list[str]:
    """The local paths a run reads: the output may be none of them, nor hold or sit in one."""
    paths = [cfg.model, *(parse_dataset_spec(s)[0] for s in cfg.datasets())]
    return [p for p in paths if Path(p).expanduser().exists()]


def _resume_path(cfg: TrainConfig, output: Path) -> str | None:
    """The checkpoint to resume from: named, or the newest one that reads back; written by a
    run with the same options."""
    if not cfg.resume:
        return None
    if cfg.resume != "latest":
        path = Path(cfg.resume)
        if not (path / "trainer_state.json").is_file():
            raise RmtrainError(f"--resume {cfg.resume} is not a checkpoint folder")
        problem = checkpoint_problem(path)
        if problem:
            raise RmtrainError(f"--resume {cfg.resume}: {problem}; resume from another one")
    else:
        path = latest_checkpoint(output / CHECKPOINT_DIR)
        if path is None:
            raise RmtrainError(
                f"--resume: no complete checkpoint in {output / CHECKPOINT_DIR}; start without "
                "--resume (and with --save-steps N to write checkpoints)"
            )
    check_resume_options(path, cfg.to_dict(), TrainConfig.run_keys())
    state = json.loads((path / "trainer_state.json").read_text())
    if has_model(output) and state.get("global_step", 0) >= state.get("max_steps", 0) > 0:
        raise RmtrainError(
            f"--resume: {path} is the last step of the finished model in {output}, nothing to "
            "resume; train into another --output, or replace it with --overwrite"
        )
    return str(path)
