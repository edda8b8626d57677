"""Activation-lean RMSNorm, gated MLP and input projections for training: same outputs and
gradients, fewer tensors kept for backward, no extra matrix products (but for the cap below).

Autograd keeps every intermediate an op needs for its backward. In a Llama / Qwen3 layer several
are cheap to recompute from tensors that are kept anyway:
- RMSNorm keeps its input, 1/rms and the normalised input: the last is recomputed here from the
  first two (one multiply), saving hidden-size floats per token per norm;
- the gated MLP's SiLU(gate) * up keeps gate, SiLU(gate) and up: SiLU(gate) is recomputed;
- the projections that read a norm's output (q/k/v, gate/up) and the MLP's down projection
  (reads SiLU(gate) * up) keep their input for the weight gradient: here they keep the
  recipe (the norm's input and 1/rms, or gate and up) and recompute the input in backward;
- o_proj reads the concatenated outputs of `speed.attention`'s blocks, each of which SDPA
  keeps for its own backward: it keeps those and concatenates them again in backward.
The first two save hidden-size floats per norm and MLP-width floats per MLP, per token and
layer; the projections as many again; all of it elementwise work to redo. `cap_activations`
goes one step further where a batch would keep more activations than the gradients take: it
recomputes the MLPs of just enough first layers (their gate and up, two matrix products each)
so that memory peaks with the gradients, as in any trainer.

Only the module types listed below are touched, on one model's instances (their forward is the
same formula as transformers' own; projections only when they are plain `nn.Linear` outside
DeepSpeed ZeRO-3; under autocast they cast as autocast's linear does); others keep theirs.
Which tensor can be recomputed from what is held in the model's `Recipes` table, never on the
tensors. The elementwise work itself is in `speed.kernels`, eager or compiled
(`make_lean(..., fuse=True)`). The attention modules' rotary embedding runs as one autograd
node (`speed.rotary`, same values).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from rmtrain.speed import rotary
from rmtrain.speed.kernels import EAGER, Kernels, fused

NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}
GATED_MLPS = {"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP"}
ATTENTIONS = {"LlamaAttention", "Qwen2Attention", "Qwen3Attention", "MistralAttention"}
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


class _RMSNorm(torch.autograd.Function):
    """weight * (x / rms(x)), computed in float32 like transformers' RMSNorm; keeps x and 1/rms."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float, k: Kernels) -> Any:
        out, rstd = k.rms_norm(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.mark_non_differentiable(rstd)
        ctx.kernels = k
        return out, rstd

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _grad_rstd: Any) -> tuple[Any, ...]:
        x, weight, rstd = ctx.saved_tensors
        grad_x, grad_w = ctx.kernels.rms_norm_backward(
            grad, x, weight, rstd, ctx.needs_input_grad[1]
        )
        return grad_x, grad_w, None, None


class _SiluMul(torch.autograd.Function):
    """silu(gate) * up; keeps gate and up only."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, k: Kernels) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.kernels = k
        return k.silu_mul(gate, up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        gate, up = ctx.saved_tensors
        return (*ctx.kernels.silu_mul_backward(grad, gate, up), None)


class _Recipe:
    """How to recompute a tensor from tensors kept anyway. The projections reading the same input
    (q/k/v, gate/up) share one recomputed value in backward; the last of them drops it."""

    __slots__ = ("fn", "users", "value")

    def __init__(self, fn: Any) -> None:
        self.fn, self.users, self.value = fn, 0, None

    def get(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self.value is None:
            self.value = self.fn(*parts)
        return self.value

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.value = None


class _RecomputedInputLinear(torch.autograd.Function):
    """x @ W.T + b where x = recipe(*parts) can be recomputed: keeps the parts (kept anyway by
    the op that made x) instead of x, and recomputes x, bit for bit, for the weight gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Any, recipe: Any, *parts):
        # Under autocast, compute as autocast's linear does (inputs cast to its dtype), but keep
        # the recipe instead of the cast copy of x that autocast's linear would keep.
        device = x.device.type
        ctx.cast = autocast_dtype(device)
        ctx.recipe, ctx.has_bias, ctx.x_dtype = recipe, bias is not None, x.dtype
        recipe.users += 1
        ctx.save_for_backward(weight, *parts)
        with torch.autocast(device, enabled=False):
            return F.linear(*_cast(ctx.cast, x, weight, bias))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        weight, *parts = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        (w,) = _cast(ctx.cast, weight)
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ w).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            (x,) = _cast(ctx.cast, ctx.recipe.get(parts))
            grad_w = _weight_grad(grad, x, weight)
        ctx.recipe.release()
        ctx.recipe = None  # the node outlives its backward: do not keep the value through it
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        return (grad_x, grad_w, grad_b, None) + (None,) * len(parts)


class _RecomputedMLP(torch.autograd.Function):
    """down(silu(gate(x)) * up(x)) keeping x's recipe only: gate and up (2 x width floats a
    token) are recomputed in backward, two of the MLP's three matrix products. The same
    formula, casts and kernels as the lean MLP, so the same values and gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wg: Any, wu: Any, wd: Any, recipe: Any, k: Any, *parts):
        device = x.device.type
        ctx.cast = autocast_dtype(device)
        ctx.recipe, ctx.kernels, ctx.x_dtype = recipe, k, x.dtype
        recipe.users += 1
        ctx.save_for_backward(wg, wu, wd, *parts)
        with torch.autocast(device, enabled=False):
            x, wg, wu, wd = _cast(ctx.cast, x, wg, wu, wd)
            return F.linear(k.silu_mul(F.linear(x, wg), F.linear(x, wu)), wd)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        weights, parts = ctx.saved_tensors[:3], ctx.saved_tensors[3:]
        wg, wu, wd = _cast(ctx.cast, *weights)
        (x,) = _cast(ctx.cast, ctx.recipe.get(parts))
        ctx.recipe.release()
        ctx.recipe = None
        k = ctx.kernels
        gate, up = F.linear(x, wg), F.linear(x, wu)
        grad_gate, grad_up = k.silu_mul_backward(grad @ wd, gate, up)
        grad_wd = _weight_grad(grad, k.silu_mul(gate, up), weights[2])
        grad_wg, grad_wu = (
            _weight_grad(grad_gate, x, weights[0]),
            _weight_grad(grad_up, x, weights[1]),
        )
        # each in x's dtype, then summed, as autograd sums the two projections' input grads
        grad_x = (grad_gate @ wg).to(ctx.x_dtype) + (grad_up @ wu).to(ctx.x_dtype)
        return (grad_x, grad_wg, grad_wu, grad_wd, None, None) + (None,) * len(parts)


class Recipes:
    """Which tensors of one model's forward can be recomputed, and how: kept by the model's
    lean modules (weakly: an entry goes with its tensor), never on the tensors themselves."""

    def __init__(self) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.kept: Any = WeakIdKeyDictionary()

    def keep(self, out: torch.Tensor, fn: Any, parts: Any) -> None:
        """Mark `out` as recomputable by `fn(*parts)` from tensors kept anyway: a lean
        projection reading it (or a same-shaped view of it) keeps `parts` instead of `out`."""
        self.kept[out] = (_Recipe(fn), tuple(parts), out._version)

    def find(self, x: torch.Tensor) -> Any:
        """x's (fn, parts), or those of the tensor x views whole (attention's output reaches
        o_proj as a reshape of what the attention function returned); None where x was changed
        in place since (the recipe would no longer give x)."""
        kept, base = self.kept.get(x), x._base
        if kept is None and base is not None and x.shape == base.shape:
            whole = x.is_contiguous() and base.is_contiguous() and x.data_ptr() == base.data_ptr()
            kept = self.kept.get(base) if whole else None
        if kept is None or kept[2] != x._version:  # views share their base's version counter
            return None
        return kept[:2]


def _cast(dtype: torch.dtype | None, *tensors: Any) -> list[Any]:
    """Floating tensors to autocast's dtype (None: unchanged)."""
    if dtype is None:
        return list(tensors)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on this device type, or None where it is off."""
    on = torch.is_autocast_enabled(device_type)
    return torch.get_autocast_dtype(device_type) if on else None


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight gradient from its output gradient and input, in the weight's
    dtype."""
    flat = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    return flat.to(weight.dtype)


def _kernels(module: Any) -> Kernels:
    """The elementwise kernels `make_lean` chose for this module."""
    return fused() if module._rmtrain_fused else EAGER


def _norm_forward(self: Any, recipes: Recipes, hidden_states: torch.Tensor) -> torch.Tensor:
    k = _kernels(self)
    out, rstd = _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon, k)
    if torch.is_grad_enabled():  # the recipe holds the norm's input: only while it is kept anyway
        recipes.keep(out, k.normed, (hidden_states, self.weight, rstd))
    return out


def _mlp_forward(self: Any, recipes: Recipes, x: torch.Tensor) -> torch.Tensor:
    k = _kernels(self)
    recipe = recipes.find(x) if self._rmtrain_recompute and torch.is_grad_enabled() else None
    if recipe is not None and _plain_mlp(self):
        weights = (self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        return _RecomputedMLP.apply(x, *weights, recipe[0], k, *recipe[1])
    gate, up = self.gate_proj(x), self.up_proj(x)
    hidden = _SiluMul.apply(gate, up, k)
    if torch.is_grad_enabled():
        recipes.keep(hidden, k.silu_mul, (gate, up))
    return self.down_proj(hidden)


def _linear_forward(self: Any, recipes: Recipes, x: torch.Tensor) -> torch.Tensor:
    recipe = recipes.find(x)
    if (
        recipe is None
        or not torch.is_grad_enabled()
        or hasattr(self.weight, "ds_id")  # ZeRO-3 partitions and patches linear itself
    ):
        return F.linear(x, self.weight, self.bias)
    fn, parts = recipe
    return _RecomputedInputLinear.apply(x, self.weight, self.bias, fn, *parts)


class LeanModel:
    """The modules `make_lean` changed in one model (their forwards are instance attributes
    over the class's own), sharing one `Recipes`; `remove()` restores the stock forwards."""

    def __init__(self) -> None:
        self.recipes = Recipes()
        self.modules: list[torch.nn.Module] = []  # norms, MLPs, projections
        self.attentions: list[torch.nn.Module] = []  # their RoPE as one node, and the recipes

    @property
    def changed(self) -> int:
        """How many norms, MLPs and projections run lean."""
        return len(self.modules)

    def swap(self, module: torch.nn.Module, forward: Any) -> None:
        module.forward = functools.partial(forward, module, self.recipes)
        self.modules.append(module)

    def remove(self) -> None:
        for module in self.modules + self.attentions:
            module.__dict__.pop("forward", None)
            for name in ("_rmtrain_fused", "_rmtrain_recompute", "_rmtrain_recipes"):
                module.__dict__.pop(name, None)
        self.modules.clear()
        self.attentions.clear()


def make_lean(model: torch.nn.Module, projections: bool = True, fuse: bool = False) -> LeanModel:
    """Give the listed RMSNorm and SiLU-gated MLP modules of `model` (and, with `projections`,
    their input projections) the lean forward, with `fuse` its elementwise work compiled
    (`kernels`); attention modules get RoPE as one node (`rotary`) and share the recipes (their
    output feeds o_proj). Other architectures are left as they are (`changed` is 0)."""
    lean = LeanModel()
    for module in model.modules():
        name = type(module).__name__
        if name in NORMS and hasattr(module, "variance_epsilon"):
            lean.swap(module, _norm_forward)
            module._rmtrain_fused = fuse
        elif name in GATED_MLPS and _is_silu(getattr(module, "act_fn", None)):
            lean.swap(module, _mlp_forward)
            module._rmtrain_fused, module._rmtrain_recompute = fuse, False
            if projections:
                _lean_projections(module, lean)
        elif name in ATTENTIONS:
            if projections:
                _lean_projections(module, lean)
            rotary.bind(module)
            module._rmtrain_recipes = lean.recipes  # the attention function keeps o_proj's input
            lean.attentions.append(module)
    return lean


def _lean_projections(module: torch.nn.Module, lean: LeanModel) -> None:
    """Plain `nn.Linear` input projections (not LoRA / quantised wrappers) get the lean forward."""
    for name in PROJECTIONS:
        proj = getattr(module, name, None)
        if type(proj) is torch.nn.Linear:
            lean.swap(proj, _linear_forward)


def _is_silu(act: Any) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLU", "SiLUActivation")


def _plain_mlp(mlp: Any) -> bool:
    """gate / up / down are plain bias-free `nn.Linear` with trainable weights outside ZeRO-3
    (LoRA and quantised wrappers keep their own forward)."""
    projs = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    return all(
        type(p) is torch.nn.Linear
        and p.bias is None
        and p.weight.requires_grad
        and not hasattr(p.weight, "ds_id")
        for p in projs
    )


def kept_bytes_per_token(config: Any, act: int, resid: int) -> tuple[int, int]:
    """Bytes a lean decoder layer keeps for backward per token, and the part of them recomputing
    its MLP saves (gate and up). `act` is the element size of projection outputs (autocast's
    dtype), `resid` that of the residual stream the norms keep (the weights' dtype)."""
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    norms = 2 * (config.hidden_size + 1) * resid  # each norm: its input and 1/rms
    attention = (2 * heads + 2 * kv) * head_dim * act + heads * 4  # q, k, v, output; logsumexp
    mlp = 2 * config.intermediate_size * act
    return norms + attention + mlp, mlp


def cap_activations(model: torch.nn.Module) -> Any:
    """Keep each training batch's activations, plus the working memory of the first layer
    backward reaches (its gate, up and their gradients), within the size of the gradients:
    before every forward, recompute the MLPs of as many of the first layers as the batch's
    token count needs (none for smaller batches). A step's memory then peaks at the end of
    backward, with weights, gradients and optimizer state, which every trainer reaches,
    instead of at its start with all activations. Returns the hook's handle."""
    mlps = [m for m in model.modules() if hasattr(m, "_rmtrain_recompute") and _plain_mlp(m)]
    config = model.config

    def choose(_module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or not torch.is_grad_enabled() or not mlps:
            return
        resid = next(model.parameters()).element_size()
        low = autocast_dtype(ids.device.type)
        act = low.itemsize if low is not None else resid
        per_layer, saved = kept_bytes_per_token(config, act, resid)
        budget = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        over = ids.numel() * (per_layer * len(mlps) + 2 * saved) - budget
        n = 0 if over <= 0 else min(len(mlps), -(-over // (ids.numel() * saved)))
        for i, mlp in enumerate(mlps):
            mlp._rmtrain_recompute = i < n

    return model.register_forward_pre_hook(choose, with_kwargs=True)
