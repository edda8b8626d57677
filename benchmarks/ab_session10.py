"""The in-process measurements behind benchmarks/README.md's "Session 10" numbers (SmolLM2-135M,
512 tokens, 2 pairs per step, the pairs `ab_step.setup` takes).

    python benchmarks/ab_session10.py ladder se [steps]
    python benchmarks/ab_session10.py lean se [steps]
    python benchmarks/ab_session10.py fixed

ladder: forward + backward seconds per token of the same pairs in five layouts, one model copy
each (same weights), variants in turn and reversed every other round, 4 rounds, the first
discarded:
- trl_layout: TRL's (stock modules, the pairs' 4 sequences padded to the longest, gradient
  checkpointing, the stock pooled head), i.e. about 8N FLOPs per token computed;
- padded_no_gc: the same without checkpointing (6N);
- ideal: one causal row of exactly the prefix-shared row's tokens, stock modules, no mask, no
  checkpointing: 6N per token, the cost the FLOP model gives the prefix-shared layout;
- rmtrain_stock: the prefix-shared row as rmtrain runs it (per-block attention, last layer at
  the reward tokens), stock modules;
- rmtrain: the same with lean modules and the cap (`rmtrain train`'s default).
The per-token ratios test the FLOP model: it promises trl_layout / ideal = 8/6 per token at
equal matrix-product speed. ("ideal" turned out slower than rmtrain_stock: its causal attention
spans both pairs of the row, and its last layer runs at every token.)

lean: fwd+bwd seconds of the same prefix-shared batches with stock modules, lean modules without
and with the cap, and lean norms and MLPs without the lean projections (with the cap), 3
rounds, the first discarded.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_session6 import _rounds  # noqa: E402
from ab_step import setup  # noqa: E402
from bench_train import build_features  # noqa: E402

from rmtrain.collate import make_collator  # noqa: E402
from rmtrain.lean import cap_activations, make_lean  # noqa: E402


def _pooled(model: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards as TRL reads them: the stock sequence-classification head's pooled logits."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    half = out.logits.shape[0] // 2  # chosen sequences first (`PairCollator`)
    return out.logits[:half, 0], out.logits[half:, 0]


def _causal(model: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed row's tokens as one plain causal sequence (a loss that touches every layer)."""
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits[:, 0]
    return logits, logits - 1.0


def _nothing() -> None:
    """No per-round setup: each variant has its own model copy."""


def ladder(dataset: str, steps: str = "8") -> None:
    n = int(steps)
    base, packed = setup(dataset, n)
    feats = build_features("smollm2", dataset, 512)["features"][: 2 * n]
    pad = base.config.pad_token_id
    padded = [make_collator("none", pad)(feats[i : i + 2]) for i in range(0, 2 * n, 2)]
    trl, padded_plain = copy.deepcopy(base), copy.deepcopy(base)
    trl.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ideal, stock, lean = copy.deepcopy(base), copy.deepcopy(base), base
    make_lean(lean)
    cap_activations(lean)
    tokens = {
        "trl_layout": sum(b["input_ids"].numel() for b in padded),
        "ideal": sum(b["input_ids"].numel() for b in packed),
    }
    tokens["padded_no_gc"] = tokens["trl_layout"]
    tokens["rmtrain_stock"] = tokens["rmtrain"] = tokens["ideal"]
    variants = {
        "trl_layout": (trl, padded, _nothing, _pooled),
        "padded_no_gc": (padded_plain, padded, _nothing, _pooled),
        "ideal": (ideal, packed, _nothing, _causal),
        "rmtrain_stock": (stock, packed, _nothing),
        "rmtrain": (lean, packed, _nothing),
    }
    rounds = 4
    seconds = _rounds(variants, rounds, discard_first=True)
    per_token = {k: 1e3 * v[2] / ((rounds - 1) * tokens[k]) for k, v in seconds.items()}
    print(dataset, json.dumps({"s [fwd, bwd, total]": seconds, "tokens": tokens}))
    print("ms per token:", json.dumps({k: round(v, 3) for k, v in per_token.items()}))
    print(
        "per token against ideal:",
        {k: round(v / per_token["ideal"], 3) for k, v in per_token.items()},
    )
    total = {k: v[2] for k, v in seconds.items()}
    print(
        "trl_layout seconds over each:",
        {k: round(total["trl_layout"] / v, 3) for k, v in total.items()},
    )


def lean(dataset: str, steps: str = "8") -> None:
    """fwd+bwd seconds of the same prefix-shared batches: stock modules, lean without the cap,
    lean with the cap, lean norms and MLPs without the lean projections (with the cap)."""
    base, packed = setup(dataset, int(steps))
    stock, nocap, noproj = (copy.deepcopy(base) for _ in range(3))
    make_lean(nocap)
    make_lean(base)
    cap_activations(base)
    make_lean(noproj, projections=False)
    cap_activations(noproj)
    variants = {
        "stock": (stock, packed, _nothing),
        "lean_nocap": (nocap, packed, _nothing),
        "lean_cap": (base, packed, _nothing),
        "noproj_cap": (noproj, packed, _nothing),
    }
    print(dataset, json.dumps(_rounds(variants, 3, discard_first=True)))


def fixed(_dataset: str = "se") -> None:
    """ms per call of the per-step work outside forward and backward, on SmolLM2's 135M
    parameters with random gradients (one warm-up call, then the mean of 5): the finiteness
    check `NonFiniteGuard` ran (before this session, on every step), clipping, fused AdamW, and
    the embedding gradient (a fresh zero tensor, and the dense backward of 833 token ids)."""
    import time

    model, _ = setup("se", 1)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    grads = [p.grad for p in params]
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)
    emb = model.get_input_embeddings().weight
    ids, grad = torch.randint(0, emb.shape[0], (833,)), torch.randn(833, emb.shape[1])
    work = {
        "guard_norms": lambda: torch.isfinite(torch.stack(torch._foreach_norm(grads))).all(),
        "clip_grad_norm": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
        "fused_adamw": opt.step,
        "zeros_like_embedding": lambda: torch.zeros_like(emb),
        "embedding_backward": lambda: torch.ops.aten.embedding_dense_backward(
            grad, ids, emb.shape[0], -1, False
        ),
    }
    out = {}
    for name, fn in work.items():
        fn()
        start = time.perf_counter()
        for _ in range(5):
            fn()
        out[name] = round(1e3 * (time.perf_counter() - start) / 5, 1)
    print("ms per call:", json.dumps(out))


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    {"ladder": ladder, "lean": lean, "fixed": fixed}[what](*args)
