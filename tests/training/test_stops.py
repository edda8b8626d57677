"""A run stopped from outside (Ctrl-C, a full disk or the file-size limit, a tracker that cannot
start, weights that cannot be loaded safely) ends in one line that says how to go on, and
leaves nothing half-written behind."""

import re
import resource
import signal
import subprocess
import time

import pytest

from rmtrain.cli import main
from rmtrain.training.checkpoints import RUN_FILE
from tests.helpers import rmtrain_process, tiny_train_args, write_demo

WEIGHTS_LIMIT = 20 * 2**20  # below the tiny model's 39 MB of weights, above every other file


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("data") / "prefs.jsonl", 60, seed=4)


def _cli(args: list[str], file_limit: int | None = None) -> subprocess.Popen:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return rmtrain_process(args, limit if file_limit else None)


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("rmtrain:")]
    return line


def test_ctrl_c_is_one_line_naming_the_checkpoint_to_resume(data_file, tmp_path):
    out = tmp_path / "run"
    args = tiny_train_args(data_file, out, "--max-steps", "400", "--save-steps", "2")
    proc = _cli(args)
    seal = out / "checkpoints" / "checkpoint-2" / RUN_FILE
    deadline = time.time() + 300
    while not seal.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130
    line = _one_line(err)
    pattern = rf"rmtrain: error: interrupted; {re.escape(str(out))} holds no new model: the same"
    pattern += r" command with --resume continues from checkpoint-(\d+)"
    step = int(re.fullmatch(pattern, line).group(1))
    assert step >= 2 and (out / "checkpoints" / f"checkpoint-{step}" / RUN_FILE).is_file()
    assert not (out / "config.json").exists()


@pytest.mark.parametrize("checkpoints", [True, False])
def test_the_file_size_limit_in_a_save_is_one_line_and_leaves_no_partial_copy(
    data_file, tmp_path, checkpoints
):
    """A checkpoint (or, without checkpoints, the final folder) whose weights exceed the
    file-size limit: one line naming the limit, and the half-written checkpoint or staged
    folder removed (on a full disk it would keep the disk full)."""
    out = tmp_path / "run"
    extra = ["--max-steps", "2", *(["--save-steps", "1"] if checkpoints else [])]
    proc = _cli(tiny_train_args(data_file, out, *extra), file_limit=WEIGHTS_LIMIT)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 2
    line = _one_line(err)
    assert line.startswith(f"rmtrain: error: writing to {out} failed: "), line
    assert "file too large" in line.lower() or "os error 27" in line
    assert line.endswith(
        "Free disk space or raise the file-size limit (ulimit -f); no checkpoint was saved, "
        "run it again"
    )
    left = {p.name for p in out.iterdir()} - {"checkpoints"}
    evaluated = set() if checkpoints else {"eval_report"}  # the final save comes after it
    assert left == {".rmtrain-output", "data_report.json", *evaluated}  # nothing staged
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def test_pickled_weights_that_need_code_to_load_are_one_line(data_file, tmp_path, capsys):
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    from rmtrain.data.builtin import tiny_qwen3_config
    from rmtrain.modeling.loading import load_tokenizer

    folder = tmp_path / "pickled"
    tok = load_tokenizer("builtin:tiny-qwen3")
    model = AutoModelForSequenceClassification.from_config(
        tiny_qwen3_config(len(tok), tok.pad_token_id)
    )
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    weights = {**model.state_dict(), "step": np.float64(1.0)}  # a numpy scalar: code to load
    torch.save(weights, folder / "pytorch_model.bin")
    args = tiny_train_args(data_file, tmp_path / "out", "--max-steps", "1")
    args[args.index("builtin:tiny-qwen3")] = str(folder)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"rmtrain: error: --model {folder}: its pickled weights hold Python objects that torch "
        "loads only by running code from the file; from a trusted copy, save it as safetensors "
        "(model.save_pretrained(DIR)) and pass that folder\n"
    )


def test_wandb_online_without_credentials_is_one_line_before_training(
    data_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "out"
    assert main(tiny_train_args(data_file, out, "--max-steps", "1", "--report-to", "wandb")) == 2
    err = capsys.readouterr().err
    assert err.startswith("rmtrain: error: W&B could not start a run (WANDB_MODE=online): ")
    assert err.endswith(
        "; train with WANDB_MODE=offline (and `wandb sync` later) or --report-to without wandb\n"
    )
    assert err.count("\n") == 1 and not (out / "config.json").exists()
