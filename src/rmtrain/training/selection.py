"""`--keep-best`: the saved model is the one with the best held-out win rate seen at the
evaluations during training (ties: the lower held-out loss), not simply the last."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import TrainerCallback

from rmtrain.training.checkpoints import saved_checkpoint

BEST_FILE = "keep_best.pt"  # in each checkpoint: the best weights so far, and their score


class KeepBest(TrainerCallback):
    """Keeps a CPU copy of the weights at the best evaluation and restores it when training
    ends, before the recipe's final evaluation and save. Each checkpoint carries that copy, so
    a resumed run ends as the uninterrupted one would."""

    def __init__(self, resume_from: str | None = None) -> None:
        self.best: tuple[float, float] | None = None  # (win rate, -loss)
        self.best_step: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.weights: dict[str, torch.Tensor] | None = None
        self.resume_from = resume_from

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        file = os.path.join(self.resume_from or "", BEST_FILE)
        if self.resume_from and os.path.isfile(file):
            saved = torch.load(file, map_location="cpu", weights_only=True)
            self.weights = saved["weights"]
            self.best = tuple(json.loads(saved["best"]))
            self.best_step = int(saved["step"])
            self.best_metrics = json.loads(saved["metrics"])

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        folder = saved_checkpoint(args, state)
        if self.weights is None or folder is None:
            return
        record = {
            "weights": self.weights,
            "best": json.dumps(list(self.best or ())),
            "step": torch.tensor(self.best_step),
            "metrics": json.dumps(self.best_metrics),
        }
        torch.save(record, os.path.join(folder, BEST_FILE))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics=None, **kw: Any) -> None:
        metrics = metrics or {}
        if "eval_win_rate" not in metrics or kw.get("model") is None:
            return
        score = (metrics["eval_win_rate"], -metrics.get("eval_loss", 0.0))
        if self.best is None or score > self.best:
            self.best, self.best_step = score, state.global_step
            self.best_metrics = {k: v for k, v in metrics.items() if k.startswith("eval_")}
            model = kw["model"]
            self.weights = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        model = kw.get("model")
        if self.weights is None or model is None or self.best_step == state.global_step:
            return
        model.load_state_dict(self.weights)
        print(
            f"[rmtrain] --keep-best: kept the weights of step {self.best_step} (held-out win "
            f"rate {self.best[0]:.4f} on the evaluation sample), not those of step "
            f"{state.global_step}"
        )
