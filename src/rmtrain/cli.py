"""`rmtrain` command line: parse, build the typed config, hand over to orchestration.

User-fixable problems (`RmtrainError`) print one line naming the fix and exit 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmtrain.config import TrainConfig, build_config, config_from_args, given_options
from rmtrain.errors import Interrupted, RmtrainError
from rmtrain.flags import add_config_arguments
from rmtrain.options import (
    AverageConfig,
    EvalConfig,
    HpoConfig,
    LogModelConfig,
    PrepareStackExchangeConfig,
    ScoreConfig,
    ServeConfig,
    ValidateConfig,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmtrain", description="Train, evaluate and serve pairwise reward models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = _subcommand(
        sub, "train", "train a reward model on preference pairs", TrainConfig, _cmd_train
    )
    train.description = "Train a pairwise (Bradley-Terry) reward model. Flags override --config."
    train.add_argument("--config", help="YAML file of options (grouped as below, or flat)")
    prepare = sub.add_parser("prepare", help="build preference data sets from raw sources")
    kinds = prepare.add_subparsers(dest="source", required=True)
    _subcommand(
        kinds,
        "stackexchange",
        "Stack Exchange dump (Posts.xml or site .7z) -> stack-exchange-paired pairs",
        PrepareStackExchangeConfig,
        _cmd_prepare_se,
    )
    _subcommand(sub, "eval", "evaluate a reward model (report + plots)", EvalConfig, _cmd_eval)
    _subcommand(sub, "score", "score the rows of a JSONL file (streamed)", ScoreConfig, _cmd_score)
    serve = _subcommand(
        sub,
        "serve",
        "HTTP reward server (POST /score, POST /get_reward, GET /health, GET /info)",
        ServeConfig,
        _cmd_serve,
    )
    serve.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_false",
        default=argparse.SUPPRESS,
        help="Score each request alone (= --dynamic-batching false).",
    )
    _subcommand(sub, "validate", "check every row of a data set", ValidateConfig, _cmd_validate)
    log_model = _subcommand(
        sub, "log-model", "log a saved model folder to MLflow", LogModelConfig, _cmd_log_model
    )
    log_model.add_argument("output", help="output folder of rmtrain train")
    average = _subcommand(
        sub, "average", "average the weights of reward models (WARM)", AverageConfig, _cmd_average
    )
    average.add_argument("out", help="output folder of the averaged model")
    average.add_argument("models", nargs="+", help="model folders fine-tuned from one base")
    hpo = _subcommand(sub, "hpo", "hyperparameter search with Optuna", HpoConfig, _cmd_hpo)
    hpo.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    hpo.add_argument(
        "train_flags",
        nargs=argparse.REMAINDER,
        help="after --: training options over --config for every trial "
        "(rmtrain hpo ... -- --dataset d.jsonl --max-steps 200)",
    )
    return parser


def _subcommand(sub: Any, name: str, help_text: str, cls: type, func: Any) -> Any:
    parser = sub.add_parser(name, help=help_text, description=cls.__doc__)
    add_config_arguments(parser, cls)
    parser.set_defaults(func=func, options=cls)
    return parser


def options_from_args(args: argparse.Namespace) -> Any:
    """The subcommand's typed options from the flags given (defaults for the rest)."""
    return build_config(given_options(args, args.options), args.options)


def _cmd_train(args: argparse.Namespace) -> int:
    from rmtrain.training.recipe import run_train

    run_train(config_from_args(args, TrainConfig))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from rmtrain.data.layout import uses_chat_template
    from rmtrain.data.validation import check_bad_rows, data_report, validate_dataset
    from rmtrain.modeling.loading import load_tokenizer
    from rmtrain.outputs import atomic_writer, check_output_file

    cfg: ValidateConfig = options_from_args(args)
    out = None
    if cfg.output is not None:  # before anything is read
        out = check_output_file(
            cfg.output, [cfg.dataset, cfg.model or ""], "--output", cfg.overwrite
        )
    tok = load_tokenizer(cfg.model) if cfg.model else None
    chat = uses_chat_template(tok) if tok is not None else True
    counts = validate_dataset(cfg.dataset, tok, cfg.max_length, chat)
    report = data_report(counts)
    if out is not None:
        with atomic_writer(out) as fh:
            fh.write(json.dumps(report, indent=2))
    note = "" if tok is not None else " (length check skipped: pass --model)"
    where = f" -> {cfg.output}" if out is not None else " (--output FILE lists every bad row)"
    print(
        f"[rmtrain] {report['rows_read']} rows, {report['bad_rows']} bad "
        f"{report['bad_by_reason']}, {report['truncated']} would be truncated, dropped "
        f"{report['dropped']}{note}{where}"
    )
    check_bad_rows(counts, cfg.max_bad_fraction, cfg.strict, cfg.output or "--output FILE")
    return 0


def _cmd_hpo(args: argparse.Namespace) -> int:
    from rmtrain.hpo import run_hpo

    flags = args.train_flags
    flags = flags[1:] if flags[:1] == ["--"] else flags
    given = build_parser().parse_args(["train", *flags])
    if given.config:
        raise RmtrainError("the base training config is hpo's own --config, before the --")
    run_hpo(options_from_args(args), worker=args.worker, overrides=given_options(given))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from rmtrain.outputs import check_output_file
    from rmtrain.serving.score_file import score_file
    from rmtrain.serving.scorer import load_scorer

    cfg: ScoreConfig = options_from_args(args)
    if not Path(cfg.input).expanduser().is_file():
        raise RmtrainError(f"--input {cfg.input} does not exist; pass a .jsonl file")
    # before the model is loaded: never the input, nor a file inside the model folder
    check_output_file(cfg.output, [cfg.input, cfg.model], "--output", cfg.overwrite)
    scorer = load_scorer(
        _local_model(cfg.model)[0], max_length=cfg.max_length, speed_mode=cfg.speed
    )
    with tqdm(desc="scoring rows", unit="row") as bar:
        counts = score_file(
            scorer, cfg.input, cfg.output, cfg.batch, cfg.normalize, progress=bar.update
        )
    print(
        f"[rmtrain] {counts.rows} rows: {counts.scored} scored ({counts.truncated} truncated), "
        f"{counts.errors} with errors -> {cfg.output}"
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from rmtrain.serving.server import ServeLimits, serve

    cfg: ServeConfig = options_from_args(args)
    limits = ServeLimits(
        max_body_bytes=cfg.max_body_bytes,
        max_items=cfg.max_items,
        max_pending_items=max(4096, 2 * cfg.max_items),  # a whole batched request can wait
        request_timeout_s=cfg.timeout,
        body_timeout_s=cfg.body_timeout,
        max_per_client=cfg.max_per_client,
        batch_wait_ms=cfg.batch_wait_ms,
        header_timeout_s=cfg.header_timeout,
        max_waiting=cfg.max_waiting_connections,
    )
    api_key = _api_key(cfg.api_key)
    folder, registered = _local_model(cfg.model)
    serve(
        model_dir=folder,
        model_name=registered or Path(cfg.model).name,
        host=cfg.host,
        port=cfg.port,
        api_key=api_key,
        normalize=cfg.normalize,
        limits=limits,
        max_length=cfg.max_length,
        dynamic_batching=cfg.dynamic_batching,
        trust_remote_code=cfg.trust_remote_code,
        speed_mode=cfg.speed,
    )
    return 0


def _api_key(flag: str | None) -> str | None:
    """--api-key, else $RMTRAIN_API_KEY; an empty one (an unset shell variable) or one a client
    cannot send (HTTP headers are ASCII) is an error, never a server without auth."""
    key, source = (flag, "--api-key") if flag is not None else (None, "")
    if key is None and "RMTRAIN_API_KEY" in os.environ:
        key, source = os.environ["RMTRAIN_API_KEY"], "RMTRAIN_API_KEY"
    if key is None:
        return None
    if not key.strip():
        raise RmtrainError(
            f"{source} is empty (an unset shell variable?); set a key, or leave it out to serve "
            "without auth on loopback"
        )
    if not key.isascii() or not key.isprintable() or " " in key:
        raise RmtrainError(f"{source} must be printable ASCII without spaces (HTTP headers are)")
    return key


def _local_model(model: str) -> tuple[str, str | None]:
    """A local folder for --model, downloading an MLflow model URI; and the name a registered
    model is served under."""
    if not model.startswith(("models:/", "runs:/")):
        return model, None
    from rmtrain.tracking.models import download_model
    from rmtrain.tracking.runs import tracking_uri

    folder, name = download_model(model, tracking_uri())
    return str(folder), name


def _cmd_log_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rmtrain.tracking.models import log_output_folder

    cfg: LogModelConfig = options_from_args(args)
    log_output_folder(Path(args.output), cfg.register_model, cfg.model_alias, cfg.run_name)
    return 0


def _cmd_average(args: argparse.Namespace) -> int:
    from rmtrain.training.average import run_average

    cfg: AverageConfig = options_from_args(args)
    run_average(args.out, args.models, cfg.overwrite)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from rmtrain.evaluation.evaluate import run_eval
    from rmtrain.evaluation.probes import probe_names

    cfg: EvalConfig = options_from_args(args)
    if bool(cfg.benchmark) == bool(cfg.dataset):
        raise RmtrainError("eval takes --dataset (one or more) or --benchmark NAME: pass one")
    if cfg.benchmark_data and not cfg.benchmark:
        raise RmtrainError("--benchmark-data is a local copy for --benchmark NAME: pass both")
    if cfg.benchmark:
        return _eval_benchmark(cfg)
    run_eval(
        model_dir=_local_model(cfg.model)[0],
        datasets=cfg.dataset,
        output=cfg.output,
        max_length=cfg.max_length,
        batch=cfg.batch,
        split=cfg.split,
        speed_mode=cfg.speed,
        probes=probe_names(cfg.probes) if cfg.robustness else None,
        probe_seed=cfg.probe_seed,
        overwrite=cfg.overwrite,
        model_name=cfg.model,
    )
    return 0


def _eval_benchmark(cfg: EvalConfig) -> int:
    from rmtrain.evaluation.benchmarks import add_to_card, check_card, run_benchmark

    if cfg.card:  # before any download or scoring
        check_card(Path(cfg.model))
    folder, version = _local_model(cfg.model)
    result = run_benchmark(
        folder,
        cfg.benchmark,
        cfg.benchmark_data,
        cfg.output,
        cfg.max_length,
        cfg.speed,
        cfg.overwrite,
        cfg.model,
    )
    if cfg.card:
        add_to_card(result, Path(folder))
    if cfg.report_to == "mlflow":
        from rmtrain.tracking.models import log_benchmark

        log_benchmark(result, Path(cfg.output), cfg.model, version)
    return 0


def _cmd_prepare_se(args: argparse.Namespace) -> int:
    from rmtrain.data.stackexchange import prepare_stackexchange
    from rmtrain.outputs import check_output_file

    cfg: PrepareStackExchangeConfig = options_from_args(args)
    check_output_file(cfg.output, [cfg.input], "--output", cfg.overwrite)
    counts = prepare_stackexchange(cfg.input, cfg.output, cfg.max_pairs_per_question, cfg.seed)
    print(
        f"[rmtrain] {counts.questions} questions, {counts.answers} answers read; "
        f"{counts.pairs} pairs from {counts.questions_with_pairs} questions -> {cfg.output}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RmtrainError as exc:
        print(f"rmtrain: error: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, Interrupted) else 2
    except KeyboardInterrupt:
        print("rmtrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
