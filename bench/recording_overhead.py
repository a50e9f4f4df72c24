"""Overhead of recording and the reader's throughput, measured in the same run.

1. A syscall-heavy loop (N ``getppid()`` calls in a Python process; it times itself) runs unrecorded and under
   ``record_command`` (the full ``secprofiles record`` mechanism: logging filter, audit reader, attribution),
   interleaved, ``--repeat`` times. Reported: ns per call each way, the ratio, the records the recording
   counted (>= N: every getppid plus start-up), records per second of loop time, the kernel's audit ``lost``
   counter before and after (AUDIT_GET; must not move) and the reader's overruns (must be 0).
2. A realistic shell workload (``devtools.busybox.SHORT_PROCESSES``), wall time both ways.
3. The reader's own capacity: synthetic datagrams in the kernel's format fed to the session collector and to
   the container recorder's attribution (no socket), records per second of CPU.

    python -m bench.recording_overhead [--calls 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.busybox import SHORT_PROCESSES
from devtools.kernel_records import netlink, seccomp_text
from secprofiles.recording.attribution import ContainerAttributor, ProcessSnapshot
from secprofiles.recording.audit_records import seccomp_records
from secprofiles.recording.command import SessionCollector, record_command

LOOP = ("import os, sys, time\nn = int(sys.argv[1])\nstart = time.perf_counter_ns()\n"
        "for _ in range(n):\n    os.getppid()\nopen(sys.argv[2], 'w').write(str(time.perf_counter_ns() - start))\n")


def audit_lost() -> int | None:
    """The kernel's count of audit records it could not deliver (needs CAP_AUDIT_CONTROL)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9) as control:
            control.bind((0, 0))
            control.send(struct.pack("=IHHII", 16, 1000, 0x1, 1, 0))  # AUDIT_GET, NLM_F_REQUEST
            for _ in range(4):
                reply = control.recv(65536)
                if struct.unpack_from("=H", reply, 4)[0] == 1000:
                    return int(struct.unpack_from("=7I", reply, 16)[6])
    except OSError:
        return None
    return None


def unrecorded(calls: int, out: Path) -> int:
    subprocess.run([sys.executable, "-c", LOOP, str(calls), str(out)], check=True)
    return int(out.read_text())


def recorded(calls: int, out: Path) -> tuple[int, int, float]:
    result = asyncio.run(record_command([sys.executable, "-c", LOOP, str(calls), str(out)]))
    return int(out.read_text()), result.records, result.seconds


def reader_capacity(records: int) -> tuple[float, float]:
    datagrams = [netlink(seccomp_text(1000 + i % 50, i % 300, ses=9, time=2000.0 + i / 1e5, serial=i))
                 for i in range(records)]
    collector = SessionCollector()
    collector.start(9, 1)
    start = time.perf_counter()
    for datagram in datagrams:
        collector.feed(datagram)
    session_rate = records / (time.perf_counter() - start)

    class Table:
        def start_ticks(self, pid: int) -> int | None:
            return 100

        def snapshot(self, pid: int) -> ProcessSnapshot | None:
            return ProcessSnapshot(100, f"0::/kubepods/pod5f0e4c52-8a9b-4c1d-9e2f-0123456789ab/{pid:064x}\n")

    attributor = ContainerAttributor(Table(), ticks_per_second=100, boot_realtime=0.0, wall_clock=lambda: 1e9)
    attributor.select_pod("5f0e4c52-8a9b-4c1d-9e2f-0123456789ab")
    start = time.perf_counter()
    for datagram in datagrams:  # what ContainerRecorder.feed does, without the socket
        for record in seccomp_records(datagram)[0]:
            attributor.observe(record)
    return session_rate, records / (time.perf_counter() - start)


def shell_loop(directory: Path, record: bool) -> tuple[float, int]:
    """Wall time of the 200-short-processes workload, and the records counted when recorded."""
    directory.mkdir()
    command = ["/bin/busybox", "sh", "-c", SHORT_PROCESSES, "sh", str(directory)]
    start = time.perf_counter()
    if record:
        records = asyncio.run(record_command(command)).records
    else:
        subprocess.run(command, check=True)
        records = 0
    elapsed = time.perf_counter() - start
    shutil.rmtree(directory)
    return elapsed, records


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "elapsed"
        for run in range(args.repeat):
            lost_before = audit_lost()
            plain = unrecorded(args.calls, out)
            with_recording, records, seconds = recorded(args.calls, out)
            lost_after = audit_lost()
            print(f"run {run + 1}: unrecorded {plain / args.calls:.0f} ns/call, recorded "
                  f"{with_recording / args.calls:.0f} ns/call, ratio {with_recording / plain:.1f}; "
                  f"{records} records ({records - args.calls} beyond the loop's), "
                  f"{records / (with_recording / 1e9):.0f} records/s of loop time, recording {seconds:.1f} s; "
                  f"kernel audit lost {lost_before} -> {lost_after}")
        for run in range(args.repeat):
            plain_s, _ = shell_loop(Path(tmp) / "plain", record=False)
            recorded_s, records = shell_loop(Path(tmp) / "recorded", record=True)
            print(f"shell loop run {run + 1}: 200 short processes (about 1,500 with their applets): unrecorded "
                  f"{plain_s:.2f} s, recorded {recorded_s:.2f} s (includes the recorder's start and barrier), "
                  f"ratio {recorded_s / plain_s:.1f}; {records} records")
    session_rate, container_rate = reader_capacity(100_000)
    print(f"reader capacity (CPU only, 100,000 synthetic records): session collector {session_rate:.0f} records/s, "
          f"container attribution {container_rate:.0f} records/s")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
