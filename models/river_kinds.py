"""The River model kinds: ``river.linear``, ``river.tree``, ``river.forest``, ``river.custom``.

Each kind is a params class (validated at start-up) and a builder that assembles a River
estimator and wraps it in :class:`~models.river.RiverModel`. Every random choice is
seeded from ``ModelContext.seed``, so two replicas fed the same events agree.

``river.custom`` runs any River regressor named in the config, e.g.::

    - {name: pa, kind: river.custom,
       params: {estimator: linear_model.PARegressor, args: {C: 0.5}}}

Only constructor arguments that YAML can express are supported (numbers, strings,
lists); estimators that take other estimators (bagging, pipelines) need their own kind.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from pydantic import Field, ValidationInfo, field_validator
from river import base as river_base
from river import forest, linear_model, optim, preprocessing, tree

from models.base import Model, ModelContext
from models.registry import ModelParams, ModelSpec, register
from models.river import RiverModel, supports_mini_batch

__all__ = [
    "RiverCustomParams",
    "RiverForestParams",
    "RiverLinearParams",
    "RiverTreeParams",
    "make_custom_estimator",
    "resolve_estimator",
]


class RiverLinearParams(ModelParams):
    """``river.linear``: linear regression on scaled inputs and targets, trained by SGD.

    Inputs arrive standardised by the shared feature pipeline (running mean/variance,
    clipped to ±10 standard deviations). The target is standardised online as well
    (River's ``TargetStandardScaler``), so ``lr`` and ``clip_gradient`` mean the same
    on prices in dollars and flows in litres. No second River ``StandardScaler`` sits
    in front: re-scaling already-scaled inputs from its first few samples gives huge
    values and made SGD diverge on spiky series (River's WaterFlow).

    Attributes:
        lr: SGD learning rate of the weights.
        l2: ridge penalty (0 = none).
        intercept_lr: learning rate of the intercept (River's default 0.01).
        clip_gradient: clip each loss gradient to ±this, in standard deviations of the
            target: one outlier moves the weights by a bounded step.

    It learns one event at a time (River's ``TargetStandardScaler`` has no
    ``learn_many``), so how fast it learns does not depend on batching; use
    ``river.custom`` with ``mini_batch: true`` for mean-gradient batch steps.
    """

    lr: float = Field(default=0.005, gt=0.0)
    l2: float = Field(default=0.0, ge=0.0)
    intercept_lr: float = Field(default=0.01, ge=0.0)
    clip_gradient: float = Field(default=3.0, gt=0.0)


class RiverTreeParams(ModelParams):
    """``river.tree``: Hoeffding adaptive tree with scaled linear models in its leaves.

    Attributes:
        grace_period: events a leaf sees between split attempts (River's default is
            200; 100 lets the tree grow sooner on the slower streams of one replica).
        max_depth: depth limit; bounds memory for a daemon that runs for weeks.
            ``None`` leaves only River's memory manager in charge.
        leaf_lr: SGD learning rate of the leaf models.
        model_selector_decay: how fast a leaf forgets its mean-vs-model error record.
    """

    grace_period: int = Field(default=100, ge=1)
    max_depth: int | None = Field(default=12, ge=1)
    leaf_lr: float = Field(default=0.01, gt=0.0)
    model_selector_decay: float = Field(default=0.95, gt=0.0, lt=1.0)


class RiverForestParams(ModelParams):
    """``river.forest``: adaptive random forest regressor (drift-aware tree ensemble).

    Attributes:
        n_models: trees in the forest; cost grows linearly (River's default is 10).
    """

    n_models: int = Field(default=5, ge=1)


_ESTIMATOR_PATH = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*\.[A-Za-z][A-Za-z0-9_]*")


def resolve_estimator(path: str) -> type[Any]:
    """The River regressor class named ``path``, relative to the ``river`` package
    (a leading ``river.``, as the class's full name has it, is taken too).

    Only public names inside ``river`` are reachable, so a config can never import
    arbitrary code.

    >>> resolve_estimator("linear_model.PARegressor").__name__
    'PARegressor'
    >>> resolve_estimator("river.linear_model.PARegressor").__name__
    'PARegressor'
    >>> resolve_estimator("preprocessing.StandardScaler")
    Traceback (most recent call last):
    ...
    ValueError: river.preprocessing.StandardScaler is not a regressor
    """
    path = path.removeprefix("river.")
    if not _ESTIMATOR_PATH.fullmatch(path):
        raise ValueError(
            f"estimator must be 'module.ClassName' inside river "
            f"(e.g. 'linear_model.PARegressor'), got {path!r}"
        )
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(f"river.{module_name}")
    except ImportError as exc:
        raise ValueError(f"cannot import river.{module_name}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"river.{module_name} has no class {class_name!r}")
    if not issubclass(cls, river_base.Regressor):
        raise ValueError(f"river.{path} is not a regressor")
    if module_name == "base" or inspect.isabstract(cls):
        raise ValueError(f"river.{path} is a base class, not an estimator")
    return cls


def make_custom_estimator(path: str, args: dict[str, Any], seed: int) -> Any:
    """Instantiate ``river.<path>(**args)``, passing ``seed`` if it takes one.

    An explicit ``seed`` in ``args`` wins. Constructor errors become ``ValueError``
    naming the estimator, so config validation reports them like any other bad value.
    """
    cls = resolve_estimator(path)
    kwargs = dict(args)
    if "seed" in inspect.signature(cls).parameters:
        kwargs.setdefault("seed", seed)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot build river.{path} with args {args}: {exc}") from exc


class RiverCustomParams(ModelParams):
    """``river.custom``: any River regressor, by name.

    Attributes:
        estimator: ``"module.ClassName"`` relative to ``river`` (``"river.module.ClassName"``
            too).
        args: constructor keyword arguments.
        scale: put a ``preprocessing.StandardScaler`` in front. Off by default: the
            feature pipeline already standardises inputs, and a second scaler fed
            few samples can blow up SGD-trained models (see ``river.linear``).
        mini_batch: one mean-gradient step per micro-batch instead of one per event
            (faster, but the step per event shrinks with the batch size; see
            :mod:`models.river`); needs an estimator with
            ``learn_many``.
    """

    estimator: str
    args: dict[str, Any] = Field(default_factory=dict)
    scale: bool = False
    mini_batch: bool = False

    @field_validator("estimator")
    @classmethod
    def _estimator_exists(cls, value: str) -> str:
        resolve_estimator(value)
        return value

    @field_validator("args")
    @classmethod
    def _args_construct(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Build once now so that a bad argument fails at start-up, under ``args``.
        estimator = info.data.get("estimator")
        if estimator is not None:
            make_custom_estimator(estimator, value, seed=0)
        return value

    @field_validator("mini_batch")
    @classmethod
    def _mini_batch_supported(cls, value: bool, info: ValidationInfo) -> bool:
        estimator, args = info.data.get("estimator"), info.data.get("args")
        if value and estimator is not None and args is not None:
            built = make_custom_estimator(estimator, args, seed=0)
            if not supports_mini_batch(built):
                raise ValueError(f"river.{estimator} has no learn_many/predict_many")
        return value


def _build_linear(params: RiverLinearParams, context: ModelContext) -> Model:
    regressor = linear_model.LinearRegression(
        optimizer=optim.SGD(params.lr),
        l2=params.l2,
        intercept_lr=params.intercept_lr,
        clip_gradient=params.clip_gradient,
    )
    scaled = preprocessing.TargetStandardScaler(regressor=regressor)
    return RiverModel(scaled)


def _build_tree(params: RiverTreeParams, context: ModelContext) -> Model:
    # Scaling lives in the leaves, not in front of the tree: a scaler that keeps
    # updating would silently move every split threshold.
    leaf_model = preprocessing.StandardScaler() | linear_model.LinearRegression(
        optimizer=optim.SGD(params.leaf_lr)
    )
    estimator = tree.HoeffdingAdaptiveTreeRegressor(
        grace_period=params.grace_period,
        max_depth=params.max_depth,
        leaf_prediction="adaptive",
        # River types leaf_model as Regressor, but duck-types it: a pipeline works.
        leaf_model=leaf_model,  # type: ignore[arg-type]
        model_selector_decay=params.model_selector_decay,
        seed=context.seed,
    )
    return RiverModel(estimator)


def _build_forest(params: RiverForestParams, context: ModelContext) -> Model:
    return RiverModel(forest.ARFRegressor(n_models=params.n_models, seed=context.seed))


def _build_custom(params: RiverCustomParams, context: ModelContext) -> Model:
    estimator = make_custom_estimator(params.estimator, params.args, seed=context.seed)
    if params.scale:
        estimator = preprocessing.StandardScaler() | estimator
    return RiverModel(estimator, mini_batch=params.mini_batch)


register(
    ModelSpec(
        kind="river.linear",
        params=RiverLinearParams,
        build=_build_linear,
        summary="River linear regression (SGD) with online scaling",
    )
)
register(
    ModelSpec(
        kind="river.tree",
        params=RiverTreeParams,
        build=_build_tree,
        summary="River Hoeffding adaptive tree with scaled linear leaves",
    )
)
register(
    ModelSpec(
        kind="river.forest",
        params=RiverForestParams,
        build=_build_forest,
        summary="River adaptive random forest regressor",
    )
)
register(
    ModelSpec(
        kind="river.custom",
        params=RiverCustomParams,
        build=_build_custom,
        summary="any River regressor by name",
    )
)
