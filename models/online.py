"""Online training for forecastd's torch networks: any ``nn.Module`` as a :class:`Model`.

:class:`OnlineRegressor` owns everything a network needs to learn from a stream, so
that the networks themselves (:mod:`models.mlp`, :mod:`models.attention`) stay pure
functions with parameters:

Inputs. ``FeatureBatch.x`` (already standardised by the task) goes in as it is. The
raw window (levels, NaN-padded on the left) is turned into *deviations from the row's
newest value* divided by a running RMS of such deviations, clipped to ±10, with NaN
replaced by 0 and a boolean ``mask`` marking observed steps; so a network sees the
shape of the recent path, not the key's level. Networks that ignore the window
(``uses_window = False``) skip this work. With ``key_embedding > 0`` each key is
hashed (CRC-32, stable across processes and Python versions) into ``key_buckets``
buckets whose learned vectors are appended to ``x``: one network per partition task,
shared by its keys, that can still learn per-key offsets. Colliding keys share a
vector, which bounds memory however many keys a partition carries.

Targets. The learning target is standardised with its running mean and variance
(all targets learned so far); predictions are mapped back, so callers only ever see
the original scale. The network's output layer starts at zero, so an untrained model
predicts the running mean (0 before any data: "no change").

Updates. ``learn`` appends the finite rows to a pending set; once it holds at least
``learn_every`` rows, *one* optimizer step (Adam or SGD, L2 weight decay, gradient
norm clipping) runs on the pending rows plus ``replay_samples`` rows drawn uniformly
from a ring buffer of the last ``replay_size`` learned rows (against catastrophic
forgetting when a partition's mix of keys shifts). ``updates`` counts optimizer steps.
An MLP on the CPU (the default member) takes the same steps through NumPy on the
module's own tensors (:mod:`models.mlp_kernel`), where torch's per-call dispatch would
cost several times the arithmetic; ``trainer`` says which path a model takes.
``learn_every`` trades freshness for cost at small micro-batches (per step, Python and
dispatch overhead dominate until a batch holds hundreds of rows); ``max_step_rows``
caps the rows of one step (a seeded uniform sample of the pending rows; all of them
still enter the replay buffer), which bounds the cost of learning per event at large
micro-batches, where the cost per row dominates.

Safety. A non-finite loss, gradient norm, running statistic or parameter aborts the
step: parameters, optimizer moments and normalisers are restored to the last good
values (taken just before ``optimizer.step()``; between calls the current state *is*
the last good state, so checkpoints never hold a bad one), the rows of that step are
dropped, :attr:`OnlineRegressor.nonfinite_events` is incremented, and the next batch
learns as usual. Rows with a non-finite target or feature are dropped (and counted)
before they reach the normaliser. ``predict`` maps any non-finite output to 0 ("no
change"), so it always returns finite values.

Determinism. Initial weights come from ``torch.manual_seed(seed)`` inside
``torch.random.fork_rng`` (the global generator is left as it was), replay sampling
from a NumPy generator seeded with ``seed`` and saved in the state, and dropout masks
from a per-step seed drawn from that generator. So on CPU, same seed and same batches
give bit-identical predictions, including after a ``state_dict`` round trip. CUDA
kernels are not guaranteed deterministic.

Threads. Nothing here calls ``torch.set_num_threads``: it is process-wide, so the
process owner sets it once, from ``processing.torch_threads``
(:func:`service.runtime.app.set_torch_threads`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.averaging import WeightAverage
from models.base import FeatureBatch, FloatArray, Model, Plan
from models.guard import LastGood, all_finite, clip_gradients
from models.keys import key_bucket
from models.mlp_kernel import MLPKernel
from models.moments import Moments
from models.replay import ReplayBuffer, Rows

__all__ = ["Explainable", "KeyedNetwork", "OnlineConfig", "OnlineRegressor", "key_bucket"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

_CLIP = 10.0  # normalised window values beyond ±10 RMS are clipped, as features are
_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class OnlineConfig:
    """How a network is trained online (validated user-facing by the kinds' params).

    Attributes:
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: learning rate.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty added to the gradient (``torch.optim`` semantics).
        clip_norm: clip the global gradient norm to this; ``None`` disables clipping.
        replay_size: capacity of the replay ring buffer, in rows (0 disables replay).
        replay_samples: replay rows mixed into each step (fewer while the buffer fills).
        learn_every: step once at least this many rows are pending.
        max_step_rows: at most this many of the pending rows (a seeded uniform sample)
            go into a step; ``None``: all. With ``learn_every`` it bounds the cost of
            learning per event, whatever the micro-batch size.
        minibatch_rows: split the rows of an update into consecutive steps of at most
            this many rows, each with its own replay sample; ``None``: one step. A
            backlog arrives in large micro-batches, and one step per batch would then
            learn from hundreds of rows with the step size of one: on FriedmanDrift in
            batches of 100, the MLP trailed River linear until updates took 32-row steps.
        max_steps: at most this many steps per update: larger updates get proportionally
            larger steps. A step's cost is mostly fixed (dispatch, not arithmetic), so this
            bounds the learning cost of a backlog's 500-record batches, while the small
            batches of a live stream keep their ``minibatch_rows``-row steps.
        key_embedding: dimensions of the hashed key embedding (0: none).
        key_buckets: hash buckets of the key embedding.
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` etc. also work).
        seed: seeds initial weights, replay sampling and dropout.
        huber_delta: train on the Huber loss with this threshold, in standard
            deviations of the learning target (``F.huber_loss``'s ``delta``);
            ``None``: the mean squared error.
        average: predict with a debiased exponential moving average of the weights
            with this decay per optimizer step (:mod:`models.averaging`); ``None``:
            with the latest weights.
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 3e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    replay_size: int = 1024
    replay_samples: int = 32
    learn_every: int = 1
    max_step_rows: int | None = None
    minibatch_rows: int | None = None
    max_steps: int = 8
    key_embedding: int = 0
    key_buckets: int = 1024
    device: str = "cpu"
    seed: int = 0
    # New fields go last: a slotted dataclass pickles as the list of its fields' values
    # in order, and ``__setstate__`` gives an older, shorter list the missing defaults.
    huber_delta: float | None = None
    average: float | None = None

    def __setstate__(self, state: list[Any]) -> None:
        """A config pickled before its last fields existed (a checkpoint of an older
        version) gets their defaults: ``huber_delta`` None, the squared error its
        network was trained on; ``average`` None, its latest weights."""
        fields = dataclasses.fields(self)
        values = [*state, *(field.default for field in fields[len(state) :])]
        for field, value in zip(fields, values, strict=True):
            object.__setattr__(self, field.name, value)

    def __post_init__(self) -> None:
        if not (self.lr > 0.0 and np.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.clip_norm is not None and not self.clip_norm > 0.0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm}")
        if self.huber_delta is not None and not self.huber_delta > 0.0:
            raise ValueError(f"huber_delta must be positive or None, got {self.huber_delta}")
        if self.average is not None and not 0.0 < self.average < 1.0:
            raise ValueError(f"average must be in (0, 1) or None, got {self.average}")
        for name in ("replay_size", "replay_samples", "key_embedding", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learn_every < 1 or self.key_buckets < 1:
            raise ValueError("learn_every and key_buckets must be >= 1")
        if self.max_step_rows is not None and self.max_step_rows < 1:
            raise ValueError(f"max_step_rows must be >= 1 or None, got {self.max_step_rows}")
        if self.minibatch_rows is not None and self.minibatch_rows < 1:
            raise ValueError(f"minibatch_rows must be >= 1 or None, got {self.minibatch_rows}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


@runtime_checkable
class Explainable(Protocol):
    """A network that can say which window steps a prediction attended to."""

    def explain(self, x: Tensor, window: Tensor, mask: Tensor) -> Tensor: ...


class KeyedNetwork(nn.Module):
    """``body(x ⊕ E[bucket(key)], window, mask)``: a network plus the optional key embedding.

    Bodies declare ``uses_window``: ``False`` means ``forward(x)`` (the MLP), ``True``
    means ``forward(x, window, mask)`` (the attention hybrid).
    """

    def __init__(self, body: nn.Module, key_buckets: int, key_dims: int) -> None:
        super().__init__()
        self.body = body
        self.uses_window = bool(getattr(body, "uses_window", False))
        self.embedding = nn.Embedding(key_buckets, key_dims) if key_dims > 0 else None

    def _join(self, x: Tensor, key: Tensor) -> Tensor:
        if self.embedding is None:
            return x
        return torch.cat([x, self.embedding(key)], dim=-1)  # (B, F + D)

    def forward(self, x: Tensor, window: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        x = self._join(x, key)  # (B, F + D)
        y: Tensor = self.body(x, window, mask) if self.uses_window else self.body(x)  # (B,)
        return y

    def explain(self, x: Tensor, window: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        if not isinstance(self.body, Explainable):
            raise TypeError(f"{type(self.body).__name__} has no attention weights to explain")
        return self.body.explain(self._join(x, key), window, mask)


class OnlineRegressor(Model):
    """A torch network trained online behind the :class:`~models.base.Model` protocol.

    Args:
        make_network: builds a fresh, untrained body (called under the seed, once per
            model and once per :meth:`clone`); its input width must be
            ``n_features + config.key_embedding``.
        n_features: ``F``, the width of ``FeatureBatch.x``.
        window: ``W``, the width of ``FeatureBatch.window``.
        config: training settings.

    >>> from models.mlp import MLP, MLPConfig
    >>> model = OnlineRegressor(lambda: MLP(MLPConfig(in_features=1, hidden=(8,))),
    ...                         n_features=1, window=2, config=OnlineConfig(lr=0.01))
    >>> batch = FeatureBatch(x=np.array([[1.0], [-1.0]]), window=np.zeros((2, 2)),
    ...                      offset=np.zeros(2), keys=["a", "b"], feature_names=["f"])
    >>> model.predict(batch).tolist()
    [0.0, 0.0]
    >>> for _ in range(50):
    ...     model.learn(batch, np.array([1.0, -1.0]))
    >>> model.updates, bool(model.predict(batch)[0] > 0.5), model.nonfinite_events  # rows learned
    (100, True, 0)
    """

    def __init__(
        self,
        make_network: Callable[[], nn.Module],
        n_features: int,
        window: int,
        config: OnlineConfig,
    ) -> None:
        self._make_network = make_network
        self._n_features = n_features
        self._window = window
        self.config = config
        self._device = torch.device(config.device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {config.device!r} requested, but torch.cuda.is_available() is "
                f"False (torch {torch.__version__}); use device: cpu or a CUDA build/node"
            )
        with torch.random.fork_rng(devices=[]):  # built on the CPU, then moved
            torch.default_generator.manual_seed(config.seed)
            net = KeyedNetwork(make_network(), config.key_buckets, config.key_embedding)
        self._net = net.to(self._device).eval()
        self._params = [p for p in self._net.parameters() if p.requires_grad]
        self._optimizer = self._make_optimizer()
        self._stochastic = any(isinstance(m, nn.Dropout) and m.p > 0.0 for m in self._net.modules())
        self._width = window if self._net.uses_window else 0
        self._replay = ReplayBuffer(config.replay_size, n_features, self._width)
        self._pending: list[Rows] = []
        self._pending_rows = 0
        self._targets = Moments()
        self._scale = Moments()  # of window deviations
        self._rng = np.random.default_rng(config.seed)
        self._good = LastGood(self._params)
        # An MLP on the CPU trains through NumPy on the module's own tensors
        # (models.mlp_kernel); every other network through autograd.
        self._kernel = self._build_kernel()
        self._average, self._average_layers = self._build_average()
        self._updates = 0
        self._nonfinite = 0

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        # fused: one kernel for all parameters instead of a Python loop over them; on
        # networks this small the loop, not the arithmetic, is the cost of a step.
        if c.optimizer == "adam":
            return torch.optim.Adam(self._params, lr=c.lr, weight_decay=c.weight_decay, fused=True)
        if c.optimizer == "sgd":
            return torch.optim.SGD(
                self._params,
                lr=c.lr,
                momentum=c.momentum,
                weight_decay=c.weight_decay,
                fused=True,
            )
        raise ValueError(f"unknown optimizer {c.optimizer!r}")

    # -- the Model protocol ---------------------------------------------------------

    @property
    def updates(self) -> int:
        """Rows learned through optimizer steps (rows of an aborted step do not count):
        like every model kind's ``updates``, the number of events learned from."""
        return self._updates

    @property
    def nonfinite_events(self) -> int:
        """Non-finite inputs, losses, gradients or parameters met and undone so far.

        Exported as ``forecastd_model_nonfinite_total{model}``; a rising count means the
        learning rate is too high or the data carries values it should not.
        """
        return self._nonfinite

    @property
    def trainer(self) -> Literal["numpy", "autograd"]:
        """``numpy``: an MLP on the CPU, trained by :mod:`models.mlp_kernel`;
        ``autograd``: every other network, trained through torch."""
        return "autograd" if self._kernel is None else "numpy"

    @property
    def network(self) -> nn.Module:
        """The trained body (for inspection; do not train it from outside)."""
        body: nn.Module = self._net.body
        return body

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """Predictions in learning-target space, finite; changes nothing."""
        n = len(batch)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        rows = self._rows(batch, None)
        if self._kernel is not None:
            z = self._kernel.forward(rows.x, layers=self._average_layers).astype(np.float64)
        else:
            with torch.inference_mode(), self._averaged():
                out = self._net(*self._tensors(rows))  # (n,)
            z = out.to(device="cpu", dtype=torch.float64).numpy()
        y = z * self._targets.std + self._targets.mean
        result: FloatArray = np.where(np.isfinite(y), y, 0.0)
        return result

    def run(self, plan: Plan) -> FloatArray:
        """Work through a poll in event order (:func:`models.base.run_plan`'s numbers).

        The network only changes when ``learn_every`` rows are pending, so every row
        predicted between two optimizer steps is predicted in one forward pass: a poll
        costs one forward pass per step it triggers, not one per event.
        """
        n = len(plan.predict)
        out = np.zeros(n)
        done, j, total = 0, 0, len(plan.target)
        while j < total:
            stop = min(total, j + max(1, self.config.learn_every - self._pending_rows))
            before = int(plan.before[stop - 1])  # the row that may trigger a step
            if before > done:
                out[done:before] = self.predict(plan.predict.rows(done, before))
                done = before
            self.learn(plan.learn.rows(j, stop), plan.target[j:stop])
            j = stop
        if done < n:
            out[done:] = self.predict(plan.predict.rows(done, n))
        return out

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        """Queue the batch's finite rows; step once ``learn_every`` rows are pending."""
        n = len(batch)
        if target.shape != (n,):
            raise ValueError(f"target has shape {target.shape}, expected ({n},)")
        if n == 0:
            return
        rows = self._rows(batch, target)
        finite = np.isfinite(rows.target) & np.isfinite(rows.x).all(axis=1)
        if not finite.all():
            self._nonfinite += 1
            rows = rows.take(np.flatnonzero(finite))
            if len(rows) == 0:
                return
        self._pending.append(rows)
        self._pending_rows += len(rows)
        if self._pending_rows < self.config.learn_every:
            return
        new = Rows.concat(self._pending)
        self._pending.clear()
        self._pending_rows = 0
        size = max(self.config.minibatch_rows or len(new), -(-len(new) // self.config.max_steps))
        for start in range(0, len(new), size):
            self._step(new.take(np.arange(start, min(start + size, len(new)))))

    def clone(self) -> OnlineRegressor:
        """A fresh, untrained model: same network factory, config and seed."""
        return OnlineRegressor(self._make_network, self._n_features, self._window, self.config)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a checkpoint pickles its task's models) as what builds it plus
        :meth:`state_dict`, not as its attributes: with the NumPy kernel the
        parameters are views of one flat buffer, which torch would pickle once per
        parameter, and NumPy's views of it as copies that no longer share its memory."""
        return {
            "make_network": self._make_network,
            "n_features": self._n_features,
            "window": self._window,
            "config": self.config,
            "state": self.state_dict(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_net" in state:  # pickled before __getstate__ existed: its attributes
            self.__dict__.update(state)
            self._kernel = self._build_kernel()
            self._average, self._average_layers = None, None
            return
        self.__init__(  # type: ignore[misc]
            state["make_network"], state["n_features"], state["window"], state["config"]
        )
        self.load_state_dict(state["state"])

    def state_dict(self) -> dict[str, Any]:
        """Network, optimizer moments, normalisers, replay, pending rows, RNG, counters.

        Tensors are copied to the CPU, so a checkpoint taken on a GPU node restores on
        any node.
        """
        optimizer: dict[str, Any] = {}
        for i, p in enumerate(self._params):
            state = self._optimizer.state.get(p)
            if state:
                optimizer[str(i)] = {
                    name: value.detach().cpu().clone() if isinstance(value, Tensor) else value
                    for name, value in state.items()
                }
        pending = Rows.concat(self._pending or [Rows.empty(self._n_features, self._width)])
        return {
            "network": {k: v.detach().cpu().clone() for k, v in self._net.state_dict().items()},
            "optimizer": optimizer,
            "targets": self._targets.state_dict(),
            "window_scale": self._scale.state_dict(),
            "replay": self._replay.state_dict(),
            "pending": pending.state_dict(),
            "rng": _plain_copy(self._rng.bit_generator.state),
            "updates": self._updates,
            "nonfinite_events": self._nonfinite,
            **({} if self._average is None else {"average": self._average.state_dict()}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a model with the same network and config.

        Raises ``ValueError`` when the network's shapes differ (another kind or params).
        """
        try:
            self._net.load_state_dict(dict(state["network"]))
        except RuntimeError as exc:
            raise ValueError(f"state does not fit this network: {exc}") from exc
        opt_state = {
            int(i): {
                name: value.clone() if isinstance(value, Tensor) else value
                for name, value in entry.items()
            }
            for i, entry in state["optimizer"].items()
        }
        groups = self._optimizer.state_dict()["param_groups"]
        self._optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        if self._kernel is not None:
            self._kernel.bind_optimizer_state()
        self._targets = Moments.from_state(state["targets"])
        self._scale = Moments.from_state(state["window_scale"])
        self._replay.load_state_dict(state["replay"])
        pending = Rows.from_state(state["pending"])
        self._pending = [pending] if len(pending) else []
        self._pending_rows = len(pending)
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = _plain_copy(state["rng"])
        self._updates = int(state["updates"])
        self._nonfinite = int(state["nonfinite_events"])
        if self._average is not None:
            if "average" in state:
                self._average.load_state_dict(state["average"])
            else:  # saved without averaging: average on from the restored weights
                self._average.restart_from(self._params)

    # -- beyond the protocol ----------------------------------------------------------

    def explain(self, batch: FeatureBatch) -> npt.NDArray[np.float64]:
        """Attention weights behind each row's prediction, ``(n, heads, W)``.

        Raises ``TypeError`` for networks without attention (``torch.mlp``).
        """
        rows = self._rows(batch, None)
        with torch.inference_mode(), self._averaged():
            weights = self._net.explain(*self._tensors(rows))
        out: npt.NDArray[np.float64] = weights.to("cpu", torch.float64).numpy()
        return out

    # -- internals ----------------------------------------------------------------------

    def _build_kernel(self) -> MLPKernel | None:
        """The NumPy kernel where it trains this network exactly, else ``None``:
        autograd. (A key embedding's parameter is not the body's, which
        :meth:`MLPKernel.build` refuses.)"""
        return MLPKernel.build(self._net.body, self._optimizer, self._params, self.config)

    def _build_average(self) -> tuple[WeightAverage | None, list[tuple[F32, F32]] | None]:
        """The weights' average where ``config.average`` asks for one, and the NumPy
        kernel's layer views of it (``None`` on the autograd path)."""
        if self.config.average is None:
            return None, None
        average = WeightAverage(self._params, self.config.average)
        if self._kernel is None:
            return average, None
        return average, self._kernel.layers_of(average.flat.numpy())

    @contextlib.contextmanager
    def _averaged(self) -> Iterator[None]:
        """On the autograd path, the network's parameters read the averaged weights
        for the duration (their storage swapped, nothing copied); else nothing."""
        if self._average is None or self._kernel is not None:
            yield
            return
        own = [p.data for p in self._params]
        for p, average in zip(self._params, self._average.tensors, strict=True):
            p.data = average
        try:
            yield
        finally:
            for p, data in zip(self._params, own, strict=True):
                p.data = data

    def _rows(self, batch: FeatureBatch, target: FloatArray | None) -> Rows:
        """Copy a batch into the stored form (never a view: the task keeps the batch)."""
        n = len(batch)
        if batch.x.shape != (n, self._n_features):
            raise ValueError(
                f"batch.x has shape {batch.x.shape}, this model was built for "
                f"{self._n_features} features"
            )
        if self._width:
            if batch.window.shape != (n, self._width):
                raise ValueError(
                    f"batch.window has shape {batch.window.shape}, expected ({n}, {self._width})"
                )
            dev = ((batch.window - batch.last[:, None]) / batch.units[:, None]).astype(np.float32)
        else:
            dev = np.zeros((n, 0), np.float32)
        if self.config.key_embedding:
            key = key_bucket(batch.keys, self.config.key_buckets)
        else:
            key = np.zeros(n, np.int64)
        y = np.zeros(n) if target is None else np.array(target, dtype=np.float64)
        return Rows(np.array(batch.x, dtype=np.float32), dev, key, y)

    def _tensors(self, rows: Rows) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, window, mask, key)`` network inputs on the model's device."""
        dev = rows.dev
        mask = np.isfinite(dev)
        window = np.clip(np.where(mask, dev, 0.0) / np.float32(self._scale.rms), -_CLIP, _CLIP)
        to = self._device
        return (
            torch.from_numpy(rows.x).to(to),
            torch.from_numpy(window.astype(np.float32, copy=False)).to(to),
            torch.from_numpy(mask).to(to),
            torch.from_numpy(rows.key).to(to),
        )

    def _step(self, new: Rows) -> None:
        """One guarded optimizer step on ``new`` (at most ``max_step_rows`` of it) plus
        replayed rows; every new row updates the normalisers and enters the replay."""
        fit, cap = new, self.config.max_step_rows
        if cap is not None and len(new) > cap:
            fit = new.take(np.sort(self._rng.choice(len(new), size=cap, replace=False)))
        k = min(self.config.replay_samples, len(self._replay))
        rows = Rows.concat([fit, self._replay.sample(self._rng, k)]) if k else fit
        torch_seed = int(self._rng.integers(2**63)) if self._stochastic else 0
        targets, scale = self._targets.copy(), self._scale.copy()
        self._targets.update(new.target)
        deviations = new.dev[:, :-1]
        self._scale.update(deviations[np.isfinite(deviations)].astype(np.float64))
        if self._targets.finite() and self._scale.finite() and self._try_step(rows, torch_seed):
            self._replay.add(new)
            self._updates += len(new)
            if self._average is not None:
                if self._kernel is not None:
                    self._average.update_flat(self._kernel.theta)
                else:
                    self._average.update(self._params)
        else:
            self._targets, self._scale = targets, scale
            self._nonfinite += 1

    def _try_step(self, rows: Rows, torch_seed: int) -> bool:
        """Forward, backward, clip, step; ``False`` (and no change) if anything is non-finite."""
        z = (rows.target - self._targets.mean) / self._targets.std
        if self._kernel is not None:
            return self._kernel.step(rows.x, z.astype(np.float32))
        target = torch.from_numpy(z.astype(np.float32)).to(self._device)
        inputs = self._tensors(rows)
        # Train mode only matters for dropout; toggling walks every submodule, which
        # costs more than a small network's forward pass, so skip it when it is moot.
        if self._stochastic:
            self._net.train()
        try:
            with self._dropout_seed(torch_seed):
                out = self._net(*inputs)
                delta = self.config.huber_delta
                loss = (
                    F.mse_loss(out, target)
                    if delta is None
                    else F.huber_loss(out, target, delta=delta)
                )
                if not bool(torch.isfinite(loss)):
                    return False
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
            norm = clip_gradients(self._params, self.config.clip_norm)
            if not bool(torch.isfinite(norm)):
                self._optimizer.zero_grad(set_to_none=True)
                return False
            self._good.save(self._params, self._optimizer)
            self._optimizer.step()
            if not all_finite(self._params):
                self._good.restore(self._params, self._optimizer)
                return False
            return True
        finally:
            if self._stochastic:
                self._net.eval()

    @contextlib.contextmanager
    def _dropout_seed(self, seed: int) -> Iterator[None]:
        """Seed torch's generator for this step only, leaving the global one untouched.

        Dropout draws from the global generator; forking it keeps two models in one
        process (replicas, shadows, tests) from consuming each other's randomness.
        """
        if not self._stochastic:
            yield
            return
        if self._device.type == "cuda":
            with torch.random.fork_rng(devices=[self._device.index or 0], device_type="cuda"):
                torch.manual_seed(seed)
                yield
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                yield


def _plain_copy(value: Any) -> Any:
    """Deep copy of nested dicts of plain values (a NumPy bit generator's state)."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    return value
