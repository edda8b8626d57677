"""Forward + backward time of one training step per batch layout (no optimizer), on the same
pairs: shows that step time tracks the tokens computed.

    python benchmarks/profile_step.py smollm2 se 512
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import load_pairs, model_id  # noqa: E402

from rmtrain.batching.collate import make_collator  # noqa: E402
from rmtrain.data.layout import encode_pairs  # noqa: E402
from rmtrain.modeling.loading import load_reward_model, load_tokenizer  # noqa: E402
from rmtrain.modeling.losses import pairwise_loss  # noqa: E402
from rmtrain.modeling.rewards import pair_rewards  # noqa: E402


def main() -> None:
    name, dataset, max_length = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    tok = load_tokenizer(model_id(name))
    model = load_reward_model(model_id(name), tok.pad_token_id)
    feats, _, _ = encode_pairs(tok, load_pairs(dataset), max_length, chat=True)
    feats = [
        f
        for f in feats
        if len(f["prompt_ids"]) + max(len(f["chosen_ids"]), len(f["rejected_ids"])) <= max_length
    ]
    random.Random(0).shuffle(feats)
    batches = [feats[i : i + 2] for i in range(0, 12, 2)]  # 6 steps of 2 pairs
    for mode, budget in (
        ("none", 0),
        ("padding_free", 2 * max_length),
        ("prefix_sharing", 2 * max_length),
        ("prefix_sharing", 0),
    ):
        collate = make_collator(mode, tok.pad_token_id, budget)
        times, tokens = [], 0
        for b in batches:
            batch = collate(b)
            tokens += batch["input_ids"].numel()
            start = time.perf_counter()
            pairwise_loss(*pair_rewards(model, batch)).backward()
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        mean = sum(times[1:]) / len(times[1:])
        print(
            f"{mode} row_budget={budget}: tokens {tokens}, fwd+bwd s/step median "
            f"{median:.3f}, mean after the first {mean:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
