"""Real samples from ../shared/data (dev machines only; skipped with a reason elsewhere)."""

import json

from rmtrain.data.formats import read_pairs
from rmtrain.data.layout import encode_pairs
from rmtrain.data.reading import load_rows
from rmtrain.data.stackexchange import iter_pairs
from tests.helpers import shared_data_or_skip


def test_hh_rlhf_sample_every_row_becomes_a_conversation():
    data = shared_data_or_skip()
    rows = load_rows(str(data / "hh-rlhf" / "harmless-base-test-first500.jsonl.gz"))
    pairs, counts = read_pairs(rows, 1.0, 0)
    assert counts.rows_read == 500
    assert len(pairs) + sum(counts.malformed.values()) == 500
    conversational = [p for p in pairs if isinstance(p.prompt, list)]
    assert len(conversational) == len(pairs)
    assert all(p.prompt[-1]["role"] == "user" for p in pairs)


def test_stack_exchange_pairs_are_cut_not_dropped(qwen_tokenizer, tmp_path):
    data = shared_data_or_skip()
    xml = data / "stackexchange" / "beer.stackexchange.com-Posts.xml"
    path = tmp_path / "beer.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in iter_pairs(xml)))
    pairs, counts = read_pairs(load_rows(str(path)), 1.0, 0)
    feats, truncated, dropped = encode_pairs(qwen_tokenizer, pairs, 512, chat=True)
    # About a fifth of beer pairs exceed 512 tokens: they are cut, and every pair is accounted for.
    assert 0.1 * len(pairs) < truncated < 0.4 * len(pairs)
    assert len(feats) + len(dropped) == len(pairs)
    assert all(len(f["prompt_ids"]) + len(f["chosen_ids"]) <= 512 for f in feats)
    assert all(len(f["prompt_ids"]) + len(f["rejected_ids"]) <= 512 for f in feats)
