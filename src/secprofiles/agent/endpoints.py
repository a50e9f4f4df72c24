"""Health, readiness and Prometheus metrics over a minimal asyncio HTTP server.

Hand-rolled on ``asyncio.start_server`` rather than aiohttp.web or prometheus_client's threaded server:
three GET routes need no framework, and every MiB counts on every node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

PROFILES = Gauge("secprofiles_agent_profiles", "Profiles on this node by kind and state", ["kind", "state"])
RECONCILES = Counter("secprofiles_agent_reconciles", "Profiles reconciled, by kind and result", ["kind", "result"])
RECONCILE_SECONDS = Histogram("secprofiles_agent_reconcile_seconds", "Time to reconcile one profile", ["kind"])
STATUS_PATCHES = Counter("secprofiles_agent_status_patches", "Merge patches sent to the NodeProfileStatus")
FULL_SYNC_SECONDS = Gauge("secprofiles_agent_full_sync_seconds", "Duration of the last full resync")
READY = Gauge("secprofiles_agent_ready", "1 once the first full sync succeeded and the taint is gone")
EVENTS = Counter("secprofiles_agent_watch_events", "Watch events received, by kind", ["kind"])

Route = Callable[[], tuple[int, str, bytes]]


def health_routes(is_ready: Callable[[], bool]) -> dict[str, Route]:
    """``/healthz`` (the process serves) and ``/readyz`` (first full sync done, taint removed)."""
    def healthz() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    def readyz() -> tuple[int, str, bytes]:
        return (200, "text/plain", b"ready\n") if is_ready() else (503, "text/plain", b"not ready\n")

    return {"/healthz": healthz, "/readyz": readyz}


def metrics_routes() -> dict[str, Route]:
    """``/metrics`` in the Prometheus text format."""
    return {"/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest())}


async def serve(port: int, routes: dict[str, Route], host: str = "0.0.0.0") -> tuple[asyncio.Server, int]:
    """Serve ``routes`` on ``port`` (0: any free port); returns the server and the bound port."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, path, *_ = [*request.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""]
            route = routes.get(path.split("?", 1)[0])
            if method != "GET":
                status, content_type, body = 405, "text/plain", b"method not allowed\n"
            elif route is None:
                status, content_type, body = 404, "text/plain", b"not found\n"
            else:
                status, content_type, body = route()
            writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    bound = server.sockets[0].getsockname()[1]
    return server, int(bound)


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
