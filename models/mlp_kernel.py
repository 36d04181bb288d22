"""``torch.mlp`` on the CPU without torch's per-call cost: forward, backward and Adam in NumPy.

A daemon's network is small (two hidden layers of 64) and learns from a few dozen
rows at a time, so a torch optimizer step is almost all dispatch: autograd's graph,
a kernel launch per operation, the optimizer's and the guard's bookkeeping, for a
few hundred thousand floating-point operations. The same step written as a dozen
NumPy calls on one flat parameter vector does the same arithmetic at a fraction of
the cost (``python -m bench.models``, ``python -m bench.pipeline``), and the step is
what a live stream pays per ``learn_every`` events.

The kernel does not own the network: the torch module's parameters and the Adam
optimizer's moments are re-pointed at views of three flat float32 buffers, which the
kernel updates in place. So the module stays the model (``state_dict``, checkpoints,
``device: cuda`` elsewhere, loading a checkpoint written by the torch path and the
reverse all see the same tensors), and only the arithmetic moves. The step is
``torch.optim.Adam``'s (L2 ``weight_decay`` added to the gradient, bias-corrected
moments, ``eps`` outside the square root) after ``F.mse_loss`` (``F.huber_loss`` with
:attr:`~models.online.OnlineConfig.huber_delta`) and global-norm clipping, the same
as :meth:`models.online.OnlineRegressor._try_step`; the tests
train both paths on one stream and compare.

It applies to :class:`models.mlp.MLP` bodies on the CPU with Adam, without dropout
or a key embedding (:meth:`MLPKernel.build`); every other network trains through
autograd. Its matrix products run on NumPy's BLAS, whose threads follow
``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` (the Deployment sets 1 per worker);
at these sizes it keeps to one.

The optimizer is never stepped by torch while the kernel trains: its parameters'
states share one ``step`` tensor, which torch's own Adam would count once per
parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from scipy import special
from torch import nn

from models.mlp import MLP

if TYPE_CHECKING:
    from models.online import OnlineConfig

__all__ = ["MLPKernel"]

F32 = npt.NDArray[np.float32]

# activation name -> (forward, derivative from pre-activation and output)
_Forward = Callable[[F32], F32]
_Derivative = Callable[[F32, F32], F32]


def _relu(a: F32) -> F32:
    return np.maximum(a, np.float32(0.0))


def _relu_grad(a: F32, h: F32) -> F32:
    return (a > 0).astype(np.float32)


def _tanh_grad(a: F32, h: F32) -> F32:
    return np.float32(1.0) - h * h


def _silu(a: F32) -> F32:
    out: F32 = a * special.expit(a)
    return out


def _silu_grad(a: F32, h: F32) -> F32:
    s = special.expit(a)
    out: F32 = s * (np.float32(1.0) + a * (np.float32(1.0) - s))
    return out


_SQRT_HALF = np.float32(math.sqrt(0.5))
_INV_SQRT_2PI = np.float32(1.0 / math.sqrt(2.0 * math.pi))


def _gelu(a: F32) -> F32:  # torch's default (exact, erf) GELU
    out: F32 = a * np.float32(0.5) * (np.float32(1.0) + special.erf(a * _SQRT_HALF))
    return out


def _gelu_grad(a: F32, h: F32) -> F32:
    cdf = np.float32(0.5) * (np.float32(1.0) + special.erf(a * _SQRT_HALF))
    out: F32 = cdf + a * _INV_SQRT_2PI * np.exp(np.float32(-0.5) * a * a)
    return out


_ACTIVATIONS: dict[str, tuple[_Forward, _Derivative]] = {
    "relu": (_relu, _relu_grad),
    "tanh": (np.tanh, _tanh_grad),
    "silu": (_silu, _silu_grad),
    "gelu": (_gelu, _gelu_grad),
}


class MLPKernel:
    """Flat-buffer NumPy training of one :class:`~models.mlp.MLP` (module docstring).

    Args:
        body: the network, already on the CPU; its parameters are re-pointed at the
            kernel's buffer (their values kept).
        optimizer: the ``torch.optim.Adam`` over exactly ``params``; its moments and
            step count are re-pointed likewise, created (zero) if it has none yet.
        params: the parameters, in the optimizer's order.
        clip_norm: global gradient-norm clip, ``None`` for none.
    """

    def __init__(
        self,
        body: MLP,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        clip_norm: float | None,
        huber_delta: float | None = None,
    ) -> None:
        self._params = list(params)
        self._optimizer = optimizer
        group = optimizer.param_groups[0]
        self._lr = float(group["lr"])
        self._beta1, self._beta2 = (float(b) for b in group["betas"])
        self._eps = float(group["eps"])
        self._decay = float(group["weight_decay"])
        self._clip = clip_norm
        self._huber = huber_delta
        self._act, self._act_grad = _ACTIVATIONS[body.config.activation]
        sizes = [p.numel() for p in self._params]
        self._bounds = np.cumsum([0, *sizes]).tolist()
        total = self._bounds[-1]
        self._theta_t = torch.zeros(total)
        self._m_t = torch.zeros(total)
        self._v_t = torch.zeros(total)
        self._step_t = torch.zeros((), dtype=torch.float32)
        self.theta: F32 = self._theta_t.numpy()
        self._m: F32 = self._m_t.numpy()
        self._v: F32 = self._v_t.numpy()
        self._grad: F32 = np.zeros(total, np.float32)
        self._saved: F32 = np.zeros((3, total), np.float32)
        with torch.no_grad():
            for p, view in zip(self._params, self._views(self._theta_t), strict=True):
                view.copy_(p.detach())
                p.data = view
        self.bind_optimizer_state()
        # (weight, bias) per layer, input side first, as NumPy views of the buffer;
        # the module's Linear layers in order are the hidden ones, then ``out``.
        linears = [m for m in body.modules() if isinstance(m, nn.Linear)]
        index = {id(p): i for i, p in enumerate(self._params)}
        theta_views = self._numpy_views(self.theta)
        grad_views = self._numpy_views(self._grad)
        self._layer_index = [(index[id(m.weight)], index[id(m.bias)]) for m in linears]
        self._layers = [(theta_views[w], theta_views[b]) for w, b in self._layer_index]
        self._layer_grads = [
            (grad_views[index[id(m.weight)]], grad_views[index[id(m.bias)]]) for m in linears
        ]

    @classmethod
    def build(
        cls,
        body: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        config: OnlineConfig,
    ) -> MLPKernel | None:
        """A kernel for ``body``, or ``None`` where it would not train it exactly as
        autograd and ``optimizer`` do (another network, device or optimizer, dropout).
        ``params`` must be exactly the body's parameters: a key embedding adds one."""
        if not isinstance(body, MLP) or torch.device(config.device).type != "cpu":
            return None
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        if group["amsgrad"] or group["maximize"] or group.get("decoupled_weight_decay"):
            return None
        if body.config.dropout > 0.0 or body.config.activation not in _ACTIVATIONS:
            return None
        if {id(p) for p in params} != {id(p) for p in body.parameters()}:
            return None
        if any(p.dtype != torch.float32 for p in params):
            return None
        return cls(body, optimizer, params, config.clip_norm, config.huber_delta)

    def bind_optimizer_state(self) -> None:
        """Re-point the optimizer's moments at the buffers, copying in what it holds
        (after ``optimizer.load_state_dict``, which replaces them with new tensors)."""
        state = self._optimizer.state
        steps = {float(s["step"]) for p in self._params if (s := state.get(p)) and "step" in s}
        if len(steps) > 1:
            raise ValueError(f"optimizer state has differing step counts {sorted(steps)}")
        self._step_t.fill_(steps.pop() if steps else 0.0)
        pairs = zip(self._params, self._views(self._m_t), self._views(self._v_t), strict=True)
        with torch.no_grad():
            for p, m, v in pairs:
                old = state.get(p) or {}
                m.copy_(old["exp_avg"]) if "exp_avg" in old else m.zero_()
                v.copy_(old["exp_avg_sq"]) if "exp_avg_sq" in old else v.zero_()
                state[p] = {"step": self._step_t, "exp_avg": m, "exp_avg_sq": v}

    def layers_of(self, flat: F32) -> list[tuple[F32, F32]]:
        """(weight, bias) views per layer of another flat vector of the parameters'
        layout (an average of the weights, :mod:`models.averaging`), for :meth:`forward`."""
        views = self._numpy_views(flat)
        return [(views[w], views[b]) for w, b in self._layer_index]

    def forward(
        self,
        x: F32,
        trace: list[tuple[F32, F32, F32]] | None = None,
        layers: list[tuple[F32, F32]] | None = None,
    ) -> F32:
        """The network's output for rows ``x`` (n, in_features), float32; with
        ``trace``, each hidden layer's (input, pre-activation, output) appended to it;
        with ``layers`` (:meth:`layers_of`), those weights rather than the network's."""
        h = x
        *hidden, (w_out, b_out) = self._layers if layers is None else layers
        for weight, bias in hidden:
            a = h @ weight.T + bias
            out_h = self._act(a)
            if trace is not None:
                trace.append((h, a, out_h))
            h = out_h
        out: F32 = h @ w_out[0] + b_out[0]
        return out

    def step(self, x: F32, target: F32) -> bool:
        """One Adam step on the loss of ``x`` against ``target`` (:meth:`_backward`);
        ``False`` (and nothing changed) if the loss, the gradient or a parameter
        would be non-finite."""
        with np.errstate(all="ignore"):  # a non-finite step is expected, and undone
            return self._step(x, target)

    def _step(self, x: F32, target: F32) -> bool:
        grads = self._backward(x, target)
        if grads is None:
            return False
        g, theta = self._grad, self.theta
        norm = math.sqrt(float(np.dot(g, g)))
        if not math.isfinite(norm):
            return False
        if self._clip is not None and norm + 1e-6 > self._clip:
            g *= np.float32(self._clip / (norm + 1e-6))
        self._saved[0], self._saved[1], self._saved[2] = theta, self._m, self._v
        step = float(self._step_t) + 1.0
        if self._decay:
            g += np.float32(self._decay) * theta
        b1, b2 = self._beta1, self._beta2
        self._m *= np.float32(b1)
        self._m += np.float32(1.0 - b1) * g
        self._v *= np.float32(b2)
        self._v += np.float32(1.0 - b2) * (g * g)
        denom = np.sqrt(self._v) / np.float32(math.sqrt(1.0 - b2**step)) + np.float32(self._eps)
        theta -= np.float32(self._lr / (1.0 - b1**step)) * (self._m / denom)
        if not np.isfinite(theta).all():
            theta[:], self._m[:], self._v[:] = self._saved
            return False
        self._step_t.fill_(step)
        return True

    def _backward(self, x: F32, target: F32) -> F32 | None:
        """Gradient of the loss (``F.mse_loss``'s, or ``F.huber_loss``'s with
        ``huber_delta``) into ``self._grad``; ``None`` when the loss is not finite."""
        trace: list[tuple[F32, F32, F32]] = []
        residual = self.forward(x, trace) - target
        if not math.isfinite(float(np.dot(residual, residual))):
            return None
        if self._huber is None:
            d = residual * np.float32(2.0 / len(target))  # d loss / d out, (n,)
        else:  # the Huber loss's derivative: the residual, clipped at delta
            limit = np.float32(self._huber)
            d = np.clip(residual, -limit, limit) * np.float32(1.0 / len(target))
        *hidden, (w_out, _) = self._layers
        *hidden_grads, (gw_out, gb_out) = self._layer_grads
        np.matmul(d, trace[-1][2], out=gw_out[0])
        gb_out[0] = d.sum()
        delta = np.multiply.outer(d, w_out[0])  # d loss / d h_L, (n, H_L)
        for i in range(len(hidden) - 1, -1, -1):
            inputs, pre, post = trace[i]
            g_weight, g_bias = hidden_grads[i]
            delta *= self._act_grad(pre, post)
            np.matmul(delta.T, inputs, out=g_weight)
            np.sum(delta, axis=0, out=g_bias)
            if i:
                delta = delta @ hidden[i][0]
        return self._grad

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        b = self._bounds
        return [flat[b[i] : b[i + 1]].view_as(p) for i, p in enumerate(self._params)]

    def _numpy_views(self, flat: F32) -> list[F32]:
        b = self._bounds
        return [flat[b[i] : b[i + 1]].reshape(p.shape) for i, p in enumerate(self._params)]
