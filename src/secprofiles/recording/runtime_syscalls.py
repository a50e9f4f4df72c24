"""What container runtimes do after installing a container's seccomp filter, as measured (``data/*.yaml``).

runc installs the filter in its init process (comm ``runc:[2:INIT]``) and then still runs its own code before it
execs the workload: those syscalls are filtered too, so a profile must allow them for the workload to start. A
recording on the host (``secprofiles record``) cannot see them; a node recorder sees them in the container's
cgroup, but some appear only in some runs (the Go runtime's ``futex`` and ``rt_sigreturn``: 193 and 20 of 200
runs). So both add the measured list as a rule of its own. It differs between runtime versions (runc 1.1 marks
file descriptors close-on-exec by walking /proc/self/fd, 1.2 uses close_range) and with no_new_privs (without
it runc installs the filter before it drops privileges, so setgroups/setuid/capset come after it); it is
measured, never guessed: ``python -m bench.runtime_steps --write`` regenerates the data file.

Invariants: the names are libseccomp names; an unknown runtime label is an error naming the known ones; each
runtime names the comm of its init process (``init_comm``), which is how a node recorder tells it started a
container.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

DATA_FILE = "data/runtime-syscalls.yaml"  # inside this package
DEFAULT_RUNTIME = "runc-1.1"


@cache
def _runtimes() -> dict[str, Any]:
    text = resources.files("secprofiles.recording").joinpath(DATA_FILE).read_text(encoding="utf-8")
    runtimes: dict[str, Any] = yaml.safe_load(text)["runtimes"]
    return runtimes


def known_runtimes() -> list[str]:
    """The labels of the measured runtimes, sorted."""
    return sorted(_runtimes())


def runtime_syscalls(label: str = DEFAULT_RUNTIME) -> list[str]:
    """The syscalls runtime ``label`` was seen making after installing the filter (any configuration, any run)."""
    runtimes = _runtimes()
    if label not in runtimes:
        raise ValueError(f"unknown runtime {label!r}: measured runtimes are {', '.join(sorted(runtimes))}")
    return list(runtimes[label]["syscalls"])


@cache
def runtime_inits() -> dict[str, str]:
    """The comm of each measured runtime's init process -> the runtime's label."""
    return {runtime["init_comm"]: label for label, runtime in sorted(_runtimes().items()) if "init_comm" in runtime}
