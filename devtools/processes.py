"""The one process supervisor of dev tooling: a child process with its log, started, checked and stopped.

Used for the control plane's components, the operator and agents the sandbox, tests and benchmarks run. A stop is
always SIGTERM, then SIGKILL after a grace period; a process that exited is reported with the end of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

TAIL_LINES = 40


class ProcessExitedError(RuntimeError):
    """A supervised process is not running although it should be."""


class Process:
    """One child process: its command line, its log file (appended to, stdout and stderr), its environment.

    ``die_with_parent``: the child gets SIGTERM when the thread that started it ends (Linux ``PR_SET_PDEATHSIG``),
    so a crashed test run leaves no servers behind; such processes must be started from a thread that lives as
    long as they should (the main thread). ``new_session``: Ctrl-C in a terminal reaches only us, and we stop the
    children in order.
    """

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, die_with_parent: bool = False, new_session: bool = True) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        self.env = dict(env) if env is not None else None
        self.cwd, self.die_with_parent, self.new_session = cwd, die_with_parent, new_session
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.perf_counter() right before the last start's fork
        self.peak_rss_bytes = 0  # VmHWM when it was last stopped

    def start(self) -> Process:
        """Start it (again, with the same command line); the log is appended to, after a ``$ command`` line."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"$ {shlex.join(self.argv)}\n".encode())
            out.flush()
            self.started_at = time.perf_counter()
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=self.env, cwd=self.cwd, start_new_session=self.new_session,
                                          preexec_fn=_die_with_parent if self.die_with_parent else None)
        return self

    @property
    def pid(self) -> int:
        """Its process id (it must have been started)."""
        if self.popen is None:
            raise ProcessExitedError(f"{self.name} was never started")
        return self.popen.pid

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status, once it exited."""
        return None if self.popen is None else self.popen.poll()

    def check(self) -> None:
        """Raise ``ProcessExitedError`` with the end of its log if it has exited."""
        if self.popen is not None and (code := self.popen.poll()) is not None:
            raise ProcessExitedError(f"{self.name} exited with status {code}; last lines of {self.log}:\n"
                                     f"{self.tail()}")

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of its log (at most 64 KiB are read)."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64 * 1024))
                data = handle.read().decode(errors="replace")
        except OSError as error:
            return f"<cannot read {self.log}: {error}>"
        return "\n".join(data.splitlines()[-lines:])

    def log_offset(self) -> int:
        """The log's current size: read from here on to see only what comes after."""
        return self.log.stat().st_size if self.log.exists() else 0

    def json_records(self, offset: int = 0) -> list[dict[str, object]]:
        """The JSON-lines records of its log (the operator and the agent log JSON) from byte ``offset`` on."""
        if not self.log.exists():
            return []
        records = []
        with self.log.open(errors="replace") as handle:
            handle.seek(offset)
            for line in handle:
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        records.append(json.loads(line))
        return records

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM of the running process, in KiB (empty when it is gone)."""
        return memory_kib(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time the running process has used so far (0.0 when it is gone)."""
        return cpu_seconds(self.pid) if self.popen is not None else 0.0

    def send(self, sig: int) -> None:
        """Send ``sig`` if it is running."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, *, grace: float = 10.0) -> None:
        """Stop it with ``sig`` (SIGTERM), then SIGKILL after ``grace`` seconds; records its peak RSS first."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.peak_rss_bytes = memory_kib(self.popen.pid).get("VmHWM", 0) * 1024
            self.send(sig)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self.popen.wait()

    def kill(self) -> None:
        """SIGKILL: a crash at whatever it was doing."""
        self.send(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in KiB (empty when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: int(value) for key, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+)\s+kB", text, re.MULTILINE)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, in seconds (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command's ")": state is field 3 of proc(5), utime and stime fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
