"""The elementwise work of the lean modules (`speed.lean`) as pure functions, eager or fused.

Eagerly, each of these is several passes over memory, which bound their speed on a CPU;
`torch.compile` turns each function into one loop. The functions take only tensors of a fixed
rank with a dynamic token count, so each compiles once per process for a dtype and rank
(seconds, then cached on disk by inductor) and never again for a new sequence length, unlike
compiling the whole model. Where compiling fails (no C++ compiler, an unsupported backend) the
eager function runs instead, after one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """weight * (x / rms(x)) in float32 as transformers' RMSNorm computes it, and 1/rms."""
    rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return normed(x, weight, rstd), rstd


def normed(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """The norm's output from its input and 1/rms (what the lean projections recompute)."""
    return weight * (x.float() * rstd).to(x.dtype)


def rms_norm_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, weight_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of `rms_norm` for x and, with `weight_grad` (not for a frozen norm), weight."""
    xhat = x.float() * rstd
    grad_w = None
    if weight_grad:
        grad_w = (grad * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
    gx = (grad * weight).float()  # d loss / d xhat
    grad_x = rstd * (gx - xhat * (gx * xhat).mean(-1, keepdim=True))
    return grad_x.to(x.dtype), grad_w


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's SiLU(gate) * up."""
    return F.silu(gate) * up


def silu_mul_backward(
    grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `silu_mul` for gate and up: the ops autograd runs for the stock MLP (so the
    same values), four passes over memory where spelling SiLU's derivative out takes nine."""
    return torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)


@dataclass(frozen=True)
class Kernels:
    """One implementation of each elementwise piece the lean modules call."""

    rms_norm: Callable[..., Any]
    normed: Callable[..., Any]
    rms_norm_backward: Callable[..., Any]
    silu_mul: Callable[..., Any]
    silu_mul_backward: Callable[..., Any]


EAGER = Kernels(rms_norm, normed, rms_norm_backward, silu_mul, silu_mul_backward)


class _Compiled:
    """`fn` compiled for any token count; the eager `fn` from the first failure on."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = torch.compile(fn, dynamic=True)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return _unflatten(self.compiled(*_flat(args)), args[0].shape[:-1])
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.compiled = None
                warnings.warn(
                    f"rmtrain: compiling {self.fn.__name__} failed ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); running it eagerly (same results, slower). "
                    "--fuse-elementwise false skips the attempt.",
                    stacklevel=2,
                )
        return self.fn(*args)


def _flat(args: tuple[Any, ...]) -> list[Any]:
    """Per-token tensors as [tokens, features], detached (no view of a base whose shape the
    guards would check): the compiled graph then sees one rank and the same guards for training
    rows, evaluation batches of several rows and attention heads (these calls run where
    autograd is off anyway, inside autograd Functions)."""
    return [
        (a.reshape(-1, a.shape[-1]) if a.dim() >= 2 else a).detach()  # detached: not a view
        if isinstance(a, torch.Tensor)
        else a
        for a in args
    ]


def _unflatten(out: Any, lead: torch.Size) -> Any:
    """Per-token outputs back to the callers' leading dimensions (a weight gradient stays 1-D)."""
    if isinstance(out, tuple):
        return tuple(_unflatten(o, lead) for o in out)
    return out.reshape(*lead, out.shape[-1]) if out is not None and out.dim() == 2 else out


_FUSED: Kernels | None = None


def fused() -> Kernels:
    """The compiled kernels, shared by every model of the process (one compilation each)."""
    global _FUSED
    if _FUSED is None:
        _FUSED = Kernels(*(_Compiled(f) for f in vars(EAGER).values()))
    return _FUSED
