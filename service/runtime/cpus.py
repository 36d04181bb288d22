"""How many CPUs this container may use: what ``processing.workers: auto`` resolves to.

A pod's CPU limit is enforced by the cgroup's CFS quota, not by the number of CPUs
the kernel shows: ``os.cpu_count()`` on a 64-core node is 64 even where the limit is
two. So ``auto`` reads the quota (cgroup v2 ``cpu.max``, else v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounds a fractional limit up (1.5
CPUs: two workers, each busy three quarters of the time, rather than one that leaves
half a CPU unused), and never exceeds the CPUs this process may be scheduled on.
Without a quota (``max``, or no cgroup file) the schedulable CPUs count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup quota allows (may be fractional), or None without a quota."""
    v2 = root / "cpu.max"
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process can use: the cgroup quota rounded up, at most the CPUs
    it may be scheduled on, at least one."""
    try:
        schedulable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        schedulable = os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is None:
        return max(1, schedulable)
    return max(1, min(schedulable, math.ceil(quota)))


def resolve_workers(setting: int | Literal["auto"], root: Path = CGROUP_ROOT) -> int:
    """``processing.workers`` as a number of processes."""
    return available_cpus(root) if setting == "auto" else setting
