"""The PyTorch model kinds: ``torch.mlp`` and ``torch.attention``.

Each kind is a params class (validated at start-up, so a typo or an impossible value
fails before any record is read) and a builder that sizes the network from the
:class:`~models.base.ModelContext` and wraps it in
:class:`~models.online.OnlineRegressor`. The training params are shared (see
:class:`TorchParams`); the network params are the kind's own. For example::

    - {name: mlp, kind: torch.mlp, primary: true,
       params: {hidden: [64, 64], lr: 0.001, weight_decay: 0.0001}}
    - {name: attn, kind: torch.attention,
       params: {width: 16, heads: 2, learn_every: 64, key_embedding: 4}}

This module imports torch; the registry imports it on its first lookup, not before.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from models.attention import AttentionConfig, AttentionNet
from models.base import Model, ModelContext
from models.mlp import MLP, Activation, MLPConfig
from models.online import OnlineConfig, OnlineRegressor
from models.registry import ModelParams, ModelSpec, register

__all__ = ["TorchAttentionParams", "TorchMLPParams", "TorchParams"]

Width = Annotated[int, Field(ge=1, le=4096)]
_DEVICE = re.compile(r"cpu|cuda(?::\d+)?")


class TorchParams(ModelParams):
    """Training params shared by every torch kind (see :mod:`models.online`).

    Attributes:
        optimizer: ``adam`` or ``sgd``.
        lr: learning rate. Above the usual offline 1e-3 because online a model gets
            one step per micro-batch, not many epochs (``python -m bench.accuracy``
            compares).
        momentum: SGD momentum (Adam ignores it).
        weight_decay: L2 penalty.
        clip_norm: clip the global gradient norm to this; ``null`` disables clipping.
        huber_delta: the network learns on the Huber loss with this threshold, in
            standard deviations of its learning target; ``null``: on the squared
            error. Forecasts are judged by their mean absolute error, and under the
            squared error a few spikes pull a network towards them on every row; with
            a small threshold it learns close to the conditional median, which is
            what minimises the absolute error (README, "Forecast quality").
        average: predict with a debiased exponential moving average of the weights,
            with this decay per optimizer step (0.9: about the last ten steps;
            :mod:`models.averaging`); ``null``: with the latest weights. It cancels
            much of the noise of small online steps and lags a little: on short series
            a network alone loses by the lag, as a member of the ensemble it gains
            (README, "Forecast quality"), so the default ensemble's ``mlp`` sets 0.9
            and the kind's default is off.
        replay_size: rows kept in the replay buffer (0 disables replay).
        replay_samples: replay rows mixed into each optimizer step.
        learn_every: take a step once this many rows are pending (1: every ``learn``).
        max_step_rows: learn from at most this many pending rows per step (a seeded
            sample; ``null``: all). All rows still update the normalisers and replay.
        minibatch_rows: split an update into steps of at most this many rows
            (``null``: one step per update); see :class:`~models.online.OnlineConfig`.
        max_steps: at most this many steps per update (bounds the cost of a backlog).
        key_embedding: dimensions of a learned embedding of the hashed series key
            (0: none; the network then treats all keys alike).
        key_buckets: hash buckets for the key embedding.
        activation: ``relu``, ``gelu``, ``silu`` or ``tanh``.
        dropout: dropout probability in the network's hidden layers.
        device: ``cpu`` or ``cuda`` (``cuda:N``); ``cuda`` needs a CUDA build of torch
            and a visible GPU, checked here so a wrong node fails at start-up.
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=3e-3, gt=0.0, le=1.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    clip_norm: float | None = Field(default=1.0, gt=0.0)
    huber_delta: float | None = Field(default=0.5, gt=0.0, le=1e6)
    average: float | None = Field(default=None, gt=0.0, lt=1.0)
    replay_size: int = Field(default=1024, ge=0, le=1_000_000)
    replay_samples: int = Field(default=32, ge=0, le=65_536)
    learn_every: int = Field(default=1, ge=1, le=1_000_000)
    max_step_rows: int | None = Field(default=None, ge=1, le=1_000_000)
    minibatch_rows: int | None = Field(default=None, ge=1, le=1_000_000)
    max_steps: int = Field(default=8, ge=1, le=10_000)
    key_embedding: int = Field(default=0, ge=0, le=256)
    key_buckets: int = Field(default=1024, ge=1, le=1 << 20)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    device: str = "cpu"

    # a model saved without an average restores into one with it and the reverse
    # (OnlineRegressor.load_state_dict): turning averaging on keeps the learned state
    state_neutral: ClassVar[frozenset[str]] = frozenset({"average"})

    @model_validator(mode="before")
    @classmethod
    def _threads_is_a_process_setting(cls, data: Any) -> Any:
        """The per-model ``threads`` param is gone: torch's thread count is
        process-wide, so one model's value silently overrode the others'. Refused by
        name (rather than as an unknown key) so an old config says what to change."""
        if isinstance(data, dict) and "threads" in data:
            raise ValueError(
                "the 'threads' param was removed: torch's threads are process-wide;"
                " set processing.torch_threads instead"
            )
        return data

    @field_validator("device")
    @classmethod
    def _device_available(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        if value.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(
                    f"device {value!r} needs CUDA, but torch.cuda.is_available() is False "
                    f"(torch {torch.__version__}); use device: cpu or run on a GPU node"
                )
            index = int(value.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise ValueError(f"{value!r}: only {torch.cuda.device_count()} GPU(s) visible")
        return value


class TorchMLPParams(TorchParams):
    """``torch.mlp``: a fully connected network over the feature vector.

    Attributes:
        hidden: hidden layer widths, input side first.
        minibatch_rows: 16 by default (one step per 16 rows of an update): one step
            per 100-row micro-batch left the MLP well behind River linear on
            FriedmanDrift, 16-row steps ahead of it (README, "Cost per model";
            ``python -m bench.accuracy``).
        replay_samples: 64 by default (32 for the other kinds): each 16-row step
            also replays 64 earlier rows, which on the quality benchmark helped the
            series the MLP leads and cost no measurable time (README, "Forecast
            quality": a step's cost is its calls, not its rows).
        learn_every: 16 by default: a task works through a poll in event order
            (:class:`~models.base.Plan`), so a step every row would cost an optimizer
            step per event; every 16 rows, each prediction comes from a network that
            has learned all but at most 15 of the events that arrived before it.
    """

    hidden: tuple[Width, ...] = Field(default=(64, 64), min_length=1, max_length=16)
    replay_samples: int = Field(default=64, ge=0, le=65_536)
    minibatch_rows: int | None = Field(default=16, ge=1, le=1_000_000)
    learn_every: int = Field(default=16, ge=1, le=1_000_000)


class TorchAttentionParams(TorchParams):
    """``torch.attention``: conv encoder + self-attention over the window + MLP head.

    The defaults are chosen so that it does not cap the daemon (see the README's cost
    table): it works on ``W x width`` numbers per row where the MLP works on ``F``, so
    the encoder is small, and learning is bounded per event: a step at most every
    ``learn_every`` rows, on at most ``max_step_rows`` of them plus
    ``replay_samples`` replayed rows. Predictions still cover every event.

    Attributes:
        width: channels of the encoder and attention layer.
        heads: attention heads; must divide ``width``.
        kernel: time steps seen by the causal convolution.
        head_hidden: hidden widths of the MLP head.
        learn_every, max_step_rows: as in :class:`TorchParams`, with cheaper defaults.
    """

    learn_every: int = Field(default=32, ge=1, le=1_000_000)
    max_step_rows: int | None = Field(default=128, ge=1, le=1_000_000)
    width: int = Field(default=16, ge=1, le=1024)
    heads: int = Field(default=2, ge=1, le=64)
    kernel: int = Field(default=3, ge=1, le=64)
    head_hidden: tuple[Width, ...] = Field(default=(32,), min_length=1, max_length=16)

    @field_validator("heads")
    @classmethod
    def _heads_divide_width(cls, value: int, info: ValidationInfo) -> int:
        width = info.data.get("width")
        if width is not None and width % value:
            raise ValueError(f"heads ({value}) must divide width ({width})")
        return value


def _online_config(params: TorchParams, context: ModelContext) -> OnlineConfig:
    return OnlineConfig(
        optimizer=params.optimizer,
        lr=params.lr,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
        clip_norm=params.clip_norm,
        huber_delta=params.huber_delta,
        average=params.average,
        replay_size=params.replay_size,
        replay_samples=params.replay_samples,
        learn_every=params.learn_every,
        max_step_rows=params.max_step_rows,
        minibatch_rows=params.minibatch_rows,
        max_steps=params.max_steps,
        key_embedding=params.key_embedding,
        key_buckets=params.key_buckets,
        device=params.device,
        seed=context.seed,
    )


def _build_mlp(params: TorchMLPParams, context: ModelContext) -> Model:
    config = MLPConfig(
        in_features=context.n_features + params.key_embedding,
        hidden=params.hidden,
        activation=params.activation,
        dropout=params.dropout,
    )
    online = _online_config(params, context)
    return OnlineRegressor(partial(MLP, config), context.n_features, context.window, online)


def _build_attention(params: TorchAttentionParams, context: ModelContext) -> Model:
    config = AttentionConfig(
        window=context.window,
        in_features=context.n_features + params.key_embedding,
        width=params.width,
        heads=params.heads,
        kernel=params.kernel,
        head_hidden=params.head_hidden,
        activation=params.activation,
        dropout=params.dropout,
    )
    online = _online_config(params, context)
    return OnlineRegressor(
        partial(AttentionNet, config), context.n_features, context.window, online
    )


register(
    ModelSpec(
        kind="torch.mlp",
        params=TorchMLPParams,
        build=_build_mlp,
        summary="PyTorch MLP over the feature vector, trained online",
    )
)
register(
    ModelSpec(
        kind="torch.attention",
        params=TorchAttentionParams,
        build=_build_attention,
        summary="PyTorch conv + self-attention over the window with an MLP head, online",
    )
)
