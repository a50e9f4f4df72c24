"""The one process supervisor: log capture, exit reporting, SIGTERM then SIGKILL after the grace period."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from devtools.processes import Process, ProcessExitedError

IGNORES_SIGTERM = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
                  "time.sleep(60)"


def test_an_exited_process_is_reported_with_the_end_of_its_log(tmp_path: Path) -> None:
    process = Process("failing", [sys.executable, "-c", "print('first'); print('last words'); raise SystemExit(3)"],
                      tmp_path / "log").start()
    assert process.popen is not None
    process.popen.wait()
    with pytest.raises(ProcessExitedError, match=r"failing exited with status 3") as error:
        process.check()
    assert "last words" in str(error.value)
    assert process.tail().splitlines()[0].startswith("$ ")  # the command line heads the log


def test_stop_kills_what_ignores_sigterm_after_the_grace_period(tmp_path: Path) -> None:
    process = Process("stubborn", [sys.executable, "-c", IGNORES_SIGTERM], tmp_path / "log").start()
    while "up" not in process.tail().splitlines()[1:]:
        time.sleep(0.02)
    assert process.memory()["VmHWM"] > 0
    started = time.monotonic()
    process.stop(grace=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert process.returncode == -9 and not process.running
    assert process.peak_rss_bytes > 0


def test_json_records_skip_what_is_not_json(tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = Process("logger", [sys.executable, "-c", "print('{\"msg\": \"a\"}'); print('plain'); print('{broken')"],
                      log).start()
    assert process.popen is not None
    process.popen.wait()
    assert process.json_records() == [{"msg": "a"}]
    assert process.json_records(process.log_offset()) == []
