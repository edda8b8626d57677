"""Attention per block of a packed row equals SDPA over the whole row's mask."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from rmtrain.batching.collate import PackedCollator, PrefixTreeCollator, block_mask, row_blocks
from rmtrain.modeling.losses import pairwise_loss
from rmtrain.modeling.rewards import pair_rewards, token_values
from rmtrain.speed import attention
from tests.helpers import FEATURES, count_calls, prepared, tiny_llama
from tests.helpers import prepared_model as make_model


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


def _forks(branches: list[list[int]]) -> list:
    from rmtrain.batching.collate import _fork

    return [_fork(b) for b in branches]


@pytest.mark.parametrize("gathered", [True, False])
def test_forked_blocks_equal_dense_masked_sdpa(gathered, monkeypatch):
    """Pairs (prompt 2 / chosen 2 / rejected 3; an empty prompt) and plain causal runs (a
    prompt + response segment with or without chosen) as causal + tail calls, through the
    CPU flash kernel with gathered tails or through SDPA: the same output and gradients as
    the dense masked call."""

    if not gathered:
        monkeypatch.setattr(attention, "GATHER_ON_CPU", False)
    torch.manual_seed(0)
    rows = [[[0, 0, 1, 1, 2, 2, 2], [1, 2, 2]], [[0, 0, 0, 1, 1], [0, 0, 0, 2, 2]]]
    forks = [_forks(r) for r in rows]
    assert forks == [[(2, 4), (0, 1)], [(3, 5), (3, 5)]]
    seg = torch.tensor([[0] * 7 + [1] * 3, [0] * 5 + [1] * 5])
    branch = torch.tensor([sum(r, []) for r in rows])
    mask = block_mask(seg, branch)
    blocks = attention.block_sizes(row_blocks([[7, 3], [5, 5]], forks))
    assert blocks == (((7, 2, 4), (3, 0, 1)), ((5, 3, 5), (5, 3, 5)))
    with _Calls() as calls:
        _assert_equals_dense(2, 10, mask, blocks)
    # two blocks with a tail (the other two are plain causal runs): two flash calls each
    assert len(calls.flash) == (4 if gathered else 0)


def _assert_equals_dense(rows: int, length: int, mask, blocks) -> None:
    """Random q (4 heads) and k / v (2 heads) of head size 8 through `block_sdpa` with
    `blocks`: the dense masked call's output (to 1e-6) and q / k / v gradients (to 1e-5)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q = torch.randn(rows, 4, length, 8, requires_grad=True)
    k = torch.randn(rows, 2, length, 8, requires_grad=True)
    v = torch.randn(rows, 2, length, 8, requires_grad=True)
    dense, _ = sdpa_attention_forward(_Layer(), q, k, v, mask, scaling=0.5)
    got, _ = attention.block_sdpa(_Layer(), q, k, v, mask, scaling=0.5, attention_blocks=blocks)
    assert (got - dense).abs().max().item() < 1e-6
    grad = torch.randn_like(dense)
    want = torch.autograd.grad(dense, (q, k, v), grad)
    have = torch.autograd.grad(got, (q, k, v), grad)
    for a, b in zip(want, have, strict=True):
        assert (a - b).abs().max().item() < 1e-5


FLASH = "_scaled_dot_product_flash_attention_for_cpu"  # the CPU flash kernel, as an op


class _Calls(TorchFunctionMode):
    """Query lengths of the attention calls while active, seen through torch's public
    function-mode hook: `every` SDPA call and direct call of the CPU flash kernel (which
    forked blocks make on CPU), `flash` the latter only."""

    def __init__(self) -> None:
        super().__init__()
        self.every: list[int] = []
        self.flash: list[int] = []
        self.masks: list[torch.Tensor] = []  # the attention masks passed, in call order

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in (FLASH, "scaled_dot_product_attention"):
            self.every.append(args[0].shape[2])
            if name == FLASH:
                self.flash.append(args[0].shape[2])
            if (kwargs or {}).get("attn_mask") is not None:
                self.masks.append(kwargs["attn_mask"])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["prefix_sharing", "padding_free"])
def test_packed_blocks_describe_the_same_mask_as_the_batch(mode):
    """The (size, p, c) of every block, expanded into a mask, is the batch's 4-D mask."""
    batch = PackedCollator(0, mode, 64)(FEATURES)
    mask = batch["attention_mask"][:, 0]
    for r, row in enumerate(batch["attention_blocks"].tolist()):
        want, start = torch.zeros_like(mask[r]), 0
        for n, p, c in (b for b in row if b[0]):
            block = torch.ones(n, n, dtype=torch.bool).tril()
            block[c:, p:c] = False  # the tail does not see the chosen tokens
            want[start : start + n, start : start + n] = block
            start += n
        assert torch.equal(mask[r, :start, :start], want[:start, :start])


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


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("mode", ["prefix_sharing", "padding_free"])
def test_packed_forward_runs_one_attention_per_block_with_the_same_rewards(arch, mode, monkeypatch):
    model, pad = make_model(arch, "sdpa")
    batch = PackedCollator(pad, mode, 64)(FEATURES)
    dense = [r.detach() for r in pair_rewards(model, {**batch, "attention_blocks": None})]
    model.zero_grad()
    with _Calls() as calls:
        chosen, rejected = pair_rewards(model, batch)
        pairwise_loss(chosen, rejected).backward()
    blocks = [b for row in batch["attention_blocks"].tolist() for b in row if b[0]]
    assert len(blocks) == len(FEATURES) * (1 if mode == "prefix_sharing" else 2)
    # a pair: its causal run [prompt][chosen], then its rejected tokens; padding-free: one run
    per_layer = [x for n, _, c in blocks for x in ([c] if c == n else [c, n - c])]
    assert len(per_layer) == len(FEATURES) * 2
    assert calls.every == per_layer * model.config.num_hidden_layers
    assert torch.allclose(chosen, dense[0], atol=1e-5)
    assert torch.allclose(rejected, dense[1], atol=1e-5)


@pytest.mark.parametrize("when,per_block", [("auto", True), ("on", True), ("off", False)])
def test_block_attention_setting_picks_the_path(when, per_block, monkeypatch):
    """--block-attention: auto is per block on CPU; off runs one masked call per row, with the
    same rewards."""

    model, pad = make_model("qwen3", "sdpa")
    batch = PackedCollator(pad, "prefix_sharing", 64)(FEATURES)
    dense = [r.detach() for r in pair_rewards(model, {**batch, "attention_blocks": None})]
    prepared(model, block_attention=when)
    with _Calls() as calls:
        chosen, rejected = pair_rewards(model, batch)
    # per block: two calls per pair (its causal run, its rejected tail); else one per row
    per_layer = len(FEATURES) * 2 if per_block else batch["input_ids"].shape[0]
    assert len(calls.every) == per_layer * model.config.num_hidden_layers
    assert torch.allclose(chosen, dense[0], atol=1e-5)
    assert torch.allclose(rejected, dense[1], atol=1e-5)


def _tree_batch() -> tuple:
    """A tiny Llama and a tree batch: two pairs sharing a prompt (and their rejected answer),
    and a pair of its own."""
    model, pad = tiny_llama(200, 0), 0
    prepared(model)
    shared = {"prompt_ids": [5, 6, 7], "rejected_ids": [9], "margin": 0.0}
    feats = [
        {**shared, "chosen_ids": [8, 8], "pair_index": 0},
        {**shared, "chosen_ids": [4], "pair_index": 1},
        {"prompt_ids": [3], "chosen_ids": [2], "rejected_ids": [1, 1], "pair_index": 2},
    ]
    return model, PrefixTreeCollator(pad, cap=64, attention_cost=0.01)(feats)


def _tree_mask(rows: list[list[int]]) -> torch.Tensor:
    """[n, n] boolean mask: token i sees the tokens in rows[i]."""
    allowed = torch.zeros(len(rows), len(rows), dtype=torch.bool)
    for i, seen in enumerate(rows):
        allowed[i, seen] = True
    return allowed


# 0 1 2 = root run; 3 4 see 0 1 (branch after token 1); 5 sees 0 1 2 (branch after 2)
TREE = [[0], [0, 1], [0, 1, 2], [0, 1, 3], [0, 1, 3, 4], [0, 1, 2, 5]]


def test_tree_batches_carry_their_tree_sizes(monkeypatch):
    model, batch = _tree_batch()
    # one tree of the shared prompt (5 6 7 8 8 9 4 = 7 nodes), one of the other pair (3 2 1 1)
    assert sorted(n for n in batch["attention_blocks"].flatten().tolist() if n) == [4, 7]
    args = (model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    with torch.no_grad():
        want = token_values(*args)
        splits = count_calls(monkeypatch, attention, "tree_segments")
        with _Calls() as calls:
            got = token_values(*args, blocks=batch["attention_blocks"])
    assert len(splits) == 2  # each tree's segments found once per batch, not once per layer
    # row 0 holds 5 6 7 4 | 8 8 | 9 (the root run [prompt][chosen 4], then chosen 8 8 and the
    # shared rejected 9, each after the prompt); row 1 holds 3 1 1 | 2: one call per segment
    assert calls.every == [4, 2, 1, 3, 1] * model.config.num_hidden_layers
    assert torch.allclose(got[0], want[0], atol=1e-5)
    assert torch.allclose(got[1, :4], want[1, :4], atol=1e-5)  # then 3 pad columns


@pytest.mark.parametrize("autocast,gathered", [(False, True), (False, False), (True, False)])
def test_every_layer_gets_the_same_tail_mask_in_the_dtype_sdpa_runs_in(
    autocast, gathered, monkeypatch
):
    """SDPA converts a boolean mask into a fresh float copy in every call and keeps it for
    backward; a batch's forked tails get one float mask each, shared by all layers. Gathered
    (the CPU flash path): over the prefix's keys and the tail's only."""
    model, pad = make_model("llama", "sdpa")
    batch = PackedCollator(pad, "prefix_sharing", 64)(FEATURES)
    monkeypatch.setattr(attention, "GATHER_ON_CPU", gathered)
    with _Calls() as calls, torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        pair_rewards(model, batch)
    masks = calls.masks
    tails = [(n - c, p, c) for row in batch["attention_blocks"].tolist() for n, p, c in row]
    tails = [t for t in tails if t[0] > 0]
    assert len(masks) == len(tails) * model.config.num_hidden_layers
    assert len({m.data_ptr() for m in masks}) == len(set(tails))
    assert {m.dtype for m in masks} == {torch.bfloat16 if autocast else torch.float32}
    for m, (tail, p, c) in zip(masks, tails, strict=False):  # layer 0, in batch order
        assert m.shape == ((tail, p + tail) if gathered else (tail, c + tail))
        blocked = m == torch.finfo(m.dtype).min
        assert blocked.sum().item() == tail * (tail - 1) // 2 + (0 if gathered else tail * (c - p))
        assert not blocked[:, :p].any()
        assert gathered or blocked[:, p:c].all()


@pytest.mark.parametrize("boolean", [True, False])
def test_flex_rows_equal_dense_masked_sdpa(boolean):
    """One FlexAttention call over a packed row's tiles: the dense masked call's output for a
    boolean (GPU) or additive (CPU) mask; pad columns (nothing reads them) stay finite."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    # row 0: a pair (prompt 2 / chosen 2 / rejected 3), then 2 pad columns; row 1: a causal run
    seg = torch.tensor([[0] * 7 + [-1] * 2, [0] * 9])
    branch = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 0, 0], [0] * 9])
    mask = block_mask(seg, branch)
    mask = mask if boolean else attention.additive_mask(mask, torch.float32)
    q, k, v = torch.randn(2, 4, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    dense, _ = sdpa_attention_forward(_Layer(), q, k, v, mask, scaling=0.5)
    got, _ = attention.block_sdpa(_Layer(), q, k, v, mask, scaling=0.5, attention_flex=True)
    assert got.shape == dense.shape == (2, 9, 4, 8)
    assert (got[0, :7] - dense[0, :7]).abs().max().item() < 1e-6
    assert (got[1] - dense[1]).abs().max().item() < 1e-6
    assert got.isfinite().all()


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("mode", ["prefix_sharing", "padding_free"])
def test_flex_setting_scores_with_one_call_per_layer_and_one_block_mask(arch, mode, monkeypatch):
    """--block-attention flex: each layer makes one FlexAttention call over the batch's rows and
    no SDPA call, the block mask is built once per forward, and the rewards are the dense
    path's (forward only: FlexAttention has no backward on CPU)."""
    from torch.nn.attention import flex_attention as flex_module

    model, pad = make_model(arch, "sdpa")
    batch = PackedCollator(pad, mode, 64)(FEATURES)
    with torch.no_grad():
        dense = pair_rewards(model, {**batch, "attention_blocks": None})
        prepared(model, block_attention="flex")
        flex = count_calls(monkeypatch, attention, "flex_rows")
        built = count_calls(monkeypatch, flex_module, "create_block_mask")
        with _Calls() as calls:
            chosen, rejected = pair_rewards(model, batch)
    assert len(flex) == model.config.num_hidden_layers and calls.every == [] and len(built) == 1
    assert (chosen - dense[0]).abs().max().item() < 1e-5
    assert (rejected - dense[1]).abs().max().item() < 1e-5


def test_flex_refuses_to_train_on_cpu(tmp_path, capsys, monkeypatch):
    from rmtrain.cli import main
    from tests.helpers import tiny_train_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    code = main(tiny_train_args(tmp_path / "none.jsonl", out, "--block-attention", "flex"))
    err = capsys.readouterr().err
    assert code == 2 and "--block-attention flex trains on a CUDA GPU only" in err


def test_flex_setting_scores_tree_batches_as_the_dense_path():

    model, batch = _tree_batch()
    args = (model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    with torch.no_grad():
        want = token_values(*args)
        prepared(model, block_attention="flex")
        got = token_values(*args, blocks=batch["attention_blocks"])
    assert (got[0] - want[0]).abs().max().item() < 1e-5
    assert (got[1, :4] - want[1, :4]).abs().max().item() < 1e-5  # then 3 pad columns


def test_tree_segments_by_hand_and_a_mask_they_cannot_give_back():
    allowed = _tree_mask(TREE)
    got = attention.tree_segments(allowed)
    assert [(a, b, None if c is None else c.tolist()) for a, b, c in got] == [
        (0, 3, None),
        (3, 5, [0, 1, 3, 4]),
        (5, 6, [0, 1, 2, 5]),
    ]
    ahead = allowed.clone()
    ahead[2, 4] = True  # a token that sees a later one: no causal segment gives that back
    assert attention.tree_segments(ahead) is None
    blind = allowed.clone()
    blind[4, 4] = False  # a token that does not see itself
    assert attention.tree_segments(blind) is None


def test_tree_blocks_without_gradients_equal_the_dense_masked_call():
    """Scoring runs a tree block one segment at a time (ancestors gathered, own run causal):
    the dense masked call's output, for boolean and additive masks and grouped-query heads."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    allowed = _tree_mask(TREE + [[6], [6, 7]])[None, None]  # the tree, then a causal run of 2
    q, k, v = torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    for mask in (allowed, attention.additive_mask(allowed, torch.float32)):
        dense, _ = sdpa_attention_forward(_Layer(), q, k, v, mask, scaling=0.5)
        with torch.no_grad():
            got, _ = attention.block_sdpa(
                _Layer(), q, k, v, mask, scaling=0.5, attention_blocks=((6, 2),)
            )
        assert (got - dense).abs().max().item() < 1e-6


@pytest.mark.parametrize("gathered", [True, False])
def test_tree_blocks_with_gradients_equal_the_dense_masked_call(gathered, monkeypatch):
    """Training runs a tree block's segments through the CPU flash kernel (`TreeFlash`: one
    call per segment, keys gathered again in backward) or, elsewhere, one masked SDPA call:
    the dense masked call's output and q / k / v gradients either way."""

    if not gathered:
        monkeypatch.setattr(attention, "GATHER_ON_CPU", False)
    torch.manual_seed(0)
    allowed = _tree_mask(TREE + [[6], [6, 7]])[None, None]  # the tree, then a causal run of 2
    mask = attention.additive_mask(allowed, torch.float32)
    with _Calls() as calls:
        _assert_equals_dense(1, 8, mask, ((6, 2),))
    # the tree's three segments (3, 2 and 1 queries), then the causal run of 2
    assert calls.flash == ([3, 2, 1, 2] if gathered else [])
