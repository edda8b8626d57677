"""The in-process A/B behind benchmarks/README.md's "Session 9" numbers (SmolLM2-135M, 512
tokens, 2 pairs per step, prefix sharing, `ab_step.setup` batches, a lean model with the cap as
`rmtrain train` builds it).

    python benchmarks/ab_session9.py silu se [steps]
    python benchmarks/ab_session9.py silu_alone 751,952
    python benchmarks/ab_session9.py flex se [steps]
    python benchmarks/ab_session9.py faults se [steps]
    python benchmarks/ab_session9.py trees hh [pairs]

silu: the SiLU-gate backward as session 8 spelled it (sigmoid and its derivative written out, nine
elementwise passes over a tokens x MLP-width tensor) against `rmtrain.kernels`' (autograd's own
`silu_backward`, four passes): one model, the kernel switched before each variant's round,
variants in turn (order reversed every other round), 4 rounds, the first discarded. Prints
[forward s, backward s, total s] per variant. silu_alone: the two formulas alone on random
[tokens, 1536] tensors, ms per call (50 calls after one warm-up, alternating).

flex: `--block-attention flex` against the default per-block path, forward only (no
FlexAttention backward on CPU) on the same batches: largest reward difference and seconds.

trees: scoring (no gradients) of `pairs` held-out pairs in prefix-tree batches of 8 as
`bench_train` evaluates them, each tree's attention one segment at a time (default) against one
masked call per tree: largest reward difference, then seconds per variant over 3 alternating
rounds after a warm-up.

faults: minor page faults, system and user CPU seconds of each full step (clipping and fused
AdamW included) after an untimed first one, from `getrusage`; run it under glibc settings
(e.g. `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296`) to compare.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
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


def silu_alone(sizes: str) -> None:
    from rmtrain.kernels import silu_mul_backward

    variants = {"session8": session8_silu_mul_backward, "now": silu_mul_backward}
    for tokens in map(int, sizes.split(",")):
        torch.manual_seed(0)
        grad, gate, up = torch.randn(3, tokens, 1536).unbind(0)
        total = dict.fromkeys(variants, 0.0)
        for fn in variants.values():
            fn(grad, gate, up)
        for i in range(50):
            for name in variants if i % 2 == 0 else reversed(variants):
                start = time.perf_counter()
                variants[name](grad, gate, up)
                total[name] += time.perf_counter() - start
        print(tokens, "tokens, ms per call:", {k: round(v / 50 * 1e3, 2) for k, v in total.items()})


def flex(dataset: str, steps: str = "3") -> None:
    import warnings

    from rmtrain.model import use_block_attention
    from rmtrain.trainer import pair_rewards

    warnings.filterwarnings("ignore", message=".*without torch.compile")
    model, batches = setup(dataset, int(steps))
    with torch.no_grad():
        for b in batches:
            out, secs = {}, {}
            for when in ("auto", "flex"):
                use_block_attention(model, when)
                start = time.perf_counter()
                out[when] = torch.cat(pair_rewards(model, b))
                secs[when] = round(time.perf_counter() - start, 2)
            worst = (out["auto"] - out["flex"]).abs().max().item()
            print(b["input_ids"].shape[1], "tokens: max difference", f"{worst:.2g}", "s", secs)


def faults(dataset: str, steps: str = "5") -> None:
    from ab_step import step

    model, batches = setup(dataset, int(steps))
    make_lean(model)
    cap_activations(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    step(model, batches[0], opt)
    for b in batches[1:]:
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step(model, b, opt)
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(
            b["input_ids"].shape[1],
            f"tokens: {time.perf_counter() - start:.2f} s, minor faults",
            after.ru_minflt - before.ru_minflt,
            f"sys {after.ru_stime - before.ru_stime:.2f} s, user",
            f"{after.ru_utime - before.ru_utime:.2f} s",
        )
    print("peak RSS MB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def trees(dataset: str, pairs: str = "32") -> None:
    from bench_train import build_features, model_id

    from rmtrain import attention
    from rmtrain.collate import group_by_prompt, make_eval_collator
    from rmtrain.model import attention_cost_ratio, load_reward_model, load_tokenizer
    from rmtrain.trainer import pair_rewards

    tok = load_tokenizer(model_id("smollm2"))
    model = load_reward_model(model_id("smollm2"), tok.pad_token_id).eval()
    feats = build_features("smollm2", dataset, 512)["features"][16 : 16 + int(pairs)]
    cost = attention_cost_ratio(model.config)
    collate = make_eval_collator("prefix_sharing", tok.pad_token_id, 512, attention_cost=cost)
    batches = [collate(group_by_prompt(feats[i : i + 8])) for i in range(0, len(feats), 8)]
    segments = attention._segments

    def whole(_block: torch.Tensor) -> None:
        return None  # no segments: one masked call per tree

    variants = {"segments": segments, "whole_tree": whole}
    total, out = dict.fromkeys(variants, 0.0), {}
    with torch.no_grad():
        for rnd in range(4):
            for name in variants if rnd % 2 == 0 else reversed(variants):
                attention._segments = variants[name]
                start = time.perf_counter()
                out[name] = [torch.cat(pair_rewards(model, b)) for b in batches]
                total[name] += (time.perf_counter() - start) if rnd else 0.0
    attention._segments = segments
    worst = max((a - b).abs().max().item() for a, b in zip(*out.values(), strict=True))
    print(dataset, f"max difference {worst:.2g}, s:", {k: round(v, 2) for k, v in total.items()})


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    modes = {"silu": silu, "silu_alone": silu_alone, "flex": flex, "faults": faults}
    modes["trees"] = trees
    modes[what](*args)
