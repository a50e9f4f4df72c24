"""``SyncApi``: the product's ``KubeApi`` for synchronous callers (the sandbox's table, the dev cluster's own
probes, synchronous tests), on an event loop of its own in a background thread.

One HTTP client and one error type (``kube.client.ApiError``) for the product and its tooling alike.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from secprofiles.kube.client import ApiError, Credentials, KubeApi
from secprofiles.objects import Object

T = TypeVar("T")
P = ParamSpec("P")


class SyncApi:
    """A ``KubeApi`` whose calls block until answered. Close it (or use it as a context manager)."""

    def __init__(self, credentials: Credentials, user_agent: str = "secprofiles-devtools") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"SyncApi {credentials.server}",
                                        daemon=True)
        self._thread.start()
        self.api: KubeApi = self.run(self._open(credentials, user_agent))

    @staticmethod
    async def _open(credentials: Credentials, user_agent: str) -> KubeApi:
        return KubeApi(credentials, user_agent=user_agent)  # its session binds to the running (background) loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop and wait for its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def call(self, function: Callable[Concatenate[KubeApi, P], Awaitable[T]], *args: P.args,
             **kwargs: P.kwargs) -> T:
        """``function(kube_api, *args, **kwargs)`` for an async helper written against ``KubeApi``."""

        async def invoke() -> T:
            return await function(self.api, *args, **kwargs)

        return self.run(invoke())

    def request(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
                content_type: str = "application/json") -> Object:
        """See ``KubeApi.request``."""
        return self.run(self.api.request(method, path, body, params, content_type))

    def get(self, path: str) -> Object | None:
        """See ``KubeApi.get`` (None for a missing object)."""
        return self.run(self.api.get(path))

    def get_text(self, path: str) -> str:
        """See ``KubeApi.get_text``."""
        return self.run(self.api.get_text(path))

    def create(self, path: str, body: Object) -> Object:
        """See ``KubeApi.create``."""
        return self.run(self.api.create(path, body))

    def patch(self, path: str, body: Any, patch_type: str = "merge", params: dict[str, str] | None = None) -> Object:
        """See ``KubeApi.patch``."""
        return self.run(self.api.patch(path, body, patch_type, params))

    def delete(self, path: str) -> None:
        """See ``KubeApi.delete`` (a missing object is not an error)."""
        self.run(self.api.delete(path))

    def refusal(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
                content_type: str = "application/json") -> ApiError | None:
        """The API server's refusal of one request, or None when it succeeded (for tests of admission rules)."""
        try:
            self.request(method, path, body, params, content_type)
        except ApiError as error:
            return error
        return None

    def close(self) -> None:
        """Close the connections and stop the loop's thread."""
        if self._thread.is_alive():
            self.run(self.api.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
