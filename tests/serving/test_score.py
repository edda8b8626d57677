import json

import numpy as np
import pytest

from rmtrain.cli import main
from rmtrain.data.pairs import Pair
from rmtrain.serving.scorer import Item, encode_items, load_scorer, parse_item

GOOD = "Start with the flour and pay attention to the yeast."
PROMPT = "How do I get started with bread?"


@pytest.fixture(scope="module")
def scorer(trained):
    return load_scorer(str(trained[0]))


def test_parse_item_shapes_and_errors():
    assert parse_item({"prompt": "p", "response": "r"}) == Item(prompt="p", response="r")
    msgs = [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert parse_item({"messages": msgs}) == Item(prompt=msgs[:1], response=msgs[1:])
    assert parse_item({"text": "full"}) == Item(text="full")
    assert "non-empty" in parse_item({"prompt": "p", "response": ""})
    assert "needs" in parse_item({"foo": 1})
    assert "JSON object" in parse_item([1, 2])
    assert "ending with an assistant" in parse_item({"messages": msgs[:1]})


def test_single_sequence_rewards_equal_pair_rewards(scorer):
    """The packed single-sequence path and the prefix-shared pair path agree."""
    pairs = [Pair(PROMPT, GOOD, "Whatever.", "g", 0), Pair("", "Hi there", "Go away", "h", 1)]
    scored = scorer.score_pairs(pairs)
    items = [Item(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    rewards = scorer.score_ids([e[0] for e in encode_items(scorer, items)])
    assert np.allclose(rewards[0::2], scored.chosen, atol=1e-5)
    assert np.allclose(rewards[1::2], scored.rejected, atol=1e-5)


def test_full_text_gets_the_training_tail(scorer):
    """A full chat text without its closing tokens scores like the prompt/response item."""
    tok = scorer.tokenizer
    msgs = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": GOOD}]
    full = tok.apply_chat_template(msgs, tokenize=False)
    (a,), (b,), (c,) = (
        encode_items(scorer, [it])
        for it in (
            Item(PROMPT, GOOD),
            Item(text=full),
            Item(text=full.removesuffix("<|im_end|>\n")),
        )
    )
    r = scorer.score_ids([a[0], b[0], c[0]])
    assert r[0] == pytest.approx(r[1], abs=1e-5) and r[1] == pytest.approx(r[2], abs=1e-5)


def test_score_file_streams_in_order_and_reports_bad_rows(scorer, trained, tmp_path):
    rows = [
        {"prompt": PROMPT, "response": GOOD, "id": 0},
        {"prompt": PROMPT, "response": 5, "id": 1},
        "not json",
        {
            "messages": [
                {"role": "user", "content": PROMPT},
                {"role": "assistant", "content": GOOD},
            ],
            "id": 3,
        },
        {"text": "free text " * 200, "id": 4},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "score",
                "--model",
                str(trained[0]),
                "--input",
                str(src),
                "--output",
                str(out),
                "--batch",
                "2",
            ]
        )
        == 0
    )
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 5
    assert [g.get("id") for g in got] == [0, 1, None, 3, 4]
    assert "error" in got[1] and got[2]["error"].startswith("invalid JSON")
    assert got[0]["reward"] == pytest.approx(got[3]["reward"], abs=1e-5)
    assert got[4]["truncated"] is True and got[0]["truncated"] is False
    direct = scorer.score_ids([encode_items(scorer, [Item(PROMPT, GOOD)])[0][0]])[0]
    assert got[0]["reward"] == pytest.approx(direct, abs=1e-5)


def test_scoring_in_several_passes_equals_the_stock_forward(trained):
    """The packed scoring path, forced into several forward passes whose trees come back out
    of order (largest first), gives each text the stock sequence-classification forward's
    reward; so do /score and /get_reward."""
    import httpx
    import torch
    from transformers import AutoModelForSequenceClassification

    from rmtrain.serving.server import create_app
    from tests.helpers import Server

    scorer = load_scorer(str(trained[0]))
    scorer.token_budget = 2 * scorer.max_length  # the smallest budget: many passes
    items = [
        Item(prompt=f"Question {i}: " + "why? " * (i % 7), response="Because. " * (1 + i * 3 % 11))
        for i in range(12)
    ]
    seqs = [ids for ids, _ in encode_items(scorer, items)]
    passes = []
    real = scorer._forward

    def counted(batch, rows, cols):
        passes.append(len(rows))
        return real(batch, rows, cols)

    scorer._forward = counted
    fast = scorer.score_ids(seqs)
    assert len(passes) > 2 and sum(passes) == len(seqs)
    stock = AutoModelForSequenceClassification.from_pretrained(trained[0]).eval()
    with torch.no_grad():
        want = [stock(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
    assert fast.tolist() == pytest.approx(want, abs=1e-5)
    del scorer._forward
    with Server(create_app(scorer, "tiny")) as url:
        body = {"items": [{"prompt": it.prompt, "response": it.response} for it in items[:4]]}
        got = httpx.post(f"{url}/score", json=body).json()["rewards"]
        assert got == pytest.approx(want[:4], abs=1e-5)
        texts = [scorer.tokenizer.decode(s) for s in seqs[4:8]]
        got = httpx.post(f"{url}/get_reward", json={"query": texts}).json()["rewards"]
        assert got == pytest.approx(want[4:8], abs=1e-5)


def test_the_prompt_floor_reaches_scoring_and_serving(trained, tmp_path):
    """The training prompt floor (default max_length // 4, or --min-prompt-length) is the one
    scoring and serving cut with: a long prompt keeps exactly that many tokens."""
    from tests.helpers import tiny_train_args

    default = load_scorer(str(trained[0]))
    assert default.prompt_floor == 96 // 4
    out = tmp_path / "floor"
    args = ["--max-steps", "1", "--eval-steps", "0", "--max-length", "64"]
    assert main(tiny_train_args(trained[1], out, *args, "--min-prompt-length", "10")) == 0
    scorer = load_scorer(str(out))
    assert scorer.prompt_floor == 10
    long_prompt, long_answer = "word " * 80, "answer " * 80
    ((ids, cut),) = encode_items(scorer, [Item(prompt=long_prompt, response=long_answer)])
    head = scorer.tokenizer.apply_chat_template(
        [{"role": "user", "content": long_prompt}], tokenize=False, add_generation_prompt=True
    )
    head_ids = scorer.tokenizer(head, add_special_tokens=False)["input_ids"]
    assert cut and len(ids) == 64 and ids[:10] == head_ids[-10:]
    # the full text through /get_reward's path is cut the same way
    assert encode_items(scorer, [Item(text=head + long_answer)])[0][0] == ids


def test_an_unknown_message_role_is_an_error_not_a_dropped_turn():
    from rmtrain.serving.scorer import parse_item

    row = {"prompt": [{"role": "human", "content": "Hi?"}], "response": "Hello."}
    assert parse_item(row) == "unknown message roles ['human']: use system, user, assistant or tool"
    ok = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
          "response": "Hello."}  # fmt: skip
    assert not isinstance(parse_item(ok), str)
