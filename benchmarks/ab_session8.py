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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_session6 import _nothing, _rounds  # noqa: E402
from ab_step import kept_bytes, setup  # noqa: E402

from rmtrain.lean import cap_activations, make_lean  # noqa: E402
from rmtrain.trainer import pair_rewards  # noqa: E402
from tests.test_last_layer import full_rewards  # noqa: E402


def trim(dataset: str, steps: str = "8") -> None:
    model, batches = setup(dataset, int(steps))
    make_lean(model)
    cap_activations(model)
    variants = {"trim": pair_rewards, "full": full_rewards}
    largest = max(batches, key=lambda b: b["input_ids"].numel())
    print("tokens of the largest batch:", largest["input_ids"].numel())
    kept = {k: round(kept_bytes(model, largest, fn) / 2**20, 1) for k, fn in variants.items()}
    print("kept MB:", kept)
    rounds = {"trim": (model, batches, _nothing), "full": (model, batches, _nothing, full_rewards)}
    print(json.dumps(_rounds(rounds, 4, discard_first=True)))


if __name__ == "__main__":
    what, data, *rest = sys.argv[1:]
    {"trim": trim}[what](data, *rest)
