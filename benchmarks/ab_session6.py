"""The in-process A/Bs behind benchmarks/README.md's "Session 6" numbers (SmolLM2-135M, 512
tokens, 2 pairs per step, prefix sharing; `ab_step.setup` batches; variants alternating).

    python benchmarks/ab_session6.py attention se OLD_TREE          # blocks by unbind / split
    python benchmarks/ab_session6.py attention se OLD_TREE oproj    # + lean o_proj
    python benchmarks/ab_session6.py attention se OLD_TREE three    # + current attention alone
    python benchmarks/ab_session6.py oproj se     # lean vs stock o_proj, fwd / bwd split
    python benchmarks/ab_session6.py forks hh     # forked vs one masked call, 24 steps each
    python benchmarks/ab_session6.py denormal se  # torch.set_flush_denormal on / off
    python benchmarks/ab_session6.py silu se      # SiLU-gate backward timed inside real steps
    python benchmarks/ab_session6.py trainer se   # Trainer steps vs a bare loop, same batches

OLD_TREE is an older checkout (`git worktree add /tmp/old 871f9fd`); its
`src/rmtrain/attention.py` is swapped into transformers' registry against the current one.
`attention` without a flag: one lean model (stock o_proj), 2 rounds all timed: the unbind /
split A/B, measured with the current tree at 2dc9490 and OLD_TREE at 871f9fd. With `oproj` /
`three`: copies of the model, 4 rounds, the first discarded, forward and backward timed apart:
measured with the current tree at bf2b561 and OLD_TREE at 2dc9490.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_step import setup, step  # noqa: E402

from rmtrain import attention  # noqa: E402
from rmtrain.lean import make_lean  # noqa: E402
from rmtrain.losses import pairwise_loss  # noqa: E402
from rmtrain.trainer import pair_rewards  # noqa: E402


def _rounds(variants: dict[str, tuple[Any, list, Any]], rounds: int, discard_first: bool) -> dict:
    """[forward s, backward s] per variant (model, batches, setup callable run before each of
    its rounds[, rewards function instead of `pair_rewards`]), variants in turn and reversed
    every other round."""
    total = {k: [0.0, 0.0] for k in variants}
    for rnd in range(rounds):
        for name in list(variants) if rnd % 2 == 0 else list(reversed(variants)):
            model, batches, before, *own = variants[name]
            rewards = own[0] if own else pair_rewards
            before()
            for b in batches:
                start = time.perf_counter()
                loss = pairwise_loss(*rewards(model, b))
                mid = time.perf_counter()
                loss.backward()
                end = time.perf_counter()
                model.zero_grad(set_to_none=True)
                if rnd or not discard_first:
                    total[name][0] += mid - start
                    total[name][1] += end - mid
    return {k: [round(f, 2), round(b, 2), round(f + b, 2)] for k, (f, b) in total.items()}


def _stock_o_proj(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if hasattr(m, "o_proj") and "forward" in vars(m.o_proj):
            del m.o_proj.forward  # back to nn.Linear.forward
    return model


def _nothing() -> None:
    return None


def attention_ab(dataset: str, old_tree: str, flag: str = "") -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    path = Path(old_tree) / "src" / "rmtrain" / "attention.py"
    spec = importlib.util.spec_from_file_location("old_attention", path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)  # type: ignore[union-attr]
    registry = type(ALL_ATTENTION_FUNCTIONS)._global_mapping

    def use(fn: Any) -> Any:
        return lambda: registry.__setitem__("sdpa", fn)

    model, batches = setup(dataset, 6)
    make_lean(model)
    attention.install()
    if not flag:
        _stock_o_proj(model)
        step(model, batches[0])
        variants = {"old": (model, batches, use(old.block_sdpa))}
        variants["new"] = (model, batches, use(attention.block_sdpa))
        print(dataset, "s over 12 steps [fwd, bwd, both]:", _rounds(variants, 2, False))
        return
    stock = _stock_o_proj(copy.deepcopy(model))
    variants = {"new": (model, batches, use(attention.block_sdpa))}
    variants["old"] = (stock, batches, use(old.block_sdpa))
    if flag == "three":
        variants["new_attn_only"] = (copy.deepcopy(stock), batches, use(attention.block_sdpa))
    print(dataset, "s over 18 steps [fwd, bwd, both]:", _rounds(variants, 4, True))


def oproj(dataset: str) -> None:
    model, batches = setup(dataset, 6)
    make_lean(model)
    stock = _stock_o_proj(copy.deepcopy(model))
    variants = {"lean_o": (model, batches, _nothing), "plain_o": (stock, batches, _nothing)}
    print(dataset, "s over 18 steps [fwd, bwd, both]:", _rounds(variants, 4, True))


def forks(dataset: str) -> None:
    model, batches = setup(dataset, 6)
    make_lean(model)
    step(model, batches[0])
    masked = [{**b, "attention_blocks": b["attention_blocks"][..., 0]} for b in batches]
    variants = {"forked": (model, batches, _nothing), "masked": (model, masked, _nothing)}
    print(dataset, "s over 24 steps [fwd, bwd, both]:", _rounds(variants, 4, False))


def denormal(dataset: str) -> None:
    model, batches = setup(dataset, 6)
    make_lean(model)
    variants = {
        "plain": (model, batches, lambda: torch.set_flush_denormal(False)),
        "flush": (model, batches, lambda: torch.set_flush_denormal(True)),
    }
    print(dataset, "s over 12 steps [fwd, bwd, both]:", _rounds(variants, 2, False))


def silu(dataset: str) -> None:
    """ms of each SiLU-gate backward inside real steps, no profiler (and again on contiguous
    copies of its inputs)."""
    import rmtrain.kernels as K
    import rmtrain.lean as L

    times: list[tuple[float, float]] = []
    eager = K.silu_mul_backward

    def timed(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> Any:
        start = time.perf_counter()
        out = eager(grad, gate, up)
        mid = time.perf_counter()
        eager(grad.contiguous(), gate.contiguous(), up.contiguous())
        times.append(((mid - start) * 1e3, (time.perf_counter() - mid) * 1e3))
        return out

    L.EAGER = K.Kernels(K.rms_norm, K.normed, K.rms_norm_backward, K.silu_mul, timed)
    model, batches = setup(dataset, 2)
    make_lean(model)
    for b in batches:
        step(model, b)
    print(dataset, "SiLU-gate backward ms (as called, on copies):", times[:10])


def trainer(dataset: str) -> None:
    """Seconds per step of `PairwiseRewardTrainer` (bench_train's setup, 7 steps of 2 pairs)
    and of a bare loop (forward, backward, clipping, fused AdamW) over the same batches."""
    import bench_train as bt
    from transformers import TrainerCallback

    feats = bt.build_features("smollm2", dataset, 512)["features"]
    spec = {"path": "prefix_sharing", "model": "smollm2", "pairs": 2, "steps": 7}
    spec |= {"max_length": 512, "eval_batch": 8}
    run = bt._rm_trainer(spec, feats[:14], feats[14:16], [])
    ends: list[float] = []

    class Stamps(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            ends.append(time.perf_counter())

    run.add_callback(Stamps())
    run.train()
    batches = list(run.get_train_dataloader())
    opt = torch.optim.AdamW(run.model.parameters(), lr=1e-6, fused=True)
    loop = []
    for b in batches:
        start = time.perf_counter()
        step(run.model, b, opt)
        loop.append(round(time.perf_counter() - start, 2))
    per_step = [round(b - a, 2) for a, b in zip(ends, ends[1:], strict=False)]
    print("trainer s/step", per_step, "bare loop s/step", loop)


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    modes = {"attention": attention_ab, "oproj": oproj, "forks": forks}
    modes |= {"denormal": denormal, "silu": silu, "trainer": trainer}
    modes[what](*args)
