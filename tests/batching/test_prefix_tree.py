"""Prefix trees: layout by hand, and rewards equal to the plain padded forward."""

import pytest
import torch

from rmtrain.batching.collate import PairCollator, PrefixTreeCollator, group_by_prompt, pack_trees
from rmtrain.batching.prefix_tree import build_trees, worth_sharing
from rmtrain.modeling.rewards import attention_cost_ratio, pair_rewards
from tests.helpers import FEATURES, SHARED, make_model


# Pairs that share prompts and responses (a question with three answers, a repeated pair, a
# response that is a prefix of another) next to the unrelated pairs of test_packing.
def test_tree_layout_by_hand():
    trees, tree_of = build_trees([[5, 6, 7], [5, 9], [5, 6, 8], [5, 6, 7]], cap=100)
    (tree,) = trees
    assert tree.tokens == [5, 6, 7, 8, 9] and tree.depth == [0, 1, 2, 2, 1]
    assert tree.exit == [5, 4, 3, 4, 5]
    assert tree.last == {0: 2, 3: 2, 2: 3, 1: 4} and tree_of == [0, 0, 0, 0]
    batch, place = pack_trees(trees, pad_id=0)
    assert place == [(0, 0)] and batch["position_ids"].tolist() == [[0, 1, 2, 2, 1]]
    assert batch["attention_mask"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],  # 8 sees 5, 6 and itself, not its sibling 7
        [1, 0, 0, 0, 1],  # 9 sees only the root
    ]


def test_cap_starts_new_trees_and_pads_see_only_themselves():
    trees, tree_of = build_trees([[1, 2, 3], [1, 2, 4], [1, 5, 6, 7, 8]], cap=4)
    assert [t.tokens for t in trees] == [[1, 2, 3, 4], [1, 5, 6, 7, 8]]
    assert tree_of == [0, 0, 1]
    batch, place = pack_trees(trees, pad_id=0)
    assert place == [(1, 0), (0, 0)]  # the longest tree takes the first row
    assert batch["input_ids"][1].tolist() == [1, 2, 3, 4, 0]
    assert batch["attention_mask"][1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]
    assert int(batch["num_tokens"]) == 9
    # The default row budget (the largest tree) fills padding without widening the batch.
    trees, _ = build_trees([[1, 2, 3], [7, 8], [9]], cap=3, attention_cost=1.0)
    batch, place = pack_trees(trees, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 8, 9]]
    assert place == [(0, 0), (1, 0), (1, 2)]
    assert batch["attention_mask"][1, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="empty"):
        build_trees([[1], []], cap=4)


def test_sharing_pays_only_when_it_saves_more_than_attention_costs():
    # extra query-key pairs = 2*10*(6-4) - 2*6*4 + 4*4 = 8: 4 shared tokens beat 8 x 0.1
    assert worth_sharing(10, 6, 4, 0.1) and not worth_sharing(10, 6, 4, 1.0)
    seqs = [[1, 2, 3], [1, 2, 4], [9, 9]]
    free, _ = build_trees(seqs, cap=100, attention_cost=0.0)  # attention free: one forest
    assert [t.tokens for t in free] == [[1, 2, 3, 4, 9, 9]]
    costly, tree_of = build_trees(seqs, cap=100, attention_cost=0.01)
    assert [t.tokens for t in costly] == [[1, 2, 3, 4], [9, 9]] and tree_of == [0, 0, 1]
    # SmolLM2-135M's shape: 4 x 9 x 64 / (2 x 3,538,944 parameters per layer)
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=576,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        intermediate_size=1536,
    )
    assert attention_cost_ratio(cfg) == pytest.approx(2304 / 7_077_888)


def test_grouping_and_collated_positions():
    items = group_by_prompt(SHARED)
    assert [len(it["pairs"]) for it in items] == [4, 1]
    assert items[0]["length"] == 2 + 2 + 1 + 2  # prompt once, each distinct response once
    batch = PrefixTreeCollator(0, cap=100)(items)
    # One tree across both prompts ([5] + [6, 7] is a prefix of [5, 6] + [7, 8]): 5 6 7 8 3 9 10 11
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 3, 9, 10, 11]]
    assert batch["pair_index"].tolist() == [[4, 5, 6, 7], [8, -1, -1, -1]]
    chosen, rejected = batch["chosen_index"].tolist(), batch["rejected_index"].tolist()
    assert chosen[0] == chosen[1] == chosen[3] != chosen[2]  # [5, 6, 7, 8] computed once
    assert rejected[1] == rejected[2] and rejected[0] == rejected[3] == chosen[2]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("cap,cost", [(4, 0.0), (16, 0.0), (1000, 0.0), (1000, 0.05)])
def test_tree_rewards_equal_padded(arch, attn, cap, cost):
    model, pad = make_model(arch, attn)
    feats = FEATURES + SHARED
    with torch.no_grad():
        ref = pair_rewards(model, PairCollator(pad)(feats))
        batch = PrefixTreeCollator(pad, cap, cost)(group_by_prompt(feats))
        got = pair_rewards(model, batch)
    index = batch["pair_index"].reshape(-1)
    real = index >= 0
    for a, b in zip(ref, got, strict=True):
        assert (a[index[real]] - b[real]).abs().max() < 1e-4  # the float32 bound
    if cap == 1000 and not cost:  # every distinct prefix once: 3+4+1 + 2+3 + 9+1+2 + 2+6+6 + 8
        assert int(batch["num_tokens"]) == 47


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("cap,budget", [(1000, 0), (16, 16)])
def test_tree_training_batches_give_the_padded_loss_and_gradients(arch, cap, budget):
    """`--group-by-prompt` trains on prefix trees of a batch's pairs: the loss and every
    gradient equal the padded two-sequence forward's, with one tree or several trees packed
    into rows; shared prompts / answers computed once."""
    from rmtrain.batching.collate import make_collator
    from tests.helpers import loss_and_grads

    model, pad = make_model(arch, "sdpa")
    feats = FEATURES + SHARED
    ref = loss_and_grads(model, PairCollator(pad)(feats))
    batch = make_collator("prefix_sharing", pad, budget, tree_cap=cap)(feats)
    if cap == 1000:
        assert int(batch["num_tokens"]) == 47  # every distinct prefix once (see above)
    else:
        assert batch["input_ids"].shape[0] > 1
    got = loss_and_grads(model, batch)
    for a, b in zip(ref[:3], got[:3], strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a, b)
    worst = max((ref[3][k] - got[3][k]).abs().max().item() for k in ref[3])
    assert worst < 1e-4
