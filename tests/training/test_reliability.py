"""Resume after a crash, atomic checkpoints, data validation and numeric guards."""

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmtrain.cli import main
from rmtrain.config import build_config
from rmtrain.data.builtin import demo_rows
from rmtrain.errors import RmtrainError
from rmtrain.training.checkpoints import RUN_FILE
from rmtrain.training.recipe import run_train
from tests.helpers import count_calls, rmtrain_process, tiny_train_args, write_demo

EVAL_KEYS = ("win_rate", "kendall_tau", "loss", "reward_mean", "reward_std", "margin_mean")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("data") / "prefs.jsonl", 80, seed=5)


def train_args(data, out, *extra):
    steps = ["--lr", "1e-3", "--max-steps", "8", "--save-steps", "2", "--seed", "7"]
    return tiny_train_args(data, out, *steps, "--logging-steps", "1", *extra)


def same_model(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma = json.loads((a / "metrics.json").read_text())["metrics"]
    mb = json.loads((b / "metrics.json").read_text())["metrics"]
    assert {k: ma[k] for k in EVAL_KEYS} == {k: mb[k] for k in EVAL_KEYS}


# grouped by prompt, gradient accumulation and two epochs (4 steps each)
SEVERAL = ("--group-by-prompt", "true", "--grad-accum", "2", "--frac", "0.5")
SEVERAL += ("--max-steps", "-1", "--epochs", "2")


def _killed_after(args: list[str], seal: Path) -> None:
    """Run `rmtrain` and SIGKILL it once `seal` exists: that checkpoint is written whole, and
    the kill lands somewhere in the steps after it."""
    proc = rmtrain_process(args)
    deadline = time.time() + 300
    while not seal.exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(data_file, tmp_path):
    """A grouped, accumulating two-epoch run killed after checkpoint 2 (epoch 1) and, resumed,
    killed again after checkpoint 6 (epoch 2): the end equals an uninterrupted run."""
    kills, extra = (2, 6), SEVERAL
    ref = rmtrain_process(train_args(data_file, tmp_path / "ref", *extra))
    assert ref.wait(300) == 0, ref.stderr.read()
    steps = json.loads((tmp_path / "ref" / "metrics.json").read_text())["metrics"]["train_steps"]
    assert steps == 8
    out = tmp_path / "killed"
    for i, step in enumerate(kills):
        args = train_args(data_file, out, *extra, *(["--resume"] if i else []))
        _killed_after(args, out / "checkpoints" / f"checkpoint-{step}" / RUN_FILE)
        assert not (out / "config.json").exists()  # no finished model after the kill
    resumed = rmtrain_process(train_args(data_file, out, *extra, "--resume"))
    assert resumed.wait(300) == 0, resumed.stderr.read()
    same_model(tmp_path / "ref", out)


def test_a_checkpoint_is_sealed_last_and_an_unsealed_one_is_never_resumed(data_file, tmp_path):
    """A kill while saving leaves the checkpoint being written without its seal (the run
    file, written after every other file): resuming takes the newest sealed one, and the run
    removes the unsealed folder before it trains."""
    from rmtrain.training.checkpoints import latest_checkpoint

    out = tmp_path / "run"
    assert main(train_args(data_file, out, "--save-total-limit", "2")) == 0
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    for name in ("checkpoint-6", "checkpoint-8"):
        written = {p.name for p in (ckpts / name).iterdir()}
        assert {RUN_FILE, "trainer_state.json", "model.safetensors"} <= written
        assert not any(n.endswith(".tmp") for n in written)
    (ckpts / "checkpoint-8" / RUN_FILE).unlink()  # what a kill before the seal leaves
    assert latest_checkpoint(ckpts).name == "checkpoint-6"
    (out / "config.json").unlink()  # the run did not finish
    (out / "model.safetensors").unlink()
    assert main(train_args(data_file, out, "--save-total-limit", "2", "--resume")) == 0
    assert (out / "config.json").is_file()
    assert (ckpts / "checkpoint-8" / RUN_FILE).is_file()  # written again, whole


def _as_config(args):
    """CLI args list -> config mapping (for in-process calls)."""
    from rmtrain.cli import build_parser
    from rmtrain.config import TrainConfig, config_from_args

    return config_from_args(build_parser().parse_args(args), TrainConfig).to_dict()


def test_nan_loss_stops_with_step_and_checkpoint(data_file, tmp_path, monkeypatch):
    import rmtrain.training.trainer as tr

    calls = {"n": 0}
    real = tr.pairwise_loss

    def poisoned(*a, **kw):
        calls["n"] += 1
        loss = real(*a, **kw)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(tr, "pairwise_loss", poisoned)
    with pytest.raises(RmtrainError) as err:
        run_train(build_config(_as_config(train_args(data_file, tmp_path / "nan"))))
    msg = str(err.value)
    assert "non-finite loss at step 3" in msg and "checkpoint-2" in msg and "--lr" in msg
    assert not (tmp_path / "nan" / "config.json").exists()


@pytest.mark.parametrize("clip", [[], ["--max-grad-norm", "0"]], ids=["clipped", "unclipped"])
def test_nan_gradient_is_caught(data_file, tmp_path, monkeypatch, clip):
    """Caught from the norm Trainer computes anyway, with clipping on or off."""
    import rmtrain.training.trainer as tr

    def hook(grad):
        return grad * float("nan")

    real = tr.pair_rewards

    def poisoned(model, batch, *args, **kwargs):
        c, r, *rest = real(model, batch, *args, **kwargs)
        if model.training:
            c.register_hook(hook)
        return (c, r, *rest)

    monkeypatch.setattr(tr, "pair_rewards", poisoned)
    with pytest.raises(RmtrainError, match="non-finite gradient at step 1"):
        run_train(build_config(_as_config(train_args(data_file, tmp_path / "g", *clip))))


@pytest.mark.skipif(torch.cuda.is_available(), reason="folded clipping is the CPU path")
def test_one_pass_over_the_gradients_for_the_norm_per_step(data_file, tmp_path, monkeypatch):
    """The non-finite check reuses Trainer's norm (on CPU, that of clipping folded into fused
    AdamW, `speed.clip`): one pass over the gradients per step, not a second pass of a guard
    callback."""
    from rmtrain.speed import clip

    passes = count_calls(monkeypatch, clip, "total_norm")
    foreach = count_calls(monkeypatch, torch, "_foreach_norm")
    args = tiny_train_args(data_file, tmp_path / "n", "--max-steps", "3")
    run_train(build_config(_as_config(args)))
    assert len(passes) == 3 and foreach == []


BAD_ROWS = [
    {"prompt": "p0", "chosen": "fine", "rejected": "worse"},  # 0 good
    {"prompt": "p1", "chosen": None, "rejected": "r"},  # 1 missing_field
    {"prompt": "p2", "chosen": ["not", "text"], "rejected": "r"},  # 2 not_text
    {"prompt": "p3", "chosen": "same", "rejected": "same"},  # 3 identical
    {"prompt": "p4", "chosen": "", "rejected": "r"},  # 4 empty_text
    {"prompt": "p5", "chosen": "caf\ufffd text", "rejected": "r"},  # 5 good: U+FFFD is text
    {"prompt": "p6", "chosen": "c", "rejected": "r", "margin": "big"},  # 6 bad_margin
    {"prompt": "p7", "chosen": "ok", "rejected": "fine too"},  # 7 good
]


def write_bad(tmp_path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in BAD_ROWS) + "{broken json\n")
    return path


def test_validate_reports_exact_counts_and_file_lines(tmp_path, capsys):
    path = write_bad(tmp_path)
    # a BOM, two blank lines and undecodable bytes: lines are file lines, not row indices
    body = path.read_bytes()
    path.write_bytes(
        b"\xef\xbb\xbf\n\n" + body + b'{"prompt": "p", "chosen": "\xff", "rejected": "r"}\n'
    )
    report_path = tmp_path / "report.json"
    code = main(["validate", "--dataset", str(path), "--output", str(report_path)])
    assert code == 2  # 7 of 10 rows bad > 1%
    report = json.loads(report_path.read_text())
    assert report["rows_read"] == 10 and report["bad_rows"] == 7
    assert report["position"] == "line: file line (1-based)"
    assert report["rows"] == [
        {"line": 4, "reason": "missing_field"},
        {"line": 5, "reason": "not_text"},
        {"line": 6, "reason": "identical"},
        {"line": 7, "reason": "empty_text"},
        {"line": 9, "reason": "bad_margin"},
        {"line": 11, "reason": "invalid_json"},
        {"line": 12, "reason": "invalid_utf8"},
    ]
    assert "--max-bad-fraction" in capsys.readouterr().err


def test_too_long_rows_are_bad_and_strict_stops_training(tmp_path, qwen_tokenizer):
    from rmtrain.data.validation import validate_dataset

    rows = [{"prompt": "p", "chosen": "a b", "rejected": "c d"}] * 3
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = validate_dataset(str(path), qwen_tokenizer, max_length=1, chat=True)
    assert counts.bad_rows == [(0, "too_long"), (1, "too_long"), (2, "too_long")]
    data = tmp_path / "mostly_good.jsonl"
    good = demo_rows(40, seed=2)
    data.write_text("".join(json.dumps(r) + "\n" for r in good + [BAD_ROWS[1]]))
    out = tmp_path / "strict"
    args = train_args(data, out, "--strict")
    assert main(args) == 2
    report = json.loads((out / "data_report.json").read_text())
    assert report["rows"] == [{"line": 41, "reason": "missing_field"}]
    assert main([*train_args(data, tmp_path / "lenient"), "--max-bad-fraction", "0.05"]) == 0


def test_output_dir_safety(tmp_path, data_file, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(train_args(data_file, blocker / "sub")) == 2
    assert "cannot write" in capsys.readouterr().err
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 9, 1))
    assert main(train_args(data_file, tmp_path / "full")) == 2
    assert "MiB free" in capsys.readouterr().err
