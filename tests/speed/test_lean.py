"""Lean RMSNorm / SiLU-MLP: the same loss and gradients, fewer floats kept for backward."""

import contextlib
import copy

import pytest
import torch

from rmtrain import speed
from rmtrain.batching.collate import PackedCollator, PairCollator
from rmtrain.modeling.losses import pairwise_loss
from rmtrain.speed.lean import make_lean
from tests.helpers import FEATURES, loss_and_grads, make_model, prepared


def _saved_floats(model, batch) -> int:
    """Floats in the distinct tensors autograd keeps for backward (parameters excluded), every
    layer run at every position (`speed.last_layer` is tested on its own)."""
    from tests.helpers import full_rewards

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}
    alive = []  # a saved tensor whose node is dropped early must not lend its address to another

    def pack(t):
        storage = t.untyped_storage()
        alive.append(t)
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pairwise_loss(*full_rewards(model, batch))
    return sum(kept.values())


# (modules made lean, floats per token no longer kept) for the tiny test models: 2 layers of
# hidden 64 and MLP width 128. Modules per layer: two norms, the MLP and its three projections,
# q/k/v/o; plus the final norm. Floats per layer: each norm's normalised output (64 + 64) and
# SiLU(gate) (128); the input the q/k/v projections keep (the attention norm's output, 64), the
# input gate/up keep (the MLP norm's output, 64) and down's input SiLU(gate) * up (128); plus the
# final norm (64). Qwen3 also normalises q (4 heads x 16) and k (2 x 16) in every layer.
PER_LAYER = 64 + 64 + 128 + 64 + 64 + 128
EXPECTED = {
    "llama": (2 * 10 + 1, 2 * PER_LAYER + 64),
    "qwen3": (2 * 12 + 1, 2 * (PER_LAYER + 64 + 32) + 64),
}
# With per-block attention (packed layouts) o_proj keeps the blocks' SDPA outputs, which SDPA
# keeps for its own backward, instead of their concatenation (64 floats per token and layer).
O_PROJ = {"padded": 0, "prefix_sharing": 2 * 64}


@pytest.mark.parametrize("fuse", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("layout", ["padded", "prefix_sharing"])
def test_lean_model_gives_the_same_loss_and_gradients_and_keeps_less(arch, layout, fuse):
    model, pad = make_model(arch, "sdpa")
    lean = copy.deepcopy(model)
    prepared(model)  # per-block attention on both: the lean forwards are the difference
    modules, per_token = EXPECTED[arch]
    per_token += O_PROJ[layout]
    handle = prepared(lean, training=True, cap_activations=False, fuse_elementwise=fuse)
    assert speed.handle_of(handle).lean.changed == modules
    if layout == "padded":
        batch = PairCollator(pad)(FEATURES)
    else:
        batch = PackedCollator(pad, "prefix_sharing", 64)(FEATURES)
    want, got = loss_and_grads(model, batch), loss_and_grads(lean, batch)
    for a, b in zip(want[:3], got[:3], strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a, b)
    assert want[3].keys() == got[3].keys()
    assert max((want[3][k] - got[3][k]).abs().max().item() for k in want[3]) < 1e-5
    tokens = batch["input_ids"].numel()
    assert _saved_floats(model, batch) - _saved_floats(lean, batch) == per_token * tokens


def test_other_modules_are_left_alone():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    assert make_lean(net).changed == 0
    assert "forward" not in vars(net[1])


def test_lean_norm_keeps_bf16_outputs_like_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(8).to(torch.bfloat16)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    want = norm(x)
    gw, gx = torch.autograd.grad(want.float().sum(), (norm.weight, x))
    assert make_lean(norm).changed == 1
    got = norm(x)
    assert got.dtype == want.dtype and torch.equal(got, want)
    hw, hx = torch.autograd.grad(got.float().sum(), (norm.weight, x))
    assert torch.allclose(hw.float(), gw.float(), atol=2e-2)
    assert torch.allclose(hx.float(), gx.float(), atol=2e-2)


@pytest.mark.parametrize("mode", ["checkpointing", "autocast", "lora"])
def test_lean_projections_agree_with_stock_under_checkpointing_autocast_and_lora(mode):
    """Checkpointed layers recompute through the lean ops; under autocast the projections cast
    as autocast's linear does (and keep neither the cast input nor the cast weight); LoRA-wrapped
    projections fall back to the plain linear: the same gradients in every case."""
    model, pad = make_model("qwen3", "sdpa")
    if mode == "lora":
        from rmtrain.modeling.lora import apply_lora

        model = apply_lora(model, 4, 8, 0.0, ["q_proj", "v_proj"])
    lean = copy.deepcopy(model)
    assert make_lean(lean).changed > 0
    batch = PackedCollator(pad, "prefix_sharing", 64)(FEATURES)
    if mode == "checkpointing":
        for m in (model, lean):
            m.gradient_checkpointing_enable({"use_reentrant": False})
            m.train()
    ctx = torch.autocast("cpu", torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()
    with ctx:
        want, got = loss_and_grads(model, batch), loss_and_grads(lean, batch)
    bound = 1e-2 if mode == "autocast" else 1e-5  # bf16 rounds the lean norm differently
    if mode == "autocast":
        with ctx:
            assert _saved_floats(lean, batch) < _saved_floats(model, batch) / 2
    assert want[3].keys() == got[3].keys() and len(want[3]) > 0
    for k in want[3]:  # relative to each tensor's own size: many gradients are all below 1e-2
        scale = want[3][k].abs().max().item()
        assert (want[3][k] - got[3][k]).abs().max().item() <= bound * max(scale, 1e-6), k
    assert torch.allclose(want[2], got[2], atol=bound)


@pytest.mark.parametrize("change", ["none", "view", "in_place"])
def test_projection_keeps_the_recipe_only_while_it_still_gives_its_input(change):
    """A lean projection keeps a recipe's parts instead of its input, also when it reads a whole
    view of the marked tensor (attention output reshaped for o_proj); after an in-place change
    the recipe would give the old values, so it keeps its input: the weight gradient is right
    either way."""
    from rmtrain.speed.lean import LeanModel, _lean_projections

    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.o_proj = torch.nn.Linear(6, 3)
    stock = copy.deepcopy(holder.o_proj)
    lean = LeanModel()
    _lean_projections(holder, lean)
    assert lean.changed == 1
    a = torch.randn(2, 5, 6, requires_grad=True)
    grads, saved = [], []
    for proj in (holder.o_proj, stock):
        x = a * 2
        lean.recipes.keep(x, lambda t: t * 2, (a,))
        if change == "view":
            x = x.unflatten(-1, (2, 3)).reshape(2, 5, 6)
        elif change == "in_place":
            x.mul_(3)
        kept: list[torch.Tensor] = []

        def pack(t, kept=kept):
            kept.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = proj(x)
        saved.append(any(t.data_ptr() == x.data_ptr() for t in kept))
        grads.append(torch.autograd.grad((y * torch.arange(3.0)).sum(), proj.weight)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert saved == [change == "in_place", True]  # stock always keeps x; lean only if changed


def _recompute_all(model) -> int:
    mlps = [m for m in model.modules() if hasattr(m, "_rmtrain_recompute")]
    for m in mlps:
        m._rmtrain_recompute = True
    return len(mlps)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("layout", ["padded", "prefix_sharing"])
def test_recomputed_mlps_give_the_same_gradients_and_keep_gate_and_up_no_more(
    arch, layout, autocast
):
    model, pad = make_model(arch, "sdpa")
    make_lean(model)
    recomputing = copy.deepcopy(model)
    layers = _recompute_all(recomputing)
    assert layers == model.config.num_hidden_layers
    if layout == "padded":
        batch = PairCollator(pad)(FEATURES)
    else:
        batch = PackedCollator(pad, "prefix_sharing", 64)(FEATURES)
    ctx = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        want, got = loss_and_grads(model, batch), loss_and_grads(recomputing, batch)
        kept = _saved_floats(model, batch) - _saved_floats(recomputing, batch)
    for a, b in zip(want[:3], got[:3], strict=True):
        assert torch.equal(a, b)
    assert want[3].keys() == got[3].keys()
    assert all(torch.equal(want[3][k], got[3][k]) for k in want[3])
    # gate and up: 2 x 128 floats a token and layer (bf16 under autocast: half the bytes, and
    # _saved_floats counts elements)
    width = model.config.intermediate_size
    assert kept == layers * 2 * width * batch["input_ids"].numel()


def test_the_cap_recomputes_just_enough_of_the_first_layers():
    """Tiny Llama, fp32: 86,912 parameters, so a gradient budget of 347,648 bytes. A layer keeps
    2,328 bytes a token (norms 2 x 65 x 4, q/k/v/out (8 + 4) x 16 x 4, logsumexp 4 x 4, gate
    and up 2 x 128 x 4 = 1,024); the first layer backward reaches works on 4 x 128 x 4 = 2,048
    more. Two layers: 6,704 a token, over budget from 52 tokens; one recomputed MLP covers up
    to 61 tokens (5,680 a token), beyond that both."""
    from rmtrain.speed.lean import cap_activations, kept_bytes_per_token

    model, _ = make_model("llama", "sdpa")
    make_lean(model)
    assert sum(p.numel() for p in model.parameters()) == 86_912
    assert kept_bytes_per_token(model.config, 4, 4) == (2_328, 1_024)
    cap_activations(model)
    mlps = [m for m in model.modules() if hasattr(m, "_rmtrain_recompute")]
    for tokens, first in [(51, 0), (52, 1), (61, 1), (62, 2), (400, 2), (10, 0)]:
        model(
            input_ids=torch.ones(2, tokens // 2, dtype=torch.long)
            if tokens % 2 == 0
            else torch.ones(1, tokens, dtype=torch.long)
        )
        assert [m._rmtrain_recompute for m in mlps] == [i < first for i in range(2)], tokens
    with torch.no_grad():  # scoring keeps nothing: the flags stay as they were
        model(input_ids=torch.ones(1, 10, dtype=torch.long))
        model(input_ids=torch.ones(1, 400, dtype=torch.long))
    assert [m._rmtrain_recompute for m in mlps] == [False, False]
