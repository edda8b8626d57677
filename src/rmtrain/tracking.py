"""Experiment tracking: MLflow and W&B runs that work offline by default.

rmtrain opens the runs itself (so the final evaluation lands in the same run as training) and
transformers' callbacks log params, losses and eval metrics into them. MLflow writes a local
store under the output folder unless MLFLOW_TRACKING_URI is set; W&B runs offline unless
WANDB_MODE says otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from rmtrain.errors import RmtrainError

# MLflow's set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment, so read the
# user's choice once, before any run of this process changes it.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(log_dir: Path) -> str:
    """The user's MLflow store if they set one, else a file store under the output folder."""
    return USER_TRACKING_URI or (log_dir / "mlruns").resolve().as_uri()


def start_tracking(
    report_to: list[str],
    log_dir: Path,
    run_name: str,
    params: dict[str, Any],
    nested: bool = False,
    mlflow_uri: str | None = None,
) -> list[str]:
    """Open the runs (as a child of the active MLflow run when `nested`, e.g. an HPO trial);
    returns the `report_to` list for `TrainingArguments`."""
    chosen = [r for r in report_to if r != "none"]
    for name in chosen:
        if importlib.util.find_spec(name) is None:
            raise RmtrainError(f"--report-to {name} needs the {name} package: pip install {name}")
    flat = {f"rmtrain.{k}": str(v)[:250] for k, v in params.items()}
    if "mlflow" in chosen:
        import mlflow

        # MLflow 3 keeps its file store in maintenance mode behind this switch; it needs no
        # database server and `mlflow ui --backend-store-uri <dir>` reads it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(mlflow_uri or tracking_uri(log_dir))
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "rmtrain"))
        if mlflow.active_run() is not None and not nested:
            mlflow.end_run()
        mlflow.start_run(run_name=run_name, nested=nested and mlflow.active_run() is not None)
        mlflow.log_params(flat)
    if "wandb" in chosen:
        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        wandb.init(
            project=os.environ.get("WANDB_PROJECT", "rmtrain"),
            name=run_name,
            dir=str(log_dir.resolve()),
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=params,
            reinit="finish_previous",
        )
    return chosen or ["none"]


def finish_tracking(
    report_to: list[str], metrics: dict[str, Any], counts: dict[str, Any], failed: bool = False
) -> None:
    """Log the final metrics and data counts, then close the runs."""
    flat = {f"final_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    flat.update({f"data_{k}": float(v) for k, v in counts.items() if isinstance(v, int | float)})
    if "mlflow" in report_to:
        import mlflow

        if mlflow.active_run() is not None:
            if flat:
                mlflow.log_metrics(flat)
            mlflow.end_run(status="FAILED" if failed else "FINISHED")
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            if flat:
                wandb.log(flat)
            wandb.finish(exit_code=1 if failed else 0)
