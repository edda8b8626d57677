"""The server stays available: stalled and unauthorised clients hold nothing, timed-out work is
not scored, and with a key every path but /health needs it."""

import asyncio
import socket
import time

import httpx
import numpy as np
import pytest

from rmtrain.serving.scorer import load_scorer
from rmtrain.serving.server import DynamicBatcher, ServeLimits, create_app
from tests.helpers import Server, live_serve

KEY = "k3y"
ITEM = {"items": [{"prompt": "Hi?", "response": "Hello there."}]}


@pytest.fixture(scope="module")
def scorer(trained):
    return load_scorer(str(trained[0]))


def stalled(port, token=None, n=1):
    """Connections that send headers announcing a body, then a few bytes of it, then stall."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        s.sendall(
            f"POST /score HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f'Content-Length: 1000\r\n\r\n{{"items"'.encode()
        )
        socks.append(s)
    return socks


@pytest.mark.parametrize("with_token", [False, True])
def test_more_stalled_clients_than_slots_do_not_lock_out_an_authorised_request(scorer, with_token):
    limits = ServeLimits(body_timeout_s=1.0)
    app = create_app(scorer, "tiny", api_key=KEY, limits=limits)
    with Server(app, limit_concurrency=16) as url:
        port = int(url.rsplit(":", 1)[1])
        socks = stalled(port, KEY if with_token else None, n=40)
        try:
            time.sleep(0.2)
            answers = set()
            for s in socks:
                s.settimeout(limits.body_timeout_s + 5)
                answers.add(s.recv(200).split(b"\r\n")[0][:12])
            # every stalled client is answered and let go: refused without a token (401), at
            # the body deadline with one (408), or as over the connection limit (503)
            refused = b"HTTP/1.1 408" if with_token else b"HTTP/1.1 401"
            assert answers <= {refused, b"HTTP/1.1 503"}, answers
            headers = {"Authorization": f"Bearer {KEY}"}
            start = time.time()
            r = None
            while time.time() - start < limits.body_timeout_s + 5:
                r = httpx.post(f"{url}/score", json=ITEM, headers=headers, timeout=10)
                if r.status_code == 200:
                    break
                time.sleep(0.2)
            assert r is not None and r.status_code == 200, r and r.text
            assert time.time() - start < limits.body_timeout_s + 5
            assert httpx.get(f"{url}/health").status_code == 200
        finally:
            for s in socks:
                s.close()


@pytest.mark.parametrize("path", ["/info", "/openapi.json", "/docs", "/score", "/get_reward"])
def test_every_path_but_health_needs_the_key(scorer, path):
    with Server(create_app(scorer, "my-rm", api_key=KEY), limit_concurrency=64) as url:
        method = httpx.post if path in ("/score", "/get_reward") else httpx.get
        kwargs = {"json": ITEM} if method is httpx.post else {}
        assert method(f"{url}{path}", **kwargs).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert method(f"{url}{path}", headers=wrong, **kwargs).status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200
        info = httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert info["model"] == "my-rm"


class SlowScorer:
    """Scores every sequence as its length, slowly; remembers what it was asked."""

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, []

    def score_ids(self, seqs):
        self.calls.append([len(s) for s in seqs])
        time.sleep(self.seconds)
        return np.array([float(len(s)) for s in seqs])


def test_timed_out_requests_are_not_scored():
    async def scenario():
        stub = SlowScorer(0.5)
        batcher = DynamicBatcher(stub, ServeLimits(batch_wait_ms=1.0))
        batcher.start()
        first = asyncio.create_task(batcher.score([[1] * 3], False))
        await asyncio.sleep(0.1)  # the first request is being scored
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await asyncio.wait_for(batcher.score([[1] * 7], False), 0.1)
        assert (await first).tolist() == [3.0]
        await asyncio.sleep(0.3)
        later = await batcher.score([[1] * 5], False)
        await batcher.stop()
        return stub.calls, later

    calls, later = asyncio.run(scenario())
    assert later.tolist() == [5.0]
    assert calls == [[3], [5]]  # the timed-out request (7 tokens) never reached the model


def test_one_address_cannot_take_every_slot(scorer):
    limits = ServeLimits(body_timeout_s=2.0, max_per_client=4)
    with Server(create_app(scorer, "tiny", limits=limits), limit_concurrency=64) as url:
        port = int(url.rsplit(":", 1)[1])
        socks = stalled(port, n=4)  # four uploads in flight from 127.0.0.1
        try:
            time.sleep(0.3)
            r = httpx.post(f"{url}/score", json=ITEM, timeout=5)
            assert r.status_code == 429 and "in flight from this address" in r.text
            assert httpx.get(f"{url}/health").status_code == 200  # never capped
        finally:
            for s in socks:
                s.close()
        time.sleep(0.3)
        assert httpx.post(f"{url}/score", json=ITEM, timeout=10).status_code == 200


def test_the_key_from_the_environment_guards_a_live_server(trained):
    import os

    env = {**os.environ, "RMTRAIN_API_KEY": KEY}
    with live_serve(trained[0], env=env) as url:
        for path in ("/info", "/openapi.json"):
            assert httpx.get(f"{url}{path}").status_code == 401
        ok = httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and KEY not in ok.text


def _eof_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(100) == b""
    except OSError:  # reset by the server counts as let go
        return True


@pytest.mark.slow
def test_idle_and_partial_header_connections_hold_nothing(trained):
    """More idle and half-header sockets than the server lets wait: /health and an authorised
    /score answer within a second while they are held, the oldest are let go at once, the rest at
    the header deadline."""
    flags = ("--api-key", KEY, "--header-timeout", "2", "--max-waiting-connections", "50")
    with live_serve(trained[0], *flags) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(80)]
        partial = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        for s in partial:
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Le")
        try:
            time.sleep(0.3)
            start = time.time()
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            headers = {"Authorization": f"Bearer {KEY}"}
            r = httpx.post(f"{url}/score", json=ITEM, headers=headers, timeout=5)
            assert r.status_code == 200 and time.time() - start < 1.0
            # the 50 + 2 newest waited; the 70 before them were let go as the cap was passed
            assert all(_eof_within(s, 0.5) for s in idle[:70])
            assert all(_eof_within(s, 4.0) for s in idle[70:] + partial)
        finally:
            for s in idle + partial:
                s.close()
