"""Recorder memory with 1 and 50 recorded containers: real containers, then the attribution state alone.

1. Real: this process runs the node recorder (``ContainerRecorder`` with lineage) and records ``--containers``
   podman containers one after the other (each runs devtools.busybox.FILES_AND_PROCESSES under a
   SCMP_ACT_LOG profile), each selected by its container id. VmRSS/VmHWM of this process are printed at start,
   after the first container and after the last (every set still held: nothing released).
2. The attribution state alone (tracemalloc): 1, 50 and 1,000 containers with 60 syscalls and 20 processes each.

    python -m bench.recording_memory [--containers 50] [--synthetic 1,50,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import tracemalloc
from pathlib import Path

from bench.recording_attribution import log_profile
from devtools.busybox import EXPECTED_OUTPUT, FILES_AND_PROCESSES, PODMAN_RUN, build_image
from devtools.kernel_records import seccomp_text
from secprofiles.recording.attribution import ContainerAttributor, ProcessSnapshot
from secprofiles.recording.audit_records import parse_seccomp_record
from secprofiles.recording.container_recorder import ContainerRecorder


def memory() -> str:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return f"VmRSS {status['VmRSS'].strip()}, VmHWM {status['VmHWM'].strip()}"


async def real(containers: int) -> None:
    recorder = ContainerRecorder.on_this_node()
    print(f"recorder started: {memory()}")
    reading = asyncio.create_task(recorder.run())
    with tempfile.TemporaryDirectory() as tmp:
        image = build_image(Path(tmp))
        profile = log_profile(Path(tmp))
        for index in range(containers):
            cidfile = Path(tmp) / f"cid{index}"
            process = await asyncio.create_subprocess_exec(
                *PODMAN_RUN, "--cidfile", str(cidfile), "--security-opt", f"seccomp={profile}", image,
                "/bin/busybox", "sh", "-c", FILES_AND_PROCESSES, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            stdout, stderr = await process.communicate()
            assert EXPECTED_OUTPUT in stdout.decode(), stderr.decode()
            recorder.attributor.select_container((await asyncio.to_thread(cidfile.read_text)).strip())
            if index in (0, containers - 1):
                await recorder.sync()
                sizes = sorted(len(s) for s in recorder.attributor.recorded.values())
                print(f"after {index + 1} container(s): {memory()}; {len(recorder.attributor.recorded)} sets "
                      f"({sizes[0]}-{sizes[-1]} syscalls), {recorder.attributor.cached_pids} cached pids, "
                      f"{recorder.attributor.pending} pending, overruns {recorder.audit.overruns}")
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    recorder.close()


def synthetic(counts: list[int]) -> None:
    class Table:
        def start_ticks(self, pid: int) -> int | None:
            return 100

        def snapshot(self, pid: int) -> ProcessSnapshot | None:
            return ProcessSnapshot(100, f"0::/kubepods/pod5f0e4c52-8a9b-4c1d-9e2f-0123456789ab/{pid // 20:064x}\n")

    for count in counts:
        tracemalloc.start()
        attributor = ContainerAttributor(Table(), ticks_per_second=100, boot_realtime=0.0, wall_clock=lambda: 1e9)
        attributor.select_pod("5f0e4c52-8a9b-4c1d-9e2f-0123456789ab")
        for pid in range(count * 20):
            for syscall in range(60):
                attributor.observe(parse_seccomp_record(seccomp_text(pid, syscall, time=1e9 - 1)))
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"attribution state, {count} containers x 60 syscalls x 20 processes: {current / 1024:.0f} KiB "
              f"({current / count / 1024:.1f} KiB per container)")
        del attributor


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--synthetic", default="1,50,1000", help="container counts for the attribution state alone")
    args = parser.parse_args()
    asyncio.run(real(args.containers))
    synthetic([int(count) for count in args.synthetic.split(",")])


if __name__ == "__main__":
    main()
