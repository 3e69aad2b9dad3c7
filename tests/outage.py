"""A real outage in front of the simulator: a loopback HTTP proxy that can go down.

Modes: `up` forwards every request to the simulator; `refuse` closes the listening socket (new
connections are refused) and drops the connections already open; `503` answers every request
with Gemini's recorded overload error. The proxy runs its own event loop in a thread, so it
serves a job run in-process or in a child process alike.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any, Literal

import aiohttp
from aiohttp import web

Mode = Literal["up", "refuse", "503"]

OVERLOADED = {
    "error": {
        "code": 503,
        "message": "The model is overloaded. Please try again later.",
        "status": "UNAVAILABLE",
    }
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OutageProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode: Mode = "up"
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._client: aiohttp.ClientSession | None = None

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> OutageProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def set(self, mode: Mode) -> None:
        self._call(self._set(mode))

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        self._client = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def _set(self, mode: Mode) -> None:
        if mode == "refuse" and self._site is not None:
            await self._site.stop()
            self._site = None
        if mode != "refuse" and self._site is None:
            await self._listen()
        self.mode = mode

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "refuse":  # a connection opened before the outage: the network is gone
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never reaches the client: the socket is gone
        if self.mode == "503":
            return web.json_response(OVERLOADED, status=503)
        assert self._client is not None
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with self._client.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            kept = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=resp.status, body=data, headers=kept)
