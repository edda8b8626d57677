"""The trained model in MLflow: logged as a pyfunc model of its run (the Hugging Face folder
inside it, rewards through rmtrain's own scorer), with the run's report and files as artifacts,
optionally registered with tags, a description and an alias; and back: a `models:/` or
`runs:/` URI to a local model folder.

Imported only when MLflow is in use (`--report-to none` never imports MLflow).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from rmtrain import __version__
from rmtrain.errors import RmtrainError
from rmtrain.outputs import REPORT_DIR

# The held-out metrics linked to the logged model (MLflow's Models tab shows them), logged as
# held_out_<name>: the run's own `loss` and `eval_*` are step series.
LINKED_METRICS = ("win_rate", "kendall_tau", "loss", "margin_mean", "num_pairs")
ARTIFACT_FILES = ("metrics.json", "data_report.json", "rmtrain_config.yaml", "README.md")
EXAMPLE = pd.DataFrame({"prompt": ["How do I keep bread fresh?"], "response": ["Wrap it."]})


class RewardModel(mlflow.pyfunc.PythonModel):
    """`predict(DataFrame)` -> one reward per row: columns `prompt` + `response` (text or chat
    messages) or `messages` (ending with the assistant turn), scored as `rmtrain score` does."""

    def load_context(self, context: Any) -> None:
        from rmtrain.serving.scorer import load_scorer

        self.scorer = load_scorer(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from rmtrain.serving.scorer import score_records

        known = {"prompt", "response", "messages", "text"}
        if len(model_input) and not known & set(model_input.columns):
            raise MlflowException(
                f"no column rmtrain scores in {sorted(map(str, model_input.columns))}: send "
                "prompt + response, messages, or text",
                error_code=INVALID_PARAMETER_VALUE,
            )
        records = [_plain(row) for row in model_input.to_dict(orient="records")]
        results = score_records(self.scorer, records)
        bad = [f"row {i}: {r['error']}" for i, r in enumerate(results) if "error" in r]
        if bad:  # the client sees which rows and why (a 400 with this message when served)
            raise MlflowException("; ".join(bad[:5]), error_code=INVALID_PARAMETER_VALUE)
        return np.asarray([r["reward"] for r in results], dtype=np.float64)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A DataFrame row as the JSON object `rmtrain score` reads (no NaN for absent columns,
    numpy arrays of messages as lists)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        out[key] = value
    return out


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, Property, Schema, TensorSpec

    message = Object([Property("role", "string"), Property("content", "string")])
    inputs = Schema(
        [
            ColSpec("string", "prompt", required=False),
            ColSpec("string", "response", required=False),
            ColSpec(Array(message), "messages", required=False),
            ColSpec("string", "text", required=False),
        ]
    )
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _log_robustness_table(report: Path) -> None:
    """The probe table (with --robustness) as an MLflow table, next to the report."""
    from rmtrain.tracking.runs import ROBUSTNESS_COLUMNS, robustness_rows

    if not report.is_file():
        return
    rows = robustness_rows(json.loads(report.read_text()).get("datasets", {}))
    if rows:
        table = {c: [row[i] for row in rows] for i, c in enumerate(ROBUSTNESS_COLUMNS)}
        mlflow.log_table(table, artifact_file="robustness.json")


def log_run_outputs(output: Path, report_dir: str) -> str:
    """The output folder's report, plots and files as artifacts of the active run, then the
    model; returns the logged model's URI."""
    run = mlflow.active_run()
    if run is None:
        raise RmtrainError("no active MLflow run to log the model into")
    for name in ARTIFACT_FILES:
        if (output / name).is_file():
            mlflow.log_artifact(str(output / name))
    if (output / report_dir).is_dir():
        mlflow.log_artifacts(str(output / report_dir), artifact_path=report_dir)
        for png in sorted((output / report_dir).glob("*.png")):
            mlflow.log_image(_image(png), artifact_file=f"plots/{png.name}")
        _log_robustness_table(output / report_dir / "report.json")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name=logged_model_name(output),
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"model_dir": str(_model_files(output, Path(tmp) / "hf_model"))},
            signature=_signature(),
            input_example=EXAMPLE,
            pip_requirements=_requirements(),
            metadata={"rmtrain_version": __version__},
        )
    held_out = json.loads((output / "metrics.json").read_text()).get("metrics", {})
    linked = {f"held_out_{k}": float(v) for k, v in held_out.items() if k in LINKED_METRICS}
    if linked:  # shown with the model in the Models tab
        mlflow.log_metrics(linked, model_id=info.model_id)
    return info.model_uri  # models:/<logged model id>; runs:/<run>/<name> names it too


def logged_model_name(output: Path) -> str:
    """The logged model's name: the output folder's (the run's `runs:/<run>/<name>`)."""
    return re.sub(r"[^\w.\-]", "_", output.name).strip(".") or "model"


def log_study(run_id: str, out: Path, summary: dict[str, Any], metric: str) -> None:
    """An HPO study's outcome into its own (parent) run: the best value as a metric, the best
    trial and parameters as tags, trials.csv, summary.yaml and best_config.yaml as files and
    the study's plots as images; a failing store costs a warning (the results are on disk)."""
    try:
        with mlflow.start_run(run_id=run_id):
            if "best_value" in summary:
                mlflow.log_metric(f"best_{metric}", float(summary["best_value"]))
                mlflow.set_tags(
                    {
                        "best_trial": str(summary["best_trial"]),
                        **{f"best.{k}": str(v) for k, v in summary["best_params"].items()},
                    }
                )
            for name in ("trials.csv", "summary.yaml", "best_config.yaml"):
                if (out / name).is_file():
                    mlflow.log_artifact(str(out / name))
            for name in summary.get("plots", []):
                mlflow.log_image(_image(out / name), artifact_file=f"plots/{name}")
    except Exception as exc:  # noqa: BLE001 - the study's files are written
        print(f"[rmtrain] warning: logging the study to MLflow failed: {exc}")


def log_benchmark(result: dict[str, Any], report: Path, model: str, version: str | None) -> None:
    """A benchmark's scores as an MLflow run named after it and the model (`<benchmark>` and
    `<benchmark>/<section>` metrics, the report as artifacts, the benchmark's version and
    prompt count as tags) and, for a registered model (`version` 'models:/NAME/VERSION'), as
    tags of that version, so the registry compares versions on it."""
    from rmtrain.evaluation.benchmarks import section_scores
    from rmtrain.tracking.runs import finish_tracking, start_mlflow_run, tracking_uri

    name = result["benchmark"]
    start_mlflow_run(tracking_uri(), f"{name} | {model}", {"model": model}, nested=False)
    try:
        metrics = {name: result["score"]}
        for title, values in section_scores(result).items():
            metrics.update({f"{name}/{title}/{k}": v for k, v in values.items()})
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {"benchmark": name, "benchmark_version": result["version"],
             "benchmark_prompts": str(result["prompts"])}
        )  # fmt: skip
        mlflow.log_artifacts(str(report), artifact_path="benchmark")
    finally:
        finish_tracking(["mlflow"])
    if version:
        registered, number = version.removeprefix("models:/").rsplit("/", 1)
        client = mlflow.MlflowClient()
        client.set_model_version_tag(registered, number, f"{name}_score", f"{result['score']:.4f}")
        client.set_model_version_tag(registered, number, f"{name}_version", result["version"])
    print(f"[rmtrain] {name} scores logged to MLflow ({tracking_uri()})")


def _model_files(output: Path, folder: Path) -> Path:
    """The model's own files (weights, config, tokenizer, card: the folder's top level) linked
    into `folder`; not what a run writes beside them (checkpoints, trackers' logs, reports)."""
    folder.mkdir(parents=True)
    for path in output.iterdir():
        if path.is_file() and path.name != "data_report.json":
            try:
                os.link(path, folder / path.name)
            except OSError:  # another file system: copy
                shutil.copy2(path, folder / path.name)
    return folder


def _requirements() -> list[str]:
    """What the model needs to load (given, not inferred: inferring loads the model again)."""
    import torch
    import transformers

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
        f"mlflow=={mlflow.__version__}",
        "pandas",
        f"rmtrain=={__version__}",
    ]


def _image(path: Path) -> Any:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def register(model_uri: str, name: str, alias: str | None, output: Path) -> str:
    """A new version of registered model `name` from `model_uri`, tagged with the data sets,
    held-out win rate and tau and the code version, the model card as its description, and
    `alias` pointing at it. Returns 'name/version'."""
    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, name, tags=_tags(output)).version
    card = output / "README.md"
    if card.is_file():
        client.update_model_version(name, version, description=card_body(card.read_text()))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return f"{name}/{version}"


def _tags(output: Path) -> dict[str, str]:
    from rmtrain.modeling.loading import saved_options

    metrics = json.loads((output / "metrics.json").read_text()).get("metrics", {})
    options = saved_options(output)
    tags = {
        "datasets": ",".join(map(str, options.get("dataset", []))),
        "base_model": str(options.get("model", "")),
        "win_rate": f"{metrics.get('win_rate', float('nan')):.4f}",
        "kendall_tau": f"{metrics.get('kendall_tau', float('nan')):.4f}",
        "rmtrain_version": __version__,
    }
    commit = _commit()
    if commit:
        tags["rmtrain_commit"] = commit
    return tags


def _commit() -> str | None:
    """The git commit of the rmtrain checkout in use, when it is one."""
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here, check=False
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def card_body(card: str, limit: int = 5000) -> str:
    """The model card without its YAML front matter (metadata for hubs, not for readers)."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        card = card[end + 5 :] if end >= 0 else card
    return card.lstrip()[:limit]


def download_model(uri: str, tracking_uri: str) -> tuple[Path, str]:
    """The local Hugging Face folder of a logged or registered rmtrain model, and a name for it
    ('models:/NAME/VERSION' for registered models). The download goes to a temporary folder
    removed when the process ends (a model is gigabytes); a dead server fails in seconds."""
    import atexit

    from rmtrain.tracking.runs import HTTP_DEFAULTS

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(tracking_uri)
    target = tempfile.mkdtemp(prefix="rmtrain-model-")
    atexit.register(shutil.rmtree, target, True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=target))
    except Exception as exc:  # noqa: BLE001 - unknown name, version, alias, or no server
        raise RmtrainError(
            f"cannot fetch {uri} from MLflow at {tracking_uri} ({type(exc).__name__}: "
            f"{str(exc)[:160]}); check the name and version or alias, and MLFLOW_TRACKING_URI"
        ) from None
    folders = [p.parent for p in (local / "artifacts").glob("*/config.json")]
    folders += [p.parent for p in (local / "artifacts").glob("*/adapter_config.json")]
    if not folders:
        raise RmtrainError(f"{uri} is not an rmtrain model (no model folder in its artifacts)")
    return folders[0], _display_name(uri)


def _display_name(uri: str) -> str:
    """models:/NAME@ALIAS -> models:/NAME/VERSION (what an alias points at now)."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri.removeprefix("models:/").split("@", 1)
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
        return f"models:/{name}/{version}"
    return uri


def log_output_folder(
    output: Path, register_model: str | None, alias: str | None, run_name: str | None
) -> str:
    """An existing output folder of `rmtrain train` as a new MLflow run: its options as
    params, its final metrics at its last step, its files, report and model; registered when
    asked. Returns the logged model's URI."""
    from rmtrain.modeling.loading import saved_options
    from rmtrain.tracking.runs import finish_tracking, log_final, start_tracking, tracking_uri

    if not (output / "config.json").is_file() or not (output / "metrics.json").is_file():
        raise RmtrainError(f"{output} is not an output folder of rmtrain train (no model)")
    if not list(output.glob("*.safetensors")):
        raise RmtrainError(f"{output} holds no model weights (.safetensors); nothing to log")
    try:
        result = json.loads((output / "metrics.json").read_text())
        result["metrics"].items()
    except (ValueError, KeyError, AttributeError, TypeError):
        raise RmtrainError(f"{output / 'metrics.json'} is not rmtrain's metrics file") from None
    if result.get("diverged"):
        raise RmtrainError(f"{output} is marked diverged ({result['diverged']}); not logged")
    params = saved_options(output)
    start_tracking(["mlflow"], output, run_name or output.resolve().name, params)
    failed = True
    try:
        step = int(result.get("metrics", {}).get("train_steps", 0))
        log_final(["mlflow"], result.get("metrics", {}), result.get("data", {}), step)
        uri = log_run_outputs(output, REPORT_DIR)
        print(f"[rmtrain] logged the model to MLflow at {tracking_uri()}: {uri}")
        if register_model:
            print(f"[rmtrain] registered models:/{register(uri, register_model, alias, output)}")
        failed = False
    finally:
        finish_tracking(["mlflow"], failed)
    return uri
