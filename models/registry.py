"""Model kinds by name: the one place where config turns into models.

A *kind* (``"river.linear"``, ``"ewma"``, ...) names a :class:`ModelSpec`: a pydantic
model for its ``params`` and a builder. Configuration code validates user input with
:func:`validate_params` at start-up, so a bad model config fails before any record is
read, with pydantic's error ``loc`` naming the offending field; the processing task
calls :func:`build` with the validated params.

Each model module registers its own kinds by calling :func:`register` at import, next
to the code it describes, so adding a kind touches one file plus one line in
``_BUILTIN_MODULES``. The registry imports those modules lazily, on the first lookup:
model modules import this one (to register), never the other way round at import
time, so there is no import cycle, and a module with heavy dependencies (torch) costs
nothing until the registry is first asked about kinds.

>>> from models.base import ModelContext
>>> context = ModelContext(feature_names=("lag1",), window=4, horizon=1)
>>> "persistence" in kinds()
True
>>> validate_params("ewma", {"alpha": 0.5})
EWMAParams(alpha=0.5)
>>> model = build("ewma", {"alpha": 0.5}, context)
>>> model.updates
0
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from models.base import Model, ModelContext

__all__ = [
    "ModelParams",
    "ModelSpec",
    "UnknownModelKind",
    "build",
    "get_spec",
    "kinds",
    "register",
    "validate_params",
]

# Modules that register built-in kinds when imported. A new model module appends itself.
_BUILTIN_MODULES: tuple[str, ...] = (
    "models.baselines",
    "models.knn",
    "models.rls",
    "models.ridge",
    "models.river_kinds",
    "models.torch_kinds",
    "models.ensemble",
)


class ModelParams(BaseModel):
    """Base class for every kind's params: immutable, strict about unknown keys.

    ``extra="forbid"`` turns a typo such as ``lr_rate`` into an error at start-up
    instead of a silently ignored setting; ``frozen`` lets a built model keep its params
    without fearing later mutation; ``allow_inf_nan=False`` keeps NaN out of
    hyper-parameters, where it would poison every prediction.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    state_neutral: ClassVar[frozenset[str]] = frozenset()
    """Params that change how a model predicts but not what its learned state is:
    a checkpoint taken under one value restores under another (the model's
    ``load_state_dict``, or its :meth:`~models.base.Model.adopt` of the restored
    model, bridges the difference), so they are left out of the settings
    fingerprint (:func:`service.runtime.snapshot.fingerprint`) and changing them, or
    a release changing their default in the built-in config, keeps the learned state."""


P = TypeVar("P", bound=BaseModel)


class UnknownModelKind(ValueError):
    """A config names a model kind that nobody registered."""

    def __init__(self, kind: str, known: list[str]) -> None:
        super().__init__(f"unknown model kind {kind!r}; known kinds: {', '.join(known)}")
        self.kind = kind
        self.known = known


@dataclass(frozen=True, slots=True)
class ModelSpec(Generic[P]):
    """How to validate and build one model kind.

    Generic in its params class so that a builder can be typed with the concrete params
    it receives (``Callable[[EWMAParams, ModelContext], Model]``) and mypy still checks
    the pairing.

    Attributes:
        kind: the name used in configs, e.g. ``"river.linear"``.
        params: the pydantic model validating the ``params:`` mapping of a config entry.
        build: makes a fresh, untrained model from validated params and the context.
        summary: one line for ``--help`` output and docs.
    """

    kind: str
    params: type[P]
    build: Callable[[P, ModelContext], Model]
    summary: str


_SPECS: dict[str, ModelSpec[Any]] = {}
_builtins_loaded = False


def register(spec: ModelSpec[Any]) -> None:
    """Make ``spec.kind`` available to configs.

    Raises ``ValueError`` when another spec already holds the kind: two modules
    claiming one name is a bug that would otherwise depend on import order.
    """
    existing = _SPECS.get(spec.kind)
    if existing is not None and existing is not spec:
        raise ValueError(f"model kind {spec.kind!r} is already registered")
    _SPECS[spec.kind] = spec


def _load_builtins() -> None:
    """Import the built-in model modules once; each registers its kinds at import."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: the imported modules call register()
    try:
        for name in _BUILTIN_MODULES:
            importlib.import_module(name)
    except BaseException:
        _builtins_loaded = False  # let the next lookup retry and raise again
        raise


def kinds() -> list[str]:
    """All registered kinds, sorted, for error messages and parametrised tests."""
    _load_builtins()
    return sorted(_SPECS)


def get_spec(kind: str) -> ModelSpec[Any]:
    """The spec of ``kind``; raises :class:`UnknownModelKind` naming the known kinds."""
    _load_builtins()
    try:
        return _SPECS[kind]
    except KeyError:
        raise UnknownModelKind(kind, sorted(_SPECS)) from None


def validate_params(kind: str, params: Mapping[str, Any]) -> BaseModel:
    """Validate a config's ``params`` mapping for ``kind``.

    Raises :class:`UnknownModelKind` or ``pydantic.ValidationError``; each error's
    ``loc`` is relative to the params mapping (``("lr",)``), so the caller can prefix it
    with the entry's path (``models[0].params.lr``).
    """
    validated: BaseModel = get_spec(kind).params.model_validate(dict(params))
    return validated


def build(kind: str, params: Mapping[str, Any] | BaseModel, context: ModelContext) -> Model:
    """Build a fresh, untrained model of ``kind``.

    ``params`` may be a raw mapping (validated here) or the result of
    :func:`validate_params` for the same kind (used as is, so config is validated once).
    """
    spec = get_spec(kind)
    if isinstance(params, BaseModel):
        if not isinstance(params, spec.params):
            raise TypeError(
                f"params for {kind!r} must be {spec.params.__name__}, got {type(params).__name__}"
            )
        validated = params
    else:
        validated = spec.params.model_validate(dict(params))
    return spec.build(validated, context)
