"""The in-process measurement behind benchmarks/README.md's "Session 11" allocator numbers
(SmolLM2-135M, 512 tokens, 2 SE pairs per step, the pairs `ab_step.setup` takes).

    python benchmarks/ab_session11.py allocator rmtrain [steps] [rounds]
    python benchmarks/ab_session11.py allocator trl [steps] [rounds]
    python benchmarks/ab_session11.py passes VARIANT [batches] [passes]  # one per process:
        # default, retain, retain_1gb (mmap threshold 1 GB), retain_sparse (+ sparse embedding)

Full training steps (forward, backward, clipping, fused AdamW, zero_grad) of one model, rounds
alternating glibc's settings through `mallopt`, the first two rounds discarded:
- release: mmap threshold 32 MB and trim threshold 64 MB, where glibc's dynamic thresholds
  settle by default once blocks of 32 MB have been freed (the free top of the heap past 64 MB
  goes back to the kernel after every step);
- retain: `rmtrain.allocator.retain_freed_memory()`'s (mmap 32 MB, no trimming).
rmtrain: the prefix-shared rows, lean modules and cap (as `rmtrain train` runs them); trl: TRL's
layout (the pairs' 4 sequences padded, gradient checkpointing, the stock pooled head). Prints
seconds and minor page faults per variant.

passes: one setting per process (run them one after the other), the rmtrain step above over
the same batches several times, timed from the third step; resident memory after each pass.
retain_sparse also gives the embedding a sparse backward adding into a gradient buffer kept
across steps (dropped: it raised the peak).
"""

from __future__ import annotations

import ctypes
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_session10 import _pooled  # noqa: E402
from ab_step import setup, step  # noqa: E402
from bench_train import build_features  # noqa: E402

from rmtrain.allocator import (  # noqa: E402
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_CEILING,
    NEVER_TRIM,
    retain_freed_memory,
)
from rmtrain.collate import make_collator  # noqa: E402
from rmtrain.lean import cap_activations, make_lean  # noqa: E402
from rmtrain.trainer import pair_rewards  # noqa: E402

SETTINGS = {"release": (MMAP_CEILING, 2 * MMAP_CEILING), "retain": (MMAP_CEILING, NEVER_TRIM)}


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def allocator(layout: str, steps: str = "8", rounds: str = "8") -> None:
    n = int(steps)
    model, batches = setup("se", n)
    rewards = pair_rewards
    if layout == "trl":
        feats = build_features("smollm2", "se", 512)["features"][: 2 * n]
        pad = model.config.pad_token_id
        batches = [make_collator("none", pad)(feats[i : i + 2]) for i in range(0, 2 * n, 2)]
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        rewards = _pooled
    else:
        make_lean(model)
        cap_activations(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    libc = ctypes.CDLL(None)
    total = {name: [0.0, 0] for name in SETTINGS}
    for r in range(int(rounds)):
        name = list(SETTINGS)[r % 2]
        mmap, trim = SETTINGS[name]
        assert libc.mallopt(M_MMAP_THRESHOLD, mmap) == 1 and libc.mallopt(M_TRIM_THRESHOLD, trim)
        start, faults = time.perf_counter(), _faults()
        for b in batches:
            step(model, b, opt, rewards)
        took, faulted = time.perf_counter() - start, _faults() - faults
        print(name, round(took, 2), "s", faulted, "faults", flush=True)
        if r >= 2:
            total[name][0] += took
            total[name][1] += faulted
    summary = {k: {"s": round(v[0], 2), "faults": v[1]} for k, v in total.items()}
    summary["release / retain"] = round(total["release"][0] / total["retain"][0], 3)
    print(layout, json.dumps(summary))


def _rss_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 2**20


def passes(variant: str, n_batches: str = "16", n_passes: str = "3") -> None:
    if variant != "default":
        assert retain_freed_memory(1 << 30 if variant == "retain_1gb" else MMAP_CEILING)
    model, batches = setup("se", int(n_batches))
    make_lean(model)
    cap_activations(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    emb = model.get_input_embeddings()
    buffer = None
    if variant == "retain_sparse":
        emb.sparse, buffer = True, torch.zeros_like(emb.weight)
    rss, took, faulted = [], 0.0, 0
    for p in range(int(n_passes)):
        for i, b in enumerate(batches):
            start, faults = time.perf_counter(), _faults()
            if buffer is not None and emb.weight.grad is None:
                emb.weight.grad = buffer.zero_()
            step(model, b, opt)
            if p > 0 or i >= 2:
                took += time.perf_counter() - start
                faulted += _faults() - faults
        rss.append(_rss_mb())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    out = {"variant": variant, "s": round(took, 2), "faults": faulted}
    print(json.dumps(out | {"rss_after_each_pass": rss, "peak": peak}))


if __name__ == "__main__":
    what, *rest = sys.argv[1:]
    {"allocator": allocator, "passes": passes}[what](*rest)
