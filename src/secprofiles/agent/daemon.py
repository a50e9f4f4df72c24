"""What the node's daemons (the agent, the recorder) share as processes: run until SIGTERM/SIGINT, and exit 1 on
a failure so the DaemonSet restarts them."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from secprofiles.kube import jsonlog


async def run_until_signalled(work: Coroutine[Any, Any, None], log: logging.Logger, what: str) -> None:
    """Run ``work`` until it returns or SIGTERM/SIGINT cancels it (a stop, not a failure)."""
    task = asyncio.create_task(work)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info(f"{what} stopping")


def main(run: Callable[[], Coroutine[Any, Any, None]], log_level: str, log: logging.Logger, what: str) -> int:
    """Set up JSON logging and run ``run``; 1 when it fails (logged with the traceback), else 0."""
    jsonlog.setup(log_level)
    try:
        asyncio.run(run())
    except Exception:
        log.exception(f"{what} failed")
        return 1
    return 0
