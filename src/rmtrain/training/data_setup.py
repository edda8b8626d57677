"""Training data preparation (orchestration): read every data set, split each by prompt, mix
the training parts by weight, tokenise once, cut to length, and count every row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rmtrain.batching.collate import grouping_length
from rmtrain.config import TrainConfig
from rmtrain.data.augment import augment_pairs, augmentation_names
from rmtrain.data.formats import read_pairs
from rmtrain.data.layout import encode_pairs, uses_chat_template
from rmtrain.data.pairs import DataCounts, Pair
from rmtrain.data.reading import load_rows
from rmtrain.data.splits import (
    mix_weighted,
    parse_dataset_spec,
    resolve_data_dir,
    resolve_frac,
    seeded_sample,
    split_by_group,
)
from rmtrain.data.validation import record_dropped
from rmtrain.errors import RmtrainError


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    test_pairs: list[Pair]  # indexed by each test feature's pair_index
    counts: DataCounts  # all data sets together
    test_truncated: int = 0
    per_dataset: dict[str, DataCounts] = field(default_factory=dict)
    test_sets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class NoUsablePairs(RmtrainError):
    """Every row of a data set is bad; carries the counts so the report can still be written."""

    def __init__(self, message: str, counts: DataCounts) -> None:
        super().__init__(message)
        self.counts = counts


def _read(source: str, cfg: TrainConfig) -> tuple[list[Pair], DataCounts]:
    rows = load_rows(source, cfg.dataset_split, resolve_data_dir(cfg.dataset_dir, source))
    try:
        frac = resolve_frac(cfg.frac, source)
        pairs, counts = read_pairs(rows, frac, cfg.seed, cfg.margin_column)
    except RmtrainError as exc:  # no known columns: say which file
        raise RmtrainError(f"{source}: {exc}") from None
    if not pairs:
        raise NoUsablePairs(
            f"no usable pairs in {source}: {counts.rows_read} rows read, malformed "
            f"{dict(counts.malformed)}; check the columns and values",
            counts,
        )
    return pairs, counts


def _features(tokenizer: Any, pairs: list[Pair], cfg: TrainConfig) -> tuple:
    """Pairs tokenised and cut once, each feature with its token cost: (features, truncated
    count, dropped (index, reason))."""
    feats, truncated, dropped = encode_pairs(
        tokenizer,
        pairs,
        cfg.max_length,
        uses_chat_template(tokenizer, cfg.chat_template),
        cfg.min_prompt_length,
        cfg.reward_position,
    )
    for f in feats:
        f["length"] = grouping_length(f)
    return feats, truncated, dropped


def _encode(tokenizer: Any, pairs: list[Pair], cfg: TrainConfig, counts: DataCounts) -> tuple:
    feats, truncated, dropped = _features(tokenizer, pairs, cfg)
    counts.truncated += truncated
    record_dropped(counts, pairs, dropped)
    return feats, truncated


def _augmented(
    tokenizer: Any, pairs: list[Pair], names: list[str], cfg: TrainConfig, counts: DataCounts
) -> list[dict[str, Any]]:
    """The augmentations' pairs, tokenised like the rest; counted apart from the rows read."""
    added, by_name = augment_pairs(pairs, names, cfg.augment_rate, cfg.seed)
    feats, _, dropped = _features(tokenizer, added, cfg)
    for index, _ in dropped:
        by_name[added[index].extra["augment"]] -= 1
    counts.augmented.update({k: v for k, v in by_name.items() if v})
    counts.augmented_dropped += len(dropped)
    return feats


def _merge(parts: dict[str, DataCounts]) -> DataCounts:
    total = DataCounts()
    for c in parts.values():
        total.rows_read += c.rows_read
        total.rows_in_source += c.rows_in_source
        total.not_mixed += c.not_mixed
        total.augmented.update(c.augmented)
        total.augmented_dropped += c.augmented_dropped
        total.malformed.update(c.malformed)
        total.truncated += c.truncated
        total.dropped.update(c.dropped)
        total.train_pairs += c.train_pairs
        total.test_pairs += c.test_pairs
        total.bad_rows.extend(c.bad_rows)
    if len(parts) == 1:  # one source: its rows' file lines and --frac still apply
        total.lines = next(iter(parts.values())).lines
        total.frac = next(iter(parts.values())).frac
    return total


def prepare_data(cfg: TrainConfig, tokenizer: Any) -> PreparedData:
    """Every data set is split by prompt on its own; training parts are mixed by weight (or
    concatenated); test parts stay apart so each can be reported separately."""
    specs = [parse_dataset_spec(s) for s in cfg.datasets()]
    weighted = [w is not None for _, w in specs]
    if any(weighted) and not all(weighted):
        raise RmtrainError("give every --dataset a weight (a.jsonl:0.7 b.jsonl:0.3) or none")
    per: dict[str, DataCounts] = {}
    train_parts: dict[str, list[Pair]] = {}
    test_parts: dict[str, list[Pair]] = {}
    sides: dict[str, bool] = {}  # prompt -> held out, across every data set
    seen: dict[str, set[str]] = {}
    for source, _ in specs:
        pairs, per[source] = _read(source, cfg)
        for p in pairs:
            seen.setdefault(p.group, set()).add(source)
        train_parts[source], test_parts[source] = split_by_group(
            pairs, cfg.test_size, cfg.seed, sides
        )
    if all(weighted) and len(specs) > 1:
        mixed = mix_weighted(train_parts, {s: w for s, w in specs}, cfg.seed)
        for source, pairs in mixed.items():
            per[source].not_mixed = len(train_parts[source]) - len(pairs)
        train_parts = mixed
    train, test, test_pairs, test_sets, test_truncated = [], [], [], {}, 0
    names = augmentation_names(cfg.augment)
    for source in per:
        feats, _ = _encode(tokenizer, train_parts[source], cfg, per[source])
        per[source].train_pairs = len(feats)
        train.extend(feats)
        if names:  # training pairs only: nothing added ever reaches a held-out split
            train.extend(_augmented(tokenizer, train_parts[source], names, cfg, per[source]))
        feats, truncated = _encode(tokenizer, test_parts[source], cfg, per[source])
        for f in feats:  # pair_index becomes global across data sets
            f["pair_index"] += len(test_pairs)
        test_pairs.extend(test_parts[source])
        test_truncated += truncated
        per[source].test_pairs = len(feats)
        if feats:  # a data set whose prompts all went to training has no test set
            test_sets[source] = sorted(feats, key=lambda f: -f["length"])
        test.extend(feats)
    test.sort(key=lambda f: -f["length"])  # order is free (metrics follow pair_index)
    counts = _merge(per)
    counts.shared_prompts = sum(len(s) > 1 for s in seen.values())
    if train and not test_pairs:  # the split, not the encoding, left none
        raise RmtrainError(
            f"--test-size {cfg.test_size} of {len(train)} pairs holds out no prompt; raise "
            f"--test-size (to {min(0.5, 2 / len(train)):.2g} or more) or use more data"
        )
    if not train or not test:
        raise RmtrainError(
            f"too few pairs to train and evaluate ({len(train)} train, {len(test)} test); "
            "raise --frac or --max-length, or use more data"
        )
    return PreparedData(train, test, test_pairs, counts, test_truncated, per, test_sets)


def eval_sample(features: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """At most `n` held-out features, a fixed seeded sample in their order: the evaluations
    during training see the same pairs every time and stay cheap on long data sets."""
    if len(features) <= n:
        return features
    return [features[i] for i in seeded_sample(len(features), n, seed)]
