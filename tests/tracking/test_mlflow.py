"""The trained model in MLflow, against a real `mlflow server` (SQLite backend, subprocess
killed by pid): params, per-step metrics, artifacts, the logged pyfunc model, the registry,
`models:/` URIs in `rmtrain score`, the default store, and a server that dies mid-run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from transformers import TrainerCallback

from rmtrain.cli import main
from tests.helpers import tiny_train_args, write_demo

pytestmark = pytest.mark.slow
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
ROWS = [
    {"prompt": "How do I keep bread fresh?", "response": "Wrap it in cloth."},
    {"prompt": "How do I keep bread fresh?", "response": "No idea."},
    {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {seconds} s")


def _start_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or _free_port()
    cmd = [
        MLFLOW,
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0
    )
    url = f"http://127.0.0.1:{port}"
    _wait(url, proc)
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    """The server and its workers (one process group), by pid."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.fixture
def server(tmp_path, monkeypatch):
    proc, url = _start_server(tmp_path / "server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "rmtrain-server-test")
    yield url
    _stop(proc)


def _score(model: str, tmp_path: Path, name: str) -> list[float]:
    src, out = tmp_path / f"{name}.in.jsonl", tmp_path / f"{name}.out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert main(["score", "--model", model, "--input", str(src), "--output", str(out)]) == 0
    return [json.loads(line)["reward"] for line in out.read_text().splitlines()]


def test_training_logs_the_model_its_metrics_artifacts_and_registers_it(server, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    data = write_demo(tmp_path / "prefs.jsonl", 120, seed=1)
    out = tmp_path / "model"
    extra = ["--lr", "1e-3", "--max-steps", "6", "--logging-steps", "2", "--eval-steps", "3"]
    extra += ["--eval-sample", "10", "--report-to", "mlflow", "--run-name", "server-run"]
    extra += ["--register-model", "demo-rm", "--model-alias", "candidate"]
    assert main(tiny_train_args(data, out, *extra)) == 0

    client = MlflowClient(server)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("rmtrain-server-test").experiment_id]
    )
    rid = run.info.run_id
    assert run.data.params["rmtrain.lr"] == "0.001" and run.info.status == "FINISHED"
    names = ("loss", "eval_win_rate", "eval_kendall_tau", "final_win_rate")
    steps = {k: [m.step for m in client.get_metric_history(rid, k)] for k in names}
    assert steps["loss"] == [1, 2, 4, 6]
    assert steps["eval_win_rate"] == steps["eval_kendall_tau"] == [3, 6]  # sample, whole split
    assert steps["final_win_rate"] == [6]
    final = client.get_metric_history(rid, "eval_win_rate")[-1].value
    assert final == pytest.approx(
        json.loads((out / "metrics.json").read_text())["metrics"]["win_rate"]
    )
    # the data set as the run's input; the logged model named after the output, with the
    # held-out metrics linked to it
    (used,) = client.get_run(rid).inputs.dataset_inputs
    assert used.dataset.name == "prefs.jsonl"
    assert json.loads(used.dataset.source) == {"uri": str(data.resolve())}
    assert [t.value for t in used.tags if t.key == "mlflow.data.context"] == ["training"]
    (logged,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert logged.name == out.name and logged.source_run_id == rid
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["held_out_win_rate"] == pytest.approx(final) and "held_out_kendall_tau" in linked
    files = {a.path for a in client.list_artifacts(rid)}
    assert {"metrics.json", "data_report.json", "rmtrain_config.yaml", "README.md"} <= files
    report = {a.path for a in client.list_artifacts(rid, "eval_report")}
    assert {"eval_report/report.md", "eval_report/report.json"} <= report
    assert any(p.endswith(".png") for p in report)

    version = client.get_model_version_by_alias("demo-rm", "candidate")
    assert version.version == "1" and version.tags["datasets"] == str(data)
    assert float(version.tags["win_rate"]) == pytest.approx(final, abs=1e-4)
    assert "rmtrain_version" in version.tags and "rmtrain" in version.description.lower()
    assert version.description.startswith("# Reward model trained with rmtrain")  # no YAML

    want = _score(str(out), tmp_path, "folder")
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
    # a frame of prompt / response rows, and one of chat messages
    got = [*pyfunc.predict(pd.DataFrame(ROWS[:2])), *pyfunc.predict(pd.DataFrame(ROWS[2:]))]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5
    # a full text, as `rmtrain score` takes it, and a bad row named by its index and reason
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    chat = [{"role": "user", "content": ROWS[0]["prompt"]}]
    chat.append({"role": "assistant", "content": ROWS[0]["response"]})
    text = tok.apply_chat_template(chat, tokenize=False)
    (as_text,) = pyfunc.predict(pd.DataFrame([{"text": text}]))
    assert as_text == pytest.approx(want[0], abs=1e-5)
    with pytest.raises(Exception, match="row 1: 'response' must be a non-empty string"):
        pyfunc.predict(pd.DataFrame([ROWS[0], {"prompt": "p", "response": " "}]))
    registered = _score("models:/demo-rm@candidate", tmp_path, "registry")
    assert max(abs(a - b) for a, b in zip(registered, want, strict=True)) < 1e-5
    from rmtrain.cli import _local_model

    folder, served_as = _local_model("models:/demo-rm@candidate")  # what serve's /info says
    assert served_as == "models:/demo-rm/1" and (Path(folder) / "model.safetensors").is_file()
    # a download lives as long as the process that fetched it
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    args = ["score", "--model", "models:/demo-rm/1", "--input", str(tmp_path / "registry.in.jsonl")]
    args += ["--output", str(tmp_path / "again.jsonl")]
    env = {**os.environ, "TMPDIR": str(tmp), "MLFLOW_TRACKING_URI": server}
    subprocess.run([sys.executable, "-m", "rmtrain", *args], env=env, check=True, timeout=300)
    assert (tmp_path / "again.jsonl").is_file() and not list(tmp.glob("rmtrain-model-*"))

    port = _free_port()
    serve = subprocess.Popen(
        [
            MLFLOW,
            "models",
            "serve",
            "-m",
            f"runs:/{rid}/model",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip  (mlflow starts the venv's uvicorn by name)
    try:
        _wait(f"http://127.0.0.1:{port}", serve, 180)
        body = {"dataframe_records": ROWS[:2]}
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"]
        assert max(abs(a - b) for a, b in zip(served, want[:2], strict=True)) < 1e-5
    finally:
        _stop(serve)


def test_default_store_is_mlflow_db_in_the_working_directory(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    data = write_demo(tmp_path / "prefs.jsonl", 40, seed=2)
    args = tiny_train_args(data, tmp_path / "model", "--max-steps", "2", "--report-to", "mlflow")
    assert main(args) == 0
    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient("sqlite:///mlflow.db")
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    (run,) = client.search_runs([experiment.experiment_id])
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]


class _KillServerAt(TrainerCallback):
    """Kills the tracking server after step `step`."""

    def __init__(self, proc: subprocess.Popen, step: int) -> None:
        self.proc, self.step = proc, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            _stop(self.proc)


def test_server_dying_mid_run_keeps_the_model_and_log_model_retries(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args
    from rmtrain.errors import RmtrainError
    from rmtrain.training.recipe import run_train

    root, port = tmp_path / "server", _free_port()
    proc, url = _start_server(root, port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    data = write_demo(tmp_path / "prefs.jsonl", 60, seed=3)
    out = tmp_path / "model"
    argv = tiny_train_args(data, out, "--max-steps", "4", "--logging-steps", "1")
    argv += ["--report-to", "mlflow", "--register-model", "late-rm"]
    cfg = config_from_args(build_parser().parse_args(argv), TrainConfig)
    try:
        with pytest.raises(RmtrainError) as failure:
            run_train(cfg, callbacks=[_KillServerAt(proc, 2)])
    finally:
        _stop(proc)
    message = str(failure.value)
    assert f"rmtrain log-model {out} --register-model late-rm" in message
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    proc, url = _start_server(root, port)  # the same store, back again
    try:
        assert main(["log-model", str(out), "--register-model", "late-rm"]) == 0
        version = MlflowClient(url).get_latest_versions("late-rm")[0]
        assert version.version == "1" and version.tags["datasets"] == str(data)
    finally:
        _stop(proc)


def test_report_to_none_never_imports_mlflow(tmp_path):
    """`--report-to none` stays offline and free of MLflow (a fresh process, so nothing else
    imported it first)."""
    data = write_demo(tmp_path / "prefs.jsonl", 30, seed=5)
    argv = tiny_train_args(data, tmp_path / "model", "--max-steps", "1")
    code = (
        "import json, sys\n"
        "from rmtrain.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_runs_are_named_after_their_output_and_data(tmp_path):
    import mlflow

    data = write_demo(tmp_path / "prefs.jsonl", 40, seed=1)
    out = tmp_path / "named_rm"
    assert main(tiny_train_args(data, out, "--max-steps", "1", "--report-to", "mlflow")) == 0
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    (run,) = [r for r in runs if r.data.params.get("rmtrain.output") == str(out)]
    assert run.info.run_name.startswith("named_rm | prefs.jsonl | ")


def test_a_models_uri_without_a_server_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n")
    argv = ["score", "--model", "models:/x/1", "--input", str(src), "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "rmtrain: error: cannot fetch models:/x/1 from MLflow at http://127.0.0.1:1"
    )
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("store", ["folder", "not_a_database", "missing_folder"])
def test_a_store_that_cannot_be_written_is_one_line_at_once(tmp_path, monkeypatch, capsys, store):
    """MLflow would retry such a SQLite store for about two minutes before failing."""
    path = tmp_path / "mlflow.db"
    if store == "folder":
        path.mkdir()
    elif store == "not_a_database":
        path.write_text("not sqlite")
    else:
        path = tmp_path / "missing" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
    data = write_demo(tmp_path / "prefs.jsonl", 30, seed=5)
    argv = tiny_train_args(data, tmp_path / "model", "--max-steps", "1", "--report-to", "mlflow")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rmtrain: error: cannot use the MLflow store {path} (") and (
        err.count("\n") == 1
    )
    assert not (tmp_path / "model" / "config.json").exists()
