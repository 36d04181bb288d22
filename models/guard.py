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
        with torch.no_grad():
            for buf, p in zip(self._params, params, strict=True):
                buf.copy_(p)
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
                    old.copy_(value)
                    continue
                saved[name] = value.detach().clone() if isinstance(value, Tensor) else value
            self._state[i] = saved

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
