"""Facts about the machine a run measured on, and process memory from /proc."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def _meminfo_mib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """``fstype device`` of the mount holding ``path`` (longest matching mount point in /proc/mounts)."""
    target = os.path.realpath(path)
    best, found = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype, *_ = line.split()
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, found = mount, f"{fstype} {device}"
    return found


def facts(work_dir: Path) -> dict[str, Any]:
    """Cores, memory, kernel, Python, and where the simulated nodes' files go."""
    return {"cpus": os.cpu_count(), "cpu_model": _cpu_model(), "memory_mib": _meminfo_mib("MemTotal"),
            "kernel": platform.release(), "python": sys.version.split()[0], "platform": platform.platform(),
            "work_dir_filesystem": filesystem_of(work_dir)}
