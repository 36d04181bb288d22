"""``torch.attention``'s network: conv encoder + self-attention over the window + MLP head.

Where :class:`~models.mlp.MLP` sees the window only through engineered features, this
network reads the raw window itself, step by step, and learns which past steps matter:

1. a causal 1-D convolution encodes each time step from its ``kernel`` newest values
   (channels: the normalised value and an "observed" flag, so NaN padding of young
   keys is visible rather than mistaken for "no change"), plus a learned position
   embedding (how far back a step is);
2. one multi-head self-attention layer (residual + layer norm) across the steps, read
   out at the newest step: its query attends to every step of the window; padded
   steps are masked out as keys, so they get exactly zero weight;
3. that output summarises the window; it is joined with the standardised feature
   vector ``x`` (exogenous features included) and an :class:`~models.mlp.MLP` head
   maps both to the prediction.

The attention weights of the newest step over the window (``(B, heads, W)``, each row
sums to 1) are what :meth:`AttentionNet.explain` returns: which past events the
prediction looked at.

The window arrives already normalised by :mod:`models.online`: per row the last value
is subtracted (so the level does not matter), it is divided by a running scale of such
deviations, missing steps are 0 with ``mask`` False.

>>> import torch
>>> net = AttentionNet(AttentionConfig(window=6, in_features=2, width=8, heads=2))
>>> window, mask = torch.zeros(3, 6), torch.ones(3, 6, dtype=torch.bool)
>>> net(torch.zeros(3, 2), window, mask).shape
torch.Size([3])
>>> net.explain(torch.zeros(3, 2), window, mask).shape
torch.Size([3, 2, 6])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.mlp import ACTIVATIONS, MLP, Activation, MLPConfig, make_activation

__all__ = ["AttentionConfig", "AttentionNet"]


@dataclass(frozen=True, slots=True)
class AttentionConfig:
    """Shape of an :class:`AttentionNet`.

    Attributes:
        window: ``W``, time steps per row (the daemon's ``forecast.window``).
        in_features: width of ``x`` (``F``, plus the key embedding if any).
        width: ``d``, channels of the encoder and the attention layer.
        heads: attention heads; must divide ``width``.
        kernel: receptive field of the causal convolution, in time steps.
        head_hidden: hidden widths of the MLP head.
        activation: non-linearity of the encoder and the head.
        dropout: dropout in the head (training only).
    """

    window: int
    in_features: int
    width: int = 16
    heads: int = 2
    kernel: int = 3
    head_hidden: tuple[int, ...] = (32,)
    activation: Activation = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("window", "in_features", "width", "heads", "kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")


class AttentionNet(nn.Module):
    """Conv encoder, self-attention across time steps, MLP head (see the module docs).

    Only the newest step's row of the self-attention is computed: with one attention
    layer read out at the newest step, the other ``W - 1`` rows would never reach the
    output, so computing them would cost ``W`` times the work for the same function.
    The attention is written out (rather than ``nn.MultiheadAttention``) for that
    reason, and because its weights are then a by-product instead of a slower path.
    """

    uses_window = True  # see models.online.KeyedNetwork

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        d = config.width
        self.conv = nn.Conv1d(2, d, kernel_size=config.kernel)
        self.act = make_activation(config.activation)
        self.position = nn.Parameter(torch.randn(config.window, d) * 0.02)
        self.query = nn.Linear(d, d)
        self.key_value = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.head = MLP(
            MLPConfig(
                in_features=d + config.in_features,
                hidden=config.head_hidden,
                activation=config.activation,
                dropout=config.dropout,
            )
        )

    def _encode(self, window: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step encodings ``(B, W, d)`` and the attention key padding mask ``(B, W)``."""
        u = torch.stack([window, mask.to(window.dtype)], dim=1)  # (B, 2, W)
        u = F.pad(u, (self.config.kernel - 1, 0))  # (B, 2, W + k - 1), causal
        h = self.act(self.conv(u)).transpose(1, 2)  # (B, W, d)
        h = h + self.position  # (B, W, d)
        # Padded steps are ignored as keys; the newest step always stays visible so that
        # a key without history still has one (all-zero) step to attend to.
        ignore = ~mask  # (B, W)
        ignore[:, -1] = False
        return h, ignore

    def _attend(self, window: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The newest step after attending to the window ``(B, d)``, and the weights.

        Products are written as broadcast multiply-and-sum: with one query per row the
        matrices are ``1 x dh`` by ``dh x W``, far too small for batched matmul kernels.
        """
        h, ignore = self._encode(window, mask)  # (B, W, d), (B, W)
        B, W, d = h.shape
        H, dh = self.config.heads, d // self.config.heads
        q = self.query(h[:, -1]).view(B, 1, H, dh)  # (B, 1, H, dh): newest step only
        k, v = self.key_value(h).view(B, W, 2, H, dh).unbind(2)  # (B, W, H, dh) each
        scores = (q * k).sum(-1) * dh**-0.5  # (B, W, H)
        scores = scores.masked_fill(ignore[:, :, None], float("-inf"))  # (B, W, H)
        weights = torch.softmax(scores, dim=1)  # (B, W, H), sums to 1 over W
        a = (weights[..., None] * v).sum(1).reshape(B, d)  # (B, d): heads side by side
        z = self.norm(h[:, -1] + self.out(a))  # (B, d): residual + layer norm
        return z, weights.transpose(1, 2)  # (B, d), (B, H, W)

    def forward(self, x: Tensor, window: Tensor, mask: Tensor) -> Tensor:
        z, _ = self._attend(window, mask)  # (B, d)
        y: Tensor = self.head(torch.cat([z, x], dim=-1))  # (B,)
        return y

    def explain(self, x: Tensor, window: Tensor, mask: Tensor) -> Tensor:
        """Attention of the newest step over the window, ``(B, heads, W)``; rows sum to 1.

        ``x`` is unused (attention never sees it) but accepted so every explainable
        network has the signature of its ``forward``.
        """
        _, weights = self._attend(window, mask)  # (B, heads, W)
        return weights
