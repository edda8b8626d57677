"""Helpers shared by tests: fixed features, tiny models and the reference loss/gradients.

Tests import from here (never from each other); benchmarks import only the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from rmtrain.batching.collate import make_collator
from rmtrain.modeling.losses import pairwise_loss
from rmtrain.modeling.rewards import pair_rewards

FEATURES = [
    {
        "prompt_ids": [11, 12, 13],
        "chosen_ids": [21, 22, 23, 24],
        "rejected_ids": [31],
        "pair_index": 0,
    },
    {"prompt_ids": [], "chosen_ids": [41, 42], "rejected_ids": [51, 52, 53], "pair_index": 1},
    {"prompt_ids": [61] * 9, "chosen_ids": [62], "rejected_ids": [63, 64], "pair_index": 2},
    {"prompt_ids": [7, 8], "chosen_ids": [9] * 6, "rejected_ids": [10] * 6, "pair_index": 3},
]

# pairs sharing prompts and answers: prefix trees compute each shared prefix once
SHARED = [
    {"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9], "pair_index": 4},
    {"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [10, 11], "pair_index": 5},
    {"prompt_ids": [5, 6], "chosen_ids": [9], "rejected_ids": [10, 11], "pair_index": 6},
    {"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9], "pair_index": 7},
    {"prompt_ids": [5], "chosen_ids": [6, 7], "rejected_ids": [6, 7, 8, 3], "pair_index": 8},
]


def make_model(arch: str, attn: str):
    """A tiny random stock model (eval mode) and its pad id."""
    if arch == "qwen3":
        from rmtrain.modeling.loading import load_tokenizer

        tok = load_tokenizer("builtin:tiny-qwen3")
        model, pad = tiny_qwen3(tok, attn_implementation=attn), tok.pad_token_id
    else:
        model, pad = tiny_llama(200, 0), 0
        model.config._attn_implementation = attn
    return model.train(False), pad


def tiny_gpt2(vocab_size: int = 200, pad_token_id: int = 0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        num_labels=1,
        pad_token_id=pad_token_id,
        attn_implementation="sdpa",
    )
    return GPT2ForSequenceClassification(config).eval(), pad_token_id


# the training collators of --packing none / padding_free / prefix_sharing, and prefix trees
LAYOUTS = {
    "none": lambda pad: make_collator("none", pad, 0),
    "padding_free": lambda pad: make_collator("padding_free", pad, 64),
    "prefix_sharing": lambda pad: make_collator("prefix_sharing", pad, 64),
    "trees": lambda pad: make_collator("prefix_sharing", pad, 0, tree_cap=1000),
}


def prepared(model: Any, **options: Any) -> Any:
    """`model` prepared by the speed door (for scoring unless `training=True` is given)."""
    from rmtrain import speed

    speed.install(model, speed.SpeedOptions(**{"training": False, **options}))
    return model


def prepared_model(arch: str, attn: str) -> tuple:
    """A tiny model prepared for scoring by the speed door (per-block attention on CPU)."""
    model, pad = make_model(arch, attn)
    return prepared(model), pad


def loss_and_grads(model, batch, rewards=pair_rewards):
    model.zero_grad()
    chosen, rejected = rewards(model, batch)
    loss = pairwise_loss(chosen, rejected)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return chosen.detach(), rejected.detach(), loss.detach(), grads


def full_rewards(model, batch):
    """The reference: values at every position from the untrimmed forward, then read."""
    from rmtrain.modeling.rewards import read_rewards, token_values

    args = (model, batch["input_ids"], batch.get("attention_mask"), batch["position_ids"])
    return read_rewards(token_values(*args, blocks=batch.get("attention_blocks")), batch)


def assert_trains_the_same(results: list, folders: list, loss_tol=1e-5, weight_tol=1e-4):
    """Two runs (at a learning rate that moves the model, logging every step) took the same
    steps: per-step losses and gradient norms, and the saved weights, agree. Final metrics
    alone cannot tell a frozen run from a trained one."""
    from safetensors.torch import load_file

    logs = [[h for h in r["log_history"] if "loss" in h] for r in results]
    assert len(logs[0]) == len(logs[1]) >= 3
    for a, b in zip(*logs, strict=True):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], abs=loss_tol)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3, abs=loss_tol)
    first, second = (load_file(str(f / "model.safetensors")) for f in folders)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.allclose(first[key], second[key], atol=weight_tol, rtol=0), key
    start = [h["loss"] for h in logs[0]]
    moved = max(start) - min(start)
    assert moved > 10 * loss_tol, "the runs did not train: losses did not move"


ROOT = Path(__file__).resolve().parents[1]


def rmtrain_process(args: list[str], setup: Any = None) -> subprocess.Popen:
    """`python -m rmtrain ARGS` in its own process, as a terminal starts it (one thread, the
    hub offline, SIGINT back to its default: a test worker may ignore it, and a child inherits
    that); stderr piped. `setup` runs in the child before it starts (e.g. a resource limit)."""

    def child() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if setup is not None:
            setup()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rmtrain", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=child,
    )


@contextlib.contextmanager
def live_serve(model_dir: Any, *flags: str, env: dict[str, str] | None = None) -> Any:
    """`rmtrain serve` as a user runs it, on a free port; yields its URL, killed by its pid."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "rmtrain", "serve", "--model", str(model_dir), "--port", str(port)]
    # its own process group, so the kill reaches everything it started
    proc = subprocess.Popen([*cmd, *flags], env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            assert proc.poll() is None, "rmtrain serve exited"
            assert time.time() < deadline, "rmtrain serve did not start"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread on a free loopback port (`limit_concurrency`: its connection cap)."""

    def __init__(self, app, limit_concurrency=None):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            limit_concurrency=limit_concurrency,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_qwen3(tokenizer, seed: int = 0, **overrides):
    from transformers import Qwen3ForSequenceClassification

    from rmtrain.data.builtin import tiny_qwen3_config

    torch.manual_seed(seed)
    config = tiny_qwen3_config(len(tokenizer), tokenizer.pad_token_id, **overrides)
    return Qwen3ForSequenceClassification(config).eval()


def tiny_llama(vocab_size: int, pad_token_id: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        num_labels=1,
        pad_token_id=pad_token_id,
        use_cache=False,
    )
    return LlamaForSequenceClassification(config).eval()


def count_calls(monkeypatch, owner, name: str) -> list[int]:
    """Replace `owner.name` with a wrapper that records each call (one entry per call)."""
    calls, real = [], getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_demo(path: Path, n: int, seed: int) -> Path:
    """`n` rows of the generated demo preference set as a local JSONL file."""
    from rmtrain.data.builtin import demo_rows

    return write_jsonl(path, demo_rows(n, seed=seed))


def tiny_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """`rmtrain train` argv for the tiny Qwen3 on a local file; later flags in `extra` win."""
    return [
        "train",
        "--model",
        "builtin:tiny-qwen3",
        "--dataset",
        str(data),
        "--output",
        str(out),
        "--frac",
        "1.0",
        "--max-length",
        "96",
        "--batch",
        "4",
        "--report-to",
        "none",
        *extra,
    ]


def shared_data_or_skip() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA} (only on dev machines)")
    return SHARED_DATA
