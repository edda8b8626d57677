"""The in-process A/B behind benchmarks/README.md's "Session 7" cost of --cap-activations
(SmolLM2-135M, 512 tokens, 2 pairs per step, prefix sharing; `ab_step.setup` batches).

    python benchmarks/ab_session7.py cap se [steps]   # lean model with / without the cap

Two copies of one lean model, one with `cap_activations`; the same batches through each in
turn (order reversed every other round), 4 rounds, the first discarded, forward and backward
timed apart. Prints the MLPs each batch recomputes, then [forward s, backward s, total s].
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_session6 import _nothing, _rounds  # noqa: E402
from ab_step import setup  # noqa: E402

from rmtrain.lean import cap_activations, make_lean  # noqa: E402
from rmtrain.losses import pairwise_loss  # noqa: E402
from rmtrain.trainer import pair_rewards  # noqa: E402


def cap(dataset: str, steps: str = "8") -> None:
    model, batches = setup(dataset, int(steps))
    make_lean(model)
    capped = copy.deepcopy(model)
    cap_activations(capped)
    mlps = [m for m in capped.modules() if hasattr(m, "_rmtrain_recompute")]
    recomputed = []
    for b in batches:  # one forward each, to read the cap's choice
        pairwise_loss(*pair_rewards(capped, b))
        recomputed.append((b["input_ids"].numel(), sum(m._rmtrain_recompute for m in mlps)))
    print("tokens, MLPs recomputed per batch:", recomputed)
    variants = {"cap": (capped, batches, _nothing), "nocap": (model, batches, _nothing)}
    print(json.dumps(_rounds(variants, 4, discard_first=True)))


if __name__ == "__main__":
    what, data, *rest = sys.argv[1:]
    {"cap": cap}[what](data, *rest)
