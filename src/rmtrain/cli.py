"""`rmtrain` command line: parse, build the typed config, hand over to orchestration.

User-fixable problems (`RmtrainError`) print one line naming the fix and exit 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rmtrain.config import TrainConfig, add_config_arguments, config_from_args
from rmtrain.errors import RmtrainError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmtrain", description="Train, evaluate and serve pairwise reward models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a reward model on preference pairs",
        description="Train a pairwise (Bradley-Terry) reward model. Flags override --config.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--config", help="YAML file of options (keys as below, unknown = error)")
    add_config_arguments(train, TrainConfig)
    train.set_defaults(func=_cmd_train)
    _add_prepare(sub)
    _add_eval(sub)
    _add_score(sub)
    _add_serve(sub)
    _add_validate(sub)
    _add_hpo(sub)
    return parser


def _add_validate(sub: argparse._SubParsersAction) -> None:
    va = sub.add_parser(
        "validate",
        help="check every row of a data set; write bad rows with their indices",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    va.add_argument("--dataset", required=True, help="file or hub name (any training format)")
    va.add_argument(
        "--model", default=None, help="tokenizer source for the length check (skipped without it)"
    )
    va.add_argument("--max-length", type=int, default=512)
    va.add_argument("--max-bad-fraction", type=float, default=0.01)
    va.add_argument("--strict", action="store_true", help="fail on any bad row")
    va.add_argument("--output", default="data_report.json", help="report path")
    va.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rmtrain.data.layout import uses_chat_template
    from rmtrain.data.validation import check_bad_rows, validate_dataset, write_data_report
    from rmtrain.modeling.loading import load_tokenizer

    tok = load_tokenizer(args.model) if args.model else None
    chat = uses_chat_template(tok) if tok is not None else True
    counts = validate_dataset(args.dataset, tok, args.max_length, chat)
    report = write_data_report(counts, Path(args.output))
    note = "" if tok is not None else " (length check skipped: pass --model)"
    print(
        f"[rmtrain] {report['rows_read']} rows, {report['bad_rows']} bad "
        f"{report['bad_by_reason']}, {report['truncated']} would be truncated, dropped "
        f"{report['dropped']}{note} -> {args.output}"
    )
    check_bad_rows(counts, args.max_bad_fraction, args.strict, args.output)
    return 0


def _add_hpo(sub: argparse._SubParsersAction) -> None:
    hp = sub.add_parser(
        "hpo",
        help="hyperparameter search with Optuna",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hp.add_argument("--config", default=None, help="base training config (YAML)")
    hp.add_argument("--space", required=True, help="search space (YAML)")
    hp.add_argument("--n-trials", type=int, required=True, help="total trials in the study")
    hp.add_argument("--output", required=True, help="study folder (trials, plots, best config)")
    hp.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: SQLite in --output)"
    )
    hp.add_argument("--study-name", default="rmtrain-hpo")
    hp.add_argument("--jobs", type=int, default=1, help="processes sharing the study")
    hp.add_argument("--metric", default="win_rate", help="eval metric to optimise")
    hp.add_argument(
        "--direction",
        default=None,
        choices=("maximize", "minimize"),
        help="default: minimize for loss, else maximize",
    )
    hp.add_argument("--pruner", default="median", choices=("median", "none"))
    hp.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    hp.set_defaults(func=_cmd_hpo)


def _cmd_hpo(args: argparse.Namespace) -> int:
    from rmtrain.hpo import run_hpo

    direction = args.direction or ("minimize" if args.metric == "loss" else "maximize")
    run_hpo(
        args.config,
        args.space,
        args.n_trials,
        args.output,
        args.storage,
        args.study_name,
        args.jobs,
        args.metric,
        direction,
        args.pruner,
        args.worker,
    )
    return 0


def _add_score(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser(
        "score",
        help="score prompt/response rows of a JSONL file (streamed)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sc.add_argument("--model", required=True, help="model folder saved by rmtrain train")
    sc.add_argument("--input", required=True, help="JSONL: prompt+response, messages, or text")
    sc.add_argument("--output", required=True, help="JSONL: each input row plus reward or error")
    sc.add_argument("--batch", type=int, default=256, help="rows read and scored per chunk")
    sc.add_argument("--max-length", type=int, default=None, help="default: the training value")
    sc.add_argument("--normalize", action="store_true", help="use the saved reward mean/std")
    sc.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from rmtrain.serving.scorer import load_scorer, score_file

    scorer = load_scorer(args.model, max_length=args.max_length)
    with tqdm(desc="scoring rows", unit="row") as bar:
        counts = score_file(
            scorer, args.input, args.output, args.batch, args.normalize, progress=bar.update
        )
    print(
        f"[rmtrain] {counts.rows} rows: {counts.scored} scored ({counts.truncated} truncated), "
        f"{counts.errors} with errors -> {args.output}"
    )
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser(
        "serve",
        help="HTTP reward server (POST /score, POST /get_reward, GET /health, GET /info)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sv.add_argument("--model", required=True, help="model folder saved by rmtrain train")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument(
        "--api-key",
        default=os.environ.get("RMTRAIN_API_KEY"),
        help="bearer token required on requests (default: $RMTRAIN_API_KEY)",
    )
    sv.add_argument("--normalize", action="store_true", help="use the saved reward mean/std")
    sv.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per item (default: "
        "the training value); longer items are cut by the training policy",
    )
    sv.add_argument("--max-items", type=int, default=64, help="items per request")
    sv.add_argument("--max-body-bytes", type=int, default=2_000_000, help="request body limit")
    sv.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    sv.add_argument("--batch-wait-ms", type=float, default=5.0, help="dynamic batching wait")
    sv.add_argument("--no-dynamic-batching", action="store_true", help="score each request alone")
    sv.add_argument("--trust-remote-code", action="store_true", help="allow hub model code")
    sv.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from rmtrain.serving.server import ServeLimits, serve

    limits = ServeLimits(
        max_body_bytes=args.max_body_bytes,
        max_items=args.max_items,
        request_timeout_s=args.timeout,
        batch_wait_ms=args.batch_wait_ms,
    )
    serve(
        args.model,
        args.host,
        args.port,
        args.api_key,
        args.normalize,
        limits,
        args.max_length,
        not args.no_dynamic_batching,
        args.trust_remote_code,
    )
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a reward model on preference data sets (report + plots)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument("--model", required=True, help="model folder saved by rmtrain train")
    ev.add_argument(
        "--dataset",
        action="append",
        required=True,
        help="data set (file or hub name, any training format); repeat for several",
    )
    ev.add_argument("--output", required=True, help="report folder")
    ev.add_argument("--max-length", type=int, default=None, help="default: the training value")
    ev.add_argument("--batch", type=int, default=None, help="pairs per forward pass (approx.)")
    ev.add_argument("--split", default="train", help="split of hub data sets")
    ev.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from rmtrain.evaluation.evaluate import run_eval

    run_eval(args.model, args.dataset, args.output, args.max_length, args.batch, args.split)
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    prepare = sub.add_parser("prepare", help="build preference data sets from raw sources")
    kinds = prepare.add_subparsers(dest="source", required=True)
    se = kinds.add_parser(
        "stackexchange",
        help="Stack Exchange dump (Posts.xml or site .7z) -> stack-exchange-paired pairs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    se.add_argument("--input", required=True, help="Posts.xml or a site .7z dump")
    se.add_argument("--output", required=True, help="pairs file: .jsonl or .parquet")
    se.add_argument("--max-pairs-per-question", type=int, default=10, help="cap per question")
    se.add_argument("--seed", type=int, default=0, help="seed for sampling capped pairs")
    se.set_defaults(func=_cmd_prepare_se)


def _cmd_prepare_se(args: argparse.Namespace) -> int:
    from rmtrain.data.stackexchange import prepare_stackexchange

    counts = prepare_stackexchange(args.input, args.output, args.max_pairs_per_question, args.seed)
    print(
        f"[rmtrain] {counts.questions} questions, {counts.answers} answers read; "
        f"{counts.pairs} pairs from {counts.questions_with_pairs} questions -> {args.output}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rmtrain.training.recipe import run_train

    run_train(config_from_args(args, TrainConfig))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RmtrainError as exc:
        print(f"rmtrain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
