"""cachedContents: the Gemini API's explicit context caches, per key's project, with a TTL.

`POST /{v}/cachedContents` ({model, systemInstruction, contents, ttl | expireTime,
displayName}) answers a CachedContent ({name, model, displayName, createTime, updateTime,
expireTime, usageMetadata.totalTokenCount}); `GET`, `PATCH` (ttl or expireTime) and `DELETE`
`/{v}/cachedContents/{id}`, and a paged list. A generateContent request that names a cache
(`cachedContent`) may not carry its own systemInstruction, must use the cache's model, and is
answered with the cache's tokens in `usageMetadata.cachedContentTokenCount` (inside
`promptTokenCount`). A cache smaller than the model's minimum is refused. Another project's or
an expired cache is 403 "CachedContent not found (or permission denied)" (the message the
SDKs report; the exact wording is not in the recordings).

The ledger bills what the service bills: the cache's tokens once when it is written (input
price), its storage per token-hour from creation to deletion, expiry or the simulator's exit
(`storage.seconds`, `storage.token_hours`), and each request's cached tokens (cached price).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from pipeline.sim import envelopes, reply, tokens
from pipeline.sim.auth import Gate, caller
from pipeline.sim.core import BadRequest, Req, known_model
from pipeline.sim.ledger import Ledger

DEFAULT_TTL = 3600.0
NOT_FOUND = "CachedContent not found (or permission denied)"


def min_tokens(model: str) -> int:
    """The smallest cache a model takes (the caching docs: 2,048 for 2.5 Flash, 4,096 for the
    Gemini 3.x models)."""
    return 2048 if model.startswith("gemini-2.5") else 4096


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(value: Any, where: str) -> float:
    text = str(value).strip()
    try:
        seconds = float(text.removesuffix("s"))
    except ValueError:
        seconds = -1.0
    if not text.endswith("s") or seconds < 0:
        raise BadRequest(
            f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Duration)"
        )
    return seconds


def _time(value: Any, where: str) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(
            f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Timestamp)"
        ) from None


def _texts(content: Any) -> list[str]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return [str(p["text"]) for p in parts or [] if isinstance(p, dict) and "text" in p]


@dataclass
class Entry:
    name: str
    project: str
    model: str
    system: str
    tokens: int
    display: str | None
    created: float
    updated: float
    expire: float

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "model": f"models/{self.model}"}
        if self.display:
            out["displayName"] = self.display
        out |= {
            "createTime": _stamp(self.created),
            "updateTime": _stamp(self.updated),
            "expireTime": _stamp(self.expire),
            "usageMetadata": {"totalTokenCount": self.tokens},
        }
        return out


class Contexts:
    """Owns the simulator's context caches: who may use which, until when, and their bill."""

    def __init__(self, projects: dict[str, str], ledger: Ledger):
        self.projects = projects  # key -> project, the simulator's own table
        self.ledger = ledger
        self.entries: dict[str, Entry] = {}
        self._ids = itertools.count(1)
        self._salt = os.urandom(3).hex()

    def routes(self, gate: Gate, app: web.Application) -> None:
        r = app.router
        for v in ("v1beta", "v1"):
            gate.add(r, "POST", f"/{v}/cachedContents", self.create, "google")
            gate.add(r, "GET", f"/{v}/cachedContents", self.list, "google")
            gate.add(r, "GET", f"/{v}/cachedContents/{{id}}", self.get, "google")
            gate.add(r, "PATCH", f"/{v}/cachedContents/{{id}}", self.update, "google")
            gate.add(r, "DELETE", f"/{v}/cachedContents/{{id}}", self.delete, "google")
        app.on_shutdown.append(self._shutdown)  # the storage of caches still alive

    # --- what generateContent asks --------------------------------------------------------

    def resolve(self, req: Req) -> tuple[int, Any] | None:
        """Fill `req` from the cache it names: (status, error body) when it may not use it."""
        self._sweep()
        entry = self.entries.get(req.context_cache or "")
        if entry is None or entry.project != self.projects.get(req.key):
            return 403, envelopes.google(403, "PERMISSION_DENIED", NOT_FOUND)
        if entry.model != req.model:
            return 400, envelopes.invalid_argument(
                f"Model used by GenerateContent request (models/{req.model}) and CachedContent "
                f"(models/{entry.model}) has to be the same."
            )
        req.system = entry.system
        return None

    def cached_tokens(self, req: Req) -> int:
        """The tokens a request that names a cache reads from it."""
        entry = self.entries.get(req.context_cache or "")
        return entry.tokens if entry is not None else 0

    # --- the endpoints ----------------------------------------------------------------------

    def _caller(self, request: web.Request) -> str:
        """The caller's project (the gate checked the key)."""
        self._sweep()
        return self.projects[caller(request).key]

    def _owned(self, request: web.Request) -> Entry | web.Response:
        """The caller's cache the path names, or the answer when it is not the caller's."""
        project = self._caller(request)
        entry = self.entries.get(f"cachedContents/{request.match_info['id']}")
        if entry is None or entry.project != project:
            return _json(envelopes.google(403, "PERMISSION_DENIED", NOT_FOUND), 403)
        return entry

    async def create(self, request: web.Request) -> web.Response:
        project = self._caller(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            return _json(envelopes.bad_json_payload(f"Unexpected token. {e}"), 400)
        if not isinstance(body, dict) or not body.get("model"):
            return _json(envelopes.invalid_argument("model is required."), 400)
        model = str(body["model"]).removeprefix("models/")
        if not known_model(model):
            version = request.path.split("/", 2)[1]
            return _json(envelopes.not_found(model, version, "createCachedContent"), 404)
        now = time.time()
        try:
            expire = self._expiry(body, now)
        except BadRequest as e:
            return _json(envelopes.invalid_argument(e.message), 400)
        # what the cache holds reads to the model as the instruction before the request's text
        texts = _texts(body.get("systemInstruction", body.get("system_instruction")))
        contents = body.get("contents")
        for content in contents if isinstance(contents, list) else []:
            texts.extend(_texts(content))
        held_text = "\n".join(texts)
        count = tokens.count(held_text)
        smallest = min_tokens(model)
        if count < smallest:
            too_small = (
                f"Cached content is too small. total_token_count={count}, "
                f"min_total_token_count={smallest}"
            )
            return _json(envelopes.invalid_argument(too_small), 400)
        name = f"cachedContents/{self._salt}{next(self._ids):06x}"
        display = body.get("displayName", body.get("display_name"))
        shown = str(display) if display else None
        entry = Entry(name, project, model, held_text, count, shown, now, now, expire)
        self.entries[name] = entry
        self._log(request.path, entry, written=count)
        return _json(entry.body())

    async def get(self, request: web.Request) -> web.Response:
        entry = self._owned(request)
        return entry if isinstance(entry, web.Response) else _json(entry.body())

    async def list(self, request: web.Request) -> web.Response:
        project = self._caller(request)
        mine = [e.body() for e in self.entries.values() if e.project == project]
        size = int(request.query.get("pageSize") or 50)
        start = int(request.query.get("pageToken") or 0)
        page: dict[str, Any] = {"cachedContents": mine[start : start + size]}
        if start + size < len(mine):
            page["nextPageToken"] = str(start + size)
        return _json(page)

    async def update(self, request: web.Request) -> web.Response:
        entry = self._owned(request)
        if isinstance(entry, web.Response):
            return entry
        now = time.time()
        try:
            body = orjson.loads(await request.read())
            entry.expire = self._expiry(body if isinstance(body, dict) else {}, now)
        except orjson.JSONDecodeError as e:
            return _json(envelopes.bad_json_payload(f"Unexpected token. {e}"), 400)
        except BadRequest as e:
            return _json(envelopes.invalid_argument(e.message), 400)
        entry.updated = now
        return _json(entry.body())

    async def delete(self, request: web.Request) -> web.Response:
        entry = self._owned(request)
        if isinstance(entry, web.Response):
            return entry
        self._end(entry, time.time(), request.path)
        return _json({})

    # --- lifetime and bill ------------------------------------------------------------------

    @staticmethod
    def _expiry(body: dict[str, Any], now: float) -> float:
        ttl = body.get("ttl")
        at = body.get("expireTime", body.get("expire_time"))
        if ttl is not None and at is not None:
            raise BadRequest("Only one of ttl and expire_time may be set.")
        if at is not None:
            return _time(at, "expire_time")
        return now + (_seconds(ttl, "ttl") if ttl is not None else DEFAULT_TTL)

    def _sweep(self) -> None:
        now = time.time()
        for entry in [e for e in self.entries.values() if e.expire <= now]:
            self._end(entry, entry.expire, None)

    def _end(self, entry: Entry, at: float, path: str | None) -> None:
        """The cache is gone (deleted, expired, or the simulator stops): bill its storage."""
        self.entries.pop(entry.name, None)
        self._log(path or entry.name, entry, held=max(0.0, at - entry.created))

    async def _shutdown(self, app: web.Application) -> None:
        now = time.time()
        for entry in list(self.entries.values()):
            self._end(entry, min(now, entry.expire), None)

    def _log(self, path: str, entry: Entry, *, written: int = 0, held: float | None = None) -> None:
        """A billed ledger line: the tokens written at creation, or the storage when it ends."""
        record: dict[str, Any] = {
            "t": time.time(),
            "api": "gemini",
            "path": path,
            "model": entry.model,
            "status": 200,
            "fault": None,
            "billed": True,
            "usage": {"prompt": written, "cached": 0, "output": 0, "thinking": 0},
            "items": 0,
            "lane": "standard",
            "http": held is None or path.startswith("/"),
            "response_id": None,
            "project": entry.project,
            "cache": entry.name,
        }
        if held is not None:
            seconds = round(held, 3)
            record["storage"] = {
                "tokens": entry.tokens,
                "seconds": seconds,
                "token_hours": entry.tokens * seconds / 3600,
            }
        self.ledger.record(record)


def _json(body: Any, status: int = 200) -> web.Response:
    return reply.json("gemini", status, body)
