"""Reward server under load: 200 concurrent requests of mixed sizes over loopback, or (with
--idle N) N connections that send nothing or half a header while real clients are served.

    python benchmarks/serve_load.py [--model DIR] [--requests 200] [--output F]
    python benchmarks/serve_load.py --idle 1100 [--model DIR] [--output F]

The server (`rmtrain serve`) runs in its own process; this process is the client. It runs the
same load twice, with dynamic batching on and off, and prints errors, p50/p99 latency and
items/s for each; the last line is JSON. Without --model it first trains the offline demo
model (about half a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, setup_record  # noqa: E402

WORDS = [
    "flour",
    "yeast",
    "oven",
    "dough",
    "knead",
    "water",
    "salt",
    "time",
    "heat",
    "rest",
    "shape",
    "bake",
    "crust",
    "crumb",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_model() -> str:
    out = Path(tempfile.mkdtemp()) / "model"
    cmd = [
        sys.executable,
        "-m",
        "rmtrain",
        "train",
        "--config",
        "configs/demo.yaml",
        "--output",
        str(out),
        "--report-to",
        "none",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return str(out)


def make_requests(n: int, seed: int = 0) -> list[dict]:
    """Mixed sizes: 1-16 items per request, responses of 3-120 words."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        items = []
        for _ in range(rng.choice([1, 1, 2, 4, 8, 16])):
            words = rng.randint(3, 120)
            items.append(
                {
                    "prompt": "How do I bake bread?",
                    "response": " ".join(rng.choice(WORDS) for _ in range(words)),
                }
            )
        reqs.append({"items": items})
    return reqs


async def fire(url: str, reqs: list[dict]) -> dict:
    limits = httpx.Limits(max_connections=len(reqs), max_keepalive_connections=len(reqs))
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(body: dict) -> tuple[float, int]:
            t = time.perf_counter()
            try:
                r = await client.post(f"{url}/score", json=body)
                status = r.status_code
            except httpx.HTTPError:
                status = -1
            return time.perf_counter() - t, status

        start = time.perf_counter()
        results = await asyncio.gather(*(one(b) for b in reqs))
        wall = time.perf_counter() - start
    lat = sorted(r[0] for r in results)
    items = sum(len(b["items"]) for b in reqs)
    return {
        "requests": len(reqs),
        "items": items,
        "errors": sum(1 for _, s in results if s != 200),
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "items_per_s": items / wall,
        "wall_s": wall,
    }


def run_server(model: str, dynamic: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "rmtrain",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--max-items",
        "16",
        "--timeout",
        "300",
    ]
    if not dynamic:
        cmd.append("--no-dynamic-batching")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


def idle_load(model: str, n: int) -> dict:
    """N sockets held open (half send nothing, half part of a header) against a server with a
    key: the time /health and an authorised /score take meanwhile, and how many of the
    sockets the server has closed after its header deadline."""
    import os

    key = "bench-key"
    port = free_port()
    cmd = [sys.executable, "-m", "rmtrain", "serve", "--model", model, "--port", str(port)]
    cmd += ["--header-timeout", "5"]
    env = {**os.environ, "RMTRAIN_API_KEY": key}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.3)
        socks = []
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            if i % 2:
                s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Le")
            socks.append(s)
        time.sleep(0.5)
        start = time.perf_counter()
        health = httpx.get(f"{url}/health", timeout=30).status_code
        health_s = time.perf_counter() - start
        body = {"items": [{"prompt": "Hi?", "response": "Hello there."}]}
        start = time.perf_counter()
        auth = {"Authorization": f"Bearer {key}"}
        score = httpx.post(f"{url}/score", json=body, headers=auth, timeout=30).status_code
        score_s = time.perf_counter() - start
        time.sleep(7)  # past the header deadline
        closed = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                closed += s.recv(10) == b""
            except TimeoutError:
                pass
            except OSError:
                closed += 1
            s.close()
        return {
            "connections": n,
            "health_status": health,
            "health_s": health_s,
            "score_status": score,
            "score_s": score_s,
            "closed_after_deadline": closed,
        }
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--output", default=None, help="also write the result JSON here")
    ap.add_argument("--idle", type=int, default=0, help="hold this many idle connections")
    a = ap.parse_args()
    model = a.model or demo_model()
    if a.idle:
        out = {"setup": setup_record({"model": model}), "idle": idle_load(model, a.idle)}
        print(json.dumps(out))
        if a.output:
            Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
        return
    reqs = make_requests(a.requests)
    out: dict = {"setup": setup_record({"model": model, "requests": a.requests})}
    for dynamic in (True, False):
        proc, url = run_server(model, dynamic)
        try:
            asyncio.run(fire(url, make_requests(8, seed=1)))  # warm-up
            res = asyncio.run(fire(url, reqs))
        finally:
            proc.terminate()
            proc.wait(10)
        name = "dynamic_batching" if dynamic else "no_batching"
        out[name] = res
        print(f"{name}: {json.dumps(res)}", file=sys.stderr)
    out["items_per_s_ratio"] = (
        out["dynamic_batching"]["items_per_s"] / out["no_batching"]["items_per_s"]
    )
    print(json.dumps(out))
    if a.output:
        Path(a.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
