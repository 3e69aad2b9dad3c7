"""Baseline clients: bare aiohttp and httpx loops, and the cookbook parallel processor.

Request bodies are the exact bytes flashpipe's own provider encodes for the same rows, so the
baselines and flashpipe send identical requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvloop

from pipeline.core.reply import Prompt
from pipeline.lanes.build import build_provider
from pipeline.sources import read_batches
from pipeline.spec import load_spec
from pipeline.tasks import build_task

KEY = "sim-key"


@dataclass
class Requests:
    url: str
    headers: dict[str, str]
    bodies: list[bytes]


def requests_for(doc: dict[str, Any], limit: int | None = None) -> Requests:
    """The URL, headers and per-row bodies flashpipe would send for this job document."""
    spec = load_spec(document=doc)
    task = build_task(spec)
    provider = build_provider(spec)
    bodies: list[bytes] = []
    for batch in read_batches(spec.input):
        for row in batch:
            prompt = Prompt(task.shape, task.render(row), spec.provider.max_output_tokens)
            bodies.append(provider.encode(prompt))
            if limit is not None and len(bodies) >= limit:
                break
        if limit is not None and len(bodies) >= limit:
            break
    return Requests(provider.url(), provider.headers(KEY), bodies)


@dataclass
class LoopResult:
    done: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


Send = Callable[[bytes], Awaitable[int]]


async def _drive(send: Send, bodies: list[bytes], concurrency: int, seconds: float) -> LoopResult:
    """`concurrency` workers post bodies until all are sent or `seconds` have passed."""
    it: Iterator[bytes] = iter(bodies)
    done = errors = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, errors
        for body in it:
            if time.monotonic() > deadline:
                return
            try:
                status = await send(body)
            except (aiohttp.ClientError, httpx.HTTPError, OSError):
                status = 0
            if status == 200:
                done += 1
            else:
                errors += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoopResult(done, errors, time.monotonic() - t0)


def aiohttp_loop(
    reqs: Requests, concurrency: int, seconds: float = 600, *, timeout: float = 60
) -> LoopResult:
    """The ceiling: one aiohttp session, TCPConnector(limit=concurrency), on uvloop."""

    async def main() -> LoopResult:
        conn = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
        async with aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session:

            async def send(body: bytes) -> int:
                async with session.post(reqs.url, data=body, headers=reqs.headers) as resp:
                    await resp.read()
                    return resp.status

            return await _drive(send, reqs.bodies, concurrency, seconds)

    return uvloop.run(main())


def httpx_loop(reqs: Requests, concurrency: int, seconds: float = 600) -> LoopResult:
    """The naive stack: one httpx.AsyncClient with a pool of `concurrency` connections."""

    async def main() -> LoopResult:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:

            async def send(body: bytes) -> int:
                resp = await client.post(reqs.url, content=body, headers=reqs.headers)
                return resp.status_code

            return await _drive(send, reqs.bodies, concurrency, seconds)

    return uvloop.run(main())


# -- the OpenAI cookbook's api_request_parallel_processor pattern, condensed ----------------


@dataclass
class _Tracker:
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    rate_limited: int = 0
    last_rate_limit: float = 0.0


@dataclass
class _Request:
    task_id: int
    body: dict[str, Any]
    tokens: int
    attempts_left: int
    result: list[Any]


def cookbook_processor(
    reqs: Requests,
    save_path: Path,
    *,
    max_requests_per_minute: float,
    max_tokens_per_minute: float,
    max_connections: int,
    max_attempts: int = 5,
) -> LoopResult:
    """One task per request, a capacity-based limiter refilled each 1 ms loop turn, results
    appended to a JSONL file (json + open/append per result, as in the cookbook)."""
    requests = [json.loads(b) for b in reqs.bodies]

    async def call(
        session: aiohttp.ClientSession, r: _Request, retry: asyncio.Queue[_Request], st: _Tracker
    ) -> None:
        error: Any = None
        try:
            async with session.post(reqs.url, headers=reqs.headers, json=r.body) as resp:
                response = await resp.json(content_type=None)
            if resp.status != 200 or "error" in response:
                error = response
                if resp.status == 429:
                    st.rate_limited += 1
                    st.last_rate_limit = time.time()
        except Exception as exc:  # the cookbook catches everything and retries
            error = str(exc)
        if error is not None:
            r.result.append(error)
            if r.attempts_left:
                retry.put_nowait(r)
            else:
                with save_path.open("a") as f:
                    f.write(json.dumps([r.body, [str(e) for e in r.result]]) + "\n")
                st.in_progress -= 1
                st.failed += 1
        else:
            with save_path.open("a") as f:
                f.write(json.dumps([r.body, response]) + "\n")
            st.in_progress -= 1
            st.succeeded += 1

    async def main() -> LoopResult:
        st = _Tracker()
        retry: asyncio.Queue[_Request] = asyncio.Queue()
        pending = iter(enumerate(requests))
        next_request: _Request | None = None
        req_capacity, tok_capacity = max_requests_per_minute, max_tokens_per_minute
        last_update = time.time()
        finished = False
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        conn = aiohttp.TCPConnector(limit=max_connections)
        async with aiohttp.ClientSession(connector=conn) as session:
            while True:
                if next_request is None:
                    if not retry.empty():
                        next_request = retry.get_nowait()
                    elif not finished:
                        item = next(pending, None)
                        if item is None:
                            finished = True
                        else:
                            i, body = item
                            tokens = len(json.dumps(body)) // 4
                            next_request = _Request(i, body, tokens, max_attempts, [])
                            st.in_progress += 1
                now = time.time()
                elapsed = now - last_update
                req_capacity = min(
                    req_capacity + max_requests_per_minute * elapsed / 60,
                    max_requests_per_minute,
                )
                tok_capacity = min(
                    tok_capacity + max_tokens_per_minute * elapsed / 60, max_tokens_per_minute
                )
                last_update = now
                if (
                    next_request is not None
                    and req_capacity >= 1
                    and tok_capacity >= next_request.tokens
                ):
                    req_capacity -= 1
                    tok_capacity -= next_request.tokens
                    next_request.attempts_left -= 1
                    task = asyncio.create_task(call(session, next_request, retry, st))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    next_request = None
                if st.in_progress == 0:
                    break
                await asyncio.sleep(0.001)
                pause = 15 - (time.time() - st.last_rate_limit)
                if st.rate_limited and pause > 0:
                    await asyncio.sleep(pause)
        return LoopResult(st.succeeded, st.failed, time.monotonic() - t0)

    save_path.unlink(missing_ok=True)
    return uvloop.run(main())
