import gzip
import json

import pytest

from rmtrain.data.formats import detect_format, parse_hh_transcript, read_pairs, split_common_prefix
from rmtrain.data.reading import load_rows
from rmtrain.data.splits import sample_indices, split_by_group
from rmtrain.errors import RmtrainError
from tests.helpers import write_jsonl


def test_stack_exchange_columns(tmp_path):
    rows = [{"qid": 7, "question": "Q?", "response_j": "good", "response_k": "bad"}]
    pairs, counts = read_pairs(load_rows(str(write_jsonl(tmp_path / "se.jsonl", rows))), 1.0, 0)
    p = pairs[0]
    assert (p.prompt, p.chosen, p.rejected, p.group) == ("Q?", "good", "bad", "7")
    assert counts.rows_read == 1 and not counts.malformed


def test_explicit_columns_with_margin(tmp_path):
    rows = [{"prompt": "P", "chosen": "c", "rejected": "r", "margin": 2}]
    pairs, _ = read_pairs(load_rows(str(write_jsonl(tmp_path / "x.jsonl", rows))), 1.0, 0)
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected, pairs[0].margin) == (
        "P",
        "c",
        "r",
        2.0,
    )


def test_hh_rlhf_transcripts_split_into_messages(tmp_path):
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: How are you?\n\nAssistant: Fine, thanks."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: How are you?\n\nAssistant: Go away."
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n")
    pairs, _ = read_pairs(load_rows(str(path)), 1.0, 0)
    p = pairs[0]
    assert p.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How are you?"},
    ]
    assert (p.chosen, p.rejected) == ("Fine, thanks.", "Go away.")


def test_implicit_plain_text_prompt_cut_at_a_word_boundary():
    assert split_common_prefix("The cat sat", "The car sat") == ("The ", "cat sat", "car sat")


def test_conversational_rows(tmp_path):
    user = {"role": "user", "content": "2+2?"}
    rows = [
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        },
        {
            "chosen": [user, {"role": "assistant", "content": "4"}],
            "rejected": [user, {"role": "assistant", "content": "5"}],
        },
    ]
    for i, row in enumerate(rows):
        pairs, _ = read_pairs(load_rows(str(write_jsonl(tmp_path / f"c{i}.jsonl", [row]))), 1.0, 0)
        assert pairs[0].prompt == [user]
        assert pairs[0].chosen == [{"role": "assistant", "content": "4"}]


def test_parquet_and_csv(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"prompt": ["a", "b"], "chosen": ["c1", "c2"], "rejected": ["r1", "r2"]})
    df.to_parquet(tmp_path / "d.parquet")
    df.to_csv(tmp_path / "d.csv", index=False)
    for name in ("d.parquet", "d.csv"):
        pairs, counts = read_pairs(load_rows(str(tmp_path / name)), 1.0, 0)
        assert [p.chosen for p in pairs] == ["c1", "c2"] and counts.rows_read == 2


def test_malformed_rows_are_counted_by_reason(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [
        {"prompt": "p", "chosen": "c", "rejected": "r"},
        {"prompt": "p", "chosen": None, "rejected": "r"},
        {"prompt": "p", "chosen": 5, "rejected": "r"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "  ", "rejected": "r"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    pairs, counts = read_pairs(load_rows(str(path)), 1.0, 0)
    assert len(pairs) == 1 and counts.rows_read == 6
    assert dict(counts.malformed) == {
        "missing_field": 1,
        "not_text": 1,
        "identical": 1,
        "empty_text": 1,
        "invalid_json": 1,
    }


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(RmtrainError, match="does not exist"):
        load_rows(str(tmp_path / "missing.jsonl"))
    with pytest.raises(RmtrainError, match="rename"):
        detect_format({"text", "label"})
    with pytest.raises(RmtrainError, match="offline"):
        load_rows("someone/some-dataset")  # HF_HUB_OFFLINE=1 in tests


def test_sampling_and_split_are_deterministic_and_grouped():
    assert sample_indices(100, 0.1, 3) == sample_indices(100, 0.1, 3)
    assert len(sample_indices(100, 0.1, 3)) == 10
    assert sample_indices(100, 0.1, 3) != sample_indices(100, 0.1, 4)
    from rmtrain.data.pairs import Pair

    pairs = [Pair("q", "c", "r", group=str(i // 3), row=i) for i in range(30)]
    train, test = split_by_group(pairs, 0.2, 0)
    assert (train, test) == split_by_group(pairs, 0.2, 0)
    assert len(test) == 6 and len(train) == 24
    assert not {p.group for p in train} & {p.group for p in test}


def test_parse_hh_transcript_rejects_other_text():
    assert parse_hh_transcript("just text") is None


@pytest.mark.parametrize("line", ["[", "[]", "[1, 2]", '[{"prompt": "a"}]'])
def test_a_jsonl_line_that_looks_like_an_array_is_one_row(tmp_path, line):
    """Found by the line-preservation property: a .jsonl file whose first line opens a JSON
    array was read as an array, which failed on `[` and swallowed or split lines otherwise."""
    from rmtrain.data.reading import InvalidRow, read_json_rows

    path = tmp_path / "x.jsonl"
    path.write_text(line + "\n" + json.dumps({"prompt": "p"}) + "\n")
    rows = read_json_rows(path)
    assert len(rows) == 2 and rows[1] == {"prompt": "p"}
    assert isinstance(rows[0], InvalidRow) == (line == "[")
    array = tmp_path / "x.json"  # a .json file may still hold one array
    array.write_text('[{"prompt": "a"}, {"prompt": "b"}]')
    assert read_json_rows(array) == [{"prompt": "a"}, {"prompt": "b"}]


def test_frac_sample_and_split_are_the_same_in_any_process(tmp_path):
    """`--frac` sampling and the held-out split depend on the seed alone, not on Python's
    per-process string hashing."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import write_demo

    data = write_demo(tmp_path / "d.jsonl", 200, seed=5)
    code = (
        "import json, sys\n"
        "from rmtrain.data.formats import read_pairs\n"
        "from rmtrain.data.reading import load_rows\n"
        "from rmtrain.data.splits import split_by_group\n"
        "pairs, _ = read_pairs(load_rows(sys.argv[1]), 0.3, 7)\n"
        "train, test = split_by_group(pairs, 0.2, 7)\n"
        "print(json.dumps([[p.row for p in train], [p.row for p in test]]))\n"
    )
    outs = []
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        run = subprocess.run(
            [sys.executable, "-c", code, str(data)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outs.append(run.stdout)
    train, test = json.loads(outs[0])
    assert outs[0] == outs[1] and len(train) + len(test) == 60 and test
