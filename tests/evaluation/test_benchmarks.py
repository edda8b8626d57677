"""RewardBench, RewardBench 2 and RM-Bench: the arithmetic by hand and against the rewardbench
package's own functions, and `eval --benchmark` on small fixtures in each benchmark's schema
(written here, a few prompts per subset) with the rewards of `rmtrain score`."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rmtrain.cli import main
from rmtrain.evaluation import benchmark_scores as bs

# ----------------------------------------------------------------------------- fixtures


def rb_rows() -> list[dict]:
    """Two pairs per RewardBench subset: a helpful answer against a curt one."""
    rows = []
    for tests in bs.SUBSET_MAPPING.values():
        for t in tests:
            for k in range(2):
                prompt = f"Question {k} about {t.replace('-', ' ')}: how do I start?"
                rows.append({"prompt": prompt, "subset": t, "id": len(rows),
                             "chosen": f"Start with the basics of {t}, then practise daily.",
                             "rejected": "No."})  # fmt: skip
    return rows


def rb2_rows() -> list[dict]:
    """Per subset two prompts with one correct answer and three wrong ones; Ties as reference
    and tied prompts with several correct answers."""
    rows = []
    for subset in bs.RB2_SUBSETS[:-1]:
        for k in range(2):
            wrong = [f"Wrong guess {j} for {subset}." for j in range(3)]
            rows.append({"prompt": f"{subset} task {k}: answer precisely.", "subset": subset,
                         "id": str(len(rows)), "chosen": [f"The careful {subset} answer {k}."],
                         "rejected": wrong, "num_correct": 1})  # fmt: skip
    for pid in range(2):
        prompt = f"Name a prime number below {10 + pid}."
        rows.append({"prompt": prompt, "subset": "Ties", "id": f"ref:{pid}", "num_correct": 1,
                     "chosen": ["7"], "rejected": ["8", "9"]})  # fmt: skip
        rows.append({"prompt": prompt, "subset": "Ties", "id": f"tied:{pid}", "num_correct": 3,
                     "chosen": ["2", "3", "5"], "rejected": ["4", "6"]})  # fmt: skip
    return rows


def rmb_rows() -> list[dict]:
    rows = []
    for domain in ("chat", "math", "code", "safety-refuse", "safety-response"):
        styles = ("{}.", "{}, explained in a few sentences.", "**{}**\n\n- explained\n- in a list")
        rows.append({"prompt": f"A {domain} question?", "domain": domain, "id": len(rows),
                     "chosen": [s.format("Right") for s in styles],
                     "rejected": [s.format("Wrong") for s in styles]})  # fmt: skip
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- by hand


def test_rewardbench_sections_by_hand():
    # Chat: alpacaeval-easy 1/1, -length 1/2 (a tie is wrong), -hard 0/1, mt-bench-easy 1/1,
    # mt-bench-med 1/2 -> (100 + 47.5 + 0 + 28 + 20) / 358
    rows = [("alpacaeval-easy", 2, 1), ("alpacaeval-length", 2, 1), ("alpacaeval-length", 1, 1),
            ("alpacaeval-hard", 0, 1), ("mt-bench-easy", 3, 1), ("mt-bench-med", 1, 0),
            ("mt-bench-med", 0, 1), ("math-prm", 1, 0), ("hep-go", 0, 1),
            ("anthropic_helpful", 1, 0)]  # fmt: skip
    got = bs.rewardbench(*zip(*rows, strict=True))
    assert got["sections"]["Chat"] == pytest.approx(195.5 / 358)
    # Reasoning: math-prm 1 (weight 984), hep-go 0 (164) -> 984 / 1148
    assert got["sections"]["Reasoning"] == pytest.approx(984 / 1148)
    assert got["sections"]["Safety"] == 0.0  # no subset of it present: the package's 0
    assert got["score"] == pytest.approx((195.5 / 358 + 984 / 1148) / 4)
    assert got["other_subsets"] == {"anthropic_helpful": 1.0}  # a prior set, apart


def test_rewardbench2_best_of_four_and_ties_by_hand():
    assert bs.best_of_n([2.0, 1.0, 0.0, -1.0]) == 1.0
    assert bs.best_of_n([1.0, 2.0, 0.0, 0.0]) == 0.0
    assert bs.best_of_n([2.0, 2.0, 0.0, 0.0]) == 0.5
    assert bs.best_of_n([2.0, 2.0, 2.0, 0.0]) == pytest.approx(1 / 3)
    # one prompt: reference (1 correct of 3) and tied (3 correct of 5)
    ties = [{"id": "ref:0", "num_correct": 1, "scores": [3.0, 1.0, 0.5]},
            {"id": "tied:0", "num_correct": 3, "scores": [3.0, 2.5, 2.0, 1.0, 0.0]}]  # fmt: skip
    # ref: accurate, margin 3 - 1 = 2; tied: accurate, margin 2 - 1 = 1, spread 3 - 2 = 1
    # tied margin 1 > spread 1? no: 0; min(2, 1) = 1 > 1? no: 0; ratio 1 / 1: tanh(0) = 0
    assert bs.ties_score(ties) == pytest.approx(0.3 + 0.3)
    ties[1]["scores"] = [3.0, 2.9, 2.8, 1.0, 0.0]  # spread 0.2, margin 1.8; min(2, 1.8) = 1.8
    want = 0.3 + 0.3 + 0.2 + 0.2 + 0.01 * math.tanh(1.8 / 0.2 - 1)
    assert bs.ties_score(ties) == pytest.approx(want)
    rows = [{"subset": "Math", "scores": [2.0, 2.0, 0.0, 0.0], "num_correct": 1, "id": "1"},
            {"subset": "Focus", "scores": [1.0, 0.0, 0.0, 0.0], "num_correct": 1, "id": "2"},
            *[{**t, "subset": "Ties"} for t in ties]]  # fmt: skip
    got = bs.rewardbench2(rows)
    assert got["subsets"] == {"Math": 0.5, "Focus": 1.0, "Ties": pytest.approx(want)}
    assert got["score"] == pytest.approx((0.5 + 1.0 + want) / 3)


def test_rmbench_levels_by_hand():
    # chosen beats rejected only when it is at least as styled: the diagonal and lower-left
    chosen, rejected = [1.0, 2.0, 3.0], [1.5, 2.5, 3.5]
    got = bs.rmbench(["chat", "safety-refuse"], [chosen, [9.0] * 3], [rejected, [0.0] * 3])
    # chat: [[0,0,0],[1,0,0],[1,1,0]] -> hard 0, normal 0, easy 1; safety all 1
    assert got["domains"]["chat"] == {"hard": 0.0, "normal": 0.0, "easy": 1.0, "score": 1 / 3}
    assert got["domains"]["safety"]["score"] == 1.0
    assert got["levels"] == {"hard": 0.5, "normal": 0.5, "easy": 1.0}
    assert got["score"] == pytest.approx((1 / 3 + 1) / 2)
    # the leaderboard's definition: the level average and the domain average are both Overall
    assert sum(got["levels"].values()) / 3 == pytest.approx(got["score"])


def test_rmbench_safety_pools_its_two_subdomains():
    # safety-refuse all right, safety-response all wrong: Safety is 0.5 at every level
    got = bs.rmbench(["safety-refuse", "safety-response"], [[1.0] * 3, [0.0] * 3], [[0.0] * 3] * 2)
    assert got["domains"] == {"safety": {"hard": 0.5, "normal": 0.5, "easy": 0.5, "score": 0.5}}


# ------------------------------------------------------------ against the authors' code


def _package_functions() -> dict:
    """calculate_scores_per_section, sample_stats, process_single_model and
    reroll_and_score_dataset from the installed rewardbench package's utils.py, run as they are
    (the package's own imports pull in fastchat and its model zoo, not installed)."""
    import importlib.util

    import pandas as pd
    from datasets import Dataset

    spec = importlib.util.find_spec("rewardbench")
    if spec is None:
        pytest.skip("the rewardbench package is not installed (make install adds it)")
    folder = Path(spec.origin).parent
    source = (folder / "utils.py").read_text()
    wanted = {"calculate_scores_per_section", "sample_stats", "process_single_model",
              "reroll_and_score_dataset"}  # fmt: skip
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    space = {"np": np, "math": math, "pd": pd, "Dataset": Dataset}
    exec(compile(tree, str(folder / "utils.py"), "exec"), space)  # noqa: S102
    constants = {}
    exec((folder / "constants.py").read_text(), constants)  # noqa: S102
    return {**{k: space[k] for k in wanted}, **constants}


def test_the_arithmetic_equals_the_rewardbench_package():
    pkg = _package_functions()
    assert {k: tuple(v) for k, v in pkg["SUBSET_MAPPING"].items()} == bs.SUBSET_MAPPING
    assert pkg["EXAMPLE_COUNTS"] == bs.EXAMPLE_COUNTS
    rng = np.random.default_rng(0)
    rows = rb_rows()
    chosen, rejected = rng.normal(size=len(rows)), rng.normal(size=len(rows))
    ours = bs.rewardbench([r["subset"] for r in rows], chosen, rejected)
    per = {}
    for r, c, j in zip(rows, chosen, rejected, strict=True):
        per.setdefault(r["subset"], []).append(1 if c > j else 0)
    per = {s: sum(v) / len(v) for s, v in per.items()}
    theirs = pkg["calculate_scores_per_section"](pkg["EXAMPLE_COUNTS"], pkg["SUBSET_MAPPING"], per)
    assert ours["sections"] == pytest.approx(theirs)

    from datasets import Dataset

    rows2 = rb2_rows()
    scores = [
        list(rng.integers(0, 3, size=len(r["chosen"]) + len(r["rejected"])).astype(float))
        for r in rows2
    ]  # fmt: skip  (small integers: ties of the best reward happen)
    best = [r for r in rows2 if r["subset"] != "Ties"]
    flat = [{"text": str(i), "scores": s, "id": str(n)}
            for n, (r, sc) in enumerate(zip(rows2, scores, strict=True)) if r["subset"] != "Ties"
            for i, s in enumerate(sc)]  # fmt: skip
    rerolled = pkg["reroll_and_score_dataset"](Dataset.from_list(flat), [4] * len(best))
    mine = [bs.best_of_n(sc) for r, sc in zip(rows2, scores, strict=True) if r["subset"] != "Ties"]
    assert mine == pytest.approx(list(rerolled["results"]))
    ties = [{"id": r["id"], "num_correct": r["num_correct"], "scores": [[s] for s in sc]}
            for r, sc in zip(rows2, scores, strict=True) if r["subset"] == "Ties"]  # fmt: skip
    _, theirs_ties = pkg["process_single_model"](Dataset.from_list(ties))
    flat_ties = [{**t, "scores": [s[0] for s in t["scores"]]} for t in ties]
    assert bs.ties_score(flat_ties) == pytest.approx(theirs_ties)


# ------------------------------------------------------------------ eval --benchmark


@pytest.mark.parametrize(
    ("name", "rows"), [("rewardbench", rb_rows), ("rewardbench2", rb2_rows), ("rmbench", rmb_rows)]
)
def test_eval_benchmark_scores_the_rewards_of_rmtrain_score(trained, tmp_path, name, rows):
    model, _ = trained
    data = write(tmp_path / f"{name}.jsonl", rows())
    out = tmp_path / "report"
    args = ["eval", "--model", str(model), "--benchmark", name, "--benchmark-data", str(data)]
    assert main([*args, "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rewards = json.loads((out / "rewards.json").read_text())
    # the same texts through `rmtrain score`
    records = [{"prompt": r["prompt"], "response": a} for r in rows()
               for a in ([r["chosen"], r["rejected"]] if name == "rewardbench"
                         else [*r["chosen"], *r["rejected"]])]  # fmt: skip
    src, scored = write(tmp_path / "in.jsonl", records), tmp_path / "scored.jsonl"
    assert main(["score", "--model", str(model), "--input", str(src), "--output", str(scored)]) == 0
    want = [json.loads(line)["reward"] for line in scored.read_text().splitlines()]
    assert [x for row in rewards for x in row] == pytest.approx(want, abs=1e-6)
    assert report["prompts"] == len(rows()) and report["unscored_rows"] == 0
    # the report's score is the arithmetic applied to those rewards
    if name == "rewardbench":
        again = bs.rewardbench([r["subset"] for r in rows()], *zip(*rewards, strict=True))
    elif name == "rewardbench2":
        again = bs.rewardbench2(
            [
                {**r, "num_correct": len(r["chosen"]), "scores": s}
                for r, s in zip(rows(), rewards, strict=True)
            ]  # fmt: skip
        )
    else:
        again = bs.rmbench([r["domain"] for r in rows()], [x[:3] for x in rewards],
                           [x[3:] for x in rewards])  # fmt: skip
    assert report["score"] == pytest.approx(again["score"])
    assert (out / "report.md").read_text().startswith(f"# {name}: {100 * again['score']:.1f}")
    assert report["plots"] and all((out / p).is_file() for p in report["plots"])


def test_benchmark_errors_are_one_line(trained, tmp_path, capsys):
    model, _ = trained
    base = ["eval", "--model", str(model), "--output", str(tmp_path / "o")]
    missing = write(tmp_path / "rb.jsonl", [r for r in rb_rows() if r["subset"] != "donotanswer"])
    wrong = write(tmp_path / "rb2.jsonl", rb_rows())  # RewardBench rows for RewardBench 2
    ties = rb2_rows()
    ties[10]["id"] = "7"  # the first Ties row
    bad_ties = write(tmp_path / "ties.jsonl", ties)
    cases = [
        (["--benchmark", "rewardbench", "--benchmark-data", str(missing)],
         f"{missing}: rewardbench needs every subset; missing: donotanswer"),
        (["--benchmark", "rewardbench2", "--benchmark-data", str(wrong)],
         f"{wrong}: row 0 has no list 'chosen': not rewardbench2's schema "
         "(columns prompt, chosen, rejected, subset)"),
        (["--benchmark", "rewardbench2", "--benchmark-data", str(bad_ties)],
         f"{bad_ties}: row 10 (Ties) needs an id 'ref:N' or 'tied:N', got '7'"),
        (["--benchmark-data", str(wrong), "--dataset", str(wrong)],
         "--benchmark-data is a local copy for --benchmark NAME: pass both"),
        (["--benchmark", "rmbench", "--dataset", str(wrong)],
         "eval takes --dataset (one or more) or --benchmark NAME: pass one"),
    ]  # fmt: skip
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        assert capsys.readouterr().err == f"rmtrain: error: {message}\n"
    with pytest.raises(SystemExit):  # argparse: the choices
        main([*base, "--benchmark", "helm"])
    assert "invalid choice: 'helm'" in capsys.readouterr().err


def test_scores_go_to_mlflow_and_the_registered_version(trained, tmp_path):
    """`--report-to mlflow` on a registered model: a run with one metric per section and the
    score as a tag of the version (the suite's SQLite store)."""
    import os

    from mlflow import MlflowClient

    model, _ = trained
    assert main(["log-model", str(model), "--register-model", "bench-rm"]) == 0
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (version,) = client.search_model_versions("name='bench-rm'")
    uri = f"models:/bench-rm/{version.version}"
    data = write(tmp_path / "rmb.jsonl", rmb_rows())
    out = tmp_path / "report"
    args = ["eval", "--model", uri, "--benchmark", "rmbench", "--benchmark-data", str(data)]
    assert main([*args, "--output", str(out), "--report-to", "mlflow"]) == 0
    report = json.loads((out / "report.json").read_text())
    experiment = client.get_run(version.run_id).info.experiment_id
    (run,) = client.search_runs([experiment], f"attributes.run_name = 'rmbench | {uri}'")
    metrics = run.data.metrics
    assert metrics["rmbench"] == pytest.approx(report["score"])
    assert metrics["rmbench/levels/hard"] == pytest.approx(report["levels"]["hard"])
    assert metrics["rmbench/domains/code"] == pytest.approx(report["domains"]["code"]["score"])
    assert run.data.tags["benchmark_prompts"] == "5"
    tags = client.get_model_version("bench-rm", version.version).tags
    assert tags["rmbench_score"] == f"{report['score']:.4f}"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "benchmark")}
    assert "benchmark/report.json" in files


def test_card_section_is_added_then_replaced():
    from rmtrain.evaluation.model_card import with_benchmark

    card = "# RM\n\n## Held-out metrics\n\nwin\n\n## Training command\n\nx\n"
    once = with_benchmark(card, "rmbench", {"score": 0.5, "hard": 0.25}, "v1; 5 prompts.")
    assert once == (
        "# RM\n\n## Held-out metrics\n\nwin\n\n## rmbench\n\nv1; 5 prompts.\n\n"
        "| | score (%) |\n|---|---:|\n| score | 50.0 |\n| hard | 25.0 |\n\n"
        "## Training command\n\nx\n"
    )
    twice = with_benchmark(once, "rmbench", {"score": 0.75}, "v1; 5 prompts.")
    assert twice.count("## rmbench") == 1 and "| score | 75.0 |" in twice
    assert "| hard |" not in twice and twice.endswith("## Training command\n\nx\n")


def test_card_flag_writes_only_into_a_folder_rmtrain_trained(trained, tmp_path, capsys):
    import shutil

    model, _ = trained
    folder = tmp_path / "rm"
    shutil.copytree(model, folder)  # the shared trained model stays as it is
    data = write(tmp_path / "rmb.jsonl", rmb_rows())
    args = ["eval", "--model", str(folder), "--benchmark", "rmbench", "--benchmark-data", str(data)]
    assert main([*args, "--output", str(tmp_path / "r1"), "--card", "true"]) == 0
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    card = (folder / "README.md").read_text()
    assert card.count("## rmbench") == 1
    assert f"| score | {100 * report['score']:.1f} |" in card
    assert card.index("## rmbench") < card.index("## Training command")
    assert main([*args, "--output", str(tmp_path / "r2"), "--card", "true"]) == 0
    assert (folder / "README.md").read_text().count("## rmbench") == 1  # replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("my notes")
    capsys.readouterr()
    argv = [*args, "--output", str(tmp_path / "r3"), "--card", "true"]
    argv[argv.index(str(folder))] = str(other)
    assert main(argv) == 2
    assert "--card writes into a model folder rmtrain trained" in capsys.readouterr().err
    assert (other / "README.md").read_text() == "my notes" and not (tmp_path / "r3").exists()
