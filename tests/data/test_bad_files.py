"""Broken data files get one line naming the file and the fix, never a traceback; a file saved
with a BOM reads; whitespace-only differences are identical pairs; a data set with no usable
row still gets its report."""

import bz2
import gzip
import json

import pytest

from rmtrain.cli import main
from rmtrain.data.formats import read_pairs
from rmtrain.data.reading import load_rows

ROW = {"prompt": "p", "chosen": "good answer", "rejected": "bad answer"}
LINE = (json.dumps(ROW) + "\n").encode()


def broken_files(tmp):
    full = gzip.compress(LINE * 50)
    files = {
        "truncated.jsonl.gz": full[: len(full) // 2],
        "not_gzip.jsonl.gz": LINE,
        "quotes.csv": b'prompt,chosen,rejected\n"p,a,b\nq,c,d\n',  # a quote never closed
        "corrupt.parquet": b"PAR1 this is not parquet PAR1",
        "empty.jsonl": b"",
        "blank.jsonl": b"  \n\n \n",
        "binary.jsonl": bytes(range(256)) * 4,
        "array.json": b"[1, 2, 3]",
        "scalars.jsonl": b"1\n2\n",
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    (tmp / "empty_dir").mkdir()
    return [*files, "empty_dir"]


def test_every_broken_file_is_one_line_naming_it(tmp_path, capsys):
    for name in broken_files(tmp_path):
        path = tmp_path / name
        code = main(["validate", "--dataset", str(path), "--output", str(tmp_path / "r.json")])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("rmtrain: error")]
        assert code == 2, (name, err)
        assert len(errors) == 1 and "Traceback" not in err, (name, err)
        assert str(path) in errors[0], (name, err)


def test_two_datasets_say_which_file_has_no_known_columns(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_bytes(LINE * 20)
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    args = ["train", "--model", "builtin:tiny-qwen3", "--dataset", str(good), "--dataset", str(odd)]
    code = main([*args, "--output", str(tmp_path / "o"), "--report-to", "none"])
    err = capsys.readouterr().err
    assert code == 2 and f"{odd}: data has columns ['answer', 'question']" in err


def test_bz2_is_decompressed_and_bom_is_dropped(tmp_path):
    path = tmp_path / "d.jsonl.bz2"
    path.write_bytes(bz2.compress(b"\xef\xbb\xbf" + LINE * 3))
    pairs, counts = read_pairs(load_rows(str(path)), 1.0, 0)
    assert len(pairs) == 3 and not counts.malformed
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + LINE)
    pairs, counts = read_pairs(load_rows(str(bom)), 1.0, 0)
    assert len(pairs) == 1 and not counts.malformed  # row 0 is not invalid_json


def test_whitespace_only_differences_are_identical(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "same answer", "rejected": "same answer  \n"},
        {"prompt": "p", "chosen": "same\n\nanswer", "rejected": " same answer"},
        {"prompt": "p", "chosen": "same answer", "rejected": "same answers"},
    ]
    pairs, counts = read_pairs(rows, 1.0, 0)
    assert counts.malformed == {"identical": 2} and len(pairs) == 1


def test_all_bad_rows_still_write_the_report(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n" + json.dumps({"prompt": "p", "chosen": "x", "rejected": "x"}) + "\n")
    out = tmp_path / "out"
    args = ["train", "--model", "builtin:tiny-qwen3", "--dataset", str(data), "--frac", "1"]
    code = main([*args, "--output", str(out), "--report-to", "none"])
    assert code == 2 and "no usable pairs" in capsys.readouterr().err
    report = json.loads((out / "data_report.json").read_text())
    assert report["rows"] == [{"line": 2, "reason": "identical"}]


@pytest.mark.parametrize("name", ["rows.parquet", "rows.csv"])
def test_parquet_and_csv_report_row_indices(tmp_path, name):
    import pandas as pd

    frame = pd.DataFrame([ROW, {**ROW, "chosen": None}])
    path = tmp_path / name
    frame.to_parquet(path) if name.endswith("parquet") else frame.to_csv(path, index=False)
    code = main(["validate", "--dataset", str(path), "--output", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 2 and report["position"] == "row: row index (0-based)"
    assert report["rows"] == [{"row": 1, "reason": "missing_field"}]


@pytest.mark.parametrize("name", ["locked.jsonl", "locked.jsonl.gz", "locked.parquet"])
def test_a_file_this_user_cannot_read_says_so(tmp_path, capsys, name):
    """Not "incomplete, re-download": the file is whole, its permissions are the fix. As root
    (who reads anything) the read runs with the effective user id of `nobody`."""
    import os
    import tempfile

    folder = tempfile.mkdtemp(prefix="rmtrain-locked-")  # a folder any user can enter
    os.chmod(folder, 0o755)
    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(LINE) if name.endswith(".gz") else LINE)
    os.chmod(path, 0)
    root = os.geteuid() == 0
    try:
        if root:
            os.seteuid(65534)
        code = main(["validate", "--dataset", path])
    finally:
        if root:
            os.seteuid(0)
        os.chmod(path, 0o600)
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"rmtrain: error: cannot read {path}: Permission denied; make it readable by this user "
        "(chmod / chown) or pass a copy that is\n"
    )
