"""Property-based: random rows never crash loading, validation, cutting or collation, and every
row is accounted for."""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rmtrain.batching.collate import PackedCollator, PairCollator
from rmtrain.data.formats import read_pairs
from rmtrain.data.layout import encode_pairs
from rmtrain.data.reading import read_json_rows
from rmtrain.errors import RmtrainError

text = st.text(max_size=60)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": text}
)
value = st.one_of(
    text,
    st.none(),
    st.integers(),
    st.lists(message, max_size=3),
    st.lists(st.integers(), max_size=2),
)
row = st.fixed_dictionaries(
    {"chosen": value, "rejected": value},
    optional={"prompt": value, "margin": st.one_of(st.floats(), st.text(max_size=3))},
)
SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(rows=st.lists(row, min_size=1, max_size=8), max_length=st.integers(8, 64))
def test_random_rows_are_all_accounted_for(qwen_tokenizer, rows, max_length):
    pairs, counts = read_pairs(rows, 1.0, 0)  # every row has chosen/rejected: no error
    assert counts.rows_read == len(rows)
    assert len(pairs) + sum(counts.malformed.values()) == len(rows)
    assert len(counts.bad_rows) == sum(counts.malformed.values())
    feats, _, dropped = encode_pairs(qwen_tokenizer, pairs, max_length, chat=True)
    assert len(feats) + len(dropped) == len(pairs)
    kept = {f["pair_index"] for f in feats}
    assert sorted(kept | {i for i, _ in dropped}) == list(range(len(pairs)))
    for f in feats:
        assert (
            len(f["prompt_ids"]) + max(len(f["chosen_ids"]), len(f["rejected_ids"])) <= max_length
        )
        assert f["chosen_ids"] != f["rejected_ids"] or not f["chosen_ids"]
    if feats:
        pad = qwen_tokenizer.pad_token_id
        padded = PairCollator(pad)(feats)
        assert padded["input_ids"].shape[0] == 2 * len(feats)
        for mode in ("prefix_sharing", "padding_free"):
            packed = PackedCollator(pad, mode, 2 * max_length)(feats)
            assert packed["chosen_index"].shape == (len(feats), 2)
            assert packed["attention_mask"].shape[-1] == packed["input_ids"].shape[-1]


@SETTINGS
@given(lines=st.lists(st.one_of(st.text(max_size=40), row.map(json.dumps)), max_size=10))
@example(lines=["\x1f", '{"a": "b"}'])  # not JSON whitespace: a malformed row, not a blank line
@example(lines=["\u3000", '{"a": "b"}'])
def test_jsonl_lines_are_never_lost(tmp_path, lines):
    path = tmp_path / "x.jsonl"
    clean = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    path.write_text("\n".join(clean) + "\n", encoding="utf-8")

    def blank(line):  # only ASCII whitespace: anything else is a row, malformed if not JSON
        return not line.encode("utf-8").strip()

    kept = [line for line in clean if not blank(line)]

    def is_object(line):
        try:
            return isinstance(json.loads(line), dict)
        except ValueError:
            return False

    if not any(is_object(line) for line in kept):  # nothing to train on: one clear error
        with pytest.raises(RmtrainError, match="is empty|holds no JSON objects"):
            read_json_rows(path)
        return
    rows = read_json_rows(path)
    assert len(rows) == len(kept)
    assert rows.lines == [i + 1 for i, line in enumerate(clean) if not blank(line)]
