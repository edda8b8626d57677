"""Session 12's in-process A/Bs on SmolLM2-135M at 512 tokens (2 pairs a step, prefix sharing,
lean + cap as `rmtrain train` runs it, rmtrain's allocator setting), full steps (forward,
backward, clipping, fused AdamW), the variants alternating batch by batch, then in reverse.

    python benchmarks/ab_session12.py gather se  # forked tails: gathered CPU flash vs SDPA
    python benchmarks/ab_session12.py clip se    # clipping folded into fused AdamW vs
                                                 # clip_grad_norm_ then the step
    python benchmarks/ab_session12.py peak se VARIANT  # peak RSS after each of 8 steps, one
        # variant per process: plain (SDPA tails, clip_grad_norm_), hooks (plain, plus each
        # gradient's norm taken in a hook as backward makes it), folded (plain tails, folded
        # clipping), new (gathered tails, folded clipping: the default now)
    python benchmarks/ab_session12.py optime se  # seconds per aten op over 7 full steps, timed
        # around each call (a dispatch mode), not by torch.profiler, whose per-op overhead
        # inflates the small elementwise ops several times over
    python benchmarks/ab_session12.py gemm -     # GFLOP/s of SmolLM2's MLP products by rows
    python benchmarks/ab_session12.py fuse se    # ab_step.py's fuse A/B (compiled elementwise
        # kernels) with rmtrain's allocator setting on
"""

from __future__ import annotations

import collections
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_step import setup, step  # noqa: E402

from rmtrain import attention  # noqa: E402
from rmtrain.allocator import retain_freed_memory  # noqa: E402
from rmtrain.clip import FoldedClip  # noqa: E402
from rmtrain.lean import cap_activations, make_lean  # noqa: E402


def full_step(model: Any, opt: Any, batch: dict, fold: bool) -> float:
    """Seconds of one training step (`ab_step.step`), its clipping folded into the optimizer's
    step or not."""
    folded = FoldedClip(opt, model.parameters()) if fold else None
    start = time.perf_counter()
    step(model, batch, opt, clip=folded.clip if folded else None)
    seconds = time.perf_counter() - start
    if folded is not None:
        folded.remove()
    return seconds


def alternate(dataset: str, variants: dict[str, Any], fold: dict[str, bool]) -> None:
    """Each batch under every variant in turn (then in reverse order): `variants[name]()`
    switches to it before its step."""
    retain_freed_memory()
    model, batches = setup(dataset, 8)
    make_lean(model)
    cap_activations(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=True)
    full_step(model, opt, batches[0], False)  # warm-up
    total = dict.fromkeys(variants, 0.0)
    for order in (list(variants), list(reversed(variants))):
        for batch in batches:
            for name in order:
                variants[name]()
                total[name] += full_step(model, opt, batch, fold[name])
    a, b = list(variants)
    print(
        f"{dataset} full steps s over {2 * len(batches)} steps each:",
        {k: round(v, 2) for k, v in total.items()},
        f"{a} / {b} = {total[a] / total[b]:.3f}",
    )


def gather(dataset: str) -> None:
    real = attention._gathers

    def use(on: bool) -> Any:
        return lambda: setattr(attention, "_gathers", real if on else lambda *_: False)

    alternate(dataset, {"sdpa": use(False), "gathered": use(True)}, {"sdpa": 0, "gathered": 0})


def clip(dataset: str) -> None:
    alternate(dataset, {"plain": lambda: None, "folded": lambda: None}, {"plain": 0, "folded": 1})


def peak(dataset: str, variant: str) -> None:
    retain_freed_memory()
    if variant != "new":
        attention._gathers = lambda *_: False
    model, batches = setup(dataset, 8)
    make_lean(model)
    cap_activations(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=True)
    if variant == "hooks":
        norms = {}
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(
                lambda p: norms.__setitem__(id(p), torch.linalg.vector_norm(p.grad))
            )
    peaks, seconds = [], 0.0
    for batch in batches:
        seconds += full_step(model, opt, batch, variant in ("folded", "new"))
        peaks.append(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(f"{dataset} {variant}: 8 steps {seconds:.1f} s, peak RSS (MB) after each: {peaks}")


def optime(dataset: str) -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    spent: dict[str, float] = collections.defaultdict(float)

    class Timed(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            spent[func.overloadpacket.__name__] += time.perf_counter() - start
            return out

    retain_freed_memory()
    model, batches = setup(dataset, 8)
    make_lean(model)
    cap_activations(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=True)
    full_step(model, opt, batches[0], True)
    total = 0.0
    for batch in batches[1:]:
        with Timed():
            total += full_step(model, opt, batch, True)
    print(f"{dataset}: 7 steps {total:.2f} s (op time {sum(spent.values()):.2f} s)")
    for name, sec in sorted(spent.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {name:55s} {sec:7.3f} s {100 * sec / total:5.1f}%")


def gemm(_: str) -> None:
    def rate(fn: Any, flops: float) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        return flops * 20 / (time.perf_counter() - start) / 1e9

    for rows in (300, 600, 900, 1200, 1800, 2400):
        x, w, g = torch.randn(rows, 576), torch.randn(1536, 576), torch.randn(rows, 1536)
        flops = 2 * rows * 576 * 1536
        forward = rate(lambda: torch.nn.functional.linear(x, w), flops)  # noqa: B023
        grad_in = rate(lambda: g @ w, flops)  # noqa: B023
        grad_w = rate(lambda: g.T @ x, flops)  # noqa: B023
        print(
            f"{rows} rows: GFLOP/s forward {forward:.0f}, input grad {grad_in:.0f}, "
            f"weight grad {grad_w:.0f}"
        )


def fuse(dataset: str) -> None:
    from ab_step import fuse as eager_against_compiled

    retain_freed_memory()
    eager_against_compiled(dataset)


if __name__ == "__main__":
    what, data, *rest = sys.argv[1:]
    modes = {
        "gather": gather,
        "clip": clip,
        "peak": peak,
        "optime": optime,
        "gemm": gemm,
        "fuse": fuse,
    }
    modes[what](data, *rest)
