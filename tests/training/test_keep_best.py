"""`--keep-best`: the saved weights are those of the evaluation with the best held-out win
rate (ties: lower loss), and the run says which step."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from rmtrain.cli import main
from rmtrain.config import build_config
from rmtrain.training.recipe import run_train
from tests.helpers import tiny_train_args, write_demo


class Snapshots(TrainerCallback):
    def __init__(self):
        self.evals = {}

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
        if metrics and "eval_win_rate" in metrics:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.evals[state.global_step] = (
                metrics["eval_win_rate"],
                metrics["eval_loss"],
                weights,
            )


def test_keep_best_saves_the_best_evaluation_and_names_it(tmp_path, capsys):
    cfg = build_config(
        {
            "model": "builtin:tiny-qwen3",
            "dataset": "builtin:demo",
            "frac": 0.3,
            "max_length": 64,
            "batch": 4,
            "lr": 3e-2,  # large steps: the held-out win rate moves up and down
            "max_steps": 8,
            "eval_steps": 1,
            "seed": 2,
            "keep_best": True,
            "report_to": ["none"],
            "output": str(tmp_path / "out"),
        }
    )
    snaps = Snapshots()
    result = run_train(cfg, [snaps])
    assert sorted(snaps.evals) == list(range(1, 9))  # the last step is a candidate too
    best = max(snaps.evals, key=lambda s: (snaps.evals[s][0], -snaps.evals[s][1]))
    assert result["metrics"]["kept_step"] == best
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    kept = snaps.evals[best][2]
    for key, value in saved.items():
        assert torch.equal(value, kept[key]), key
    assert best != 8  # this seed's best is an earlier step: the restore path runs
    out = capsys.readouterr().out
    assert f"--keep-best: kept the weights of step {best}" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert metrics["kept_step"] == best


@pytest.mark.slow
def test_a_resumed_run_keeps_the_best_weights_seen_before_it_stopped(tmp_path):
    """The run stopped after checkpoint 4 (a copy of a finished run, cut back to that state)
    and resumed ends as the uninterrupted run: same kept step, same weights."""
    import shutil

    data = write_demo(tmp_path / "d.jsonl", 60, seed=2)
    opts = ["--max-steps", "8", "--eval-steps", "2", "--keep-best", "--save-steps", "2"]
    opts += ["--save-total-limit", "8"]  # every checkpoint kept: the copy is cut back to 4
    opts += ["--lr", "0.05", "--logging-steps", "1", "--seed", "3"]
    whole = tmp_path / "whole"
    assert main(tiny_train_args(data, whole, *opts)) == 0
    kept = json.loads((whole / "metrics.json").read_text())["metrics"]["kept_step"]
    assert kept <= 4, "pick options whose best evaluation comes before the stop"
    stopped = tmp_path / "stopped"
    shutil.copytree(whole, stopped)
    for item in stopped.iterdir():
        if item.name not in (".rmtrain-output", "checkpoints", "data_report.json"):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    for ckpt in (stopped / "checkpoints").glob("checkpoint-*"):
        if int(ckpt.name.removeprefix("checkpoint-")) > 4:
            shutil.rmtree(ckpt)
    assert main(tiny_train_args(data, stopped, *opts, "--resume")) == 0
    again = json.loads((stopped / "metrics.json").read_text())["metrics"]
    assert again["kept_step"] == kept
    a, b = (load_file(str(f / "model.safetensors")) for f in (whole, stopped))
    assert all(torch.equal(a[k], b[k]) for k in a)
