"""Building a rendered seccomp file into a BPF filter with libseccomp, exactly as runc does on a node.

The model catches what it can express; some profiles pass it and are still refused by libseccomp (two rules for a
multiplexed syscall such as ``socket`` on 32-bit x86) or by the kernel (more than 4,096 BPF instructions). Then
every container using the profile would fail to start, so the operator and the agent build the filter first.

libseccomp can also hang on some inputs (one such case found by fuzzing), so the build runs in a worker process
that is killed when it takes too long; the worker exits by itself when idle, so it costs no memory between bursts.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyseccomp

from secprofiles.model.syscalls import OCI_TO_LIBSECCOMP

BPF_MAXINSNS = 4096  # the kernel refuses a longer filter (BPF_MAXINSNS in linux/bpf_common.h)
BUILD_TIMEOUT = 10.0  # seconds; the filters of the bundled profiles build in under 20 ms
WORKER_IDLE_EXIT = 15.0  # seconds without a request before the worker (about 23 MiB RSS) exits

_ACTIONS = {"SCMP_ACT_ALLOW": pyseccomp.ALLOW, "SCMP_ACT_KILL": pyseccomp.KILL, "SCMP_ACT_KILL_THREAD": pyseccomp.KILL,
            "SCMP_ACT_KILL_PROCESS": pyseccomp.KILL_PROCESS, "SCMP_ACT_TRAP": pyseccomp.TRAP,
            "SCMP_ACT_LOG": pyseccomp.LOG}
_OPS = {"SCMP_CMP_NE": pyseccomp.NE, "SCMP_CMP_LT": pyseccomp.LT, "SCMP_CMP_LE": pyseccomp.LE,
        "SCMP_CMP_EQ": pyseccomp.EQ, "SCMP_CMP_GE": pyseccomp.GE, "SCMP_CMP_GT": pyseccomp.GT,
        "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ}


@dataclass(frozen=True)
class Refusal:
    """Why a filter cannot be built: the syscall whose rule failed, or else the top-level field at fault (None
    for the filter as a whole), and the reason."""

    syscall: str | None
    reason: str
    field: str | None = None


class FilterRefusedError(Exception):
    """libseccomp or the kernel's limit refuses the filter."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal)  # picklable: the refusal is the only argument
        self.refusal = refusal

    def __str__(self) -> str:
        return self.refusal.reason


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ERRNO":
        return int(pyseccomp.ERRNO(errno.EPERM if errno_ret is None else errno_ret))
    if name == "SCMP_ACT_TRACE":
        return int(pyseccomp.TRACE(errno.EPERM if errno_ret is None else errno_ret))
    return int(_ACTIONS[name])


def build_filter(document: dict[str, Any]) -> int:
    """Build the filter of a rendered node file the way runc does and return its BPF instruction count.

    As runc: rules whose action equals the default are skipped, names this libseccomp does not know on the
    native architecture are skipped, several conditions on one argument become separate rules (OR).
    Raises FilterRefusedError when libseccomp refuses a rule or the filter exceeds the kernel's limit.
    """
    default = _action(document["defaultAction"], document.get("defaultErrnoRet"))
    try:
        seccomp_filter = pyseccomp.SyscallFilter(default)
    except OSError as error:
        field = "defaultErrnoRet" if "defaultErrnoRet" in document else "defaultAction"
        raise FilterRefusedError(Refusal(None, f"libseccomp refuses this default action "
                                               f"({os.strerror(error.errno or errno.EINVAL)})", field)) from None
    for arch in document.get("architectures", []):
        native = getattr(pyseccomp.Arch, OCI_TO_LIBSECCOMP[arch])
        try:
            if not seccomp_filter.exist_arch(native):
                seccomp_filter.add_arch(native)
        except OSError as error:
            raise FilterRefusedError(Refusal(None, f"libseccomp cannot add architecture {arch}: "
                                                   f"{os.strerror(error.errno or errno.EINVAL)}")) from None
    for rule in document.get("syscalls", []):
        action = _action(rule["action"], rule.get("errnoRet"))
        if action == default:
            continue
        args = [pyseccomp.Arg(a["index"], _OPS[a["op"]], a.get("value", 0), a.get("valueTwo", 0))
                for a in rule.get("args", [])]
        indices = [a["index"] for a in rule.get("args", [])]
        groups = [[arg] for arg in args] if len(set(indices)) < len(indices) else [args]
        for name in rule["names"]:
            if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) < 0:
                continue
            try:
                for group in groups:
                    seccomp_filter.add_rule(action, name, *group)
            except OSError as error:
                raise FilterRefusedError(Refusal(name, _rule_refused(error))) from None
    with tempfile.TemporaryFile() as out:
        seccomp_filter.export_bpf(out)
        instructions = out.tell() // 8  # struct sock_filter is 8 bytes
    if instructions > BPF_MAXINSNS:
        raise FilterRefusedError(Refusal(None, f"the filter compiles to {instructions} BPF instructions; the kernel "
                                               f"accepts at most {BPF_MAXINSNS}: use fewer rules or conditions"))
    return instructions


def _rule_refused(error: OSError) -> str:
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.errno == errno.EEXIST:
        return ("libseccomp refuses the rule: it conflicts with another rule for the same syscall (on 32-bit x86, "
                "socket and the ipc calls are multiplexed: a rule with argument conditions and one without cannot "
                "have different actions); container runtimes would fail every container using this profile")
    return f"libseccomp refuses the rule ({reason}); container runtimes would fail every container using this profile"


_TIMED_OUT = "libseccomp did not finish building the filter"


class FilterBuilder:
    """Builds filters in a worker process with a timeout; results are cached by the rendered bytes.

    Thread-safe and usable from sync code (the CLI) and async code (``check`` in a thread).
    """

    def __init__(self, timeout: float = BUILD_TIMEOUT, command: Sequence[str] | None = None,
                 cache_size: int = 4096) -> None:
        self.timeout = timeout
        self._command = list(command or [sys.executable, "-m", __name__])
        self._worker: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, Refusal | None] = OrderedDict()
        self._cache_size = cache_size

    def check(self, content: bytes) -> Refusal | None:
        """None when runc could build the filter of ``content`` (a rendered node file), else why not."""
        with self._lock:
            if content in self._cache:
                self._cache.move_to_end(content)
                return self._cache[content]
            refusal = self._build(content)
            if refusal is not None and refusal.syscall is None and refusal.reason.startswith(_TIMED_OUT):
                return refusal  # may be the machine's load, not the filter: asked again next time
            self._cache[content] = refusal
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return refusal

    def cached(self, content: bytes) -> tuple[bool, Refusal | None]:
        """``(True, answer)`` when ``content`` was checked before, else ``(False, None)``; never waits (callers on
        an event loop skip the thread hop for the common case of a known rendering)."""
        try:
            return True, self._cache[content]  # one atomic lookup: no lock, so no wait for a running build
        except KeyError:
            return False, None

    def close(self) -> None:
        """Stop the worker (it also exits by itself when idle or when this process ends)."""
        with self._lock:
            self._stop_worker()

    def _build(self, content: bytes) -> Refusal | None:
        request = json.dumps(json.loads(content), separators=(",", ":")).encode() + b"\n"
        for attempt in range(2):
            worker = self._ensure_worker()
            assert worker.stdin is not None and worker.stdout is not None
            try:
                worker.stdin.write(request)
                worker.stdin.flush()
            except BrokenPipeError:  # the worker exited while idle: start another once
                self._stop_worker()
                if attempt == 0:
                    continue
                raise
            ready, _, _ = select.select([worker.stdout], [], [], self.timeout)
            if not ready:
                self._stop_worker()
                return Refusal(None, f"{_TIMED_OUT} within {self.timeout:g} s; container runtimes would hang "
                                     "creating containers with this profile")
            line = worker.stdout.readline()
            if not line:  # exited between our write and its read
                self._stop_worker()
                if attempt == 0:
                    continue
                raise RuntimeError("the libseccomp worker exited without an answer")
            answer = json.loads(line)
            if "refused" in answer:
                return Refusal(**answer["refused"])
            return None
        raise AssertionError("unreachable")

    def _ensure_worker(self) -> subprocess.Popen[bytes]:
        if self._worker is None or self._worker.poll() is not None:
            self._worker = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        return self._worker

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker.wait()
            self._worker = None


_DEFAULT = FilterBuilder()


def check(content: bytes) -> Refusal | None:
    """Build ``content``'s filter with the process-wide builder (sync)."""
    return _DEFAULT.check(content)


async def check_async(content: bytes) -> Refusal | None:
    """``check`` for async callers: a known rendering is answered at once, a new one is built in a thread."""
    known, answer = _DEFAULT.cached(content)
    return answer if known else await asyncio.to_thread(_DEFAULT.check, content)


def serve(idle_exit: float = WORKER_IDLE_EXIT) -> None:
    """The worker: one compact JSON document per line in, one answer per line out; exits on EOF or when idle."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while select.select([stdin], [], [], idle_exit)[0]:
        line = stdin.readline()
        if not line:
            return
        try:
            answer: dict[str, Any] = {"instructions": build_filter(json.loads(line))}
        except FilterRefusedError as error:
            answer = {"refused": asdict(error.refusal)}
        except OSError as error:  # anything else libseccomp refuses: answered, so the worker lives on
            answer = {"refused": asdict(Refusal(None, f"libseccomp cannot build the filter: {error}"))}
        stdout.write(json.dumps(answer).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    serve()
