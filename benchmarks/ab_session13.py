"""Session 13's in-process A/Bs on SmolLM2-135M at 512 tokens (2 pairs a step, prefix sharing,
lean + cap as `rmtrain train` runs it, rmtrain's allocator setting, clipping folded into fused
AdamW), full steps, the variants alternating batch by batch, then in reverse
(`ab_session12.alternate`).

    python benchmarks/ab_session13.py rope se   # RoPE as one autograd node vs transformers'
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_session12 import alternate  # noqa: E402

from rmtrain import rotary  # noqa: E402


def rope(dataset: str) -> None:
    from transformers.models.llama import modeling_llama

    def use(fn: Any) -> Any:
        return lambda: setattr(modeling_llama, "apply_rotary_pos_emb", fn)

    stock = modeling_llama.apply_rotary_pos_emb
    variants = {"stock": use(stock), "rotary": use(rotary.apply_rotary)}
    alternate(dataset, variants, {"stock": 1, "rotary": 1})


if __name__ == "__main__":
    what, data, *rest = sys.argv[1:]
    {"rope": rope}[what](data, *rest)
