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

from rmtrain.builtin import demo_rows

ROOT = Path(__file__).resolve().parents[1]


def test_two_gloo_processes_match_one(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_rows(72, seed=6)))
    common = [
        "train",
        "--model",
        "builtin:tiny-qwen3",
        "--dataset",
        str(data),
        "--frac",
        "1.0",
        "--lr",
        "1e-3",
        "--max-length",
        "96",
        "--max-steps",
        "5",
        "--logging-steps",
        "1",
        "--group-by-length",
        "false",
        "--report-to",
        "none",
        "--seed",
        "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "rmtrain",
            *common,
            "--batch",
            "4",
            "--output",
            str(tmp_path / "one"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "rmtrain",
            *common,
            "--batch",
            "2",
            "--output",
            str(tmp_path / "two"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    r2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    losses1 = [h["loss"] for h in r1["log_history"]]
    losses2 = [h["loss"] for h in r2["log_history"]]
    assert len(losses1) == len(losses2) == 5
    assert losses1 == pytest.approx(losses2, abs=1e-4)
    for key in ("win_rate", "kendall_tau", "loss", "reward_mean", "margin_mean", "num_pairs"):
        assert r1["metrics"][key] == pytest.approx(r2["metrics"][key], abs=1e-4), key
    assert r2["metrics"]["num_pairs"] == r1["data"]["test_pairs"]  # each pair counted once
