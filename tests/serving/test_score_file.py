"""`rmtrain score` and `rmtrain prepare` never destroy their input, never leave a partial output,
and answer every input line with exactly one strict-JSON output line."""

import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmtrain.cli import main
from rmtrain.serving.score_file import score_file
from rmtrain.serving.scorer import load_scorer

PROMPT, GOOD = "How do I get started with bread?", "Start with flour, water and salt."


@pytest.fixture(scope="module")
def scorer(trained):
    return load_scorer(str(trained[0]))


def score(trained, src, out, *extra):
    return main(
        ["score", "--model", str(trained[0]), "--input", str(src), "--output", str(out), *extra]
    )


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_output_that_is_the_input_is_refused_and_input_kept(trained, tmp_path, link, capsys):
    src = tmp_path / "in.jsonl"
    body = json.dumps({"prompt": PROMPT, "response": GOOD}) + "\n"
    src.write_text(body)
    out = src
    if link == "symlink":
        out = tmp_path / "link.jsonl"
        out.symlink_to(src)
    elif link == "hardlink":
        out = tmp_path / "hard.jsonl"
        os.link(src, out)
    assert score(trained, src, out) == 2
    assert "is the input file" in capsys.readouterr().err
    assert src.read_text() == body


def test_prepare_refuses_to_overwrite_its_dump(tmp_path, capsys):
    xml = tmp_path / "Posts.xml"
    xml.write_text('<?xml version="1.0"?><posts></posts>')
    before = xml.read_bytes()
    code = main(["prepare", "stackexchange", "--input", str(xml), "--output", str(xml)])
    assert code == 2 and "is the input file" in capsys.readouterr().err
    assert xml.read_bytes() == before


def test_failed_run_leaves_the_old_output(scorer, tmp_path, monkeypatch):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        "".join(json.dumps({"prompt": PROMPT, "response": GOOD}) + "\n" for _ in range(6))
    )
    out.write_text("old\n")
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*a, **k)

    import rmtrain.serving.score_file as sf

    real = sf.score_records
    monkeypatch.setattr(sf, "score_records", boom)
    with pytest.raises(RuntimeError):
        score_file(scorer, str(src), str(out), chunk=2)
    assert out.read_text() == "old\n"  # not a partial file
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_every_line_answered_in_place_as_strict_json(trained, tmp_path):
    lines = [
        "\ufeff" + json.dumps({"prompt": PROMPT, "response": GOOD, "id": 0}),  # BOM
        "",  # blank
        json.dumps({"prompt": PROMPT, "response": GOOD, "error": "mine", "id": 2}),
        '{"prompt": "p", "response": "r", "x": NaN, "id": 3}',
        json.dumps({"prompt": PROMPT, "response": "abc \ud800 def", "id": 4}),
        "   ",
        json.dumps({"prompt": PROMPT, "response": "caf\ufffd is fine", "id": 6}),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
    data += b'{"prompt": "p", "response": "\xff\xfe bytes"}\n'  # not UTF-8
    src.write_bytes(data)
    assert score(trained, src, out) == 0
    text = out.read_text()
    got = [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
        for line in text.splitlines()
    ]
    assert len(got) == 8
    assert "reward" in got[0] and got[0]["id"] == 0
    assert got[1] == {"error": "blank line"} and got[5] == {"error": "blank line"}
    assert got[2]["input_error"] == "mine" and "error" not in got[2] and "reward" in got[2]
    assert got[3]["x"] is None and "reward" in got[3]
    assert "unpaired surrogate" in got[4]["error"] and "reward" not in got[4]
    assert "reward" in got[6]  # a real U+FFFD is text, not an encoding error
    assert got[7]["error"] == "line is not valid UTF-8"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.builds(
                json.dumps,
                st.dictionaries(
                    st.sampled_from(["prompt", "response", "text", "messages", "error"]),
                    st.text(max_size=20) | st.integers() | st.floats() | st.none(),
                    max_size=4,
                ),
            ),
            st.sampled_from(
                ["\ufeff{}", "[[[[[]]]]]", '{"text": "\\ud800"}', "NaN", "1e999", "[" * 5000]
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_fuzzed_lines_line_count_kept_no_traceback(scorer, tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("fz")
    src, out = tmp / "in.jsonl", tmp / "out.jsonl"
    src.write_bytes(
        "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "surrogatepass")
        + b"\n"
    )
    counts = score_file(scorer, str(src), str(out), chunk=3)
    got = out.read_text(encoding="utf-8").split("\n")[:-1]  # JSON Lines: \n only
    assert len(got) == len(lines) == counts.rows
    for line in got:
        row = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
        assert ("reward" in row) != ("error" in row) or row.get("reward") is None
        if "reward" in row and row["reward"] is not None:
            assert math.isfinite(row["reward"])


def test_output_in_a_missing_folder_is_one_line_before_loading(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    code = main(
        [
            "score",
            "--model",
            str(tmp_path / "no-model"),
            "--input",
            str(src),
            "--output",
            "/nonexistent/dir/x.jsonl",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "folder /nonexistent/dir does not exist" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--port", "99999"), ("--port", "0"), ("--max-items", "0"), ("--timeout", "0")],
)
def test_serve_options_checked_before_loading(tmp_path, capsys, flag, value):
    code = main(["serve", "--model", str(tmp_path / "no-model"), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err and err.count("\n") == 1


def test_score_normalize_applies_the_saved_mean_and_std(scorer, trained, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": PROMPT, "response": GOOD}) + "\n")
    raw, norm = tmp_path / "raw.jsonl", tmp_path / "norm.jsonl"
    assert score(trained, src, raw) == 0 and score(trained, src, norm, "--normalize", "true") == 0
    r = json.loads(raw.read_text())["reward"]
    n = json.loads(norm.read_text())["reward"]
    assert n == pytest.approx((r - scorer.reward_mean) / scorer.reward_std, abs=1e-6)


def test_eval_batch_changes_passes_not_rewards(trained, tmp_path):
    reports = []
    for batch in ("1", "64"):
        out = tmp_path / f"r{batch}"
        args = ["eval", "--model", str(trained[0]), "--dataset", str(trained[1])]
        assert main([*args, "--output", str(out), "--batch", batch]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    a, b = (next(iter(r["datasets"].values()))["metrics"] for r in reports)
    for key in ("win_rate", "kendall_tau", "chosen_reward_mean", "rejected_reward_mean"):
        assert a[key] == pytest.approx(b[key], abs=1e-5)
