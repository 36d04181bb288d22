"""``torch.mlp``'s network: a fully connected regressor over the shared feature vector.

The module is only the function ``x -> y``; training (optimizer, normalisation, replay,
the NaN guard) lives in :mod:`models.online` and the ``torch.mlp`` kind is registered
in :mod:`models.torch_kinds`. The network sees the window only through the engineered
features in ``FeatureBatch.x`` (differences, rolling statistics, exogenous features),
which is what makes it cheap enough to be the daemon's primary model.

>>> import torch
>>> net = MLP(MLPConfig(in_features=3, hidden=(8, 8)))
>>> net(torch.zeros(5, 3)).shape
torch.Size([5])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "MLP", "Activation", "MLPConfig", "count_parameters", "make_activation"]

Activation = Literal["relu", "gelu", "silu", "tanh"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def make_activation(name: Activation) -> nn.Module:
    """A fresh activation module by its config name."""
    return ACTIVATIONS[name]()


@dataclass(frozen=True, slots=True)
class MLPConfig:
    """Shape of an :class:`MLP`.

    Attributes:
        in_features: width of the input (``F``, plus the key embedding if any).
        hidden: widths of the hidden layers, input side first.
        activation: non-linearity after every hidden layer.
        dropout: dropout after every hidden activation (training only).
    """

    in_features: int
    hidden: tuple[int, ...] = (64, 64)
    activation: Activation = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {self.in_features}")
        if any(width < 1 for width in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")


class MLP(nn.Module):
    """``y = w_out · h_L + b_out`` with ``h_l = dropout(act(W_l h_{l-1} + b_l))``, ``h_0 = x``.

    The output layer starts at zero, so an untrained network predicts exactly 0 in
    normalised target space, i.e. the running target mean: a fresh model publishes the
    same "no change" guess as the baselines instead of noise from a random init, and
    seeds no longer matter before the first update.
    """

    uses_window = False  # see models.online.KeyedNetwork

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), make_activation(config.activation)]
            if config.dropout > 0.0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)  # (B, H_L)
        y: Tensor = self.out(h).squeeze(-1)  # (B,)
        return y


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars, for reports and benchmarks."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
