"""A small async Kubernetes API client on aiohttp: credentials, requests, and list+watch.

The node agent runs on every node, so it cannot afford the official client (tens of MiB of generated
models); this covers exactly what secprofiles calls. The operator uses it too, beside Kopf.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from secprofiles.objects import Object

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """A non-2xx answer from the API server: status code, message and the Status's causes (``reason`` in JSON)."""

    def __init__(self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()) -> None:
        self.status, self.reason, self.message, self.causes = status, reason, message, causes
        super().__init__(f"{status} {reason}: {message}")


class ApiUnreachableError(ConnectionError):
    """The connection to the API server was lost during a request (an OSError, like a refused connection).

    "Server disconnected" and a truncated answer are not OSErrors in aiohttp, unlike a refused connection: one type
    for every lost connection, so callers' ``except OSError`` covers them all."""


@dataclass(frozen=True)
class Credentials:
    """How to reach and authenticate to an API server."""

    server: str
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    _tempfiles: list[str] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> Credentials:
        """Credentials of a kubeconfig's current (or given) context; inline ``*-data`` fields supported."""
        config = yaml.safe_load(Path(path).read_text())
        context_name = context or config["current-context"]
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
        base = Path(path).parent
        tempfiles: list[str] = []

        def file_of(entry: dict[str, Any], key: str) -> str | None:
            if f"{key}-data" in entry:
                handle = tempfile.NamedTemporaryFile(delete=False, prefix="secprofiles-kube-")  # noqa: SIM115
                handle.write(base64.b64decode(entry[f"{key}-data"]))
                handle.close()
                tempfiles.append(handle.name)
                return handle.name
            return str(base / entry[key]) if key in entry else None

        return cls(server=cluster["server"], ca_file=file_of(cluster, "certificate-authority"),
                   client_cert_file=file_of(user, "client-certificate"), client_key_file=file_of(user, "client-key"),
                   token=user.get("token"), token_file=user.get("tokenFile"), _tempfiles=tempfiles)

    @classmethod
    def in_cluster(cls) -> Credentials:
        """The pod's service account (its token file is re-read: kubelet rotates it)."""
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        return cls(server=f"https://{host}:{port}", ca_file=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
                   token_file=str(SERVICE_ACCOUNT_DIR / "token"))

    @classmethod
    def auto(cls, kubeconfig: str | None = None) -> Credentials:
        """``kubeconfig`` or $KUBECONFIG if given, else the in-cluster service account."""
        path = kubeconfig or os.environ.get("KUBECONFIG")
        return cls.from_kubeconfig(path) if path else cls.in_cluster()

    def ssl_context(self) -> ssl.SSLContext:
        """TLS settings: the cluster CA and, if any, the client certificate."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert_file:
            context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context

    def bearer(self) -> str | None:
        """The current bearer token, if this identity uses one."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token


RETRY_AFTER_ATTEMPTS = 10
MAX_RETRY_AFTER = 10.0


def retry_after(status: int, header: str | None) -> float | None:
    """Seconds to wait before retrying an answer, or None if it is not to be retried."""
    if status != 429:
        return None
    try:
        return min(max(float(header or 1), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 1.0


PATCH_TYPES = {"merge": "application/merge-patch+json", "json": "application/json-patch+json",
               "strategic": "application/strategic-merge-patch+json", "apply": "application/apply-patch+yaml"}


class KubeApi:
    """An open connection pool to one API server as one identity."""

    def __init__(self, credentials: Credentials, user_agent: str = "secprofiles") -> None:
        self.credentials = credentials
        connector = aiohttp.TCPConnector(ssl=credentials.ssl_context(), limit=16)
        self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": user_agent})

    async def __aenter__(self) -> KubeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._session.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if token := self.credentials.bearer():
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Object:
        """One request; returns the decoded body, raises ApiError for non-2xx answers and OSError (among them
        ApiUnreachableError) when the API server cannot be reached or the connection is lost.

        A 429 answer with Retry-After (API priority and fairness, or a watch cache still initialising) is retried
        after the delay it names, like client-go does, up to ``RETRY_AFTER_ATTEMPTS`` times.
        """
        data = None if body is None else json.dumps(body)
        timeout = aiohttp.ClientTimeout(total=30)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._session.request(method, self.credentials.server + path, data=data, params=params,
                                                 headers=self._headers(content_type if data else None),
                                                 timeout=timeout) as response:
                    text = await response.text()
                    if response.status < 300:
                        return json.loads(text) if text else {}
                    delay = retry_after(response.status, response.headers.get("Retry-After"))
                    if delay is None or attempt >= RETRY_AFTER_ATTEMPTS:
                        raise _api_error(response.status, response.reason or "", text)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
                if isinstance(error, OSError):
                    raise
                raise ApiUnreachableError(f"{method} {path}: {error}") from error
            await asyncio.sleep(delay)

    async def get_text(self, path: str) -> str:
        """A non-JSON answer, e.g. ``/metrics`` or ``/readyz``; raises like ``request``."""
        try:
            async with self._session.get(self.credentials.server + path, headers=self._headers(),
                                         timeout=aiohttp.ClientTimeout(total=30)) as response:
                text = await response.text()
                if response.status >= 300:
                    raise _api_error(response.status, response.reason or "", text)
                return text
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
            if isinstance(error, OSError):
                raise
            raise ApiUnreachableError(f"GET {path}: {error}") from error

    async def get(self, path: str) -> Object | None:
        """The object at ``path``, or None if it does not exist."""
        try:
            return await self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, path: str, body: Object) -> Object:
        """POST a new object to a collection path."""
        return await self.request("POST", path, body)

    async def patch(self, path: str, body: Any, patch_type: str = "merge",
                    params: dict[str, str] | None = None) -> Object:
        """PATCH an object (merge, json, strategic, or server-side apply)."""
        return await self.request("PATCH", path, body, params=params, content_type=PATCH_TYPES[patch_type])

    async def delete(self, path: str) -> None:
        """DELETE an object; a missing object is not an error."""
        try:
            await self.request("DELETE", path)
        except ApiError as error:
            if error.status != 404:
                raise

    async def watch(self, path: str, resource_version: str,
                    timeout_seconds: int = 300) -> AsyncIterator[tuple[str, Object]]:
        """Watch events (type, object) from ``resource_version``, bookmarks included; ends when the server does."""
        params = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        async with self._session.get(self.credentials.server + path, params=params, headers=self._headers(),
                                     timeout=timeout) as response:
            if response.status >= 300:
                raise _api_error(response.status, response.reason or "", await response.text())
            # Split lines ourselves: aiohttp's line iterator raises LineTooLong past twice its read buffer
            # (512 KiB with aiohttp 3.14), ending the watch for good; one event carries a whole object, which
            # etcd allows up to ~1.5 MiB.
            buffer = bytearray()
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    if line.strip():
                        event = json.loads(line)
                        yield event["type"], event["object"]


def _api_error(status: int, reason: str, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        return ApiError(status, reason, text)
    if not isinstance(body, dict):
        return ApiError(status, reason, text)
    causes = ((body.get("details") or {}).get("causes") or []) if isinstance(body.get("details"), dict) else []
    return ApiError(status, reason, str(body.get("message", text)),
                    tuple(str(cause.get("reason")) for cause in causes if isinstance(cause, dict)))


EventHandler = Callable[[str, Object], Awaitable[None]]
RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 4.0


def reconnect_delay(failures: int, base: float = RETRY_DELAY, cap: float = MAX_RETRY_DELAY,
                    jitter: float = 1.0) -> float:
    """The wait before attempt ``failures + 1`` after consecutive failures: doubling from ``base`` up to ``cap``,
    scaled by ``jitter`` (0.5-1.0, random in use) so that many clients do not return to a restarted API server
    in step."""
    return min(cap, base * 2.0 ** max(failures - 1, 0)) * jitter


async def list_and_watch(api: KubeApi, path: str, on_event: EventHandler,
                         on_synced: Callable[[], Awaitable[None]] | None = None,
                         retry_delay: float = RETRY_DELAY) -> None:
    """Keep ``on_event`` told of every object at ``path``, forever.

    Lists first (reporting every object as ADDED, and DELETED for objects that vanished since an earlier
    listing), calls ``on_synced`` after each complete listing, then watches. A watch that ends, or whose
    connection is lost, resumes from the last resourceVersion (as client-go's reflector does): no full listing
    for a network blip or a server error. Only 410 Gone (the history since that version is no longer kept,
    e.g. by a restarted API server) lists again, so no change is missed. Failed attempts back off
    (doubling up to ``MAX_RETRY_DELAY``, with jitter). No polling: the only waits are the server's and backoff.
    """
    known: dict[str, Object] = {}
    version: str | None = None  # None: list before watching
    failures = 0
    while True:
        try:
            if version is None:
                listing = await api.request("GET", path)
                current = {_key(item): item for item in listing.get("items") or []}
                for key, item in known.items():
                    if key not in current:
                        await on_event("DELETED", item)
                for item in current.values():
                    await on_event("ADDED", item)
                known = {key: _slim(item) for key, item in current.items()}
                version = listing["metadata"]["resourceVersion"]
                failures = 0
                if on_synced:
                    await on_synced()
            async for kind, obj in api.watch(path, version):
                failures = 0
                if kind == "ERROR":
                    raise ApiError(obj.get("code", 500), obj.get("reason", ""), obj.get("message", ""))
                version = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    known.pop(_key(obj), None)
                else:
                    known[_key(obj)] = _slim(obj)
                await on_event(kind, obj)
        except asyncio.CancelledError:
            raise
        except ApiError as error:
            if error.status == 410:
                log.info("list/watch %s: resourceVersion %s expired (410 Gone); listing again", path, version)
                version = None
                continue
            failures += 1
            then = "listing again" if version is None else f"resuming the watch from resourceVersion {version}"
            log.warning("list/watch %s failed: %s; %s", path, error, then)
            await asyncio.sleep(reconnect_delay(failures, retry_delay, jitter=random.uniform(0.5, 1.0)))
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
            failures += 1
            then = "listing again" if version is None else f"resuming the watch from resourceVersion {version}"
            log.warning("list/watch %s lost the API server (%s); %s", path, error, then)
            await asyncio.sleep(reconnect_delay(failures, retry_delay, jitter=random.uniform(0.5, 1.0)))


def _key(obj: Object) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _slim(obj: Object) -> Object:
    """What a synthetic DELETED event needs: identity only, so memory stays small."""
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": {
        k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion") if k in obj["metadata"]}}
