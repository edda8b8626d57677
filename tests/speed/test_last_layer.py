"""The last layer run only at the reward tokens: the same rewards and gradients as the full
forward, on exactly those rows, and nowhere else."""

import pytest
import torch

from rmtrain.batching.collate import PackedCollator, PairCollator, make_collator
from rmtrain.modeling.rewards import pair_rewards
from rmtrain.speed.last_layer import last_layer_modules, only_rows
from tests.helpers import FEATURES, SHARED, full_rewards, loss_and_grads, prepared
from tests.helpers import prepared_model as make_model

BATCHES = {
    "padded": lambda pad: PairCollator(pad)(FEATURES),
    "prefix_sharing": lambda pad: PackedCollator(pad, "prefix_sharing", 40)(FEATURES),
    "padding_free": lambda pad: PackedCollator(pad, "padding_free", 64)(FEATURES),
    # prefix trees read one response's last token for several pairs
    "trees": lambda pad: make_collator("prefix_sharing", pad, 0, tree_cap=1000)(FEATURES + SHARED),
}


@pytest.mark.parametrize("lean", [False, True], ids=["stock", "lean"])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("layout", list(BATCHES))
def test_rewards_and_gradients_equal_the_full_forward(arch, layout, lean):
    model, pad = make_model(arch, "sdpa")
    if lean:
        prepared(model, training=True, cap_activations=False)
    batch = BATCHES[layout](pad)
    want, got = loss_and_grads(model, batch, full_rewards), loss_and_grads(model, batch)
    for a, b in zip(want[:3], got[:3], strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a, b)
    assert want[3].keys() == got[3].keys()
    worst = max((want[3][k] - got[3][k]).abs().max().item() for k in want[3])
    assert worst < 1e-6


def _rows_seen(model, batch, **kwargs) -> list[tuple]:
    """The input shapes of the first and the last layer's MLP (its gate projection, inside
    the hooks that select the rows) in one `pair_rewards` call."""
    layers = model.model.layers
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
        for m in (layers[0].mlp.gate_proj, layers[-1].mlp.gate_proj)
    ]
    pair_rewards(model, batch, **kwargs)
    for h in hooks:
        h.remove()
    return seen


def test_only_the_reward_rows_reach_the_last_layer_mlp():
    model, pad = make_model("qwen3", "sdpa")
    batch = PackedCollator(pad, "prefix_sharing", 40)(FEATURES)
    rows, width = batch["input_ids"].shape
    # 4 pairs: 8 reward tokens; the first layer still sees every position
    assert _rows_seen(model, batch) == [(rows, width, 64), (1, 8, 64)]
    trees = make_collator("prefix_sharing", pad, 0, tree_cap=1000)(FEATURES + SHARED)
    # 9 pairs read 18 rewards at 13 tokens: FEATURES' 8 responses, and SHARED's sequences
    # [5 6 7 8], [5 6 9], [5 6 10 11], [5 6 7] (pair 8's chosen: a prefix of the first, read at
    # its token 7) and [5 6 7 8 3] in one tree
    assert _rows_seen(model, trees)[1] == (1, 13, 64)
    # hooks are gone after the call; with the hidden states (LM loss) every row runs
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert _rows_seen(model, batch, with_hidden=True)[1] == (rows, width, 64)


def test_gradient_checkpointing_and_unknown_layouts_run_in_full():
    model, _ = make_model("llama", "sdpa")
    assert last_layer_modules(model) == (
        model.model.layers[-1].self_attn.o_proj,
        model.model.layers[-1].mlp,
    )
    model.gradient_checkpointing_enable()
    assert last_layer_modules(model) is None
    with only_rows(model, torch.tensor([0])) as trimmed:
        assert not trimmed
    assert last_layer_modules(torch.nn.Linear(2, 2)) is None
