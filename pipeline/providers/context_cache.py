"""Gemini explicit context caching: one cachedContents entry holding a job's instructions.

A job's system instruction is the same in every request. With `[provider] context_cache`, a
run puts it in a cache once (`POST /v1beta/cachedContents` with a TTL), every request names the
cache (`"cachedContent": "cachedContents/..."`, no `systemInstruction`), the TTL is extended
while the run lasts, and the cache is deleted at the end. The requests' cached tokens are billed
at the cached price (`usageMetadata.cachedContentTokenCount`); the cache itself costs its tokens
once at the input price when it is written and its storage per token-hour while it exists.

Only the instruction is cached: a cachedContents entry holds contents, a system instruction and
tools, while the answer schema lives in `generationConfig`, which every request still sends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import anyio
import anyio.abc
import orjson

from pipeline.catalog import model_limits
from pipeline.core.records import StopReason
from pipeline.core.retry import ErrorClass
from pipeline.providers.base import classify_error, google_error
from pipeline.providers.gemini import GeminiProvider
from pipeline.spec import JobSpec
from pipeline.transport import HttpResponse, Transport, TransportError

log = logging.getLogger(__name__)

TTL_SECONDS = 1800  # extended every half TTL while the run lasts: a killed run's cache ends soon
TRIES = 3


@dataclass(frozen=True)
class CacheBill:
    """What a run's cache cost: its tokens (written once) and how long it was held."""

    name: str
    tokens: int
    seconds: float


class CacheRefused(Exception):
    """The provider did not create, extend or delete the cache; `cls` says why."""

    def __init__(self, message: str, cls: ErrorClass):
        super().__init__(message)
        self.cls = cls


class CachedContents:
    """The cachedContents endpoints of the Gemini API for one model and key."""

    def __init__(self, transport: Transport, base_url: str, model: str, headers: dict[str, str]):
        self._t = transport
        self._base = base_url
        self._model = "models/" + model.removeprefix("models/")
        self._headers = headers

    async def _call(self, method: str, path: str, body: object | None = None) -> HttpResponse:
        data = orjson.dumps(body) if body is not None else None
        try:
            resp = await self._t.request(method, f"{self._base}/v1beta/{path}", self._headers, data)
        except TransportError as exc:
            raise CacheRefused(f"{method} {path}: {exc}", ErrorClass.TRANSIENT) from None
        if resp.status != 200:
            reply = classify_error(resp, google_error)
            cls = reply.error_class or ErrorClass.TRANSIENT
            raise CacheRefused(f"{method} {path.split('?')[0]}: {reply.error}", cls)
        return resp

    async def create(self, system: str, display: str, ttl_s: int) -> tuple[str, int]:
        """(the cache's name, its tokens)."""
        body = {
            "model": self._model,
            "displayName": display[:128],
            "systemInstruction": {"parts": [{"text": system}]},
            "ttl": f"{ttl_s}s",
        }
        doc = orjson.loads((await self._call("POST", "cachedContents", body)).body)
        tokens = int((doc.get("usageMetadata") or {}).get("totalTokenCount", 0) or 0)
        return str(doc["name"]), tokens

    async def extend(self, name: str, ttl_s: int) -> None:
        await self._call("PATCH", f"{name}?updateMask=ttl", {"ttl": f"{ttl_s}s"})

    async def delete(self, name: str) -> None:
        await self._call("DELETE", name)


async def _tries(call: Callable[[], Awaitable[object]]) -> None:
    delay = 1.0
    for attempt in range(1, TRIES + 1):
        try:
            await call()
            return
        except CacheRefused as exc:
            if exc.cls is not ErrorClass.TRANSIENT or attempt == TRIES:
                raise
            await anyio.sleep(delay)
            delay *= 2


class RunCache:
    """Owns one run's context cache: creates it on entry (or decides not to), keeps it alive
    while the run lasts, deletes it on exit, and leaves its bill in `bill`.

    `mode` "on" stops the run (`stop`) when the provider refuses the cache; "auto" caches the
    instruction only when it `fits` (reaches the model's smallest cache) and runs uncached
    when the provider refuses. `use(system, name)` tells the provider to name the
    cache instead of sending that instruction (`name` None: send it again).
    """

    def __init__(
        self,
        api: CachedContents,
        system: str,
        display: str,
        mode: str,
        fits: bool,
        use: Callable[[str, str | None], None],
        stop: Callable[[StopReason, str], None],
    ):
        self._api = api
        self._system = system
        self._display = display
        self._mode = mode
        self._fits = fits
        self._use = use
        self._stop = stop
        self._name: str | None = None
        self._tokens = 0
        self._started = 0.0
        self._tg: anyio.abc.TaskGroup | None = None
        self.bill: CacheBill | None = None

    async def __aenter__(self) -> RunCache:
        if self._mode == "off" or (self._mode == "auto" and not self._fits):
            return self
        self._started = time.monotonic()
        created: list[tuple[str, int]] = []

        async def create() -> None:
            created.append(await self._api.create(self._system, self._display, TTL_SECONDS))

        try:
            await _tries(create)
        except CacheRefused as exc:
            if self._mode == "on":  # the run stops before its first request, resumable
                self._stop(
                    StopReason.PROVIDER, f"provider.context_cache: no cache was created: {exc}"
                )
            else:
                log.warning("context cache not created, the run sends its instructions: %s", exc)
            return self
        self._name, self._tokens = created[0]
        self._use(self._system, self._name)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._extend_while_running)
        return self

    async def _extend_while_running(self) -> None:
        assert self._name is not None
        while True:
            await anyio.sleep(TTL_SECONDS / 2)
            try:
                await self._api.extend(self._name, TTL_SECONDS)
            except CacheRefused as exc:
                log.warning("context cache %s not extended: %s", self._name, exc)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._name is None or self._tg is None:
            return
        self._use(self._system, None)
        name = self._name
        held = float(TTL_SECONDS)  # not deleted: it is billed until its TTL runs out
        self._tg.cancel_scope.cancel()  # the keep-alive
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):  # an interrupted run still deletes its cache
                try:
                    await _tries(lambda: self._api.delete(name))
                    held = 0.0
                except CacheRefused as refused:
                    log.warning("context cache %s not deleted (it expires): %s", name, refused)
            self.bill = CacheBill(name, self._tokens, time.monotonic() - self._started + held)


def for_run(
    spec: JobSpec,
    system: str,
    transport: Transport,
    headers: dict[str, str],
    provider: object,
    stop: Callable[[StopReason, str], None],
) -> RunCache:
    """The context cache of one run of `spec` whose requests carry `system` (the packed
    instruction when rows are packed). Off unless the job asks for it on the Gemini API's
    online lanes in this process with one key (Ray workers build providers of their own, and
    a cache belongs to one key's project)."""
    p = spec.provider
    mode = p.context_cache
    if (
        not isinstance(provider, GeminiProvider)
        or p.api != "gemini"
        or p.lane not in ("standard", "flex")
        or spec.engine.kind != "local"
        or p.pools
    ):
        mode = "off"
    # about four bytes of UTF-8 a token, as the engine's reservations count
    fits = len(system.encode("utf-8", "replace")) // 4 + 1 >= model_limits(spec.model).cache_min
    api = CachedContents(transport, p.base_url, spec.model, headers)
    use = provider.use_cache if isinstance(provider, GeminiProvider) else _unused
    return RunCache(api, system, f"flashpipe {spec.name}", mode, fits, use, stop)


def _unused(system: str, name: str | None) -> None:
    raise AssertionError("a cache was created for a provider that cannot name it")
