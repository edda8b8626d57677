"""Attention per block of a packed row equals SDPA over the whole row's mask."""

import pytest
import torch

from rmtrain import attention
from rmtrain.collate import PackedCollator, PrefixTreeCollator, block_mask, row_blocks
from rmtrain.losses import pairwise_loss
from rmtrain.model import token_values
from rmtrain.trainer import pair_rewards
from tests.conftest import tiny_llama
from tests.test_packing import FEATURES, make_model


class _Layer(torch.nn.Module):
    num_key_value_groups = 2
    is_causal = True


def test_block_sdpa_equals_dense_masked_sdpa_and_zeroes_the_pad_tail():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    # row 0: blocks of 3 and 2 tokens, then 1 pad column; row 1: one block of 6
    seg = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 0, 0]])
    branch = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 0, 1, 1, 2, 2]])
    mask = block_mask(seg, branch)
    blocks = attention.block_sizes(row_blocks([[3, 2], [6]]))
    assert blocks == ((3, 2), (6,))
    q = torch.randn(2, 4, 6, 8, requires_grad=True)
    k = torch.randn(2, 2, 6, 8, requires_grad=True)
    v = torch.randn(2, 2, 6, 8, requires_grad=True)
    dense, _ = sdpa_attention_forward(_Layer(), q, k, v, mask, scaling=0.5)
    got, _ = attention.block_sdpa(_Layer(), q, k, v, mask, scaling=0.5, attention_blocks=blocks)
    assert got.shape == dense.shape == (2, 6, 4, 8)
    assert torch.allclose(got[0, :5], dense[0, :5], atol=1e-6)
    assert torch.allclose(got[1], dense[1], atol=1e-6)
    assert got[0, 5].abs().max().item() == 0.0  # the pad column
    grad = torch.randn_like(dense)
    grad[0, 5] = 0  # nothing reads a pad column
    want = torch.autograd.grad(dense, (q, k, v), grad)
    have = torch.autograd.grad(got, (q, k, v), grad)
    for a, b in zip(want, have, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_without_blocks_it_is_the_stock_function():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    a, _ = attention.block_sdpa(_Layer(), q, k, v, None)
    b, _ = sdpa_attention_forward(_Layer(), q, k, v, None)
    assert torch.equal(a, b)


def test_arguments_it_does_not_apply_send_it_to_the_dense_call():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    mask = block_mask(torch.tensor([[0, 0, 1, 1]]), torch.zeros(1, 4, dtype=torch.long))
    bias = torch.randn(1, 4, 4, 4)
    blocks = ((2, 2),)
    a, _ = attention.block_sdpa(
        _Layer(), q, k, v, mask, attention_blocks=blocks, position_bias=bias
    )
    b, _ = sdpa_attention_forward(_Layer(), q, k, v, mask, position_bias=bias)
    assert torch.equal(a, b)


def _count_sdpa_calls(monkeypatch) -> list[int]:
    calls = []
    real = attention.F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape[2])  # query length of the call
        return real(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("mode", ["prefix_sharing", "padding_free"])
def test_packed_forward_runs_one_attention_per_block_with_the_same_rewards(arch, mode, monkeypatch):
    model, pad = make_model(arch, "sdpa")
    batch = PackedCollator(pad, mode, 64)(FEATURES)
    dense = [r.detach() for r in pair_rewards(model, {**batch, "attention_blocks": None})]
    calls = _count_sdpa_calls(monkeypatch)
    model.zero_grad()
    chosen, rejected = pair_rewards(model, batch)
    pairwise_loss(chosen, rejected).backward()
    sizes = [n for row in batch["attention_blocks"].tolist() for n in row if n]
    assert len(sizes) == len(FEATURES) * (1 if mode == "prefix_sharing" else 2)
    assert calls == sizes * model.config.num_hidden_layers
    assert torch.allclose(chosen, dense[0], atol=1e-5)
    assert torch.allclose(rejected, dense[1], atol=1e-5)


def test_tree_batches_carry_their_tree_sizes(monkeypatch):
    model, pad = tiny_llama(200, 0), 0
    collate = PrefixTreeCollator(pad, cap=64, attention_cost=0.01)
    shared = {"prompt_ids": [5, 6, 7], "rejected_ids": [9], "margin": 0.0}
    feats = [
        {**shared, "chosen_ids": [8, 8], "pair_index": 0},
        {**shared, "chosen_ids": [4], "pair_index": 1},
        {"prompt_ids": [3], "chosen_ids": [2], "rejected_ids": [1, 1], "pair_index": 2},
    ]
    batch = collate(feats)
    # one tree of the shared prompt (5 6 7 8 8 9 4 = 7 nodes), one of the other pair (3 2 1 1)
    assert sorted(n for n in batch["attention_blocks"].flatten().tolist() if n) == [4, 7]
    args = (model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    with torch.no_grad():
        want = token_values(*args)
        calls = _count_sdpa_calls(monkeypatch)
        got = token_values(*args, blocks=batch["attention_blocks"])
    assert calls == [7, 4] * model.config.num_hidden_layers  # row 0: the 7-node tree
    assert torch.allclose(got[0], want[0], atol=1e-5)
    assert torch.allclose(got[1, :4], want[1, :4], atol=1e-5)  # then 3 pad columns
