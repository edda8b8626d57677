"""Experiment tracking runs: MLflow and W&B, opened by rmtrain so that training, the final
evaluation, the artifacts and the logged model land in one run.

MLflow logs where MLflow's own tools look: `MLFLOW_TRACKING_URI` when set (a server, a
database, a path), else `sqlite:///mlflow.db` in the working directory, so `mlflow ui` run
there shows every run and model. W&B runs offline unless WANDB_MODE says otherwise. A tracking
server that stops answering mid-run costs a warning, never the trained model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rmtrain.errors import RmtrainError, first_line

DEFAULT_STORE = "mlflow.db"  # MLflow's own default store name, in the working directory
# Fail fast against an unreachable server (MLflow's defaults retry for minutes); a user's
# own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# W&B online waits this long for its server before the run fails in one line (its own default
# is 90 s); WANDB_INIT_TIMEOUT wins.
WANDB_INIT_TIMEOUT = 20.0


def tracking_uri() -> str:
    """The user's MLflow store if they set one, else the SQLite store MLflow's tools default to,
    in the working directory (as an absolute URI: later changes of directory do not move it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def start_tracking(
    report_to: list[str],
    log_dir: Path,
    run_name: str,
    params: dict[str, Any],
    nested: bool = False,
    mlflow_uri: str | None = None,
) -> list[str]:
    """Open the runs (as a child of the active MLflow run when `nested`, e.g. an HPO trial);
    returns the trackers in use. MLflow is logged by `MlflowMetrics`, not transformers'
    callback, so a failing server does not stop training."""
    chosen = [r for r in report_to if r != "none"]
    for name in chosen:
        if importlib.util.find_spec(name) is None:
            raise RmtrainError(f"--report-to {name} needs the {name} package: pip install {name}")
    if "wandb" in chosen:
        start_wandb_run(run_name, params)
    if "mlflow" in chosen:
        try:
            start_mlflow_run(mlflow_uri or tracking_uri(), run_name, params, nested)
        except BaseException:
            finish_tracking(["wandb"] if "wandb" in chosen else [], failed=True)
            raise
    return chosen or ["none"]


def start_wandb_run(run_name: str, params: dict[str, Any]) -> None:
    """A W&B run, offline unless WANDB_MODE says otherwise; one that cannot start (no key, no
    network) is one line naming the offline mode."""
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or WANDB_INIT_TIMEOUT)
    try:
        wandb.init(  # its files go to $WANDB_DIR or ./wandb, never into the model folder
            project=os.environ.get("WANDB_PROJECT", "rmtrain"),
            name=run_name,
            dir=os.environ.get("WANDB_DIR") or None,
            mode=mode,
            config=params,
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=timeout),
        )
    except Exception as exc:  # noqa: BLE001 - wandb's errors, and its network stack's
        raise RmtrainError(
            f"W&B could not start a run (WANDB_MODE={mode}): "
            f"{first_line(exc, limit=1000)}; train with WANDB_MODE=offline "
            "(and `wandb sync` later) or --report-to without wandb"
        ) from None


def start_mlflow_run(uri: str, run_name: str, params: dict[str, Any], nested: bool) -> None:
    import mlflow

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    check_sqlite_store(uri)
    try:
        mlflow.set_tracking_uri(uri)
        _experiment(uri, os.environ.get("MLFLOW_EXPERIMENT_NAME", "rmtrain"))
        if mlflow.active_run() is not None and not nested:
            mlflow.end_run()
        mlflow.start_run(run_name=run_name, nested=nested and mlflow.active_run() is not None)
        mlflow.log_params({f"rmtrain.{k}": str(v)[:250] for k, v in params.items()})
        specs = params.get("dataset") or []
        log_datasets([specs] if isinstance(specs, str) else specs, params.get("dataset_split"))
    except Exception as exc:  # noqa: BLE001 - any store failure: one line, before training
        raise RmtrainError(
            f"cannot log to MLflow at {uri} ({type(exc).__name__}: {str(exc)[:160]}); start "
            "the tracking server, set MLFLOW_TRACKING_URI, or pass --report-to none"
        ) from None


def log_datasets(specs: list[str], split: str | None) -> None:
    """The data sets as the active run's dataset inputs (the Datasets column of MLflow's run
    list): a local file by its absolute path, a hub data set by name and split, a builtin by
    name; a mixing weight as a tag. No data is read or copied."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    from rmtrain.data.splits import parse_dataset_spec

    for spec in specs:
        name, weight = parse_dataset_spec(str(spec))
        local = Path(name).expanduser()
        if name.startswith("builtin:"):
            source: Any = CodeDatasetSource({"rmtrain.builtin": name})
        elif local.exists():
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": a file
                warnings.simplefilter("ignore")
                source, name = resolve_dataset_source(str(local.resolve())), local.name
        else:
            source = HuggingFaceDatasetSource(name, split=split or "train")
        tags = {"weight": f"{weight:g}"} if weight is not None else None
        mlflow.log_input(MetaDataset(source, name=name), context="training", tags=tags)


def check_sqlite_store(uri: str) -> None:
    """A SQLite store that cannot be opened for writing fails here at once (MLflow retries it
    for about two minutes before its own error)."""
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    path = Path(uri.removeprefix("sqlite:///"))
    problem = None
    if path.exists():
        if path.is_dir():
            problem = "a folder"
        elif not os.access(path, os.R_OK | os.W_OK):
            problem = "not writable"
        else:
            try:  # read only: no lock taken, whoever else writes the store
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                    db.execute("PRAGMA schema_version").fetchone()
            except sqlite3.Error as exc:
                problem = str(exc)
    elif not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f"{path.parent} is not a writable folder"
    if problem:
        raise RmtrainError(
            f"cannot use the MLflow store {path} ({problem}); set MLFLOW_TRACKING_URI to a "
            "writable place (e.g. sqlite:///$HOME/mlflow.db), or pass --report-to none"
        )


def _experiment(uri: str, name: str) -> None:
    """Select experiment `name`, creating it with its artifacts beside a SQLite store's file
    (MLflow's own default puts them under the working directory, wherever that is)."""
    import mlflow

    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        root = Path(uri.removeprefix("sqlite:///")).parent / "mlruns"
        with contextlib.suppress(Exception):  # another process may create it first
            mlflow.create_experiment(name, artifact_location=root.resolve().as_uri())
    mlflow.set_experiment(name)


def trainer_report_to(chosen: list[str]) -> list[str]:
    """What transformers' own callbacks report to: W&B; MLflow goes through `MlflowMetrics`."""
    return [r for r in chosen if r == "wandb"] or ["none"]


def log_metrics(metrics: dict[str, Any], step: int) -> bool:
    """Numeric `metrics` at `step` into the active MLflow run; False when the store failed."""
    import mlflow

    flat = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    if not flat or mlflow.active_run() is None:
        return True
    try:
        mlflow.log_metrics(flat, step=step)
    except Exception as exc:  # noqa: BLE001 - the store, not training, failed
        print(f"[rmtrain] MLflow stopped answering ({type(exc).__name__}); training goes on")
        return False
    return True


class MlflowMetrics(TrainerCallback):
    """Training's logs (loss every --logging-steps, held-out metrics every --eval-steps and at
    the end) into the active MLflow run at their step; after the store fails once, training
    goes on without it."""

    def __init__(self) -> None:
        self.working = True

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any):
        if self.working and logs:
            self.working = log_metrics(logs, state.global_step)


def log_final(trackers: list[str], metrics: dict[str, Any], counts: dict[str, Any], step: int):
    """The final metrics and data counts, at the final step (the end of the step charts)."""
    flat = {f"final_{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
    flat.update({f"data_{k}": v for k, v in counts.items() if isinstance(v, int | float)})
    if "mlflow" in trackers:
        log_metrics(flat, step)
    if "wandb" in trackers:
        import wandb

        if wandb.run is not None and flat:
            wandb.log({k: float(v) for k, v in flat.items()}, step=step)


def log_report_to_wandb(report_dir: Path) -> None:
    """The evaluation report's plots (as images) and numbers (as a table) into the W&B run."""
    import wandb

    if wandb.run is None or not report_dir.is_dir():
        return
    images = {f"report/{p.stem}": wandb.Image(str(p)) for p in sorted(report_dir.glob("*.png"))}
    report = report_dir / "report.json"
    if report.is_file():
        sections = json.loads(report.read_text()).get("datasets", {})
        rows = [_table_row(name, s) for name, s in sections.items()]
        columns = ["data", "pairs", "win_rate", "kendall_tau", "prefer_longer"]
        images["report/held_out"] = wandb.Table(columns=columns, data=rows)
        probes = robustness_rows(sections)
        if probes:
            images["report/robustness"] = wandb.Table(columns=ROBUSTNESS_COLUMNS, data=probes)
    if images:
        wandb.log(images)


ROBUSTNESS_COLUMNS = [
    "data", "probe", "expect", "mean_change", "ci_low", "ci_high", "share_higher",
    "win_rate_after", "wrong_way",
]  # fmt: skip


def robustness_rows(sections: dict[str, Any]) -> list[list[Any]]:
    """The probe tables of a report's data sets as rows (W&B and MLflow tables)."""
    return [
        [name, probe, r["expect"], r["mean_change"], *r["mean_change_ci95"], r["share_higher"],
         r["win_rate_after"], bool(r["flags"])]
        for name, section in sections.items()
        for probe, r in section.get("robustness", {}).items()
    ]  # fmt: skip


def _table_row(name: str, section: dict[str, Any]) -> list[Any]:
    metrics = section.get("metrics", {})
    longer = section.get("baselines", {}).get("longer_response")
    keys = ("num_pairs", "win_rate", "kendall_tau")
    return [name, *(metrics.get(k) for k in keys), longer]


def finish_tracking(trackers: list[str], failed: bool = False) -> None:
    """Close the runs."""
    if "mlflow" in trackers:
        import mlflow

        if mlflow.active_run() is not None:
            # end_run leaves the run before telling the store: a dead store only loses the status
            with contextlib.suppress(Exception):
                mlflow.end_run(status="FAILED" if failed else "FINISHED")
    if "wandb" in trackers:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
