"""The in-process A/B behind benchmarks/README.md's "Session 9" numbers (SmolLM2-135M, 512
tokens, 2 pairs per step, prefix sharing, `ab_step.setup` batches, a lean model with the cap as
`rmtrain train` builds it).

    python benchmarks/ab_session9.py silu se [steps]

The SiLU-gate backward as session 8 spelled it (sigmoid and its derivative written out, nine
elementwise passes over a tokens x MLP-width tensor) against `rmtrain.kernels`' (autograd's own
`silu_backward`, four passes): one model, the kernel switched before each variant's round,
variants in turn (order reversed every other round), 4 rounds, the first discarded. Prints
[forward s, backward s, total s] per variant.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_session6 import _rounds  # noqa: E402
from ab_step import setup  # noqa: E402

import rmtrain.lean as lean  # noqa: E402
from rmtrain.lean import cap_activations, make_lean  # noqa: E402


def session8_silu_mul_backward(
    grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Session 8's formula, kept here as the reference."""
    sig = torch.sigmoid(gate)
    silu = gate * sig
    return grad * up * (sig * (1 + gate * (1 - sig))), grad * silu


def silu(dataset: str, steps: str = "6") -> None:
    model, batches = setup(dataset, int(steps))
    make_lean(model)
    cap_activations(model)
    now = lean.EAGER
    before = dataclasses.replace(now, silu_mul_backward=session8_silu_mul_backward)

    def use(kernels: lean.Kernels):  # noqa: ANN202
        return lambda: setattr(lean, "EAGER", kernels)

    variants = {"session8": (model, batches, use(before)), "now": (model, batches, use(now))}
    print(dataset, json.dumps(_rounds(variants, 4, discard_first=True)))
    lean.EAGER = now


if __name__ == "__main__":
    what, data, *rest = sys.argv[1:]
    {"silu": silu}[what](data, *rest)
