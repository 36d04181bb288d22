"""Undo a bad optimizer step: the last good parameters and a finiteness check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


class LastGood:
    """Parameters and optimizer state as they were before a step, to undo a bad one.

    Buffers are allocated once and overwritten in place, so guarding costs one copy
    of the parameters and moments per step, no allocation.
    """

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self._params = [p.detach().clone() for p in params]
        self._state: list[dict[str, Any] | None] = [None] * len(params)

    def save(self, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        sources: list[Tensor] = list(params)
        targets: list[Tensor] = list(self._params)
        for i, p in enumerate(params):
            state = optimizer.state.get(p)
            if not state:
                self._state[i] = None
                continue
            saved = self._state[i] or {}
            for name, value in state.items():
                old = saved.get(name)
                if (
                    isinstance(value, Tensor)
                    and isinstance(old, Tensor)
                    and (old.shape, old.dtype) == (value.shape, value.dtype)
                ):
                    sources.append(value)
                    targets.append(old)
                    continue
                saved[name] = value.detach().clone() if isinstance(value, Tensor) else value
            self._state[i] = saved
        with torch.no_grad():
            # one fused call: a step's guard is a few dozen small copies, and each
            # separate copy_ costs more in dispatch than in bytes
            torch._foreach_copy_(targets, sources)

    def restore(self, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for buf, p in zip(self._params, params, strict=True):
                p.copy_(buf)
        for saved, p in zip(self._state, params, strict=True):
            if saved is None:
                optimizer.state.pop(p, None)
                continue
            state = optimizer.state[p]
            for name, value in saved.items():
                current = state.get(name)
                if isinstance(value, Tensor) and isinstance(current, Tensor):
                    current.copy_(value)
                else:
                    state[name] = value.clone() if isinstance(value, Tensor) else value


_total_norm: Callable[[list[nn.Parameter]], Tensor] | None = getattr(
    nn.utils, "get_total_norm", None
)  # torch >= 2.6: one fused reduction over all tensors


def all_finite(tensors: list[nn.Parameter]) -> bool:
    """Whether every element is finite (a norm beyond float range counts as not)."""
    if _total_norm is not None:
        return bool(torch.isfinite(_total_norm(tensors)))
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def clip_gradients(params: Sequence[nn.Parameter], max_norm: float | None) -> Tensor:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``
    (``None``: leave them); the norm before clipping, non-finite if any gradient is.

    ``torch.nn.utils.clip_grad_norm_``'s arithmetic (the fused per-tensor norms, their
    norm, a coefficient clamped at 1, a fused multiply) without its grouping by device
    and dtype, which costs a small network more than the arithmetic: this runs once per
    optimizer step, thousands of times a minute."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm: Tensor = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm is not None:
        coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coefficient)
    return norm
