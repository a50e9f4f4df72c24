"""Health, readiness and metrics endpoints; and the API client's watch with events larger than aiohttp's line limit."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from secprofiles.agent import endpoints
from secprofiles.kube.client import Credentials, KubeApi


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_healthz_readyz_and_metrics() -> None:
    ready = False
    server, port = await endpoints.serve(0, {**endpoints.health_routes(lambda: ready), **endpoints.metrics_routes()},
                                         host="127.0.0.1")
    try:
        assert await get(port, "/healthz") == (200, b"ok\n")
        assert (await get(port, "/readyz"))[0] == 503
        ready = True
        assert (await get(port, "/readyz"))[0] == 200
        endpoints.STATUS_PATCHES.inc()
        status, body = await get(port, "/metrics")
        assert status == 200 and b"secprofiles_agent_status_patches_total" in body
        assert (await get(port, "/nope"))[0] == 404
    finally:
        server.close()


async def test_watch_reads_events_larger_than_aiohttps_line_limit() -> None:
    big = {"metadata": {"name": "big", "resourceVersion": "2"}, "spec": {"policy": "x" * 1_200_000}}

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        line = json.dumps({"type": "ADDED", "object": big}).encode() + b"\n"
        for start in range(0, len(line), 64_000):  # arrives in many small chunks
            await response.write(line[start:start + 64_000])
        await response.write(b'{"type": "DELETED", "object": {"metadata": {"name": "big", "resourceVersion": "3"}}}\n')
        return response

    app = web.Application()
    app.router.add_get("/watch", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with KubeApi(Credentials(server=f"http://127.0.0.1:{port}")) as api:
            events = [(kind, obj["metadata"]["name"]) async for kind, obj in api.watch("/watch", "1")]
            assert events == [("ADDED", "big"), ("DELETED", "big")]
    finally:
        await runner.cleanup()
