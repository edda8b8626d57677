"""Shared fixtures: the real Qwen3 tokenizer and tiny random models built in the test."""

from __future__ import annotations

import os
import tempfile

import pytest

# Under pytest-xdist every worker (and every process a test starts) gets its share of the cores:
# more OpenMP threads than cores makes them spin against each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import torch  # noqa: E402  (after OMP_NUM_THREADS)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="rmtrain-tests-wandb-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(THREADS, torch.get_num_threads()))  # a lower OMP_NUM_THREADS wins

# datasets imported here, not first inside a test: its log handler binds the stderr of the
# moment, and a test's capsys stream is closed when that test ends ("--- Logging error ---")
import datasets  # noqa: E402, F401

from tests.helpers import SHARED_DATA, tiny_qwen3, tiny_train_args, write_demo  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Every MLflow run of the suite goes to one SQLite store and artifact folder in a temporary
    directory (never the working directory); the environment is restored afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "rmtrain-tests"
    yield uri
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from rmtrain.modeling.loading import load_tokenizer

    return load_tokenizer("builtin:tiny-qwen3")


@pytest.fixture
def qwen_model(qwen_tokenizer):
    return tiny_qwen3(qwen_tokenizer)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    from rmtrain.cli import main

    tmp = tmp_path_factory.mktemp("run")
    data = write_demo(tmp / "prefs.jsonl", 120, seed=1)
    out = tmp / "model"
    args = ["--lr", "1e-3", "--max-steps", "6", "--logging-steps", "2", "--report-to", "mlflow"]
    code = main(tiny_train_args(data, out, *args, "--seed", "3"))
    assert code == 0
    return out, data


_REAL_DATA_SKIPS: list[str] = []


def pytest_collection_modifyitems(items):
    """Files holding a slow test first (file order kept otherwise): with a file per worker
    (`make test`: --dist loadfile --no-loadscope-reorder) the long files start early and the
    short ones fill in, so the workers finish together."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def pytest_runtest_logreport(report):
    if report.skipped and "real data" in str(report.longrepr):
        _REAL_DATA_SKIPS.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """The real-data tests are the only real-data checks: where the samples exist (CI has them
    beside the clone), one of them skipping fails the run."""
    if SHARED_DATA.is_dir() and _REAL_DATA_SKIPS:
        print(f"\nreal data is at {SHARED_DATA} but these tests skipped: {_REAL_DATA_SKIPS}")
        session.exitstatus = 1
