"""In-process A/B of one training-step ingredient on SmolLM2-135M at 512 tokens, same batches
(2 pairs each, prefix sharing), variants alternating so machine noise hits both alike.

    python benchmarks/ab_step.py blocks hh   # fwd+bwd time: attention per block vs dense mask
    python benchmarks/ab_step.py forks se    # fwd+bwd time: pairs as causal + tail attention
    python benchmarks/ab_step.py sdpa 250,200,200  # ms of SDPA alone: masked, causal, forked
    python benchmarks/ab_step.py fuse se     # fwd+bwd time: elementwise work compiled vs eager
    python benchmarks/ab_step.py saved se    # MB autograd keeps for one step: plain vs lean
    python benchmarks/ab_step.py kept se 3   # MB the lean model keeps for step 3 (of 0-3), by
                                             # module (the largest of the first 4 SE steps)
    python benchmarks/ab_step.py projections hh  # fwd+bwd time: lean with / without projections
    python benchmarks/ab_step.py steps hh lean   # 6 full steps (clip + fused AdamW), one
    python benchmarks/ab_step.py steps hh plain  #   variant per process: run them alternately
    python benchmarks/ab_step.py steps hh fused  #   (fused: lean with compiled elementwise work)
    python benchmarks/ab_step.py profile hh [plain|lean|fused]  # top ops of 3 full steps under
                                             # torch.profiler

For peak memory under another allocator setting, prefix the command, e.g.
`MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/ab_step.py steps se lean`.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import build_features, model_id  # noqa: E402

from rmtrain.collate import make_collator  # noqa: E402
from rmtrain.lean import make_lean  # noqa: E402
from rmtrain.losses import pairwise_loss  # noqa: E402
from rmtrain.model import load_reward_model, load_tokenizer  # noqa: E402
from rmtrain.trainer import pair_rewards  # noqa: E402


def setup(dataset: str, steps: int) -> tuple:
    tok = load_tokenizer(model_id("smollm2"))
    model = load_reward_model(model_id("smollm2"), tok.pad_token_id).train()
    feats = build_features("smollm2", dataset, 512)["features"][: 2 * steps]
    collate = make_collator("prefix_sharing", tok.pad_token_id, 4 * 512)
    return model, [collate(feats[i : i + 2]) for i in range(0, 2 * steps, 2)]


def step(model, batch, opt=None, rewards=pair_rewards, clip=None) -> None:  # noqa: ANN001
    """Forward, backward and, with `opt`, clipping to norm 1 (`clip(1.0)` where given, else
    `clip_grad_norm_`) and the optimizer step."""
    pairwise_loss(*rewards(model, batch)).backward()
    if opt is not None:
        if clip is not None:
            clip(1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.zero_grad(set_to_none=True)


def _alternate(dataset: str, variants: dict[str, tuple[Any, list]]) -> None:
    """fwd+bwd time of each variant's (model, batches), all variants in turn and then in reverse
    order, so that machine noise hits every variant alike."""
    total = dict.fromkeys(variants, 0.0)
    for order in (list(variants), list(reversed(variants))):
        for name in order:
            model, batches = variants[name]
            for b in batches:
                start = time.perf_counter()
                step(model, b)
                total[name] += time.perf_counter() - start
    print(dataset, "fwd+bwd s over 12 steps:", {k: round(v, 2) for k, v in total.items()})


def blocks(dataset: str) -> None:
    model, batches = setup(dataset, 6)
    dense = [{**b, "attention_blocks": None} for b in batches]
    _alternate(dataset, {"blocks": (model, batches), "dense": (model, dense)})


def projections(dataset: str) -> None:
    """fwd+bwd time of the lean model with and without the lean projections (two copies of the
    model, same batches, alternating)."""
    import copy

    model, batches = setup(dataset, 6)
    norm_mlp = copy.deepcopy(model)
    make_lean(norm_mlp, projections=False)
    make_lean(model)
    _alternate(dataset, {"norm_mlp": (norm_mlp, batches), "with_projections": (model, batches)})


def forks(dataset: str) -> None:
    """fwd+bwd time of the lean, fused model with each pair's attention as a causal call plus
    its rejected tail vs one masked call per pair (same batches, alternating; the session-5
    numbers; `ab_session6.py forks` measures the default, eager model)."""
    model, batches = setup(dataset, 6)
    make_lean(model, fuse=True)
    step(model, batches[0])
    masked = [{**b, "attention_blocks": b["attention_blocks"][..., 0]} for b in batches]
    _alternate(dataset, {"forked": (model, batches), "masked": (model, masked)})


def sdpa(sizes: str) -> None:
    """SDPA alone (SmolLM2's 9 query / 3 key-value heads of 64) on one pair of prompt,chosen,
    rejected tokens (e.g. `250,200,200`): ms forward and forward+backward for the masked call,
    plain causal attention over the whole block, and the forked pair."""
    import functools

    import torch.nn.functional as F

    from rmtrain.attention import _forked
    from rmtrain.collate import block_mask

    p, c, r = map(int, sizes.split(","))
    n = p + c + r
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, n, 64, requires_grad=True) for h in (9, 3, 3))
    mask = block_mask(
        torch.zeros(1, n, dtype=torch.long), torch.tensor([[0] * p + [1] * c + [2] * r])
    )
    call = functools.partial(F.scaled_dot_product_attention, enable_gqa=True)
    variants = {
        "masked": lambda: call(q, k, v, attn_mask=mask),
        "causal": lambda: call(q, k, v, is_causal=True),
        "forked": lambda: torch.cat(_forked(call, q, k, v, p, p + c), dim=2),
    }

    def ms(fn, backward: bool, reps: int = 10) -> float:
        start = time.perf_counter()
        for _ in range(reps):
            out = fn()
            if backward:
                out.sum().backward()
        return round((time.perf_counter() - start) / reps * 1e3, 2)

    for fn in variants.values():
        ms(fn, True, 2)
    print(sizes, {name: (ms(fn, False), ms(fn, True)) for name, fn in variants.items()})


def fuse(dataset: str) -> None:
    """fwd+bwd time of the lean model with eager and with compiled elementwise work (one model,
    the flag switched between batches, alternating; compilation happens in an untimed step)."""
    model, batches = setup(dataset, 6)
    make_lean(model, fuse=True)
    lean = [m for m in model.modules() if hasattr(m, "_rmtrain_fused")]
    step(model, batches[0])
    total = {"eager": 0.0, "fused": 0.0}
    for b in batches + batches:
        for name in total if b is batches[0] else reversed(total):
            for m in lean:
                m._rmtrain_fused = name == "fused"
            start = time.perf_counter()
            step(model, b)
            total[name] += time.perf_counter() - start
    print(dataset, "fwd+bwd s over 12 steps:", {k: round(v, 2) for k, v in total.items()})


def kept_bytes(model: Any, batch: dict, rewards: Any = pair_rewards) -> int:
    """Bytes in the distinct non-parameter storages autograd keeps for one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}
    alive: list[torch.Tensor] = []  # no freed storage may lend its address to another

    def pack(t: torch.Tensor) -> torch.Tensor:
        alive.append(t)
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pairwise_loss(*rewards(model, batch))
    return sum(kept.values())


def saved(dataset: str) -> None:
    model, batches = setup(dataset, 1)
    for name in ("plain", "lean"):
        if name == "lean":
            make_lean(model)
        tokens = batches[0]["input_ids"].numel()
        mb = kept_bytes(model, batches[0]) / 2**20
        print(f"{name}: {tokens} tokens, {mb:.0f} MB kept for backward")


def kept(dataset: str, index: str = "0") -> None:
    """What the lean model keeps for backward for one step, by the module that kept it (the
    innermost attention / MLP / norm / projection running at the time), parameters excluded."""
    from collections import defaultdict

    model, batches = setup(dataset, int(index) + 1)
    make_lean(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where, found, alive = ["other"], {}, []

    def enter(module: Any, _args: Any) -> None:
        where.append(module._ab_name)

    def leave(*_: Any) -> None:
        where.pop()

    for name, m in model.named_modules():
        if type(m).__name__.endswith(("RMSNorm", "MLP", "Attention")):
            m._ab_name = name.split(".")[-1]
            m.register_forward_pre_hook(enter)
            m.register_forward_hook(leave)

    def pack(t: torch.Tensor) -> torch.Tensor:
        alive.append(t)  # no freed storage may lend its address to another
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in found:
            found[ptr] = (where[-1], t.untyped_storage().nbytes())
        return t

    batch = batches[int(index)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pairwise_loss(*pair_rewards(model, batch))
    by: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, nbytes in found.values():
        by[name][0] += nbytes
        by[name][1] += 1
    tokens, layers = batch["input_ids"].numel(), model.config.num_hidden_layers
    print(f"{tokens} tokens, {sum(n for _, n in found.values()) / 2**20:.1f} MB kept")
    for name, (nbytes, count) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        per = nbytes / 4 / tokens / layers
        print(f"  {name:26s} {nbytes / 2**20:7.1f} MB {count:4d} tensors", end=" ")
        print(f"{per:7.1f} floats/token/layer")


def steps(dataset: str, variant: str) -> None:
    """One variant per process (run `plain` and `lean` alternately): 7 full steps, the first
    untimed; peak RSS of the whole process."""
    model, batches = setup(dataset, 7)
    if variant in ("lean", "fused"):
        make_lean(model, fuse=variant == "fused")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    step(model, batches[0], opt)
    start = time.perf_counter()
    for b in batches[1:]:
        step(model, b, opt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{dataset} {variant}: steps 2-7 {time.perf_counter() - start:.2f} s, peak {peak:.0f} MB")


def profile(dataset: str, variant: str = "plain") -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profiler

    model, batches = setup(dataset, 4)
    if variant in ("lean", "fused"):
        make_lean(model, fuse=variant == "fused")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    step(model, batches[0], opt)  # warm-up
    with run_profiler(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[1:]:
            step(model, b, opt)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    what, data, *rest = sys.argv[1:]
    modes = {"blocks": blocks, "forks": forks, "fuse": fuse, "saved": saved, "kept": kept}
    modes |= {"profile": profile, "projections": projections, "sdpa": sdpa, "steps": steps}
    modes[what](data, *rest)
