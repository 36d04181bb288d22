"""``processing.workers: auto``: the CPUs of the cgroup limit, not of the node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import load_settings
from service.errors import ConfigError
from service.runtime.cpus import available_cpus, cgroup_quota, resolve_workers

SCHEDULABLE = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text)
    return root


def test_cgroup_v2_quota_is_read_and_a_fraction_rounds_up(tmp_path: Path) -> None:
    assert cgroup_quota(_v2(tmp_path, "150000 100000\n")) == 1.5
    assert available_cpus(tmp_path) == min(2, SCHEDULABLE)
    assert available_cpus(_v2(tmp_path, "10000 100000\n")) == 1  # a tenth: one worker


def test_no_quota_means_the_schedulable_cpus(tmp_path: Path) -> None:
    assert cgroup_quota(_v2(tmp_path, "max 100000\n")) is None
    assert available_cpus(tmp_path) == SCHEDULABLE
    assert available_cpus(tmp_path / "absent") == SCHEDULABLE


def test_a_quota_above_the_cpus_we_may_use_is_capped(tmp_path: Path) -> None:
    assert available_cpus(_v2(tmp_path, "6400000 100000\n")) == SCHEDULABLE


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1 for "no limit"
    assert cgroup_quota(tmp_path) is None


def test_workers_setting(tmp_path: Path) -> None:
    assert load_settings(env={}).processing.workers == 1
    auto = load_settings(env={"FORECASTD_PROCESSING__WORKERS": "auto"}).processing.workers
    assert resolve_workers(auto, _v2(tmp_path, "200000 100000")) == min(2, SCHEDULABLE)
    assert load_settings(env={"FORECASTD_PROCESSING__WORKERS": "3"}).processing.workers == 3
    assert resolve_workers(3, tmp_path) == 3
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match=r"processing\.workers"):
            load_settings(env={"FORECASTD_PROCESSING__WORKERS": bad})
