"""How the node recorder attributes short-lived processes: 200 of them in a podman container, by cgroup.

The node recorder's path (``ContainerRecorder``: audit records -> /proc/<pid>/cgroup, with or without lineage from
the proc connector) is measured against ground truth it does not use: podman runs in a fresh audit session, so
every record of the container's processes carries that session id. Per run: the container's processes and
records (truth), records attributed, processes left unattributed (gone before their lookup) and the syscalls the
recorded set misses; the container is selected only after it exited (a selection arriving late: everything must
have been kept as pending). Needs root and podman + runc.

    python -m bench.recording_attribution [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from devtools.busybox import PODMAN_RUN, SHORT_PROCESSES, build_image
from secprofiles.model.syscalls import node_architectures
from secprofiles.recording.attribution import Outcome
from secprofiles.recording.audit_records import record_architecture, seccomp_records
from secprofiles.recording.container_recorder import ContainerRecorder
from secprofiles.recording.syscall_sets import SyscallSet, all_names


class TruthfulRecorder(ContainerRecorder):
    """The node recorder, also counting every record per audit session (the ground truth)."""

    def __init__(self, lineage: bool) -> None:
        plain = ContainerRecorder.on_this_node(lineage=lineage)
        super().__init__(plain.audit, plain.attributor, plain.connector)
        self.by_session: dict[int, dict[int, int]] = {}
        self.session_syscalls: dict[int, SyscallSet] = {}

    def feed(self, datagram: bytes) -> None:
        for record in seccomp_records(datagram)[0]:
            pids = self.by_session.setdefault(record.ses, {})
            pids[record.pid] = pids.get(record.pid, 0) + 1
            if (arch := record_architecture(record.arch, record.syscall)) is not None:
                self.session_syscalls.setdefault(record.ses, SyscallSet()).add(arch, record.syscall)
        super().feed(datagram)


def log_profile(directory: Path) -> Path:
    """A seccomp file that logs every syscall on this node's architectures."""
    path = directory / "log.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG", "architectures": list(node_architectures()),
                                "syscalls": []}))
    return path


async def one_run(image: str, profile: Path, workdir: Path, lineage: bool) -> dict[str, Any]:
    """One container of ``SHORT_PROCESSES`` recorded by a fresh recorder; the figures of the module docstring."""
    recorder = TruthfulRecorder(lineage)
    cidfile = workdir / f"cid-{os.urandom(4).hex()}"
    reading = asyncio.create_task(recorder.run())
    try:
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", 'echo 0 > /proc/self/loginuid && cat /proc/self/sessionid > "$1.ses" && shift && exec "$@"',
            "sh", str(cidfile), *PODMAN_RUN, "--cidfile", str(cidfile), "--security-opt", f"seccomp={profile}",
            image, "/bin/busybox", "sh", "-c", "mkdir -p /tmp/w && " + SHORT_PROCESSES, "sh", "/tmp/w",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, stderr = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"podman failed: {stderr.decode()}")
        await recorder.sync()
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        recorder.close()
    container, session_text = await asyncio.to_thread(lambda: (cidfile.read_text().strip(),
                                                               Path(f"{cidfile}.ses").read_text()))
    recorder.attributor.select_container(container)  # only now: everything had to be kept as pending
    session = int(session_text)
    true_pids = recorder.by_session.get(session, {})
    recorded = recorder.attributor.release_container(container) or SyscallSet()
    truth = set(all_names(recorder.session_syscalls[session].report()))
    return {
        "lineage": lineage, "forks_attributed": recorder.attributor.forks_attributed,
        "container_processes": len(true_pids), "container_records": sum(true_pids.values()),
        "recorded_records": recorder.outcomes[Outcome.RECORDED] + recorder.outcomes[Outcome.PENDING],
        "unattributed_records": recorder.attributor.unattributed.records,
        "unattributed_processes": len(recorder.attributor.unattributed.processes & set(true_pids)),
        "lookups": recorder.attributor.lookups, "overruns": recorder.audit.overruns,
        "syscalls_truth": len(truth), "syscalls_recorded": len(all_names(recorded.report())),
        "syscalls_missed": sorted(truth - set(all_names(recorded.report()))), "runtime": recorded.runtime,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = build_image(Path(tmp))
        profile = log_profile(Path(tmp))
        results = [await one_run(image, profile, Path(tmp), lineage) for _ in range(args.runs)
                   for lineage in (False, True)]
    for result in results:
        print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    asyncio.run(main())
