"""`rmtrain hpo`: hyperparameter search with Optuna over any training option.

Each trial is a normal `rmtrain train` run in `OUTPUT/trial-NNNN`, logged to MLflow as a child
of the study run. The study lives in SQLite under OUTPUT by default, so a killed search resumes
where it stopped (finished trials are not repeated) and several processes can share it.
Intermediate eval results feed a pruner (median by default). At the end: `best_config.yaml`
(accepted by `rmtrain train --config` as is), `trials.csv`, and PNG plots.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from rmtrain.config import TrainConfig, build_config, load_yaml, save_config
from rmtrain.errors import RmtrainError
from rmtrain.options import HpoConfig

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
# held-out metrics a study can optimise (what every evaluation reports)
HPO_METRICS = ("win_rate", "kendall_tau", "loss", "margin_mean")


SPEC_KEYS = {"type", "low", "high", "log", "choices", "step"}


def _read_space(path: str) -> dict[str, Any]:
    """The space file as written: `option: spec` (a spec is a mapping with `type`, so an option
    named like a config group, such as `model` or `speed`, is an option here), or grouped."""
    file = Path(path)
    if not file.is_file():
        raise RmtrainError(f"search space {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RmtrainError(f"search space {path} is not valid YAML: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise RmtrainError(f"search space {path} must map options to their ranges")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        is_group = isinstance(value, dict) and not (set(value) & {"type"}) and value
        if is_group and all(isinstance(v, dict) for v in value.values()):
            flat.update({str(k).replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _spec_problem(key: str, spec: Any) -> str | None:
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        return f"{key!r} needs type: float, int or categorical"
    if set(spec) - SPEC_KEYS:
        return f"{key!r} has unknown keys {sorted(set(spec) - SPEC_KEYS)}"
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        return None if isinstance(choices, list) and choices else f"{key!r} needs a choices list"
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not (math.isfinite(low) and math.isfinite(high)):
        return f"{key!r} needs finite numbers low and high"
    if spec["type"] == "int" and not all(float(v).is_integer() for v in (low, high)):
        return f"{key!r} is int: low and high must be whole numbers"
    if not low < high:
        return f"{key!r} needs low < high, got {low} and {high}"
    if spec.get("log") and low <= 0:
        return f"{key!r} is searched on a log scale: low must be above 0, got {low}"
    return None


def load_space(path: str, base: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Search space YAML: `option: {type: float|int|categorical, low, high, log, choices}`,
    every spec checked, and every corner of the space built as a config (with the base options)
    before the first trial: a search that cannot run stops in one line, not after training."""
    space = _read_space(path)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    problems = [f"{k!r} is not a training option" for k in space if k not in names]
    problems += [p for k, v in space.items() if k in names for p in [_spec_problem(k, v)] if p]
    if not problems:
        for key, spec in space.items():
            values = (
                spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
            )
            for value in values:
                try:
                    build_config({**(base or {}), key: value})
                except RmtrainError as exc:
                    problems.append(f"{key}={value!r}: {exc}")
    if problems:
        raise RmtrainError(f"search space {path}: " + "; ".join(problems))
    return space


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            params[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
            )
        else:
            params[key] = trial.suggest_categorical(key, list(spec["choices"]))
    return params


def _pruning_callback(trial: Any, metric: str) -> Any:
    import optuna
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            value = (kw.get("metrics") or {}).get(f"eval_{metric}")
            if value is None:
                return
            trial.report(float(value), state.global_step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {state.global_step}")

    return Report()


def make_objective(
    base: dict[str, Any], space: dict[str, Any], output: Path, metric: str, mlflow_uri: str | None
) -> Any:
    import optuna

    from rmtrain.training.recipe import run_train

    def objective(trial: Any) -> float:
        params = suggest(trial, space)
        values = {
            **base,
            **params,
            "output": str(output / f"trial-{trial.number:04d}"),
            "overwrite": True,
            "run_name": f"trial-{trial.number:04d}",
            "register_model": None,  # the study registers its best trial, not every trial
            "model_alias": None,
        }
        try:
            cfg = build_config(values)
            result = run_train(
                cfg, [_pruning_callback(trial, metric)], nested=True, mlflow_uri=mlflow_uri
            )
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            raise
        value = result["metrics"].get(metric)
        if value is None:
            known = sorted(result["metrics"])
            raise RmtrainError(f"metric {metric!r} is not an eval metric; known: {known}")
        return float(value)

    return objective


def run_hpo(
    cfg: HpoConfig, worker: bool = False, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The study `cfg` describes (one process of it with `worker`), its base training config
    from `cfg.config` with the command line's training `overrides` over it; returns its
    summary."""
    import optuna

    config, space_path, n_trials, metric = cfg.config, cfg.space, cfg.n_trials, cfg.metric
    study_name, jobs, pruner = cfg.study_name, cfg.jobs, cfg.pruner
    register_model, model_alias = cfg.register_model, cfg.model_alias
    direction = cfg.direction or ("minimize" if metric == "loss" else "maximize")
    out = Path(cfg.output).expanduser().resolve()
    base = {**(load_yaml(config) if config else {}), **(overrides or {})}
    build_config(base)  # validates the base config before any trial starts
    space = load_space(space_path, base)
    if metric not in HPO_METRICS:
        raise RmtrainError(f"--metric {metric!r} is not a held-out metric; use {HPO_METRICS}")
    _claim_study_folder(out, study_name, [p for p in (config, space_path) if p])
    prune = (
        optuna.pruners.MedianPruner(n_startup_trials=1)
        if pruner == "median"
        else optuna.pruners.NopPruner()
    )
    storage = cfg.storage or f"sqlite:///{out / 'study.db'}"
    study = _open_study(storage, study_name, direction, prune)
    if not worker:  # the launcher starts alone: a RUNNING trial now is a killed run's
        _fail_orphans(study)
    helpers = [] if worker or jobs <= 1 else _spawn_workers(jobs - 1)
    remaining = n_trials - _finished(study)
    parent = _optimize(study, base, space, out, metric, n_trials) if remaining > 0 else None
    for proc in helpers:
        proc.wait()
    if worker:
        return {}
    summary = write_results(study, base, out, metric)
    if parent:  # the study's run shows its outcome beside its trials
        from rmtrain.tracking.models import log_study

        log_study(parent, out, summary, metric)
    if summary["complete"] == 0 and summary["pruned"] == 0:
        first = next(
            (t.user_attrs.get("error") for t in study.trials if t.user_attrs.get("error")), ""
        )
        raise RmtrainError(
            f"every trial of the study failed ({first[:300]}); see {out / 'trials.csv'}"
        )
    if register_model and "best_trial" in summary:
        from rmtrain.tracking.models import log_output_folder

        best = out / f"trial-{summary['best_trial']:04d}"
        log_output_folder(best, register_model, model_alias, f"{study_name}-best")
    return summary


def _open_study(storage: str, study_name: str, direction: str, pruner: Any) -> Any:
    """The study in `storage` (created or continued); a storage optuna cannot open is one
    line naming the form it takes."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            load_if_exists=True,
            direction=direction,
            pruner=pruner,
        )
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise RmtrainError(
            f"--storage {storage}: cannot open it ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200]}); pass an SQLAlchemy URL such as "
            "sqlite:///path/study.db, or leave it out for study.db in --output"
        ) from None
    kept = study.direction.name.lower()  # optuna continues a study in its own direction
    if kept != direction:
        raise RmtrainError(
            f"the study {study_name!r} in {storage} was started to {kept} its metric; continue "
            f"it with --direction {kept} (and the same --metric), or pass a new --study-name"
        )
    return study


def _claim_study_folder(out: Path, study_name: str, inputs: list[str]) -> None:
    """The output rule for a study: a new folder, or this study's own (to continue it); never a
    folder that holds another study's trials."""
    from rmtrain.outputs import check_output_folder, write_owner

    owner = check_output_folder(out, "hpo", inputs, overwrite=True)
    if owner is not None and owner.get("study") != study_name:
        raise RmtrainError(
            f"--output {out} holds the study {owner.get('study')!r}; choose another --output "
            f"for {study_name!r}, or --study-name {owner.get('study')} to continue that one"
        )
    write_owner(out, "hpo", study=study_name)


ORPHAN = "orphaned"


def _fail_orphans(study: Any) -> int:
    """Mark trials left RUNNING by a killed search as failed (and as orphans, which do not
    count towards --n-trials), so that the resumed study runs the trials still owed."""
    from optuna.trial import TrialState

    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    if orphans:
        known = list(study.user_attrs.get(ORPHAN, []))
        study.set_user_attr(ORPHAN, known + [t.number for t in orphans])
    for t in orphans:
        study.tell(t.number, state=TrialState.FAIL)
    if orphans:
        print(f"[rmtrain] {len(orphans)} trial(s) left running by a stopped search marked failed")
    return len(orphans)


def _counted(trial: Any, orphans: set[int]) -> bool:
    return trial.state.name in FINISHED and trial.number not in orphans


def _finished(study: Any) -> int:
    orphans = set(study.user_attrs.get(ORPHAN, []))
    return sum(_counted(t, orphans) for t in study.get_trials(deepcopy=False))


class _StopAfter:
    """Stop the study when `n` trials have finished (orphans not counted, running ones are:
    several workers must not overshoot)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, study: Any, trial: Any) -> None:
        trials = study.get_trials(deepcopy=False)
        orphans = set(study.user_attrs.get(ORPHAN, []))
        if sum(_counted(t, orphans) or t.state.name == "RUNNING" for t in trials) >= self.n:
            study.stop()


def _optimize(study: Any, base: dict, space: dict, out: Path, metric: str, n: int) -> str | None:
    """Run the trials; returns the study's MLflow run id (None without MLflow)."""
    parent = _start_parent_run(study.study_name, base)
    uri, run_id = parent or (None, None)
    try:
        study.optimize(
            make_objective(base, space, out, metric, uri),
            callbacks=[_StopAfter(n)],
            catch=(Exception,),
            gc_after_trial=True,
        )
    finally:
        if parent:
            from rmtrain.tracking.runs import finish_tracking

            finish_tracking(["mlflow"])
    return run_id


def _start_parent_run(name: str, base: dict[str, Any]) -> tuple[str, str] | None:
    """The study's MLflow run: its store URI (trials log there as children) and run id."""
    report_to = base.get("report_to", TrainConfig().report_to)
    if "mlflow" not in (report_to if isinstance(report_to, list) else [report_to]):
        return None
    import mlflow

    from rmtrain.tracking.runs import start_mlflow_run, tracking_uri

    uri = tracking_uri()
    start_mlflow_run(uri, name, base, nested=False)
    return uri, mlflow.active_run().info.run_id


def _spawn_workers(n: int) -> list[subprocess.Popen]:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # training flags stay last
    cmd = [sys.executable, "-m", "rmtrain", *argv[:cut], "--jobs", "1", "--worker", *argv[cut:]]
    return [subprocess.Popen(cmd) for _ in range(n)]


def write_results(study: Any, base: dict[str, Any], out: Path, metric: str) -> dict[str, Any]:
    """best_config.yaml, trials.csv and the plots."""
    trials = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs"))
    trials.to_csv(out / "trials.csv", index=False)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    summary: dict[str, Any] = {
        "trials": len(study.trials),
        "complete": len(complete),
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
        "failed": sum(t.state.name == "FAIL" for t in study.trials),
    }
    if complete:
        best = study.best_trial
        values = {**base, **best.params, "output": str(out / "best_model"), "overwrite": False}
        save_config(build_config(values), out / "best_config.yaml")  # grouped, as --config reads
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
    summary["plots"] = _plots(study, out)
    (out / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    best = (
        f"best {metric} = {summary['best_value']} (trial {summary['best_trial']}) -> "
        f"{out / 'best_config.yaml'}"
        if complete
        else "no complete trial, so no best_config.yaml"
    )
    print(
        f"[rmtrain] hpo: {summary['complete']} complete, {summary['pruned']} pruned, "
        f"{summary['failed']} failed; {best}"
    )
    return summary


def _plots(study: Any, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    for name, fn in (
        ("optimization_history.png", ovm.plot_optimization_history),
        ("param_importances.png", ovm.plot_param_importances),
    ):
        try:
            ax = fn(study)
        except (ValueError, RuntimeError):  # too few complete trials or a single parameter
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written
