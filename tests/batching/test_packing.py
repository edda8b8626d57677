"""Every packed path equals the plain padded two-sequence forward: rewards and gradients."""

import pytest
import torch

from rmtrain.batching.collate import PackedCollator, PairCollator, _pack_rows, block_mask
from tests.helpers import FEATURES, LAYOUTS, SHARED, loss_and_grads, make_model


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "mode,budget",
    [("prefix_sharing", 0), ("prefix_sharing", 40), ("padding_free", 0), ("padding_free", 64)],
)
def test_packed_paths_equal_padded(arch, attn, mode, budget):
    model, pad = make_model(arch, attn)
    ref = loss_and_grads(model, PairCollator(pad)(FEATURES))
    batch = PackedCollator(pad, mode, budget)(FEATURES)
    if budget:
        assert batch["input_ids"].shape[0] < len(FEATURES) * (2 if mode == "padding_free" else 1)
    got = loss_and_grads(model, batch)
    for a, b in zip(ref[:3], got[:3], strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a, b)
    assert ref[3].keys() == got[3].keys()
    worst = max((ref[3][k] - got[3][k]).abs().max().item() for k in ref[3])
    assert worst < 1e-4


def test_prefix_shared_layout_by_hand():
    f = {"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5], "pair_index": 0}
    batch = PackedCollator(0, "prefix_sharing")([f])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2]]
    assert batch["chosen_index"].tolist() == [[0, 3]]
    assert batch["rejected_index"].tolist() == [[0, 4]]
    mask = batch["attention_mask"][0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # rejected sees the prompt and itself, never chosen
    ]


def test_rows_are_packed_first_fit_and_pads_see_only_themselves():
    assert _pack_rows([5, 4, 3, 2], budget=8) == [[0, 2], [1, 3]]
    assert _pack_rows([2, 5, 3, 6], budget=8) == [[0, 3], [1, 2]]  # longest first
    assert _pack_rows([5, 4], budget=0) == [[0], [1]]
    seg = torch.tensor([[0, 0, -1]])
    mask = block_mask(seg, torch.zeros_like(seg))[0, 0].int().tolist()
    assert mask == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_varlen_padding_free_without_mask_equals_padded(arch):
    """The flash-attention layout (no mask, position_ids restart per sequence), checked with
    sdpa on CPU: transformers rebuilds the block mask from the position ids."""
    model, pad = make_model(arch, "sdpa")
    ref = loss_and_grads(model, PairCollator(pad)(FEATURES))
    batch = PackedCollator(pad, "padding_free", 64, varlen=True)(FEATURES)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] < 2 * len(FEATURES)
    got = loss_and_grads(model, batch)
    for a, b in zip(ref[:3], got[:3], strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a, b)
    worst = max((ref[3][k] - got[3][k]).abs().max().item() for k in ref[3])
    assert worst < 1e-4


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_margins_stay_with_their_pairs_in_every_layout(layout):
    """Each pair's margin lands beside its own rewards in every training layout (trees reorder
    and merge pairs): the margin loss equals the one computed pair by pair on padded rows."""
    from rmtrain.batching.collate import PairCollator
    from rmtrain.modeling.losses import pairwise_loss
    from rmtrain.modeling.rewards import pair_rewards

    model, pad = make_model("qwen3", "sdpa")
    feats = [
        {**f, "margin": m}
        for f, m in zip(
            FEATURES + SHARED, [0.0, 1.5, -2.0, 3.0, 0.5, -1.0, 2.5, 4.0, -3.5], strict=True
        )
    ]
    batch = LAYOUTS[layout](pad)(feats)
    with torch.no_grad():
        chosen, rejected = pair_rewards(model, batch)
        got = pairwise_loss(chosen, rejected, batch["margin"]).item()
        want = []
        for f in feats:  # one pair at a time, padded: no layout to get wrong
            c, r = pair_rewards(model, PairCollator(pad)([f]))
            want.append(pairwise_loss(c, r, torch.tensor([f["margin"]])).item())
    assert got == pytest.approx(sum(want) / len(want), abs=1e-5)
    assert sorted(batch["margin"].tolist()) == sorted(f["margin"] for f in feats)


def test_packing_none_trains_on_the_same_batches_as_the_default(tmp_path):
    """`--packing none` is an exact off switch with length grouping on (the default): the
    sampler sorts by a cost that does not depend on the layout."""
    import json

    from rmtrain.cli import main
    from tests.helpers import assert_trains_the_same, tiny_train_args, write_demo

    data = write_demo(tmp_path / "d.jsonl", 60, seed=1)
    args = ["--max-steps", "4", "--logging-steps", "1", "--lr", "3e-3", "--eval-steps", "0"]
    folders = [tmp_path / "default", tmp_path / "none"]
    assert main(tiny_train_args(data, folders[0], *args)) == 0
    assert main(tiny_train_args(data, folders[1], *args, "--packing", "none")) == 0
    results = [json.loads((f / "metrics.json").read_text()) for f in folders]
    assert_trains_the_same(results, folders)
