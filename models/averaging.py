"""Predicting with an average of a network's recent weights, not its latest ones.

An online network takes one small optimizer step every few rows, and each step moves
its weights by the noise of the few rows it saw as much as by what they have in
common. Predicting with a running average of the weights along that path (Polyak &
Juditsky, "Acceleration of stochastic approximation by averaging", 1992; Ruppert,
1988) cancels much of that noise at the cost of a little lag. The average here is
exponential, so it follows a stream that changes: each step moves it ``1 - decay`` of
the way towards the new weights, and a ``decay`` of 0.9 averages over about the last
ten steps. It is *debiased* as Adam's moments are: the first steps move it by
``(1 - decay) / (1 - decay ** steps)``, so the first step takes it all the way and
the average never includes the untrained initial weights; a young network is not held
back by where it started.

Learning is unchanged: the optimizer steps the network's own weights, and only
predictions read the average. :class:`~models.online.OnlineRegressor` updates it after
every step that succeeded (a step that was undone leaves it where it was) and keeps it
in its :meth:`~models.online.OnlineRegressor.state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = ["WeightAverage"]


class WeightAverage:
    """A debiased exponential moving average of ``params`` (module docstring).

    The average is one flat float32 tensor on the parameters' device, with a view
    per parameter (:attr:`tensors`), so a network that keeps its own parameters in a
    flat buffer of the same layout (:mod:`models.mlp_kernel`) is averaged in one
    operation (:meth:`update_flat`).

    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> average = WeightAverage([p], decay=0.5)
    >>> for value in (1.0, 3.0):
    ...     _ = p.data.fill_(value)
    ...     average.update([p])
    >>> [round(v, 4) for v in average.tensors[0].tolist()], average.steps  # (0.5 + 3) / 1.5
    ([2.3333, 2.3333], 2)
    """

    def __init__(self, params: Sequence[Tensor], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        if not params:
            raise ValueError("nothing to average: the network has no trainable parameters")
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        bounds = np.cumsum([0, *(p.numel() for p in params)]).tolist()
        self.tensors = [
            self.flat[bounds[i] : bounds[i + 1]].view_as(p) for i, p in enumerate(params)
        ]

    def _rate(self) -> float:
        self.steps += 1
        return (1.0 - self.decay) / (1.0 - self.decay**self.steps)

    def update(self, params: Sequence[Tensor]) -> None:
        """Move towards ``params`` after one optimizer step."""
        rate = self._rate()
        with torch.no_grad():
            torch._foreach_lerp_(self.tensors, [p.detach() for p in params], rate)

    def update_flat(self, flat: npt.NDArray[np.float32]) -> None:
        """:meth:`update` from all parameters at once, in one flat array of the same
        layout (the NumPy kernel's weights)."""
        rate = np.float32(self._rate())
        average = self.flat.numpy()
        average += rate * (flat - average)

    def state_dict(self) -> dict[str, Any]:
        """The average (on the CPU) and how many steps it has seen."""
        return {"flat": self.flat.detach().cpu().clone(), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (of an average of the same parameters)."""
        flat = state["flat"]
        if flat.shape != self.flat.shape:
            raise ValueError(
                f"averaged weights have shape {tuple(flat.shape)}, the network "
                f"{tuple(self.flat.shape)}"
            )
        with torch.no_grad():
            self.flat.copy_(flat)
        self.steps = int(state["steps"])

    def restart_from(self, params: Sequence[Tensor]) -> None:
        """Start again from ``params`` as if long warmed up: a network restored from a
        checkpoint that had no average predicts with its own weights and then averages
        on from them (the first step moves it ``1 - decay``, not all the way)."""
        with torch.no_grad():
            for average, p in zip(self.tensors, params, strict=True):
                average.copy_(p.detach())
        self.steps = 1 << 30  # decay ** steps == 0.0
