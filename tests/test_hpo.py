"""Optuna search over a tiny Qwen3, offline."""

import json
import os

import optuna
import pytest
import yaml

from rmtrain.cli import main
from tests.helpers import write_demo

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "center_rewards_coef": {"type": "float", "low": 0.0, "high": 0.01},
    "batch": {"type": "categorical", "choices": [2, 4]},
}

pytestmark = pytest.mark.slow  # subprocesses / whole studies; CI runs them too


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hpo")
    data = write_demo(tmp / "prefs.jsonl", 60, seed=4)
    base = {
        "model": "builtin:tiny-qwen3",
        "dataset": str(data),
        "frac": 1.0,
        "max_length": 96,
        "max_steps": 2,
        "eval_steps": 1,
        "logging_steps": 1,
        "report_to": ["mlflow"],
        "seed": 1,
    }
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return tmp


def hpo(setup, out, n, *extra):
    return main(
        [
            "hpo",
            "--config",
            str(setup / "base.yaml"),
            "--space",
            str(setup / "space.yaml"),
            "--n-trials",
            str(n),
            "--output",
            str(out),
            *extra,
        ]
    )


def trial_numbers(out):
    study = optuna.load_study(study_name="rmtrain-hpo", storage=f"sqlite:///{out / 'study.db'}")
    return [(t.number, t.state.name) for t in study.trials]


def test_search_resumes_without_repeating_and_writes_results(setup, tmp_path):
    out = tmp_path / "study"
    assert hpo(setup, out, 2) == 0  # "interrupted" after two trials
    first = trial_numbers(out)
    assert [n for n, _ in first] == [0, 1]
    assert hpo(setup, out, 3) == 0  # resumed: only the third trial runs
    states = trial_numbers(out)
    assert [n for n, _ in states] == [0, 1, 2] and states[:2] == first
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    assert hpo(setup, out, 3) == 0 and len(trial_numbers(out)) == 3  # nothing left to do
    for name in ("best_config.yaml", "trials.csv", "optimization_history.png", "summary.yaml"):
        assert (out / name).is_file(), name
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 4
    # trials are MLflow children of the study run
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    trials = [r for r in runs if str(out) in r.data.params.get("rmtrain.output", "")]
    parents = {r.data.tags.get("mlflow.parentRunId") for r in trials}
    assert len(trials) >= 3 and None not in parents and len(parents) <= 2


def test_best_config_round_trips_through_train(setup, tmp_path):
    out = tmp_path / "study"
    assert hpo(setup, out, 1) == 0
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["output"]["output"] == str(out / "best_model") and "lr" in best["training"]
    assert main(["train", "--config", str(out / "best_config.yaml"), "--report-to", "none"]) == 0
    assert (out / "best_model" / "config.json").is_file()


class AlwaysPruneLater(optuna.pruners.BasePruner):
    """Prunes every trial after the first at its first report."""

    def prune(self, study, trial):
        return trial.number > 0


def test_pruned_and_failed_trials_are_recorded(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: AlwaysPruneLater())
    # a valid config whose trial fails when it runs (its data set does not exist)
    space = dict(SPACE, dataset={"type": "categorical", "choices": [str(tmp_path / "no.jsonl")]})
    (tmp_path / "bad_space.yaml").write_text(yaml.safe_dump(space))
    out2 = tmp_path / "study2"
    assert hpo(setup, out2, 2) == 0
    assert dict(trial_numbers(out2)) == {0: "COMPLETE", 1: "PRUNED"}
    out3 = tmp_path / "study3"
    code = main(
        [
            "hpo",
            "--config",
            str(setup / "base.yaml"),
            "--space",
            str(tmp_path / "bad_space.yaml"),
            "--n-trials",
            "1",
            "--output",
            str(out3),
        ]
    )
    assert code == 2  # every trial failed: the study says so and exits non-zero
    study = optuna.load_study(study_name="rmtrain-hpo", storage=f"sqlite:///{out3 / 'study.db'}")
    assert study.trials[0].state.name == "FAIL"
    assert "no.jsonl" in study.trials[0].user_attrs["error"]
    assert "every trial of the study failed" in capsys.readouterr().err


def test_the_best_trial_is_registered(setup, tmp_path):
    """`--register-model`: no trial registers itself; the best one is logged and registered,
    its tags naming its held-out win rate."""
    import yaml as _yaml
    from mlflow import MlflowClient

    out = tmp_path / "study"
    assert hpo(setup, out, 2, "--register-model", "hpo-best", "--model-alias", "best") == 0
    summary = _yaml.safe_load((out / "summary.yaml").read_text())
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (version,) = client.search_model_versions("name='hpo-best'")
    assert client.get_model_version_by_alias("hpo-best", "best").version == version.version
    best = f"trial-{summary['best_trial']:04d}"
    metrics = json.loads((out / best / "metrics.json").read_text())["metrics"]
    assert float(version.tags["win_rate"]) == pytest.approx(metrics["win_rate"], abs=1e-4)
    # the study's own run: the best value, the best trial's parameters, its files and plots
    (parent,) = client.search_runs(  # the newest study run: this test's
        [client.get_run(version.run_id).info.experiment_id],
        "attributes.run_name = 'rmtrain-hpo'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert parent.data.metrics["best_win_rate"] == pytest.approx(summary["best_value"])
    assert parent.data.tags["best_trial"] == str(summary["best_trial"])
    assert parent.data.tags["best.lr"] == str(summary["best_params"]["lr"])
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "summary.yaml", "best_config.yaml"} <= files
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {f"plots/{p}" for p in summary["plots"]} <= plots


def test_a_trial_left_running_by_a_kill_is_failed_and_replaced(setup, tmp_path, capsys):
    from rmtrain.outputs import write_owner

    out = tmp_path / "study"
    write_owner(out, "hpo", study="rmtrain-hpo")  # what the killed search had written first
    storage = f"sqlite:///{out / 'study.db'}"
    killed = optuna.create_study(study_name="rmtrain-hpo", storage=storage, direction="maximize")
    killed.ask()  # trial 0 RUNNING, as a SIGKILL mid-trial leaves it
    assert hpo(setup, out, 2, "--pruner", "none") == 0
    assert "1 trial(s) left running by a stopped search marked failed" in capsys.readouterr().out
    study = optuna.load_study(study_name="rmtrain-hpo", storage=storage)
    assert [(t.number, t.state.name) for t in study.trials] == [
        (0, "FAIL"),
        (1, "COMPLETE"),
        (2, "COMPLETE"),
    ]
    assert study.user_attrs["orphaned"] == [0]
    assert hpo(setup, out, 2) == 0 and len(trial_numbers(out)) == 3  # nothing owed


@pytest.mark.parametrize(
    "space, message",
    [
        ("lr: {type: float, low: 1.0, high: 0.1}", "'lr' needs low < high, got 1.0 and 0.1"),
        ("lr: {type: float, low: 0, high: 0.1, log: true}", "low must be above 0, got 0"),
        ("lr: {type: float, low: .nan, high: 0.1}", "'lr' needs finite numbers low and high"),
        ("batch: {type: int, low: a, high: 4}", "'batch' needs finite numbers low and high"),
        ("lr: {type: float, low: -1.0, high: 0.1}", "lr=-1.0: --lr must be a positive number"),
        ("nope: {type: int, low: 1, high: 2}", "'nope' is not a training option"),
    ],
)
def test_a_bad_space_stops_before_the_first_trial(setup, tmp_path, space, message, capsys):
    file = tmp_path / "space.yaml"
    file.write_text(space + "\n")
    args = ["hpo", "--config", str(setup / "base.yaml"), "--space", str(file)]
    assert main([*args, "--n-trials", "2", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # no trial ran, no study folder


def test_a_bad_metric_and_options_named_like_groups(setup, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("model: {type: categorical, choices: [builtin:tiny-qwen3]}\n")
    args = ["hpo", "--config", str(setup / "base.yaml"), "--space", str(space)]
    assert (
        main([*args, "--n-trials", "1", "--output", str(tmp_path / "m"), "--metric", "bogus"]) == 2
    )
    assert "--metric 'bogus' is not a held-out metric" in capsys.readouterr().err
    assert main([*args, "--n-trials", "1", "--output", str(tmp_path / "m")]) == 0


def test_training_options_after_the_double_dash_override_the_base(setup, tmp_path, capsys):
    """No YAML needed for a small study: training flags after `--` make (or override) the
    base config of every trial, and land in best_config.yaml."""
    import yaml as _yaml

    out = tmp_path / "study"
    argv = ["hpo", "--space", str(setup / "space.yaml"), "--n-trials", "1", "--output", str(out)]
    argv += ["--", "--model", "builtin:tiny-qwen3", "--dataset", str(setup / "prefs.jsonl")]
    argv += ["--frac", "1.0", "--max-length", "64", "--max-steps", "1", "--report-to", "none"]
    assert main(argv) == 0
    (trial,) = sorted(out.glob("trial-*"))
    saved = _yaml.safe_load((trial / "rmtrain_config.yaml").read_text())
    flat = {k: v for group in saved.values() if isinstance(group, dict) for k, v in group.items()}
    assert flat["max_steps"] == 1 and flat["max_length"] == 64
    assert flat["dataset"] == [str((setup / "prefs.jsonl").resolve())]
    best = _yaml.safe_load((out / "best_config.yaml").read_text())
    best_flat = {k: v for g in best.values() if isinstance(g, dict) for k, v in g.items()}
    assert best_flat["max_steps"] == 1 and best_flat["report_to"] == ["none"]
    capsys.readouterr()
    assert main([*argv, "--config", str(setup / "base.yaml")]) == 2
    assert "hpo's own --config, before the --" in capsys.readouterr().err


def test_continuing_a_study_in_the_other_direction_is_one_line(setup, tmp_path, capsys):
    """optuna would continue the stored study in its own direction and ignore the metric's:
    refused before any trial."""
    from rmtrain.outputs import write_owner

    out = tmp_path / "study"
    write_owner(out, "hpo", study="rmtrain-hpo")
    storage = f"sqlite:///{out / 'study.db'}"
    optuna.create_study(study_name="rmtrain-hpo", storage=storage, direction="maximize")
    assert hpo(setup, out, 1, "--metric", "loss") == 2  # loss is minimised
    assert capsys.readouterr().err == (
        f"rmtrain: error: the study 'rmtrain-hpo' in {storage} was started to maximize its "
        "metric; continue it with --direction maximize (and the same --metric), or pass a new "
        "--study-name\n"
    )
    assert not list(out.glob("trial-*"))
