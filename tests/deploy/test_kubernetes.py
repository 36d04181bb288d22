"""The kustomizations: they render, every object validates offline against its schema,
and the pieces agree with each other (selectors, ports, Secret, KEDA trigger, rules,
dashboard)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings, load_settings

from .support import (
    DASHBOARD,
    DEPLOY,
    DEV_EXTRA_HINT,
    INSTALL_HINT,
    NODE_TOOLS,
    OVERLAYS,
    RULES,
    Manifest,
    by_kind,
    find_tool,
    one,
    run_tool,
)

pytestmark = pytest.mark.deploy

K8S_VERSION = "1.30.0"
"""Kubernetes schema version for kubernetes-validate: the newest that every release the
dev extra admits (kubernetes-validate>=1.30) ships; 1.37.0 ships 1.25 to 1.37. The
manifests use only GA APIs (apps/v1, policy/v1, autoscaling/v2), so it holds for later
clusters too."""

CUSTOM_GROUPS = {"monitoring.coreos.com", "keda.sh"}
"""API groups of the custom resources, validated by deploy/tools/node/validate-crds.mjs."""

Render = Callable[[Path], list[Manifest]]


@pytest.fixture(scope="session")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped kustomizations plus the base with the HPA component, the documented
    alternative to KEDA (rendered through a throwaway kustomization)."""
    root = tmp_path_factory.mktemp("hpa-variant")
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY / "base", root)],
                "components": [os.path.relpath(DEPLOY / "components" / "hpa", root)],
            }
        ),
        encoding="utf-8",
    )
    return {**OVERLAYS, "base+hpa": root}


ALL_VARIANTS = [*OVERLAYS, "base+hpa"]


def group(obj: Manifest) -> str:
    api_version = str(obj["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def validate_builtin(objects: list[Manifest]) -> list[str]:
    """Problems kubernetes-validate (strict: unknown fields are errors) finds."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, VersionNotSupportedError
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {DEV_EXTRA_HINT}", pytrace=False)
    problems = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{name}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message}")
        except VersionNotSupportedError:
            pytest.fail(
                f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for "
                f"Kubernetes {K8S_VERSION}",
                pytrace=False,
            )
    return problems


def crd_validator() -> list[str]:
    """The command line of the offline CRD validator, once its packages are installed."""
    node = find_tool("node", "Node.js >= 20 must be on PATH")
    for package in ("keda", "prometheus-operator"):
        if not (NODE_TOOLS / "node_modules" / "@kubernetes-models" / package).is_dir():
            pytest.fail(
                f"@kubernetes-models/{package} is not installed: {INSTALL_HINT}", pytrace=False
            )
    return [node, str(NODE_TOOLS / "validate-crds.mjs")]


def deployment(objects: list[Manifest]) -> Manifest:
    return one(objects, "Deployment")


def container(objects: list[Manifest]) -> Manifest:
    containers = deployment(objects)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["forecastd"]
    return dict(containers[0])


def config_map_with(objects: list[Manifest], key: str) -> Manifest:
    found = [o for o in by_kind(objects, "ConfigMap") if key in o.get("data", {})]
    assert len(found) == 1, f"expected one ConfigMap holding {key}, found {len(found)}"
    return found[0]


def daemon_config(objects: list[Manifest]) -> dict[str, Any]:
    """The config.yaml of the rendered ConfigMap, with the Deployment's literal
    FORECASTD_* overrides applied (section__key, two levels as used here)."""
    config: dict[str, Any] = yaml.safe_load(
        config_map_with(objects, "config.yaml")["data"]["config.yaml"]
    )
    for env in container(objects).get("env", []):
        name, value = env["name"], env.get("value")
        if name.startswith("FORECASTD_") and value is not None:
            node = config
            *parents, leaf = name.removeprefix("FORECASTD_").lower().split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return config


def keys(node: Any) -> list[str]:
    """Every mapping key in a parsed YAML document, at any depth."""
    if isinstance(node, dict):
        return [str(k) for k in node] + [k for v in node.values() for k in keys(v)]
    if isinstance(node, list):
        return [k for v in node for k in keys(v)]
    return []


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_renders(variant: str, variants: dict[str, Path], render: Render) -> None:
    objects = render(variants[variant])
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "ConfigMap"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_builtin_objects_validate_strictly(
    variant: str, variants: dict[str, Path], render: Render
) -> None:
    objects = [o for o in render(variants[variant]) if group(o) not in CUSTOM_GROUPS]
    assert objects
    problems = validate_builtin(objects)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_custom_resources_validate(variant: str, variants: dict[str, Path], render: Render) -> None:
    objects = [o for o in render(variants[variant]) if group(o) in CUSTOM_GROUPS]
    assert {o["kind"] for o in objects} >= {"ServiceMonitor", "PrometheusRule"}
    report = run_tool(crd_validator(), stdin=json.dumps(objects))
    assert report.count("ok ") == len(objects), report


def test_the_validators_reject_broken_objects(render: Render) -> None:
    objects = render(OVERLAYS["prod"])
    broken_deployment = json.loads(json.dumps(deployment(objects)))
    broken_deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGets"] = {}
    assert validate_builtin([broken_deployment]), "strict validation missed an unknown field"

    broken_monitor = json.loads(json.dumps(one(objects, "ServiceMonitor")))
    broken_monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    scaled = json.loads(json.dumps(one(objects, "ScaledObject")))
    del scaled["spec"]["scaleTargetRef"]
    for obj in (broken_monitor, scaled):
        result = subprocess.run(
            crd_validator(),
            input=json.dumps([obj]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, (obj["kind"], result.stdout)
        assert "FAIL" in result.stdout, (obj["kind"], result.stdout)


@pytest.mark.parametrize("variant", [*OVERLAYS])
def test_pod_is_locked_down(variant: str, render: Render) -> None:
    objects = render(OVERLAYS[variant])
    pod = deployment(objects)["spec"]["template"]["spec"]
    main = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    security = main["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The only writable paths: the state directory and /tmp, both emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"]: volumes[m["name"]] for m in main["volumeMounts"] if not m.get("readOnly")
    }
    assert set(writable) == {"/var/lib/forecastd", "/tmp"}
    assert all("emptyDir" in v for v in writable.values())
    config_mount = next(m for m in main["volumeMounts"] if m["mountPath"] == "/etc/forecastd")
    assert config_mount["readOnly"] is True
    config_map = config_map_with(objects, "config.yaml")
    assert volumes[config_mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]


@pytest.mark.parametrize("variant", [*OVERLAYS])
def test_pod_lifecycle(variant: str, render: Render) -> None:
    objects = render(OVERLAYS[variant])
    pod = deployment(objects)["spec"]["template"]["spec"]
    main = container(objects)
    # The daemon needs up to ~30 s for its final checkpoint after SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= 45
    port = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert port == {"metrics": daemon_config(objects)["metrics"]["port"]}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for kind in ("requests", "limits"):
        assert set(main["resources"][kind]) == {"cpu", "memory"}
    if variant != "base":  # the base names the image; each overlay pins the build
        assert main["image"].split(":")[-1] not in {"latest", main["image"]}, "pin the image tag"


@pytest.mark.parametrize("variant", [*OVERLAYS])
def test_kafka_credentials_come_from_a_secret(variant: str, render: Render) -> None:
    objects = render(OVERLAYS[variant])
    env = {e["name"]: e for e in container(objects)["env"]}
    secret_names = set()
    for field in ("USERNAME", "PASSWORD"):
        entry = env[f"FORECASTD_KAFKA__SECURITY__SASL_PLAIN_{field}"]
        assert "value" not in entry
        secret_names.add(entry["valueFrom"]["secretKeyRef"]["name"])
    assert len(secret_names) == 1
    config = yaml.safe_load(config_map_with(objects, "config.yaml")["data"]["config.yaml"])
    assert not [key for key in keys(config) if "password" in key or "username" in key]
    secrets = by_kind(objects, "Secret")
    if variant == "dev":
        assert [s["metadata"]["name"] for s in secrets] == list(secret_names)
    else:
        assert secrets == [], "only the dev overlay may carry a (throwaway) Secret"


@pytest.mark.parametrize("variant", [*OVERLAYS])
def test_service_monitor_scrapes_the_pods(variant: str, render: Render) -> None:
    objects = render(OVERLAYS[variant])
    pod_labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    pdb = one(objects, "PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment(objects)["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    # The alerts look for job="forecastd", which the Operator takes from the Service name.
    assert service["metadata"]["name"] == "forecastd"
    assert "jobLabel" not in monitor["spec"]


def test_prod_is_spread_and_autoscaled_on_lag(render: Render) -> None:
    objects = render(OVERLAYS["prod"])
    spec = deployment(objects)["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] >= 3
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= (
        spec["template"]["metadata"]["labels"].items()
    )

    scaled = one(objects, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment(objects)["metadata"]["name"]
    assert scaled["minReplicaCount"] == spec["replicas"] <= scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    kafka = daemon_config(objects)["kafka"]
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == kafka["bootstrap_servers"]
    assert meta["consumerGroup"] == kafka["group_id"]
    assert meta["topic"] == kafka["input_topic"]
    assert int(meta["lagThreshold"]) > 0

    auth = one(objects, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    env = {e["name"]: e for e in container(objects)["env"]}
    password = env["FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASSWORD"]
    secret = password["valueFrom"]["secretKeyRef"]["name"]
    assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {secret}
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"username", "password"}
    assert by_kind(objects, "HorizontalPodAutoscaler") == [], "KEDA owns the HPA in prod"


def test_hpa_alternative_targets_the_deployment(variants: dict[str, Path], render: Render) -> None:
    objects = render(variants["base+hpa"])
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment(objects)["metadata"]["name"],
    }
    (metric,) = hpa["metrics"]
    assert metric["external"]["metric"]["name"] == "forecastd_consumer_lag"
    topic = metric["external"]["metric"]["selector"]["matchLabels"]["topic"]
    assert topic == daemon_config(objects)["kafka"]["input_topic"]


def test_prometheus_rule_embeds_rules_yml(render: Render) -> None:
    rule = one(render(OVERLAYS["base"]), "PrometheusRule")
    source = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert rule["spec"] == source, (
        "deploy/prometheus/prometheusrule.yaml is stale: run python3 deploy/tools/sync_rules.py"
    )


def test_dashboard_config_map_is_the_json_file(render: Render) -> None:
    config_map = config_map_with(render(OVERLAYS["base"]), "forecastd.json")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not config_map["metadata"]["name"].endswith(tuple("0123456789")), "hash suffix"
    text = config_map["data"]["forecastd.json"]
    assert json.loads(text) == json.loads(DASHBOARD.read_text(encoding="utf-8"))
    # Client-side `kubectl apply` copies the object into an annotation capped at 256 KiB.
    assert len(text.encode()) < 200_000


@pytest.mark.parametrize("variant", [*OVERLAYS])
def test_shipped_config_loads(variant: str, render: Render, tmp_path: Path) -> None:
    """The daemon's own loader accepts the rendered config with the pod's environment."""
    objects = render(OVERLAYS[variant])
    env = {
        e["name"]: e.get("value", "from-a-secret")
        for e in container(objects)["env"]
        if e["name"].startswith("FORECASTD_")
    }
    path = tmp_path / "config.yaml"
    path.write_text(
        config_map_with(objects, "config.yaml")["data"]["config.yaml"], encoding="utf-8"
    )
    settings = load_settings(path, env=env)
    # the built-in default, with the persistence model the alerts compare it against
    assert settings.models == Settings(forecast=settings.forecast).models
    assert settings.primary.kind == "ensemble"
    assert "persistence" in {m.kind for m in settings.models}
    assert settings.metrics.port == 9108
