"""Against a real uvicorn server on a free loopback port."""

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmtrain.serving.scorer import Item, encode_items, load_scorer
from rmtrain.serving.server import ServeLimits, create_app
from tests.helpers import Server

PROMPT = "How do I get started with bread?"
GOOD = "Start with the flour and pay attention to the yeast."
KEY = "s3cret-token"


@pytest.fixture(scope="module")
def scorer(trained):
    return load_scorer(str(trained[0]))


@pytest.fixture(scope="module")
def open_url(scorer):
    limits = ServeLimits(max_body_bytes=20_000, max_items=4)
    with Server(create_app(scorer, "tiny", limits=limits)) as url:
        yield url


@pytest.fixture(scope="module")
def auth_url(scorer):
    with Server(create_app(scorer, "tiny", api_key=KEY, normalize=True)) as url:
        yield url


def in_process(scorer, items):
    return scorer.score_ids([e[0] for e in encode_items(scorer, items)]).tolist()


def test_health_info_score_and_get_reward(open_url, scorer, trained, tmp_path):
    assert httpx.get(f"{open_url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{open_url}/info").json()
    assert info["max_length"] == 96 and info["limits"]["max_items"] == 4
    items = [{"prompt": PROMPT, "response": GOOD}, {"prompt": PROMPT, "response": "Whatever."}]
    got = httpx.post(f"{open_url}/score", json={"items": items}).json()
    expected = in_process(scorer, [Item(i["prompt"], i["response"]) for i in items])
    assert got["rewards"] == pytest.approx(expected, abs=1e-5)
    assert got["truncated"] == [False, False]
    # the same texts through `rmtrain score`
    from rmtrain.cli import main

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(i) + "\n" for i in items))
    assert (
        main(["score", "--model", str(trained[0]), "--input", str(src), "--output", str(out)]) == 0
    )
    cli = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
    assert cli == pytest.approx(got["rewards"], abs=1e-5)
    # OpenRLHF protocol: full texts
    full = scorer.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": GOOD}],
        tokenize=False,
    )
    r = httpx.post(f"{open_url}/get_reward", json={"query": [full], "prompts": [PROMPT]}).json()
    assert r["rewards"][0] == pytest.approx(expected[0], abs=1e-5)


def test_concurrent_requests_are_batched_and_correct(open_url, scorer):
    import concurrent.futures as cf

    texts = [f"answer number {i} about the flour" for i in range(12)]
    expected = in_process(scorer, [Item(PROMPT, t) for t in texts])

    def one(t):
        return httpx.post(f"{open_url}/score", json={"items": [{"prompt": PROMPT, "response": t}]})

    with cf.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(one, texts))
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["rewards"][0] for r in responses] == pytest.approx(expected, abs=1e-5)


def test_encoding_from_many_threads_gives_each_its_own_tokens(scorer):
    """The server encodes requests on a thread pool; the fast tokenizer keeps per-call state
    on its backend (special tokens split or not), so unguarded threads got each other's
    setting (123 of 2,000 encodings wrong here): the same token ids as one at a time."""
    import concurrent.futures as cf

    items = [Item(PROMPT, f"answer number {i} about the flour") for i in range(12)]
    for i in range(4):  # full texts too (OpenRLHF's form)
        chat = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": f"{i}."}]
        items.append(Item(text=scorer.tokenizer.apply_chat_template(chat, tokenize=False)))
    want = encode_items(scorer, items)

    def one(i):
        return encode_items(scorer, [items[i % len(items)]])[0] == want[i % len(items)]

    with cf.ThreadPoolExecutor(8) as pool:
        same = list(pool.map(one, range(2000)))
    assert same.count(False) == 0


def test_limits(open_url):
    item = {"prompt": PROMPT, "response": GOOD}
    assert httpx.post(f"{open_url}/score", json={"items": [item] * 5}).status_code == 413
    big = {"items": [{"prompt": "x" * 30_000, "response": GOOD}]}
    assert httpx.post(f"{open_url}/score", json=big).status_code == 413
    long_item = {"prompt": "word " * 300, "response": GOOD}
    r = httpx.post(f"{open_url}/score", json={"items": [long_item]})
    assert r.status_code == 200 and r.json()["truncated"] == [True]


def test_timeout_is_reported(scorer):
    app = create_app(scorer, "tiny", limits=ServeLimits(request_timeout_s=1e-9))
    with Server(app) as url:
        r = httpx.post(f"{url}/score", json={"items": [{"prompt": PROMPT, "response": GOOD}]})
    assert r.status_code == 503 and "timed out" in r.json()["detail"]


def test_auth_and_normalisation(auth_url, scorer):
    body = {"items": [{"prompt": PROMPT, "response": GOOD}]}
    assert httpx.get(f"{auth_url}/health").status_code == 200
    assert httpx.post(f"{auth_url}/score", json=body).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert httpx.post(f"{auth_url}/score", json=body, headers=bad).status_code == 401
    assert httpx.get(f"{auth_url}/info").status_code == 401
    ok = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{auth_url}/score", json=body, headers=ok)
    raw = in_process(scorer, [Item(PROMPT, GOOD)])[0]
    assert r.json()["rewards"][0] == pytest.approx(
        (raw - scorer.reward_mean) / scorer.reward_std, abs=1e-5
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"items": []}',
        b'{"items": "x"}',
        b'{"items": [1]}',
        b'{"items": [{"prompt": 1, "response": "r"}]}',
        b'{"query": [1]}',
        b'{"query": ["abc \\ud800 def"]}',
        b'{"items": [{"prompt": "p", "response": "abc \\ud800 def"}]}',
        b'{"items": [{"messages": [{"role": "assistant", "content": "\\udfff"}]}]}',
        b'{"items": [{"response": ""}]}',
        b'{"extra": 1, "items": [{"text": "t"}]}',
    ],
)
def test_malformed_bodies_get_4xx(open_url, body):
    for path in ("/score", "/get_reward"):
        r = httpx.post(
            f"{open_url}{path}", content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)


# any unicode, plus strings holding an unpaired surrogate (valid JSON, not valid text)
any_text = st.text(max_size=40) | st.builds(
    lambda a, cp, b: a + chr(cp) + b,
    st.text(max_size=10),
    st.integers(0xD800, 0xDFFF),
    st.text(max_size=10),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
item_like = st.fixed_dictionaries(
    {},
    optional={
        "prompt": json_values,
        "response": json_values,
        "text": json_values,
        "messages": json_values,
    },
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"items": st.lists(item_like, max_size=5)}),
    st.fixed_dictionaries({"query": st.lists(json_values | any_text, max_size=5)}),
    st.fixed_dictionaries({"query": st.lists(any_text, max_size=4), "prompts": json_values}),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, path=st.sampled_from(["/score", "/get_reward"]))
def test_fuzzed_bodies_never_5xx(open_url, body, path):
    # json.dumps escapes surrogates (\\ud800), as a JSON client would send them
    r = httpx.post(f"{open_url}{path}", content=json.dumps(body), timeout=30)
    assert r.status_code < 500, (body, r.status_code, r.text)


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"query": ["hi"]}',  # a UTF-8 BOM
        b'{"query": ["a"], "prompts": NaN}',
        b'{"items": [{"prompt": "p", "response": "r", "x": 1e999}]}',
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        b'{"query": ["\xff\xfe"]}',  # not UTF-8
        b'{"items": [{"text": "' + b"a" * 15_000 + b'"}]}',
    ],
)
def test_odd_bodies_never_5xx(open_url, body):
    for path in ("/score", "/get_reward"):
        r = httpx.post(f"{open_url}{path}", content=body, timeout=30)
        assert r.status_code < 500, (path, body[:80], r.status_code, r.text[:200])


def test_help_never_prints_the_api_key(monkeypatch, capsys):
    from rmtrain.cli import build_parser

    monkeypatch.setenv("RMTRAIN_API_KEY", "zz-secret-zz")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    assert "--api-key" in text and "zz-secret-zz" not in text


@pytest.mark.parametrize("dynamic", [True, False])
def test_dynamic_batching_merges_concurrent_requests_into_fewer_forwards(
    scorer, monkeypatch, dynamic
):
    import concurrent.futures as cf

    calls = []
    real = scorer.score_ids

    def counted(seqs, *a, **k):
        calls.append(len(seqs))
        time.sleep(0.05)  # a forward takes time: requests arriving meanwhile wait together
        return real(seqs, *a, **k)

    monkeypatch.setattr(scorer, "score_ids", counted)
    texts = [f"answer number {i} about the flour" for i in range(12)]
    limits = ServeLimits(batch_wait_ms=20.0)
    with Server(create_app(scorer, "tiny", limits=limits, dynamic_batching=dynamic)) as url:

        def one(t):
            body = {"items": [{"prompt": PROMPT, "response": t}]}
            return httpx.post(f"{url}/score", json=body, timeout=30)

        with cf.ThreadPoolExecutor(12) as pool:
            assert all(r.status_code == 200 for r in pool.map(one, texts))
    assert sum(calls) == 12
    assert (len(calls) < 12) if dynamic else (calls == [1] * 12)


def test_too_much_waiting_work_is_429(scorer):
    limits = ServeLimits(max_items=8, max_pending_items=2)
    with Server(create_app(scorer, "tiny", limits=limits)) as url:
        items = [{"prompt": PROMPT, "response": GOOD}] * 3
        r = httpx.post(f"{url}/score", json={"items": items})
        assert r.status_code == 429 and "server busy" in r.text
        assert httpx.post(f"{url}/score", json={"items": items[:2]}).status_code == 200


@pytest.mark.parametrize(
    "flag, env, message",
    [
        (["--api-key", ""], {}, "--api-key is empty"),
        ([], {"RMTRAIN_API_KEY": " "}, "RMTRAIN_API_KEY is empty"),
        (["--api-key", "clé"], {}, "must be printable ASCII"),
    ],
)
def test_an_api_key_that_cannot_work_is_an_error(flag, env, message, monkeypatch, capsys):
    from rmtrain.cli import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["serve", "--model", "nowhere", *flag]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
