"""The one HTTP seam. aiohttp behind it, chosen from measurements (README, "Performance"):
at 512 requests in flight against a 200 ms server aiohttp reached 99 % of ideal throughput,
httpx2 22-59 %, httpx 0.28.1 1 % (its pool scans every connection on every request).

The engine bounds requests in flight itself; the connector's limit equals that bound,
so nothing ever queues inside the pool.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import aiohttp
from yarl import URL

from pipeline.spec import Timeouts


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class TransportError(Exception):
    """No HTTP response: timeout, refused or dropped connection. `kind` says which."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class Transport(Protocol):
    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse: ...

    async def get(self, url: str, headers: dict[str, str]) -> HttpResponse: ...

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> HttpResponse: ...

    async def aclose(self) -> None: ...


# only the headers flow control reads, and only on a refusal (not a 200); copying all of them
# costs time per request
_KEPT_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


class AiohttpTransport:
    def __init__(self, timeouts: Timeouts, max_in_flight: int):
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._max_in_flight = max_in_flight
        self._session: aiohttp.ClientSession | None = None
        # the online lane posts to one or two URLs all run long: each is parsed once, where
        # aiohttp would parse the string again for every request
        self._post_urls: dict[str, URL] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_in_flight, limit_per_host=0, ttl_dns_cache=300
            )
            # the default headers carry our User-Agent, so aiohttp adds none of its own;
            # `skip_auto_headers` would do the same at the cost of a CIMultiDict per request
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"user-agent": "flashpipe/0.1"},
                auto_decompress=True,
            )
        return self._session

    async def _send(
        self,
        method: str,
        url: str | URL,
        headers: dict[str, str],
        body: bytes | None,
        all_headers: bool = False,
    ) -> HttpResponse:
        try:
            async with self._client().request(method, url, data=body, headers=headers) as resp:
                data = await resp.read()
                status = resp.status
                if all_headers:
                    kept = {k.lower(): v for k, v in resp.headers.items()}
                elif status == 200:  # the delays matter only on a refusal
                    kept = {}
                else:
                    kept = {k: v for k in _KEPT_HEADERS if (v := resp.headers.get(k)) is not None}
                return HttpResponse(status, kept, data)
        except TimeoutError as exc:
            raise TransportError("timeout", str(exc) or "no answer within the timeout") from None
        except aiohttp.ServerDisconnectedError as exc:
            raise TransportError("dropped", str(exc) or "server closed the connection") from None
        except aiohttp.ClientPayloadError as exc:
            raise TransportError("dropped", f"incomplete body ({exc})") from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError("connect", str(exc)) from None
        except aiohttp.ClientError as exc:
            raise TransportError("connection", f"{type(exc).__name__}: {exc}") from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise TransportError("dropped", f"{type(exc).__name__}: {exc}") from None

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        parsed = self._post_urls.get(url)
        if parsed is None:
            if len(self._post_urls) >= 16:
                self._post_urls.clear()
            parsed = self._post_urls[url] = URL(url)
        return await self._send("POST", parsed, headers, body)

    async def get(self, url: str, headers: dict[str, str]) -> HttpResponse:
        return await self._send("GET", url, headers, None)

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> HttpResponse:
        """Any method, every response header kept (the Batch lane's file and job calls)."""
        return await self._send(method, url, headers, body, all_headers=True)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
