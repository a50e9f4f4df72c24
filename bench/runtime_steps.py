"""Measure what the container runtime does after installing a container's seccomp filter (runc:[2:INIT]).

podman + runc run a busybox ``true`` under a profile whose default action is SCMP_ACT_LOG, ``--runs`` times per
configuration (no_new_privs false/true, root or uid 1000: runc installs the filter at a different point when
no_new_privs is off). Each podman is started in a fresh audit session (loginuid written before exec), so the
records of its tree are told apart from every other process's, other containers included; the ones whose comm is
``runc:[2:INIT]`` are the runtime's.
Writes the package's data file ``src/secprofiles/recording/data/runtime-syscalls.yaml`` (``--write``) or prints it.
Needs root and podman + runc.

    python -m bench.runtime_steps --runs 50 [--write]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.recording_attribution import log_profile
from devtools.busybox import PODMAN_RUN, build_image
from devtools.commands import REPO
from secprofiles.model.syscalls import syscall_name
from secprofiles.recording import runtime_syscalls
from secprofiles.recording.audit_records import record_architecture, seccomp_records
from secprofiles.recording.audit_socket import AuditMulticastSocket

RUNC_INIT = "runc:[2:INIT]"
DATA_FILE = REPO / "src" / "secprofiles" / "recording" / runtime_syscalls.DATA_FILE
CONFIGURATIONS = {
    "no_new_privs=false,user=root": [],
    "no_new_privs=true,user=root": ["--security-opt", "no-new-privileges"],
    "no_new_privs=true,user=1000": ["--security-opt", "no-new-privileges", "--user", "1000:1000"],
    "no_new_privs=false,user=1000": ["--user", "1000:1000"],
}


def _fresh_session() -> None:
    with open("/proc/self/loginuid", "w") as loginuid:
        loginuid.write("0")


def runtime_syscalls_of_one_run(image: str, profile: Path, extra: list[str]) -> set[str]:
    with AuditMulticastSocket() as audit:
        podman = subprocess.Popen([*PODMAN_RUN, *extra, "--security-opt", f"seccomp={profile}", image, "/bin/true"],
                                  preexec_fn=_fresh_session, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        with open(f"/proc/{podman.pid}/sessionid") as its:  # written before exec: podman's tree's session
            session = int(its.read())
        _, stderr = podman.communicate(timeout=120)
        if podman.returncode != 0:
            raise RuntimeError(f"podman failed: {stderr.strip()}")
        names: set[str] = set()
        deadline = time.monotonic() + 1.0  # podman has exited: every record is queued; let them arrive
        while time.monotonic() < deadline:
            for datagram in audit.read_available():
                for record in seccomp_records(datagram)[0]:
                    if record.comm != RUNC_INIT or record.ses != session:
                        continue
                    arch = record_architecture(record.arch, record.syscall)
                    name = syscall_name(arch, record.syscall) if arch else None
                    names.add(name or f"{record.arch:#x}:{record.syscall}")
            time.sleep(0.05)
        if audit.overruns:
            raise RuntimeError("audit receive buffer overrun")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    runc = subprocess.run(["runc", "--version"], capture_output=True, text=True).stdout.split("\n")
    podman = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        image = build_image(Path(tmp))
        profile = log_profile(Path(tmp))
        seen: dict[str, collections.Counter[str]] = {}
        for label, extra in CONFIGURATIONS.items():
            counts = seen[label] = collections.Counter()
            for _ in range(args.runs):
                counts.update(runtime_syscalls_of_one_run(image, profile, extra))
            print(f"{label}: {len(counts)} names", file=sys.stderr)
    union: collections.Counter[str] = collections.Counter()
    for counts in seen.values():
        union.update(counts)
    total = args.runs * len(CONFIGURATIONS)
    document = {
        "runtimes": {
            "runc-1.1": {
                "init_comm": RUNC_INIT,
                "measured_with": f"{runc[0]} ({', '.join(line for line in runc[1:] if line)}); {podman}; "
                                 f"kernel {os.uname().release}; {args.runs} runs per configuration "
                                 f"({', '.join(CONFIGURATIONS)}); measured by bench/runtime_steps.py",
                "syscalls": sorted(union),
                "seen_in_runs": {name: f"{union[name]}/{total}" for name in sorted(union) if union[name] < total},
                "by_configuration": {label: sorted(counts) for label, counts in seen.items()},
            },
        },
    }
    text = "# Generated by bench/runtime_steps.py; see the module docstring. Do not edit by hand.\n" + \
        yaml.safe_dump(document, sort_keys=False, width=110)
    if args.write:
        DATA_FILE.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
