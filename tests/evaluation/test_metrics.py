import numpy as np
import pytest
from scipy.stats import kendalltau

from rmtrain.evaluation.metrics import kendall_tau, reward_metrics, win_rate


def test_win_rate_counts_ties_as_losses():
    assert win_rate(np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.0, 2.0, 1.0, 1.0])) == 0.5


def test_kendall_tau_matches_scipy_on_a_full_ranking():
    # One prompt, answers a > b > c (true ranks 3, 2, 1) with rewards 0.2, 0.9, 0.1.
    rewards = {"a": 0.2, "b": 0.9, "c": 0.1}
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]  # every pair of the ranking, better first
    chosen = np.array([rewards[x] for x, _ in pairs])
    rejected = np.array([rewards[y] for _, y in pairs])
    ours = kendall_tau(chosen, rejected, ["q"] * 3)
    # By hand: (a,b) discordant, (a,c) concordant, (b,c) concordant -> (2 - 1) / 3 = 1/3.
    assert ours == pytest.approx(1 / 3)
    ref = kendalltau([0.2, 0.9, 0.1], [3, 2, 1]).statistic
    assert ours == pytest.approx(ref)


def test_kendall_tau_averages_over_prompts_not_pairs():
    # Prompt p: 3 pairs all right (tau 1); prompt q: 1 pair wrong (tau -1) -> mean 0, not 0.5.
    chosen = np.array([1.0, 1.0, 1.0, 0.0])
    rejected = np.array([0.0, 0.0, 0.0, 1.0])
    assert kendall_tau(chosen, rejected, ["p", "p", "p", "q"]) == pytest.approx(0.0)


def test_reward_metrics_are_exact():
    m = reward_metrics(np.array([1.0, 3.0]), np.array([0.0, 4.0]), ["a", "b"])
    assert m["win_rate"] == 0.5
    assert m["reward_mean"] == pytest.approx(2.0)
    assert m["reward_std"] == pytest.approx(np.std([1.0, 3.0, 0.0, 4.0]))
    assert m["chosen_reward_mean"] == 2.0 and m["rejected_reward_mean"] == 2.0
    assert m["margin_mean"] == pytest.approx(0.0)
    assert m["num_pairs"] == 2


def test_kendall_tau_equals_scipy_on_random_rankings():
    """Pairs from full rankings (every pair of a prompt's answers, the better one chosen): the
    per-prompt mean sign is Kendall's tau between the model's and the true ranking."""
    from itertools import combinations

    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    chosen, rejected, groups, want = [], [], [], []
    for prompt in range(200):
        k = int(rng.integers(2, 7))
        truth, model = rng.permutation(k), rng.normal(size=k)
        for i, j in combinations(range(k), 2):
            hi, lo = (i, j) if truth[i] > truth[j] else (j, i)
            chosen.append(model[hi])
            rejected.append(model[lo])
            groups.append(str(prompt))
        want.append(kendalltau(truth, model).statistic)
    got = kendall_tau(np.array(chosen), np.array(rejected), groups)
    assert got == pytest.approx(float(np.mean(want)), abs=1e-12)


def test_length_metrics_by_hand():
    from scipy.stats import spearmanr

    from rmtrain.evaluation.metrics import length_metrics

    chosen = np.array([3.0, 1.0, 2.0, 0.0])
    rejected = np.array([1.0, 2.0, 0.5, 4.0])
    c_len = np.array([10, 50, 30, 20])
    r_len = np.array([40, 5, 30, 80])
    m = length_metrics(chosen, rejected, c_len, r_len)
    # chosen shorter: pairs 0 (3 > 1 wins) and 3 (0 < 4 loses) -> 0.5; chosen longer: pair 1
    # (1 < 2 loses) -> 0.0; pair 2 has equal lengths (in neither); controlled (0.5 + 0) / 2
    assert (m["pairs_chosen_shorter"], m["pairs_chosen_longer"]) == (2, 1)
    assert m["win_rate_chosen_shorter"] == 0.5 and m["win_rate_chosen_longer"] == 0.0
    assert m["length_controlled_win_rate"] == 0.25
    # rewards 3 1 2 0 1 2 .5 4 against lengths 10 50 30 20 40 5 30 80: ranks by hand
    # reward ranks 7 3.5 5.5 1 3.5 5.5 2 8; length ranks 2 7 4.5 3 6 1 4.5 8
    rx = np.array([7, 3.5, 5.5, 1, 3.5, 5.5, 2, 8])
    ry = np.array([2, 7, 4.5, 3, 6, 1, 4.5, 8])
    by_hand = float(np.corrcoef(rx, ry)[0, 1])
    assert m["reward_length_spearman"] == pytest.approx(by_hand, abs=1e-12)
    both = spearmanr(np.r_[chosen, rejected], np.r_[c_len, r_len]).statistic
    assert by_hand == pytest.approx(both, abs=1e-12)


def test_length_metrics_with_one_kind_of_pair_only():
    from rmtrain.evaluation.metrics import length_metrics

    m = length_metrics(np.array([1.0]), np.array([0.0]), np.array([5]), np.array([9]))
    assert m["win_rate_chosen_shorter"] == 1.0 and np.isnan(m["win_rate_chosen_longer"])
    assert np.isnan(m["length_controlled_win_rate"]) and m[
        "reward_length_spearman"
    ] == pytest.approx(-1.0)


def test_a_reward_that_is_length_is_flagged():
    from rmtrain.data.pairs import Pair
    from rmtrain.evaluation.evaluate import summarise

    pairs = [Pair("q", "x" * n, "y" * (n + 7 * (i % 2 * 2 - 1)), f"g{i}", i) for i, n in
             enumerate(range(10, 40))]  # fmt: skip
    reward = lambda t: float(len(t))  # noqa: E731 - a model that only counts characters
    chosen = np.array([reward(p.chosen) for p in pairs])
    rejected = np.array([reward(p.rejected) for p in pairs])
    report = summarise(pairs, chosen, rejected, {"scored_pairs": len(pairs)}).report
    assert report["length"]["reward_length_spearman"] == pytest.approx(1.0)
    assert report["length"]["length_controlled_win_rate"] == 0.5
    assert any(f.startswith("reward is mostly length: Spearman +1.00") for f in report["flags"])
