import json

import numpy as np
import pytest

from rmtrain.cli import main
from rmtrain.data.pairs import Pair
from rmtrain.evaluation.evaluate import length_baseline, summarise, write_report


def stub_pairs() -> tuple[list[Pair], np.ndarray, np.ndarray]:
    """Four hand-made pairs with known rewards (a stub scorer) and lengths."""
    pairs = [
        Pair("p1", "long answer", "short", "p1", 0, extra={"subset": "math"}),  # longer chosen
        Pair("p1", "tiny", "much longer", "p1", 1, extra={"subset": "math"}),  # shorter chosen
        Pair("p2", "same", "size", "p2", 2, extra={"subset": "chat"}),  # equal length
        Pair("p3", "abc", "abcdef", "p3", 3, extra={"subset": "chat"}),  # shorter chosen
    ]
    chosen = np.array([2.0, 1.0, 0.0, -1.0])
    rejected = np.array([1.0, 3.0, -1.0, 0.0])
    return pairs, chosen, rejected


def test_metrics_baselines_and_subsets_are_exact():
    pairs, chosen, rejected = stub_pairs()
    res = summarise(pairs, chosen, rejected, {"rows_read": 4})
    r = res.report
    assert r["metrics"]["win_rate"] == 0.5  # pairs 0 and 2 right
    # per prompt: p1 (1 - 1) / 2 = 0, p2 = 1, p3 = -1 -> mean 0
    assert r["metrics"]["kendall_tau"] == pytest.approx(0.0)
    # longer wins: pair 0 -> 1, pair 1 -> 0, pair 2 tie -> 0.5, pair 3 -> 0: 1.5 / 4
    # shorter wins: 0, 1, 0.5, 1 -> 2.5 / 4
    assert r["baselines"] == {"chance": 0.5, "longer_response": 0.375, "shorter_response": 0.625}
    # 0.5 is not above the better length baseline (prefer shorter, 0.625)
    assert r["beats_length_baseline"] is False
    # Wilson, 2 of 4, z = 1.96: centre 0.5, half 1.96 * sqrt(1/16 + 0.9604/64) / 1.9604
    half = 1.959964 * np.sqrt(0.25 / 4 + 1.959964**2 / 64) / (1 + 1.959964**2 / 4)
    assert r["metrics"]["win_rate_ci95"] == pytest.approx([0.5 - half, 0.5 + half])
    assert r["metrics"]["win_rate_ci95"] == pytest.approx([0.1500, 0.8500], abs=1e-4)
    assert r["above_chance"] is False
    # reward ranks [7 5.5 3.5 1.5 5.5 8 1.5 3.5], length ranks [7.5 3 3 1 5 7.5 3 6]: deviations
    # multiply to 32; squares 40.5 and 39.5 -> 32 / sqrt(1599.75) = 0.80. Chosen shorter: pairs
    # 1 and 3 both lost (0.0); chosen longer: pair 0 won (1.0) -> length-controlled 0.5
    assert r["length"]["reward_length_spearman"] == pytest.approx(32 / np.sqrt(1599.75))
    assert r["length"]["length_controlled_win_rate"] == 0.5
    assert r["flags"] == [
        "not above chance: win rate 0.500 (95% interval 0.150-0.850) includes or is below 0.5",
        "not above the length baseline: win rate 0.500 <= prefer shorter 0.625",
    ]  # a Spearman of 0.80 from four pairs is no verdict (the length flag needs ten)
    assert r["subsets"] == {
        "chat": {"win_rate": 0.5, "pairs": 2},
        "math": {"win_rate": 0.5, "pairs": 2},
    }
    assert r["metrics"]["margin_mean"] == pytest.approx((1 - 2 + 1 - 1) / 4)
    assert r["metrics"]["chosen_reward_std"] == pytest.approx(np.std([2.0, 1.0, 0.0, -1.0]))


def test_model_below_length_baseline_is_flagged(tmp_path):
    pairs, chosen, rejected = stub_pairs()
    res = summarise(
        pairs,
        chosen - 5.0,
        rejected,
        {
            "rows_read": 4,
            "malformed_total": 0,
            "truncated": 0,
            "dropped_total": 0,
            "scored_pairs": 4,
        },
    )
    assert res.report["metrics"]["win_rate"] == 0.0
    assert res.report["beats_length_baseline"] is False
    report = write_report({"/long/path/to/my-prefs.jsonl.gz": res}, tmp_path, "stub-model")
    md = (tmp_path / "report.md").read_text()
    assert "Flag: not above the length baseline: win rate 0.000 <= prefer shorter 0.625" in md
    assert "Flag: not above chance" in md
    plots = report["datasets"]["/long/path/to/my-prefs.jsonl.gz"]["plots"]
    assert plots == [
        "my-prefs_rewards_hist.png",
        "my-prefs_accuracy_by_length.png",
        "my-prefs_margin_vs_length.png",
    ]
    for name in plots:
        png = tmp_path / name
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_below_chance_model_above_longer_baseline_is_flagged():
    """0.485 on 1000 pairs where prefer-shorter gets 0.552: both flags, whatever prefer-longer
    says."""
    n = 1000
    # the chosen response is the shorter one in the first 552 pairs
    short = [i < 552 for i in range(n)]
    pairs = [
        Pair(f"p{i}", "a" if s else "aa", "aa" if s else "a", f"p{i}", i)
        for i, s in enumerate(short)
    ]
    chosen = np.where(np.arange(n) < 485, 1.0, -1.0)
    rejected = np.zeros(n)
    r = summarise(pairs, chosen, rejected, {"rows_read": n}).report
    assert r["metrics"]["win_rate"] == pytest.approx(0.485)
    assert r["baselines"]["shorter_response"] == pytest.approx(0.552)
    assert r["baselines"]["longer_response"] == pytest.approx(0.448)
    assert r["above_chance"] is False and r["beats_length_baseline"] is False
    assert r["flags"] == [
        "not above chance: win rate 0.485 (95% interval 0.454-0.516) includes or is below 0.5",
        "reward is mostly length: Spearman -0.61 between reward and response length "
        "(length-controlled win rate 0.439)",
        "not above the length baseline: win rate 0.485 <= prefer shorter 0.552",
    ]


def test_length_baseline_ties_count_half():
    assert length_baseline(np.array([3, 2, 5]), np.array([1, 2, 9])) == pytest.approx(0.5)


def write_formats(tmp_path) -> list[str]:
    user = {"role": "user", "content": "How do I get started with bread?"}
    good = "Start with the flour and pay attention to the yeast."
    bad = "Whatever, just search the internet."
    rows = {
        "explicit.jsonl": {"prompt": user["content"], "chosen": good, "rejected": bad},
        "se.jsonl": {"qid": 1, "question": user["content"], "response_j": good, "response_k": bad},
        "hh.jsonl": {
            "chosen": f"\n\nHuman: {user['content']}\n\nAssistant: {good}",
            "rejected": f"\n\nHuman: {user['content']}\n\nAssistant: {bad}",
        },
        "conv.jsonl": {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        },
    }
    paths = []
    for name, row in rows.items():
        path = tmp_path / name
        path.write_text((json.dumps(row) + "\n") * 3)
        paths.append(str(path))
    return paths


def test_rmtrain_eval_on_a_trained_model_writes_every_file(trained, tmp_path):
    model, _ = trained
    sources = write_formats(tmp_path)
    args = ["eval", "--model", str(model), "--output", str(tmp_path / "rep")]
    for s in sources:
        args += ["--dataset", s]
    assert main(args) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert list(report["datasets"]) == sources
    chosen, rejected = [], []
    for r in report["datasets"].values():
        assert r["counts"]["scored_pairs"] == 3 and r["counts"]["rows_read"] == 3
        speed = r["scoring"]
        assert speed["pairs_per_s"] == pytest.approx(3 / speed["seconds"])
        for png in r["plots"]:
            assert (tmp_path / "rep" / png).stat().st_size > 1000
        chosen.append(r["metrics"]["chosen_reward_mean"])
        rejected.append(r["metrics"]["rejected_reward_mean"])
        assert r["metrics"]["win_rate"] == float(chosen[-1] > rejected[-1])  # 3 equal rows
    # the four formats hold the same prompt and answers: the same layout, the same rewards
    assert chosen == pytest.approx([chosen[0]] * 4, abs=1e-5)
    assert rejected == pytest.approx([rejected[0]] * 4, abs=1e-5)
    assert (tmp_path / "rep" / "report.md").read_text().count("## ") == 4


def test_training_writes_the_report_and_a_model_card(trained):
    model, _ = trained
    metrics = json.loads((model / "metrics.json").read_text())["metrics"]
    report = json.loads((model / "eval_report" / "report.json").read_text())
    held_out = report["datasets"]["held-out split"]
    assert held_out["metrics"]["win_rate"] == pytest.approx(metrics["win_rate"])
    assert held_out["counts"]["scored_pairs"] == metrics["num_pairs"]
    n, seconds = held_out["counts"]["scored_pairs"], held_out["scoring"]["seconds"]
    assert held_out["scoring"]["pairs_per_s"] == pytest.approx(n / seconds)
    assert held_out["baselines"]["longer_response"] + held_out["baselines"][
        "shorter_response"
    ] == pytest.approx(1.0)
    # The reloaded model, scored by the standalone scorer, reproduces the trainer's evaluation.

    from rmtrain.config import build_config, load_yaml
    from rmtrain.serving.scorer import load_scorer
    from rmtrain.training.recipe import prepare_data

    cfg = build_config(load_yaml(model / "rmtrain_config.yaml"))
    scorer = load_scorer(str(model))
    scored = scorer.score_pairs(prepare_data(cfg, scorer.tokenizer).test_pairs)
    rewards = np.concatenate([scored.chosen, scored.rejected])
    assert rewards.mean() == pytest.approx(metrics["reward_mean"], abs=1e-5)
    assert np.mean(scored.chosen > scored.rejected) == pytest.approx(metrics["win_rate"])
    card = (model / "README.md").read_text()
    assert "AutoModelForSequenceClassification.from_pretrained" in card
    assert "builtin:tiny-qwen3" in card and "win_rate" in card


def test_the_cards_code_gives_the_training_layouts_reward(trained):
    """The model card's snippet, run as written on the folder, gives what rmtrain scores."""
    from rmtrain.serving.scorer import load_scorer, score_records

    model, _ = trained
    card = (model / "README.md").read_text()
    code = card.split("## Getting a reward", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(code.replace("PATH", repr(str(model))), scope)  # noqa: S102 - the card's own code
    rows = [{"prompt": scope["prompt"], "response": scope["response"]}]
    (want,) = score_records(load_scorer(str(model)), rows)
    assert scope["reward"] == pytest.approx(want["reward"], abs=1e-5)
    assert "malformed: none" in card and "['" not in card  # names, not a Python list
    assert "(95% " in card and "prefer the longer answer" in card
