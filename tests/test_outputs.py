"""One output rule for every subcommand: nothing a user owns is overwritten or deleted.

Training's own cases are in tests/training/test_output_dir.py; here each other subcommand meets
an output that is its input, sits inside the model, is the working directory, or already
exists."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rmtrain.cli import main
from rmtrain.outputs import OWNER, read_owner
from tests.helpers import write_demo, write_jsonl


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("rmtrain: error")]
    return line


def test_validate_never_writes_over_the_data_set(tmp_path, capsys, monkeypatch):
    data = write_demo(tmp_path / "v.jsonl", 20, seed=1)
    before = _md5(data)
    assert main(["validate", "--dataset", str(data), "--output", str(data)]) == 2
    assert "is the input" in _error(capsys)
    assert _md5(data) == before
    monkeypatch.chdir(tmp_path)  # no --output: nothing written in the working directory
    assert main(["validate", "--dataset", str(data)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.jsonl"]
    report = tmp_path / "r.json"
    assert main(["validate", "--dataset", str(data), "--output", str(report)]) == 0
    assert json.loads(report.read_text())["rows_read"] == 20
    assert main(["validate", "--dataset", str(data), "--output", str(report)]) == 2
    assert "exists; pass --overwrite" in _error(capsys)
    args = ["validate", "--dataset", str(data), "--output", str(report), "--overwrite"]
    assert main(args) == 0


def test_score_never_writes_into_the_model(trained, tmp_path, capsys):
    model, _ = trained
    rows = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "response": "r"}] * 3)
    config = model / "config.json"
    before = _md5(config)
    args = ["score", "--model", str(model), "--input", str(rows)]
    assert main([*args, "--output", str(config), "--overwrite"]) == 2
    assert "is inside the input" in _error(capsys)
    assert _md5(config) == before
    out = tmp_path / "out.jsonl"
    out.write_text("user's file\n")
    assert main([*args, "--output", str(out)]) == 2
    assert "exists; pass --overwrite" in _error(capsys)
    assert out.read_text() == "user's file\n"
    assert main([*args, "--output", str(out), "--overwrite"]) == 0
    assert [json.loads(x)["reward"] for x in out.read_text().splitlines()][0] == pytest.approx(
        [json.loads(x)["reward"] for x in out.read_text().splitlines()][2]
    )


def test_eval_never_writes_into_a_users_folder(trained, tmp_path, capsys, monkeypatch):
    model, data = trained
    mine = tmp_path / "e"
    mine.mkdir()
    (mine / "report.md").write_text("notes")
    args = ["eval", "--model", str(model), "--dataset", str(data)]
    monkeypatch.chdir(mine)
    assert main([*args, "--output", ".", "--overwrite"]) == 2
    assert "is the working directory" in _error(capsys)
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--output", str(mine), "--overwrite"]) == 2
    assert "holds files rmtrain did not write (report.md)" in _error(capsys)
    assert (mine / "report.md").read_text() == "notes"
    assert main([*args, "--output", str(model / "eval")]) == 2
    assert "is inside the input" in _error(capsys)
    ours = tmp_path / "report"
    assert main([*args, "--output", str(ours)]) == 0
    assert read_owner(ours)["kind"] == "eval"
    assert main([*args, "--output", str(ours)]) == 2
    assert "pass --overwrite" in _error(capsys)
    assert main([*args, "--output", str(ours), "--overwrite"]) == 0


def test_prepare_never_writes_over_its_input(tmp_path, capsys):
    xml = tmp_path / "Posts.xml"
    xml.write_text('<?xml version="1.0"?>\n<posts>\n</posts>\n')
    base = ["prepare", "stackexchange", "--input", str(xml)]
    assert main([*base, "--output", str(xml), "--overwrite"]) == 2
    assert "is the input" in _error(capsys)
    out = tmp_path / "pairs.jsonl"
    out.write_text("mine\n")
    assert main([*base, "--output", str(out)]) == 2
    assert out.read_text() == "mine\n"


def _hpo_files(root: Path, study: str) -> list[str]:
    base = root / "base.yaml"
    base.write_text(
        f"model: builtin:tiny-qwen3\ndataset: [{root / 'good.jsonl'}]\nmax_length: 64\n"
        "max_steps: 2\nbatch: 4\neval_steps: 1\nreport_to: none\n"
    )
    space = root / "space.yaml"
    space.write_text("lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    out = str(root / "shared")
    return ["hpo", "--config", str(base), "--space", str(space), "--n-trials", "1",
            "--output", out, "--study-name", study]  # fmt: skip


@pytest.mark.slow
def test_two_hpo_studies_never_share_an_output(tmp_path, capsys):
    write_demo(tmp_path / "good.jsonl", 40, seed=1)
    assert main(_hpo_files(tmp_path, "A")) == 0
    trial = tmp_path / "shared" / "trial-0000" / "model.safetensors"
    before = _md5(trial)
    assert main(_hpo_files(tmp_path, "B")) == 2
    assert "holds the study 'A'" in _error(capsys)
    assert _md5(trial) == before
    assert (tmp_path / "shared" / "best_config.yaml").is_file()
    assert json.loads((tmp_path / "shared" / OWNER).read_text())["study"] == "A"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "m", "--dataset", "d", "--output", "o", "--max-length", "0"],
         "--max-length must be >= 8, got 0"),
        (["eval", "--model", "m", "--dataset", "d", "--output", "o", "--batch", "-3"],
         "--batch must be >= 1, got -3"),
        (["score", "--model", "m", "--input", "i", "--output", "o", "--batch", "0"],
         "--batch must be >= 1, got 0"),
        (["serve", "--model", "m", "--max-length", "-5"], "--max-length must be >= 8, got -5"),
        (["serve", "--model", "m", "--batch-wait-ms", "inf"], "--batch-wait-ms must be >= 0"),
        (["serve", "--model", "m", "--port", "70000"], "--port must be >= 1 and <= 65535"),
        (["validate", "--dataset", "d", "--max-bad-fraction", "nan"],
         "--max-bad-fraction must be >= 0 and <= 1, got nan"),
        (["prepare", "stackexchange", "--input", "x", "--output", "y",
          "--max-pairs-per-question", "-1"], "--max-pairs-per-question must be >= 1"),
        (["train", "--head-lr-multiplier", "inf"], "--head-lr-multiplier must be > 0"),
    ],
)  # fmt: skip
def test_every_option_is_range_checked_before_work(argv, message, capsys):
    assert main(argv) == 2
    assert message in _error(capsys)


def test_eval_with_no_pair_that_fits_is_one_line(trained, tmp_path, capsys):
    model, data = trained
    args = ["eval", "--model", str(model), "--dataset", str(data), "--max-length", "8"]
    assert main([*args, "--output", str(tmp_path / "e")]) == 2
    assert "fits --max-length 8" in _error(capsys)


def test_an_unreachable_hub_is_one_line_naming_the_offline_models(tmp_path, monkeypatch, capsys):
    """Without a network (simulated: no connection to the Hub can be opened) a hub name fails
    at once, naming the models this machine has."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    data = write_demo(tmp_path / "d.jsonl", 10, seed=1)
    args = ["train", "--model", "SomeOrg/not-cached-model", "--dataset", str(data)]
    assert main([*args, "--output", str(tmp_path / "o"), "--report-to", "none"]) == 2
    line = _error(capsys)
    assert "could not be fetched from the Hugging Face Hub" in line
    assert "offline here: builtin:tiny-qwen3" in line


def test_score_reads_gzip_and_prepare_writes_what_its_name_says(trained, tmp_path, capsys):
    import gzip

    model, _ = trained
    rows = [{"prompt": "Hi?", "response": "Hello!"}, {"prompt": "Hi?", "response": "Go away."}]
    plain = write_jsonl(tmp_path / "in.jsonl", rows)
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    outs = []
    for src in (plain, packed):
        out = tmp_path / f"{src.name}.scored.jsonl"
        args = ["score", "--model", str(model), "--input", str(src), "--output", str(out)]
        assert main(args) == 0
        outs.append([json.loads(x)["reward"] for x in out.read_text().splitlines()])
    assert outs[0] == outs[1] and len(outs[0]) == 2
    xml = tmp_path / "Posts.xml"
    xml.write_text('<?xml version="1.0"?>\n<posts>\n</posts>\n')
    base = ["prepare", "stackexchange", "--input", str(xml)]
    assert main([*base, "--output", str(tmp_path / "se.jsonl.gz")]) == 2
    assert "write .jsonl or .parquet" in _error(capsys)
    assert not (tmp_path / "se.jsonl.gz").exists()


def test_an_output_that_cannot_be_written_is_one_error_naming_it(tmp_path):
    from rmtrain.errors import RmtrainError
    from rmtrain.outputs import atomic_writer

    target = tmp_path / "missing" / "pairs.jsonl"
    with pytest.raises(RmtrainError) as err, atomic_writer(target) as fh:
        fh.write("never")
    assert str(err.value) == f"cannot write {target} (No such file or directory); " + (
        "choose a writable output path"
    )
    assert not (tmp_path / "missing").exists()
