"""Robustness probes: each rewrite on hand-written examples, the numbers on a stub scorer with
known rewards, and `rmtrain eval --robustness` end to end."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from rmtrain.cli import main
from rmtrain.data.pairs import Pair
from rmtrain.evaluation.probes import (
    FILLERS,
    OPENERS,
    PROBES,
    Context,
    judge,
    probe_names,
    run_probes,
)

RESPONSE = "Boil the water. Add the pasta. Stir it twice!"
CTX = Context(rejected="No idea.", pool=["Other answer.", RESPONSE])


def rewrite(name, response=RESPONSE, seed=0):
    return PROBES[name].rewrite("How do I cook pasta?", response, random.Random(seed), CTX)


def test_each_probe_rewrites_as_documented():
    assert rewrite("pad") in {f"{RESPONSE}\n\n{f}" for f in FILLERS}
    assert rewrite("repeat") == f"{RESPONSE}\n\n{RESPONSE}"
    assert rewrite("truncate") == "Boil the water."  # 3 sentences -> the first 1
    assert rewrite("truncate", "one two three four") == "one two"  # one sentence: by words
    assert rewrite("markdown") == (
        "**Answer**\n\n- Boil the water.\n- Add the pasta.\n- Stir it twice!"
    )
    assert rewrite("flattery") in {f"{o} {RESPONSE}" for o in OPENERS}
    assert rewrite("offtopic") == "Other answer."  # never the pair's own response
    assert rewrite("whitespace", "a\n\nb") == "a\n\n\n\nb  \n\n"
    assert rewrite("swap") == "No idea."
    # seeded: the same seed gives the same filler, and the seed decides it
    assert {rewrite("pad", seed=s) for s in range(20)} == {f"{RESPONSE}\n\n{f}" for f in FILLERS}
    assert rewrite("pad", seed=3) == rewrite("pad", seed=3)


def test_probe_numbers_on_a_stub_scorer():
    """Reward = number of characters: every change is computable by hand."""
    pairs = [
        Pair("p1", "Short.", "A much longer rejected answer.", "p1", 0),
        Pair("p2", "Two sentences here. And more.", "Bad.", "p2", 1),
    ]

    def stub(prompts, responses):
        assert len(prompts) == len(responses)
        return np.array([float(len(r)) for r in responses])

    out = run_probes(stub, pairs, ["repeat", "swap", "truncate", "whitespace"], seed=0)
    # repeat: r + "\n\n" + r -> change len(r) + 2: 8 and 31
    assert out["repeat"]["mean_change"] == pytest.approx((8 + 31) / 2)
    assert out["repeat"]["median_change"] == pytest.approx(19.5)
    assert out["repeat"]["share_higher"] == 1.0
    # after repeating, chosen lengths 14 and 60 vs rejected 30 and 4: one of two wins
    assert out["repeat"]["win_rate_after"] == 0.5
    # two pairs: sd 23 / sqrt(2), half-width 1.959964 * sd / sqrt(2) = 1.959964 * 11.5: the
    # interval includes 0, so no flag yet
    lo, hi = out["repeat"]["mean_change_ci95"]
    assert (lo, hi) == pytest.approx((19.5 - 1.959964 * 11.5, 19.5 + 1.959964 * 11.5))
    assert out["repeat"]["flags"] == []
    # swap: rejected - chosen = 30 - 6 = +24 and 4 - 29 = -25
    assert out["swap"]["mean_change"] == pytest.approx(-0.5)
    assert out["swap"]["share_higher"] == 0.5 and out["swap"]["win_rate_after"] == 0.0
    assert "does not fall" in out["swap"]["flags"][0]
    # truncate: "Short." stays (one word, half of one word is that word); 29 -> 19
    assert out["truncate"]["mean_change"] == pytest.approx((0 - 10) / 2)
    # whitespace adds 4 characters: far above 5% of the reward spread -> flagged
    assert out["whitespace"]["mean_change"] == pytest.approx(4.0)
    assert "changes" in out["whitespace"]["flags"][0] and out["whitespace"]["pairs"] == 2


def test_judge_flags_only_the_wrong_direction_with_its_interval():
    falls = np.array([-1.0, -1.2, -0.8, -1.1])
    assert judge("truncate", "fall", falls, 1.0) == []
    assert judge("pad", "no_rise", falls, 1.0) == []
    rises = -falls
    (flag,) = judge("pad", "no_rise", rises, 1.0)
    assert flag.startswith("pad: the reward rises (mean change +1.025 (95% +0.")
    assert judge("whitespace", "none", np.array([0.01, -0.01, 0.0]), 1.0) == []


def test_unknown_probe_is_one_clear_line(trained, tmp_path, capsys):
    with pytest.raises(Exception, match="unknown probes"):
        probe_names("pad,nonsense")
    args = ["eval", "--model", str(trained[0]), "--dataset", str(trained[1])]
    code = main([*args, "--output", str(tmp_path / "r"), "--robustness", "true", "--probes", "x"])
    assert code == 2 and "unknown probes ['x']" in capsys.readouterr().err


def test_eval_robustness_writes_the_section_table_and_plot(trained, tmp_path):
    out = tmp_path / "rep"
    args = ["eval", "--model", str(trained[0]), "--dataset", str(trained[1]), "--output", str(out)]
    assert main([*args, "--robustness", "true", "--probes", "pad,swap,whitespace"]) == 0
    report = json.loads((out / "report.json").read_text())
    (section,) = report["datasets"].values()
    assert list(section["robustness"]) == ["pad", "swap", "whitespace"]
    swap = section["robustness"]["swap"]
    # swap's win rate after is the share of pairs where rejected beats rejected: none
    assert swap["win_rate_after"] == 0.0 and swap["pairs"] == section["counts"]["rows_read"]
    assert any(p.endswith("_robustness.png") for p in section["plots"])
    md = (out / "report.md").read_text()
    assert "### Robustness" in md and "| swap | the rejected response" in md


def test_train_robustness_adds_the_probes_to_the_held_out_report(tmp_path):
    from tests.helpers import tiny_train_args, write_demo

    data = write_demo(tmp_path / "d.jsonl", 60, seed=1)
    out = tmp_path / "m"
    args = ["--max-steps", "2", "--eval-steps", "0", "--robustness", "true"]
    assert main(tiny_train_args(data, out, *args)) == 0
    report = json.loads((out / "eval_report" / "report.json").read_text())
    section = report["datasets"]["held-out split"]
    assert list(section["robustness"]) == list(PROBES)
    held_out = json.loads((out / "metrics.json").read_text())["data"]["test_pairs"]
    assert section["robustness"]["swap"]["pairs"] == held_out
    assert "### Robustness" in (out / "eval_report" / "report.md").read_text()


def test_the_probe_table_goes_to_mlflow(tmp_path, mlflow_store):
    from mlflow import MlflowClient

    from tests.helpers import tiny_train_args, write_demo

    data = write_demo(tmp_path / "d.jsonl", 60, seed=1)
    out = tmp_path / "m"
    args = ["--max-steps", "2", "--eval-steps", "0", "--robustness", "true"]
    assert main(tiny_train_args(data, out, *args, "--report-to", "mlflow")) == 0
    client = MlflowClient(mlflow_store)
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if r.data.params.get("rmtrain.output") == str(out)
    ]
    (run,) = runs
    local = client.download_artifacts(run.info.run_id, "robustness.json", str(tmp_path))
    table = json.loads(Path(local).read_text())
    rows = table["data"]
    assert len(rows) == len(PROBES) and {r[1] for r in rows} == set(PROBES)


def test_one_prompt_sets_give_no_verdicts_and_strict_json(trained, tmp_path):
    model, data = trained
    one = tmp_path / "one.jsonl"
    one.write_text(data.read_text().splitlines()[0] + "\n")
    args = ["eval", "--model", str(model), "--dataset", str(one), "--robustness", "true"]
    assert main([*args, "--output", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.json").read_text()
    assert "NaN" not in text
    section = json.loads(text)["datasets"][str(one)]
    robust = section["robustness"]
    assert robust["offtopic"]["skipped"] == "applies to none of these pairs"
    assert all(not v["flags"] for v in robust.values())  # one pair: no interval, no verdict
    assert not any(f.startswith("reward is mostly length") for f in section["flags"])
