"""`--keep-best`: the saved weights are those of the evaluation with the best held-out win
rate (ties: lower loss), and the run says which step."""

import json

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from rmtrain.config import build_config
from rmtrain.training.recipe import run_train


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
