"""Evaluation metrics over a whole eval set: pure functions of per-pair rewards.

- `win_rate`: share of pairs whose chosen reward is strictly higher (ties count as losses).
- `kendall_tau`: for each prompt, the rank agreement between the rewards and the known
  preference order, tau = (concordant - discordant) / comparisons, where each preference pair
  of that prompt is one comparison (ties in reward count as neither); then averaged over prompts.
  When a prompt's pairs cover every pair of a strict ranking of its answers, this equals
  Kendall's tau between the rewards and that ranking (`scipy.stats.kendalltau`, no ties).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def win_rate(chosen: np.ndarray, rejected: np.ndarray) -> float:
    chosen, rejected = np.asarray(chosen, float), np.asarray(rejected, float)
    return float(np.mean(chosen > rejected)) if chosen.size else float("nan")


def wilson_interval(wins: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (nan, nan) for n = 0.

    Better behaved than the normal approximation near 0, 1 and for small n."""
    if n == 0:
        return float("nan"), float("nan")
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def kendall_tau(chosen: np.ndarray, rejected: np.ndarray, groups: Sequence[str]) -> float:
    """Per-prompt Kendall's tau between rewards and preferences, averaged over prompts."""
    sign = np.sign(np.asarray(chosen, float) - np.asarray(rejected, float))
    per_group: dict[str, list[float]] = defaultdict(list)
    for g, s in zip(groups, sign, strict=True):
        per_group[g].append(float(s))
    if not per_group:
        return float("nan")
    return float(np.mean([np.mean(v) for v in per_group.values()]))


def reward_metrics(
    chosen: np.ndarray, rejected: np.ndarray, groups: Sequence[str]
) -> dict[str, float]:
    """Every metric the trainer and evaluator report, exact over the given pairs."""
    chosen, rejected = np.asarray(chosen, float), np.asarray(rejected, float)
    both = np.concatenate([chosen, rejected])
    return {
        "win_rate": win_rate(chosen, rejected),
        "kendall_tau": kendall_tau(chosen, rejected, groups),
        "reward_mean": float(both.mean()),
        "reward_std": float(both.std()),
        "chosen_reward_mean": float(chosen.mean()),
        "rejected_reward_mean": float(rejected.mean()),
        "margin_mean": float((chosen - rejected).mean()),
        "num_pairs": int(chosen.size),
    }


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either is constant."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def length_metrics(
    chosen: np.ndarray, rejected: np.ndarray, chosen_len: np.ndarray, rejected_len: np.ndarray
) -> dict[str, float]:
    """How much the rewards follow response length.

    - `reward_length_spearman`: rank correlation of reward and length over every response;
    - `win_rate_chosen_shorter` / `_longer`: win rate on the pairs whose chosen response is the
      shorter / the longer one (equal lengths in neither);
    - `length_controlled_win_rate`: their mean, the win rate as if both kinds were equally
      common, so a model that only prefers length scores 0.5.
    """
    c, r = np.asarray(chosen, float), np.asarray(rejected, float)
    cl, rl = np.asarray(chosen_len), np.asarray(rejected_len)
    shorter, longer = cl < rl, cl > rl
    out = {
        "reward_length_spearman": spearman(np.concatenate([c, r]), np.concatenate([cl, rl])),
        "win_rate_chosen_shorter": win_rate(c[shorter], r[shorter]),
        "win_rate_chosen_longer": win_rate(c[longer], r[longer]),
        "pairs_chosen_shorter": int(shorter.sum()),
        "pairs_chosen_longer": int(longer.sum()),
    }
    halves = (out["win_rate_chosen_shorter"], out["win_rate_chosen_longer"])
    out["length_controlled_win_rate"] = float(np.mean(halves))  # nan when a half is empty
    return out
