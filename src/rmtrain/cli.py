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
    return parser


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
    from rmtrain.evaluate import run_eval

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
    from rmtrain.prepare import prepare_stackexchange

    counts = prepare_stackexchange(args.input, args.output, args.max_pairs_per_question, args.seed)
    print(
        f"[rmtrain] {counts.questions} questions, {counts.answers} answers read; "
        f"{counts.pairs} pairs from {counts.questions_with_pairs} questions -> {args.output}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rmtrain.train import run_train

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
