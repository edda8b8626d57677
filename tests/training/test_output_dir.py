"""The output folder: never the working directory or someone else's files, --overwrite clears
the old run's checkpoints, --resume refuses another run's, a failed run's leftovers do not block
the corrected rerun."""

import json

from rmtrain.cli import main
from tests.helpers import tiny_train_args, write_demo


def test_empty_output_never_replaces_the_working_directory(tmp_path, monkeypatch, capsys):
    data = write_demo(tmp_path / "d.jsonl", 40, seed=1)
    work = tmp_path / "project"
    work.mkdir()
    (work / "README.md").write_text("my project")
    monkeypatch.chdir(work)
    code = main(tiny_train_args(data, "", "--overwrite", "--report-to", "none"))
    assert code == 2 and "is the working directory" in capsys.readouterr().err
    assert (work / "README.md").read_text() == "my project"
    assert sorted(p.name for p in work.iterdir()) == ["README.md"]


def test_overwrite_refuses_a_folder_with_foreign_files(tmp_path, capsys):
    data = write_demo(tmp_path / "d.jsonl", 40, seed=1)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = main(tiny_train_args(data, out, "--overwrite", "--report-to", "none"))
    assert code == 2 and "holds files rmtrain did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def _steps(folder):
    return sorted(int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("checkpoint-*"))


def test_overwrite_clears_old_checkpoints_and_resume_checks_the_run(tmp_path, capsys):
    data = write_demo(tmp_path / "d.jsonl", 80, seed=1)
    out = tmp_path / "run"
    common = ["--report-to", "none", "--eval-steps", "0", "--save-total-limit", "2"]
    old = [*common, "--max-steps", "6", "--save-steps", "3", "--lr", "1e-3", "--seed", "1"]
    assert main(tiny_train_args(data, out, *old)) == 0
    assert _steps(out) == [3, 6]
    new = [*common, "--max-steps", "2", "--save-steps", "1", "--lr", "2e-3", "--seed", "2"]
    assert main(tiny_train_args(data, out, *new, "--overwrite")) == 0
    # only the new run's checkpoints: rotation kept its own, none of the old run's survived
    assert _steps(out) == [1, 2]
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["max_steps"] == 2
    capsys.readouterr()
    changed = [*common, "--max-steps", "2", "--save-steps", "1", "--lr", "5e-3", "--seed", "2"]
    assert main(tiny_train_args(data, out, *changed, "--resume", "latest")) == 2
    err = capsys.readouterr().err
    assert "was written by a run with other options (lr: 0.002 -> 0.005)" in err
    assert main(tiny_train_args(data, out, *new, "--resume", "latest")) == 2  # run finished
    err = capsys.readouterr().err
    assert f"checkpoint-2 is the last step of the finished model in {out}, nothing to" in err


def test_a_failed_run_does_not_block_the_corrected_rerun(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "x", "rejected": "x"}) + "\n")
    out = tmp_path / "out"
    assert main(tiny_train_args(bad, out, "--report-to", "none")) == 2
    assert (out / "data_report.json").is_file()
    good = write_demo(tmp_path / "good.jsonl", 40, seed=1)
    args = ["--report-to", "none", "--max-steps", "2", "--eval-steps", "0"]
    assert main(tiny_train_args(good, out, *args)) == 0, capsys.readouterr().err
    assert (out / "config.json").is_file()
    # a finished model is not replaced without --overwrite
    assert main(tiny_train_args(good, out, *args)) == 2


def test_files_named_like_rmtrains_are_not_rmtrains(tmp_path, capsys):
    """A folder without rmtrain's marker is the user's, whatever its file names."""
    data = write_demo(tmp_path / "d.jsonl", 40, seed=1)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "README.md").write_text("IMPORTANT user notes")
    (proj / "metrics.json").write_text("{}")
    for extra in ([], ["--overwrite"]):
        assert main(tiny_train_args(data, proj, "--max-steps", "1", *extra)) == 2
        assert "holds files rmtrain did not write (README.md, metrics.json)" in (
            capsys.readouterr().err
        )
    assert (proj / "README.md").read_text() == "IMPORTANT user notes"
    assert sorted(p.name for p in proj.iterdir()) == ["README.md", "metrics.json"]


def test_overwrite_never_touches_another_tools_checkpoints(tmp_path, capsys):
    data = write_demo(tmp_path / "d.jsonl", 40, seed=1)
    other = tmp_path / "p"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "other.bin").write_text("x")
    assert main(tiny_train_args(data, other, "--max-steps", "1", "--overwrite")) == 2
    assert (other / "checkpoints" / "other.bin").read_text() == "x"


def test_the_base_model_and_the_data_are_never_the_output(trained, tmp_path, capsys):
    from safetensors.torch import load_file

    model, data = trained
    before = load_file(model / "model.safetensors")
    args = ["--max-steps", "1", "--overwrite", "--model", str(model)]
    assert main(tiny_train_args(data, model, *args)) == 2
    assert "is the input" in capsys.readouterr().err
    after = load_file(model / "model.safetensors")
    assert all((before[k] == after[k]).all() for k in before)
    assert main(tiny_train_args(data, data.parent, "--max-steps", "1", "--overwrite")) == 2
    assert "holds the input" in capsys.readouterr().err


def test_the_folder_holds_what_a_user_publishes_readable_by_all(tmp_path, monkeypatch):
    import os
    import stat

    data = write_demo(tmp_path / "d.jsonl", 40, seed=1)
    out = tmp_path / "rm"
    old = os.umask(0o022)
    try:
        monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
        args = ["--max-steps", "1", "--report-to", "wandb"]
        assert main(tiny_train_args(data, out, *args)) == 0
    finally:
        os.umask(old)
    names = {p.name for p in out.iterdir()}
    assert not names & {"training_args.bin", "checkpoints", "wandb"}, names
    assert {"model.safetensors", "config.json", "README.md", "metrics.json"} <= names
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o644}, modes
    assert (tmp_path / "wb" / "wandb").is_dir()  # W&B's files went where W&B was told


def test_replaying_the_saved_config_never_replaces_the_model(tmp_path, monkeypatch, capsys):
    import hashlib

    import yaml

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    write_demo(work / "d.jsonl", 40, seed=1)
    out = tmp_path / "rm"
    args = tiny_train_args("d.jsonl", out, "--max-steps", "1", "--overwrite")
    assert main(args) == 0
    saved = yaml.safe_load((out / "rmtrain_config.yaml").read_text())
    assert saved["output"]["overwrite"] is False and saved["training"]["resume"] is None
    assert saved["data"]["dataset"] == [str(work / "d.jsonl")]
    digest = hashlib.md5((out / "model.safetensors").read_bytes()).hexdigest()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # replayed from another folder: the data is still found
    config = str(out / "rmtrain_config.yaml")
    assert main(["train", "--config", config, "--max-steps", "1"]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert hashlib.md5((out / "model.safetensors").read_bytes()).hexdigest() == digest
    again = ["train", "--config", config, "--max-steps", "1", "--output", str(tmp_path / "b")]
    assert main(again) == 0


def test_a_live_run_holds_the_output_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    import subprocess

    from rmtrain.outputs import LOCK, write_owner

    data = write_demo(tmp_path / "d.jsonl", 40, seed=1)
    out = tmp_path / "rm"
    write_owner(out, "train")
    holder = subprocess.Popen(["sleep", "60"])  # another run, alive, holding the lock
    try:
        (out / LOCK).write_text(str(holder.pid))
        args = tiny_train_args(data, out, "--max-steps", "1", "--report-to", "none")
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"being written by another rmtrain run (pid {holder.pid})" in err
        assert sorted(p.name for p in out.iterdir()) == [".rmtrain-lock", ".rmtrain-output"]
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # its holder is gone: the lock is taken over, then released
    assert (out / "config.json").is_file() and not (out / LOCK).exists()


def test_resume_checks_the_checkpoints_own_run_and_skips_a_damaged_one(tmp_path, capsys):
    data = write_demo(tmp_path / "d.jsonl", 40, seed=1)
    a = tmp_path / "a"
    common = ["--max-steps", "4", "--save-steps", "2", "--eval-steps", "0", "--lr", "1e-3"]
    assert main(tiny_train_args(data, a, *common)) == 0
    assert _steps(a) == [2, 4]
    foreign = str(a / "checkpoints" / "checkpoint-2")
    other = [*common[:-1], "5e-2", "--resume", foreign]
    capsys.readouterr()
    assert main(tiny_train_args(data, tmp_path / "b", *other)) == 2
    err = capsys.readouterr().err
    assert "was written by a run with other options (lr: 0.001 -> 0.05)" in err
    # a damaged newest checkpoint: the one before it is resumed, and the run says so
    newest = a / "checkpoints" / "checkpoint-4" / "model.safetensors"
    with newest.open("r+b") as fh:
        fh.truncate(1000)
    again = tiny_train_args(data, a, *common, "--resume", "latest")
    assert main(again) == 0
    out = capsys.readouterr().out
    assert "skipping" in out and "checkpoint-4: model.safetensors does not read back" in out


def test_a_failed_overwrite_changes_nothing_of_the_finished_model(tmp_path, capsys):
    import hashlib

    good = write_demo(tmp_path / "good.jsonl", 40, seed=1)
    out = tmp_path / "rm"
    assert main(tiny_train_args(good, out, "--max-steps", "1")) == 0
    before = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(x) for x in good.read_text().splitlines()]
    rows[:10] = [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 10  # 25% bad
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = tiny_train_args(bad, out, "--max-steps", "1", "--overwrite")
    assert main(args) == 2
    assert "see " + str(out / ".rmtrain-next" / "data_report.json") in capsys.readouterr().err
    after = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()}
    assert after == before  # data report, marker, model: all the old run's
    assert main(tiny_train_args(good, out, "--max-steps", "2", "--overwrite")) == 0
    assert not (out / ".rmtrain-next").exists()
    assert json.loads((out / ".rmtrain-output").read_text())["options"]["max_steps"] == 2


def test_the_free_space_check_counts_the_tokenizer(tmp_path):
    import shutil

    import pytest
    import torch

    from rmtrain.errors import RmtrainError
    from rmtrain.training.resources import check_free_disk

    model = torch.nn.Linear(256, 256)  # 65,792 fp32 weights: 263,168 bytes
    free = shutil.disk_usage(tmp_path).free
    check_free_disk(tmp_path, model, False, tokenizer_bytes=0)
    with pytest.raises(RmtrainError, match="MiB free"):
        check_free_disk(tmp_path, model, False, tokenizer_bytes=free)  # weights + it > free
