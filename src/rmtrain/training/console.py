"""What a training run prints: one progress bar, each log as one readable line above it, no
second bar for the evaluations during training."""

from __future__ import annotations

from typing import Any

from transformers import ProgressCallback


def format_log(step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """One line per log: the step, then the training or held-out numbers it carries."""
    if "eval_win_rate" in logs:
        pairs = int(logs.get("eval_num_pairs", 0))
        return (
            f"step {step}/{max_steps}  held-out ({pairs} pairs): win rate "
            f"{logs['eval_win_rate']:.4f}  Kendall's tau {logs.get('eval_kendall_tau', 0):.4f}  "
            f"loss {logs.get('eval_loss', float('nan')):.4f}"
        )
    if "train_runtime" in logs:
        return f"trained {step} steps in {logs['train_runtime']:.1f} s"
    parts = [f"step {step}/{max_steps}"]
    for key, label in (("loss", "loss"), ("grad_norm", "grad norm"), ("learning_rate", "lr")):
        if isinstance(logs.get(key), int | float):
            parts.append(f"{label} {logs[key]:.4g}")
    parts += [f"{k} {v:.4g}" for k, v in logs.items() if k.endswith("_loss") and k != "loss"]
    return "  ".join(parts)


class ConsoleProgress(ProgressCallback):
    """transformers' progress bar with `format_log` lines; evaluations show no bar of their own
    (they would interleave with the training bar)."""

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        return None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any):
        if not state.is_world_process_zero or not logs:
            return
        line = format_log(state.global_step, state.max_steps, logs)
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:  # the final evaluation, after the bar closed
            print(line, flush=True)
