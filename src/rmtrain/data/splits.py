"""Sampling (`--frac`), the held-out split by prompt, and weighted mixing of data sets."""

from __future__ import annotations

import math
import random
from collections import Counter

from rmtrain.data.pairs import Pair
from rmtrain.errors import RmtrainError

# The original recipe takes 1% of the multi-million-pair hub set; any other data set is used
# whole unless --frac says otherwise (1% of a user's 500-row file would be 5 rows).
ORIGINAL_DATASET = "lvwerra/stack-exchange-paired"
ORIGINAL_FRAC = 0.01
ORIGINAL_DIR = "data/reward"  # the original data set's reward-modelling part


def resolve_data_dir(data_dir: str | None, source: str) -> str | None:
    """`--dataset-dir` as given, else the reward-modelling part for the original data set."""
    if data_dir is not None:
        return data_dir or None
    return ORIGINAL_DIR if source == ORIGINAL_DATASET else None


def resolve_frac(frac: float | None, source: str) -> float:
    """`--frac` as given, else the original recipe's share for its data set and all rows for
    any other."""
    if frac is not None:
        return frac
    return ORIGINAL_FRAC if source == ORIGINAL_DATASET else 1.0


def seeded_sample(n: int, k: int, seed: int) -> list[int]:
    """`k` of the indices 0..n-1 drawn from `seed` alone, in ascending (source) order."""
    return sorted(random.Random(seed).sample(range(n), k))


def sample_size(n: int, frac: float) -> int:
    """How many of `n` rows `--frac` takes: round(frac * n), at least one."""
    if n == 0:
        raise RmtrainError("the data set is empty; pass a file with preference rows")
    return max(1, round(frac * n))


def sample_indices(n: int, frac: float, seed: int) -> list[int]:
    """A deterministic sample of `sample_size` rows, in source order."""
    return seeded_sample(n, sample_size(n, frac), seed)


def split_by_group(
    pairs: list[Pair], test_size: float, seed: int, decided: dict[str, bool] | None = None
) -> tuple[list[Pair], list[Pair]]:
    """Deterministic split where all pairs of one prompt land on the same side (no leakage).

    `decided` (prompt group -> in test) carries the sides chosen for earlier data sets: a prompt
    that appears in several data sets stays on one side in all of them; it is updated here."""
    decided = {} if decided is None else decided
    by_group = Counter(p.group for p in pairs)
    target = round(test_size * len(pairs))
    taken = sum(n for g, n in by_group.items() if decided.get(g))
    groups = sorted(g for g in by_group if g not in decided)
    random.Random(seed).shuffle(groups)
    fresh: dict[str, bool] = {}
    for g in groups:
        fresh[g] = taken < target
        taken += by_group[g] if fresh[g] else 0
    if (
        fresh
        and all(fresh.values())
        and len(by_group) > 1
        and not any(decided.get(g) is False for g in by_group)
    ):
        fresh[groups[-1]] = False  # keep at least one prompt for training
    decided.update(fresh)
    train = [p for p in pairs if not decided[p.group]]
    test = [p for p in pairs if decided[p.group]]
    return train, test


def parse_dataset_spec(spec: str) -> tuple[str, float | None]:
    """`path:0.7` -> ('path', 0.7); a spec without a numeric suffix is a whole data set."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return spec, None
        if not 0 < weight < math.inf:
            raise RmtrainError(f"mixing weight in {spec!r} must be a positive finite number")
        return head, weight
    return spec, None


def mix_weighted(
    parts: dict[str, list[Pair]], weights: dict[str, float], seed: int
) -> dict[str, list[Pair]]:
    """The largest mixture that honours the weights without repeating a pair.

    With shares w_k (normalised) and n_k pairs available, the mixture has T = min_k n_k / w_k
    pairs, round(w_k * T) drawn deterministically from data set k. The caller counts the pairs
    left out (n_k minus those drawn).
    """
    total = sum(weights.values())
    shares = {k: w / total for k, w in weights.items()}
    size = min(len(parts[k]) / shares[k] for k in parts)
    out = {}
    for i, (name, pairs) in enumerate(parts.items()):
        take = min(len(pairs), round(shares[name] * size))
        picked = seeded_sample(len(pairs), take, seed + i)
        out[name] = [pairs[j] for j in picked]
    return out
