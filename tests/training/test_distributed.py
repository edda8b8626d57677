"""Two CPU processes (gloo) equal one process with the same global batch.

Launched with torchrun: accelerate's own multi-CPU launcher needs MPI (mpirun); under torchrun
the same Trainer/accelerate code path runs with the gloo backend.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_train_args, write_demo

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # subprocesses / whole studies; CI runs them too


def test_two_gloo_processes_match_one(tmp_path):
    data = write_demo(tmp_path / "prefs.jsonl", 72, seed=6)
    common = ["--lr", "1e-3", "--max-steps", "5", "--logging-steps", "1"]
    common += ["--group-by-length", "false", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def train(launcher: list[str], out: str, batch: str) -> None:
        argv = tiny_train_args(data, tmp_path / out, *common, "--batch", batch)
        run = subprocess.run(
            [*launcher, "-m", "rmtrain", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]

    train([sys.executable], "one", "4")
    train([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"], "two", "2")
    r1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    r2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    losses1 = [h["loss"] for h in r1["log_history"] if "loss" in h]
    losses2 = [h["loss"] for h in r2["log_history"] if "loss" in h]
    assert len(losses1) == len(losses2) == 5
    assert losses1 == pytest.approx(losses2, abs=1e-4)
    for key in ("win_rate", "kendall_tau", "loss", "reward_mean", "margin_mean", "num_pairs"):
        assert r1["metrics"][key] == pytest.approx(r2["metrics"][key], abs=1e-4), key
    assert r2["metrics"]["num_pairs"] == r1["data"]["test_pairs"]  # each pair counted once
