"""The registry: kinds, params validation with precise error locations, building."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from models import registry
from models.base import Model, ModelContext
from models.baselines import EWMAParams, Persistence, PersistenceParams
from models.river_kinds import RiverLinearParams

CONTEXT = ModelContext(feature_names=("a",), window=4, horizon=1)
BUILTIN = [
    "ewma",
    "holt",
    "knn",
    "persistence",
    "river.custom",
    "river.forest",
    "river.linear",
    "river.tree",
    "rls",
]


def test_builtin_kinds_are_registered() -> None:
    assert set(BUILTIN) <= set(registry.kinds())
    assert registry.kinds() == sorted(registry.kinds())


@pytest.mark.parametrize("kind", BUILTIN)
def test_every_spec_is_complete(kind: str) -> None:
    spec = registry.get_spec(kind)
    assert spec.kind == kind
    assert spec.summary
    assert issubclass(spec.params, registry.ModelParams)


def test_unknown_kind_names_the_known_kinds() -> None:
    with pytest.raises(registry.UnknownModelKind) as info:
        registry.validate_params("river.lineer", {})
    assert isinstance(info.value, ValueError)
    assert "'river.lineer'" in str(info.value)
    assert "river.linear" in str(info.value)
    assert info.value.known == registry.kinds()
    with pytest.raises(registry.UnknownModelKind):
        registry.build("nope", {}, CONTEXT)


def test_defaults_are_filled_in() -> None:
    params = registry.validate_params("river.linear", {})
    assert params == RiverLinearParams(lr=0.005, l2=0.0, intercept_lr=0.01, clip_gradient=3.0)


def test_unknown_params_are_rejected_with_their_name() -> None:
    with pytest.raises(ValidationError) as info:
        registry.validate_params("river.linear", {"lr": 0.1, "lr_rate": 0.1})
    [error] = info.value.errors()
    assert error["loc"] == ("lr_rate",)
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("kind", "params", "loc"),
    [
        ("river.linear", {"lr": -0.1}, ("lr",)),
        ("river.linear", {"lr": "fast"}, ("lr",)),
        ("river.linear", {"l2": float("nan")}, ("l2",)),
        ("river.linear", {"clip_gradient": 0}, ("clip_gradient",)),
        ("river.tree", {"grace_period": 0}, ("grace_period",)),
        ("river.tree", {"max_depth": 0}, ("max_depth",)),
        ("river.forest", {"n_models": 0}, ("n_models",)),
        ("ewma", {"alpha": 0.0}, ("alpha",)),
        ("ewma", {"alpha": 1.5}, ("alpha",)),
        ("persistence", {"alpha": 0.5}, ("alpha",)),
    ],
)
def test_bad_values_are_rejected_with_their_location(
    kind: str, params: dict[str, Any], loc: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as info:
        registry.validate_params(kind, params)
    assert [error["loc"] for error in info.value.errors()] == [loc]


def test_params_are_frozen() -> None:
    params = registry.validate_params("ewma", {"alpha": 0.5})
    with pytest.raises(ValidationError):
        params.alpha = 0.9  # type: ignore[attr-defined]


def test_build_accepts_raw_or_validated_params() -> None:
    validated = registry.validate_params("ewma", {"alpha": 0.2})
    for params in ({"alpha": 0.2}, validated):
        model = registry.build("ewma", params, CONTEXT)
        assert isinstance(model, Model)
        assert model.alpha == 0.2  # type: ignore[attr-defined]


def test_build_refuses_params_of_another_kind() -> None:
    with pytest.raises(TypeError, match="EWMAParams"):
        registry.build("ewma", PersistenceParams(), CONTEXT)


def test_build_validates_raw_params() -> None:
    with pytest.raises(ValidationError):
        registry.build("ewma", {"alpha": 2.0}, CONTEXT)


def test_a_module_can_register_a_new_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))

    def build_last(params: EWMAParams, context: ModelContext) -> Model:
        return Persistence()

    spec = registry.ModelSpec(kind="test.last", params=EWMAParams, build=build_last, summary="x")
    registry.register(spec)
    registry.register(spec)  # registering the same spec again is harmless
    assert "test.last" in registry.kinds()
    assert isinstance(registry.build("test.last", {}, CONTEXT), Persistence)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(
            registry.ModelSpec(kind="test.last", params=EWMAParams, build=build_last, summary="")
        )
