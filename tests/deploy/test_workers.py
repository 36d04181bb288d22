"""The pod's CPU limit, its worker processes and the autoscalers agree.

``processing.workers: auto`` runs one worker (group member) per CPU of the container's
limit; KEDA and the HPA count pods. So the lag target per pod is 1000 records per
worker, the most pods times the workers per pod stays within the input topic's
partitions (a member beyond them idles), and each worker has its memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import DEPLOY, OVERLAYS, Manifest, one
from .test_kubernetes import Render, container, daemon_config

pytestmark = pytest.mark.deploy

PARTITIONS = 12
"""The input topic's partitions the manifests are sized for (deploy/README.md)."""
LAG_PER_WORKER = 1000
MEMORY_PER_WORKER = 2**30


def _quantity(value: str) -> float:
    """A Kubernetes quantity (``"2"``, ``500m``, ``2Gi``) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def _workers(objects: list[Manifest]) -> int:
    """Worker processes per pod: ``auto`` is the CPU limit rounded up."""
    setting: Any = daemon_config(objects).get("processing", {}).get("workers", 1)
    limits = container(objects)["resources"]["limits"]
    return math.ceil(_quantity(str(limits["cpu"]))) if setting == "auto" else int(setting)


@pytest.mark.parametrize("variant", sorted(OVERLAYS))
def test_workers_follow_the_cpu_limit_and_fit_the_memory_limit(
    variant: str, render: Render
) -> None:
    objects = render(OVERLAYS[variant])
    assert daemon_config(objects)["processing"]["workers"] == "auto"
    workers = _workers(objects)
    limits = container(objects)["resources"]["limits"]
    assert _quantity(str(limits["memory"])) >= workers * MEMORY_PER_WORKER
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    assert env["OMP_NUM_THREADS"] == "1"  # one thread per worker; the workers fill the CPUs


def test_keda_scales_pods_of_workers_within_the_partitions(render: Render) -> None:
    objects = render(OVERLAYS["prod"])
    workers = _workers(objects)
    assert workers > 1
    scaled = one(objects, "ScaledObject")["spec"]
    assert scaled["maxReplicaCount"] * workers <= PARTITIONS
    (trigger,) = scaled["triggers"]
    assert int(trigger["metadata"]["lagThreshold"]) == LAG_PER_WORKER * workers


def test_the_hpa_alternative_scales_pods_of_workers_within_the_partitions(
    render: Render,
) -> None:
    workers = _workers(render(OVERLAYS["base"]))
    hpa = yaml.safe_load(Path(DEPLOY / "components" / "hpa" / "hpa.yaml").read_text())["spec"]
    assert hpa["maxReplicas"] * workers <= PARTITIONS
    assert hpa["minReplicas"] <= hpa["maxReplicas"]
    target = hpa["metrics"][0]["external"]["target"]
    assert int(target["averageValue"]) == LAG_PER_WORKER * workers
