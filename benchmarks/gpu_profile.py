"""Where a GPU training step goes, for TRL and rmtrain prefix sharing on the same random-init
Qwen3-0.6B shape and HH (or SE) pairs (the setup of `bench_train.py --mode gpu`), in one process:
whether autocast is on inside the forward, each step's wall time, and the profiler's top ops.

    python benchmarks/gpu_profile.py [--pairs 8] [--steps 12] [--dataset hh] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train as bt  # noqa: E402

ON_GPU = torch.cuda.is_available()


class Probe(TrainerCallback):
    """Step wall times; profiles steps [first, last)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.stamps, self.prof = first, last, [], None

    def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
        if state.global_step == self.first:
            acts = [torch.profiler.ProfilerActivity.CPU]
            acts += [torch.profiler.ProfilerActivity.CUDA] if ON_GPU else []
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        if ON_GPU:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        if state.global_step == self.last and self.prof is not None:
            self.prof.__exit__(None, None, None)


def profile_path(path: str, train: list, evals: list, a: argparse.Namespace) -> dict[str, Any]:
    spec = {
        "path": path,
        "model": "tiny",
        "pairs": a.pairs,
        "steps": a.steps,
        "max_length": 512,
        "eval_batch": 16,
        "gpu_random_qwen3": ON_GPU,
        "lean_activations": True,
    }
    tokens: list[int] = []
    torch.backends.cuda.enable_cudnn_sdp(not path.endswith("+nocudnn"))
    spec["path"] = path.removesuffix("+nocudnn")
    make = bt._trl_trainer if path.startswith("trl") else bt._rm_trainer
    trainer = make(spec, copy.deepcopy(train), copy.deepcopy(evals), tokens)
    seen: list[bool] = []
    layer = next(m for m in trainer.model.modules() if type(m).__name__.endswith("DecoderLayer"))
    layer.register_forward_pre_hook(  # inside accelerate's autocast wrapper of model.forward
        lambda *_: seen.append(torch.is_autocast_enabled("cuda" if ON_GPU else "cpu"))
    )
    probe = Probe(4, 9)
    trainer.add_callback(probe)
    trainer.train()
    steps_s = [round(b - a_, 4) for a_, b in zip(probe.stamps, probe.stamps[1:], strict=False)]
    table = probe.prof.key_averages()
    sort = "cuda_time_total" if ON_GPU else "cpu_time_total"
    by_dev = table.table(sort_by=sort, row_limit=18, max_name_column_width=48)
    by_cpu = table.table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=48)
    if a.out:
        Path(a.out, f"profile_{path}.txt").write_text(by_dev + "\n\n" + by_cpu)
    print(f"== {path}\n{by_dev}\n{by_cpu}", flush=True)
    return {
        "path": path,
        "bf16_arg": trainer.args.bf16,
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "autocast_in_forward": sorted(set(seen)),
        "optim": str(trainer.args.optim),
        "attn": trainer.model.config._attn_implementation,
        "param_dtype": str(next(trainer.model.parameters()).dtype),
        "tokens_per_step": sum(tokens[: a.steps]) / a.steps,
        "step_s": steps_s,
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if ON_GPU else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--paths", nargs="+", default=["prefix_sharing", "trl", "trl+nocudnn"])
    ap.add_argument("--dataset", choices=("hh", "se"), default="hh")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    a = ap.parse_args()
    feats = bt.build_features("tiny", a.dataset, 512)["features"]
    n = a.pairs * a.steps
    train, evals = feats[:n], feats[n : n + 16]
    out = []
    for path in a.paths:
        if ON_GPU:
            torch.cuda.reset_peak_memory_stats()
        out.append(profile_path(path, train, evals, a))
        print(json.dumps(out[-1]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
