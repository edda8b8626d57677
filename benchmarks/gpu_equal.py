"""The test suite's path-equality checks, run on a GPU (CI has none): every packed training path
and the prefix-tree scoring path against the plain padded forward, on CUDA.

    python benchmarks/gpu_equal.py          # prints one JSON line; exit 1 if a bound fails

float32 with TF32 off must meet the issue's bound (max abs difference < 1e-4 for rewards and loss
gradients); under bf16 autocast (how training runs on a GPU) the differences are reported, with a
loose sanity bound, since bf16 rounding differs with the layout. The lean activations (RMSNorm /
SiLU-MLP) are checked against the stock modules the same way, recomputed MLPs
(--cap-activations) against the lean ones, the last layer run at the reward tokens only against
the full forward, and --block-attention on / off.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rmtrain.collate import PackedCollator, PairCollator, PrefixTreeCollator, group_by_prompt  # noqa: E402
from rmtrain.lean import make_lean  # noqa: E402
from rmtrain.losses import pairwise_loss  # noqa: E402
from rmtrain.model import use_block_attention  # noqa: E402
from rmtrain.trainer import pair_rewards  # noqa: E402
from tests.test_last_layer import full_rewards  # noqa: E402
from tests.test_packing import FEATURES, make_model  # noqa: E402
from tests.test_prefix_tree import SHARED  # noqa: E402

FP32_BOUND, BF16_BOUND = 1e-4, 5e-2
DEV = torch.device(os.environ.get("RMTRAIN_CHECK_DEVICE", "cuda"))  # "cpu": a dry run


def _on(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.to(DEV) if torch.is_tensor(v) else v for k, v in batch.items()}


def _run(
    model: Any, batch: dict[str, Any], bf16: bool, full: bool = False
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Rewards and gradients; `full`: every layer at every position (no `rmtrain.last_layer`)."""
    model.zero_grad()
    ctx = torch.autocast(DEV.type, torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        chosen, rejected = (full_rewards if full else pair_rewards)(model, _on(batch))
        loss = pairwise_loss(chosen, rejected)
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.cat([chosen.detach().float(), rejected.detach().float()]), grads


def _diff(ref: tuple, got: tuple) -> float:
    worst = (ref[0] - got[0]).abs().max().item()
    return max([worst] + [(ref[1][k] - got[1][k]).abs().max().item() for k in ref[1]])


def check_training(arch: str, attn: str, bf16: bool) -> dict[str, float]:
    model, pad = make_model(arch, attn)
    model.to(DEV)
    ref = _run(model, PairCollator(pad)(FEATURES), bf16)
    out = {}
    for mode, budget in [("prefix_sharing", 0), ("prefix_sharing", 40), ("padding_free", 64)]:
        out[f"{mode}/{budget}"] = _diff(
            ref, _run(model, PackedCollator(pad, mode, budget)(FEATURES), bf16)
        )
    out["last_layer_trim"] = _diff(_run(model, PairCollator(pad)(FEATURES), bf16, True), ref)
    if attn == "sdpa":
        varlen = PackedCollator(pad, "padding_free", 64, varlen=True)(FEATURES)
        out["padding_free/varlen"] = _diff(ref, _run(model, varlen, bf16))
        # --block-attention (auto: per block on CPU only); flex has no backward on CPU
        for when in ("on", "off", "flex") if DEV.type == "cuda" else ("on", "off"):
            use_block_attention(model, when)
            packed = PackedCollator(pad, "prefix_sharing", 40)(FEATURES)
            try:
                out[f"prefix_sharing/blocks_{when}"] = _diff(ref, _run(model, packed, bf16))
            except Exception as exc:  # noqa: BLE001 - report it, check the rest
                out[f"prefix_sharing/blocks_{when}"] = f"{type(exc).__name__}: {exc}"[:300]
        use_block_attention(model, "auto")
    lean = copy.deepcopy(model)
    make_lean(lean)
    batch = PackedCollator(pad, "prefix_sharing", 40)(FEATURES)
    lean_run = _run(lean, batch, bf16)
    out["lean_vs_stock"] = _diff(_run(model, batch, bf16), lean_run)
    for m in lean.modules():  # --cap-activations at its most: every MLP recomputed
        if hasattr(m, "_rmtrain_recompute"):
            m._rmtrain_recompute = True
    out["recomputed_mlp_vs_lean"] = _diff(lean_run, _run(lean, batch, bf16))
    return out


def check_trees(arch: str, attn: str, bf16: bool) -> float:
    model, pad = make_model(arch, attn)
    model.to(DEV)
    feats = FEATURES + SHARED
    ctx = torch.autocast(DEV.type, torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        ref = pair_rewards(model, _on(PairCollator(pad)(feats)))
        batch = PrefixTreeCollator(pad, 1000, 0.0)(group_by_prompt(feats))
        got = pair_rewards(model, _on(batch))
    index = batch["pair_index"].reshape(-1).to(DEV)
    real = index >= 0
    return max((a[index[real]] - b[real]).abs().max().item() for a, b in zip(ref, got, strict=True))


def _string(v: Any) -> bool:
    return isinstance(v, str)  # an error message instead of a difference


def _rounded(v: Any) -> Any:
    return v if _string(v) else float(f"{v:.3g}")


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    }
    failed = []
    for bf16 in (False, True):
        bound = BF16_BOUND if bf16 else FP32_BOUND
        for arch in ("qwen3", "llama"):
            for attn in ("sdpa", "eager"):
                key = f"{'bf16' if bf16 else 'fp32'}/{arch}/{attn}"
                res = check_training(arch, attn, bf16)
                res["prefix_trees_eval"] = check_trees(arch, attn, bf16)
                results[key] = {k: _rounded(v) for k, v in res.items()}
                failed += [f"{key}/{k}" for k, v in res.items() if _string(v) or not v < bound]
    results["failed"] = failed
    print(json.dumps(results))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
