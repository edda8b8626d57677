"""Session 13's in-process A/Bs on SmolLM2-135M at 512 tokens (2 pairs a step, prefix sharing,
lean + cap as `rmtrain train` runs it, rmtrain's allocator setting, clipping folded into fused
AdamW), full steps, the variants alternating batch by batch, then in reverse
(`ab_session12.alternate`).

    python benchmarks/ab_session13.py rope se   # RoPE as one autograd node vs transformers'
    python benchmarks/ab_session13.py trees se  # the batches `bench_train.py` trains on (its
        # 16 pairs in the Trainer's order) as prefix trees vs one forked block per pair
    python benchmarks/ab_session13.py trees se grouped  # the same for the batches of its
        # prefix_sharing+grouped run (--group-by-prompt)
    python benchmarks/ab_session13.py norm -    # ms and relative error of the gradient norm
        # over SmolLM2's gradient shapes: torch._foreach_norm vs rmtrain.clip.total_norm
    python benchmarks/ab_session13.py share se  # how often two random pairs of the whole data
        # set ask the same question (what batches of 2 share beyond a template)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_session12 import alternate, full_step  # noqa: E402
from bench_train import _rm_trainer, build_features  # noqa: E402

from rmtrain import rotary  # noqa: E402
from rmtrain.allocator import retain_freed_memory  # noqa: E402
from rmtrain.collate import make_collator  # noqa: E402


def rope(dataset: str) -> None:
    from transformers.models.llama import modeling_llama

    def use(fn: Any) -> Any:
        return lambda: setattr(modeling_llama, "apply_rotary_pos_emb", fn)

    stock = modeling_llama.apply_rotary_pos_emb
    variants = {"stock": use(stock), "rotary": use(rotary.apply_rotary)}
    alternate(dataset, variants, {"stock": 1, "rotary": 1})


def trainer_batches(dataset: str, path: str, steps: int = 8) -> tuple[Any, list[list[dict]]]:
    """The model and pair batches of `bench_train.py`'s rmtrain run of `path` (its features,
    its Trainer's sampler order)."""
    feats = build_features("smollm2", dataset, 512)["features"]
    train, evals = feats[: 2 * steps], feats[2 * steps : 2 * steps + 8]
    spec = {"path": path, "model": "smollm2", "pairs": 2, "steps": steps}
    trainer = _rm_trainer({**spec, "max_length": 512, "eval_batch": 8}, train, evals, [])
    by_index = {f["pair_index"]: f for f in train}
    batches = trainer.get_train_dataloader()
    order = [[i for i in b["pair_index"].flatten().tolist() if i >= 0] for b in batches]
    return trainer.model, [[by_index[i] for i in b] for b in order]


def trees(dataset: str, grouped: str = "") -> None:
    retain_freed_memory()
    model, pairs = trainer_batches(dataset, "prefix_sharing" + ("+grouped" if grouped else ""))
    pad = model.config.pad_token_id
    layouts = {
        "forked": make_collator("prefix_sharing", pad, 2048),
        "trees": make_collator("prefix_sharing", pad, 2048, tree_cap=1024, attention_cost=0.0),
    }
    batches = {name: [c(b) for b in pairs] for name, c in layouts.items()}
    print({name: [int(b["num_tokens"]) for b in bs] for name, bs in batches.items()})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=True)
    full_step(model, opt, batches["forked"][0], True)  # warm-up
    total = dict.fromkeys(layouts, 0.0)
    for order in (list(layouts), list(reversed(layouts))):
        for i in range(len(pairs)):
            for name in order:
                total[name] += full_step(model, opt, batches[name][i], True)
    print(f"{dataset} full steps s over {2 * len(pairs)} steps each:", total)
    print(f"forked / trees = {total['forked'] / total['trees']:.3f}")


def norm(_: str) -> None:
    import time

    from rmtrain.clip import total_norm

    shapes = [(576, 576)] * 60 + [(192, 576)] * 60 + [(1536, 576)] * 90 + [(49152, 576)]
    grads = [torch.randn(s) for s in shapes + [(576,)] * 61]
    exact = torch.stack([g.double().square().sum() for g in grads]).sum().sqrt()
    ways = {
        "foreach_norm": lambda: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))),
        "total_norm": lambda: total_norm(grads),
    }
    for name, fn in ways.items():
        fn()
        start = time.perf_counter()
        for _ in range(10):
            value = fn()
        ms = (time.perf_counter() - start) * 100
        print(f"{name}: {ms:.1f} ms, relative error {float(value / exact - 1):.1e}")


def share(dataset: str) -> None:
    import collections

    from bench_train import load_pairs

    pairs = load_pairs(dataset)
    per_prompt = collections.Counter(p.prompt for p in pairs).values()
    n = len(pairs)
    same = sum(k * (k - 1) for k in per_prompt) / (n * (n - 1))
    print(
        f"{dataset}: {n} pairs, {len(per_prompt)} prompts; two random pairs share one: {same:.4f}"
    )


if __name__ == "__main__":
    what, data, *rest = sys.argv[1:]
    {"rope": rope, "trees": trees, "norm": norm, "share": share}[what](data, *rest)
