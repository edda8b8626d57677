"""Activation-lean RMSNorm and gated-MLP activation for training: same outputs and gradients,
fewer tensors kept for backward, no extra matrix products.

Autograd keeps every intermediate an op needs for its backward. In a Llama / Qwen3 layer two
pieces keep more than they must:
- RMSNorm keeps its input, 1/rms and the normalised input: the last is recomputed here from the
  first two (one multiply), saving hidden-size floats per token per norm;
- the gated MLP's SiLU(gate) * up keeps gate, SiLU(gate) and up: SiLU(gate) is recomputed here
  in backward, saving intermediate-size floats per token.
On SmolLM2-135M that is 2,688 of the ~11,800 floats autograd keeps per token and layer (23%),
all of them elementwise work to redo. Only the module types listed below are touched (their
forward is the same formula as transformers' own); others keep theirs.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}
GATED_MLPS = {"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP"}


class _RMSNorm(torch.autograd.Function):
    """weight * (x / rms(x)), computed in float32 like transformers' RMSNorm; keeps x and 1/rms."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        gx = (grad * weight).float()  # d loss / d xhat
        grad_x = rstd * (gx - xhat * (gx * xhat).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_w, None


class _SiluMul(torch.autograd.Function):
    """silu(gate) * up; keeps gate and up only."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        grad_gate = grad * up * (sig * (1 + gate * (1 - sig)))
        return grad_gate, grad * silu


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def make_lean(model: torch.nn.Module) -> int:
    """Give the listed RMSNorm and SiLU-gated MLP modules of `model` the lean forward; returns
    how many modules changed (0 for other architectures, which then train as before)."""
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if name in NORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_norm_forward, module)
        elif name in GATED_MLPS and _is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(_mlp_forward, module)
        else:
            continue
        changed += 1
    return changed


def _is_silu(act: Any) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLU", "SiLUActivation")
