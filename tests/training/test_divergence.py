"""A run that did not learn is never reported as a model: finite divergence (a held-out loss far
above chance or the run's start, or a win rate at chance while the training loss rose) ends
with exit 2 and one line; the folder is kept, marked, and not logged to MLflow."""

import json
import math

import pytest

from rmtrain.cli import main
from rmtrain.training.checkpoints import divergence_reason
from tests.helpers import tiny_train_args, write_demo


def test_divergence_rules_by_hand():
    # a held-out loss above 4 x max(ln 2, the first training loss) = 4 x 0.72 = 2.88
    assert divergence_reason([0.72, 0.50], 2.87, 0.9) is None
    assert "held-out loss 2.9 is far above chance" in divergence_reason([0.72, 0.50], 2.9, 0.9)
    # a first loss below ln 2 still allows 4 x ln 2 = 2.7726
    assert divergence_reason([0.3, 0.2], 2.77, 0.6) is None
    assert divergence_reason([0.3, 0.2], 2.78, 0.6) is not None
    # win rate at chance while the loss rose by more than max(0.1, 25%): 0.72 -> above 0.90
    assert divergence_reason([0.72, 0.89], 0.7, 0.5) is None
    why = divergence_reason([0.72, 0.91], 0.7, 0.5)
    assert why == (
        "held-out win rate 0.500 is at or below chance while the training loss rose from 0.72 "
        "to 0.91"
    )
    assert divergence_reason([0.72, 4.7], 0.7, 0.51) is None  # above chance: it learnt
    assert divergence_reason([], math.log(2), 0.5) is None  # nothing trained, nothing rose
    assert divergence_reason([0.7, 0.6], float("nan"), 0.5) is not None


def test_a_finite_divergence_exits_2_and_is_marked_not_registered(tmp_path, capsys):
    import mlflow

    data = write_demo(tmp_path / "good.jsonl", 60, seed=0)
    out = tmp_path / "div"
    args = ["--max-steps", "12", "--lr", "10", "--max-grad-norm", "0", "--max-length", "64"]
    args += ["--report-to", "mlflow", "--register-model", "diverged-rm"]
    assert main(tiny_train_args(data, out, *args)) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("rmtrain: error")]
    assert "training diverged: held-out loss" in line and "Traceback" not in err
    result = json.loads((out / "metrics.json").read_text())
    assert result["diverged"].startswith("held-out loss")
    assert result["metrics"]["loss"] > 4 * math.log(2)
    config = json.loads((out / "config.json").read_text())
    assert config["rmtrain"]["diverged"] == result["diverged"]
    assert "**Diverged: do not use.**" in (out / "README.md").read_text()
    client = mlflow.MlflowClient()
    assert client.search_registered_models("name='diverged-rm'") == []
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    mine = [r for r in runs if r.data.params.get("rmtrain.output") == str(out)]
    assert mine and all(r.info.status == "FAILED" for r in mine)
    assert not any(r.outputs and r.outputs.model_outputs for r in mine)


@pytest.mark.parametrize("lr", ["1e-3"])
def test_a_run_that_learnt_is_not_flagged(tmp_path, lr):
    data = write_demo(tmp_path / "good.jsonl", 60, seed=0)
    out = tmp_path / "ok"
    assert main(tiny_train_args(data, out, "--max-steps", "12", "--lr", lr)) == 0
    assert "diverged" not in json.loads((out / "metrics.json").read_text())
