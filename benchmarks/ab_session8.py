"""The in-process A/B behind benchmarks/README.md's "Session 8" numbers for the last layer run at
the reward tokens only (`rmtrain.last_layer`; SmolLM2-135M, 512 tokens, 2 pairs per step,
prefix sharing, `ab_step.setup` batches, a lean model with the cap as `rmtrain train` builds it).

    python benchmarks/ab_session8.py trim se [steps]

The same model and batches through `pair_rewards` (trimmed) and through the full forward read at
the same tokens, in turn (order reversed every other round), 4 rounds, the first discarded,
forward and backward timed apart. Prints the MB autograd keeps for the largest batch under each,
then [forward s, backward s, total s] per variant.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_step import setup  # noqa: E402

from rmtrain.lean import cap_activations, make_lean  # noqa: E402
from rmtrain.losses import pairwise_loss  # noqa: E402
from rmtrain.model import token_values  # noqa: E402
from rmtrain.trainer import _read_rewards, pair_rewards  # noqa: E402


def full_rewards(model: Any, batch: dict) -> tuple:
    args = (model, batch["input_ids"], batch.get("attention_mask"), batch["position_ids"])
    return _read_rewards(token_values(*args, blocks=batch.get("attention_blocks")), batch)


def kept_mb(model: Any, batch: dict, rewards: Any) -> float:
    """MB in the distinct non-parameter storages autograd keeps for one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}
    alive = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        alive.append(t)
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pairwise_loss(*rewards(model, batch))
    return round(sum(kept.values()) / 2**20, 1)


def trim(dataset: str, steps: str = "8") -> None:
    model, batches = setup(dataset, int(steps))
    make_lean(model)
    cap_activations(model)
    variants = {"trim": pair_rewards, "full": full_rewards}
    largest = max(batches, key=lambda b: b["input_ids"].numel())
    print("tokens of the largest batch:", largest["input_ids"].numel())
    print("kept MB:", {k: kept_mb(model, largest, fn) for k, fn in variants.items()})
    total = {k: [0.0, 0.0] for k in variants}
    for rnd in range(4):
        for name in list(variants) if rnd % 2 == 0 else list(reversed(variants)):
            for b in batches:
                start = time.perf_counter()
                loss = pairwise_loss(*variants[name](model, b))
                mid = time.perf_counter()
                loss.backward()
                end = time.perf_counter()
                model.zero_grad(set_to_none=True)
                if rnd:
                    total[name][0] += mid - start
                    total[name][1] += end - mid
    print(
        json.dumps({k: [round(f, 2), round(b, 2), round(f + b, 2)] for k, (f, b) in total.items()})
    )


if __name__ == "__main__":
    what, data, *rest = sys.argv[1:]
    {"trim": trim}[what](data, *rest)
