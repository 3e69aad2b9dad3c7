"""The aiohttp app and the online endpoints: quota, faults, latency, rendering; the batch
endpoints are in batch_routes.py, the key checks in auth.py."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
from aiohttp import web

from pipeline.sim import chat, core, envelopes, gemini, reply, vertex
from pipeline.sim.auth import Gate, Scheme, caller
from pipeline.sim.batch_routes import Batches
from pipeline.sim.config import Config
from pipeline.sim.contexts import Contexts
from pipeline.sim.core import BadRequest, Req, Result
from pipeline.sim.faults import PROFILES, Picker
from pipeline.sim.ledger import Ledger
from pipeline.sim.quota import Quota
from pipeline.sim.record import Recorder
from pipeline.sim.reply import GOOGLE_JSON, OPENAI_JSON

SSE = "text/event-stream"
ERRORS = {"429", "429-day", "400", "403", "404", "500", "503", "504", "insufficient_quota"}
ON_GEMINI = {"refusal": "safety", "content_filter": "safety", "insufficient_quota": "429-day"}
ON_OPENAI = {"safety": "content_filter", "prohibited": "content_filter"}
ON_OPENAI |= {"prompt_blocked": "content_filter"}
ON_COMPAT = ON_OPENAI | {"insufficient_quota": "429-day"}


class Sim:
    """Owns the simulated service's state (quota, cache, faults, ledger, tokens, batches) and the
    online endpoints; the batch endpoints are batch_routes.py's, every key check auth.py's."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        rates = dict(PROFILES[cfg.profile])
        rates.update(cfg.faults)
        self.picker = Picker(rates, cfg.seed)
        self.jitter = random.Random(cfg.seed + 1)
        latency = cfg.latency_ms
        if latency is None:
            latency = 0 if cfg.profile == "clean" else 20
        self.latency = latency / 1000
        self.projects = {cfg.key: cfg.key, **cfg.keys}
        self.quota = Quota(cfg.rpm, cfg.tpm, cfg.rpd, cfg.project_limits)
        self.ledger = Ledger(cfg.ledger)
        self.record = Recorder(self.ledger, self.projects, cfg.seed)
        self.cache: set[tuple[str, str, int]] = set()
        self.flex_rng = random.Random(cfg.seed + 2)
        self.tokens = vertex.Tokens(cfg.token_seconds)
        self.gate = Gate(self.projects, self.tokens, cfg.key)
        self.batches = Batches(cfg, self.record, self.picker)
        self.contexts = Contexts(self.projects, self.ledger)

    # --- plumbing ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self.gate.middleware])
        r = app.router
        self.gate.add(r, "POST", "/v1/chat/completions", self.chat_completions, "bearer")
        self.gate.add(r, "POST", "/v1beta/openai/chat/completions", self.chat_completions, "compat")
        for v in ("v1beta", "v1"):
            r.add_post(f"/{v}/models/{{call}}", self.gemini)
            self.gate.add(r, "GET", f"/{v}/models", self.list_models, "either")
            r.add_get(f"/{v}/models/{{name}}", self.get_model)
        self.batches.routes(self.gate, r)
        self.contexts.routes(self.gate, app)
        r.add_post("/token", self.token)
        for v in ("v1beta1", "v1"):
            path = f"/{v}/projects/{{project}}/locations/{{location}}/publishers/google/models"
            r.add_post(f"{path}/{{call}}", self.vertex)
        return app

    def bad_request(self, api: str, e: BadRequest) -> web.Response:
        if api == "openai":
            body = envelopes.openai(e.message, "invalid_request_error", e.code, e.field)
            return reply.json(api, 400, body)
        if e.violations:
            return reply.json(api, 400, envelopes.field_violations(e.violations))
        return reply.json(api, 400, envelopes.invalid_argument(e.message))

    # --- Gemini ------------------------------------------------------------------------------

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "google")

    async def vertex(self, request: web.Request) -> web.StreamResponse:
        """Vertex's project/location path: a bearer token instead of a key, `labels` checked,
        no batchGenerateContent; the rest is the Gemini API's."""
        return await self._generate(request, "vertex")

    async def _generate(self, request: web.Request, scheme: Scheme) -> web.StreamResponse:
        version = request.path.split("/", 2)[1]
        model_id, _, method = request.match_info["call"].partition(":")
        api = "gemini"
        known = ["generateContent", "streamGenerateContent", "countTokens"]
        if scheme != "vertex":
            known.append("batchGenerateContent")
        if method not in known:
            return reply.json(api, 404, envelopes.google(404, "NOT_FOUND", "Method not found."))
        who = self.gate.check(request, scheme)  # after the method: an unknown one is a 404 first
        if isinstance(who, web.Response):
            return who
        key, token = who.key, who.token
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            return reply.json(api, 400, envelopes.bad_json_payload(f"Unexpected token. {e}"))
        if not core.known_model(model_id):
            return reply.json(api, 404, envelopes.not_found(model_id, version, method))
        if method == "batchGenerateContent":
            return await self.batches.gemini.create(request, key, model_id, body)
        req = Req(api, request.path, model_id, key, vertex=token is not None, token=token)
        req.stream = method == "streamGenerateContent"
        req.sse = req.stream and request.query.get("alt") == "sse"
        if method == "countTokens" and isinstance(body, dict):
            inner = body.get("generateContentRequest", body.get("generate_content_request"))
            body = inner if isinstance(inner, dict) else body
        if req.vertex and isinstance(body, dict):
            bad_labels = vertex.labels_error(body.get("labels"))
            if bad_labels is not None:
                return reply.json(api, 400, envelopes.invalid_argument(bad_labels))
            req.labels = body.get("labels")
        try:
            gemini.parse(body, req)
        except BadRequest as e:
            return self.bad_request(api, e)
        if req.context_cache is not None and (refused := self.contexts.resolve(req)):
            return reply.json(api, *refused)
        if method == "countTokens":
            total, _ = core.prompt_tokens(req)
            detail = [{"modality": "TEXT", "tokenCount": total}]
            return reply.json(api, 200, {"totalTokens": total, "promptTokensDetails": detail})
        return await self.complete(request, req, version, method)

    # --- Vertex AI -----------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        audience = str(request.url.with_query(None))
        status, body = self.tokens.grant(form, audience)
        return web.json_response(body, status=status)

    async def list_models(self, request: web.Request) -> web.Response:
        models = [_model_info(m) for m in core.KNOWN_MODELS if m.startswith("gemini-")]
        size = int(request.query.get("pageSize") or 50)
        start = int(request.query.get("pageToken") or 0)
        page: dict[str, Any] = {"models": models[start : start + size]}
        if start + size < len(models):
            page["nextPageToken"] = str(start + size)
        return reply.json("gemini", 200, page)

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not core.known_model(name):
            version = request.path.split("/", 2)[1]
            return reply.json("gemini", 404, envelopes.not_found(name, version, "get"))
        return reply.json("gemini", 200, _model_info(name))

    # --- OpenAI ------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's endpoint, or Gemini's OpenAI-compatible one: the caller's scheme says."""
        api, key = caller(request).api, caller(request).key
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            if api == "openai":
                return reply.json(api, 400, envelopes.OPENAI_BAD_JSON)
            return reply.json(api, 400, envelopes.bad_json_payload(f"Unexpected token. {e}"))
        req = Req(api, request.path, "", key)
        try:
            chat.parse(body, req)
        except BadRequest as e:
            return self.bad_request(api, e)
        if not core.known_model(req.model):
            if api == "openai":
                return reply.json(api, 404, envelopes.openai_not_found(req.model))
            return reply.json(api, 404, envelopes.not_found(req.model, "v1beta", "generateContent"))
        return await self.complete(request, req, "v1beta", "generateContent")

    # --- the common path ---------------------------------------------------------------------

    def _quota_error(self, req: Req) -> web.Response | None:
        prompt, _ = core.prompt_tokens(req)
        project = self.projects.get(req.key, req.key)
        verdict = self.quota.admit(project, prompt, time.monotonic())
        if verdict is None:
            return None
        self.record.call(req, 429, "quota")
        wait = max(1.0, verdict.retry_s)
        if req.api == "openai":
            body = envelopes.openai_rate_limit(
                req.model, per=verdict.per, limit=verdict.limit, used=verdict.used, retry_s=wait
            )
            headers = {"retry-after": str(round(wait)), "retry-after-ms": str(round(wait * 1000))}
            return reply.json(req.api, 429, body, headers)
        if req.vertex:
            return reply.json(req.api, 429, vertex.exhausted())
        body = envelopes.quota(req.model, per=verdict.per, limit=verdict.limit, retry_s=wait)
        return reply.json(req.api, 429, body)

    def _fault_error(self, req: Req, fault: str, version: str, method: str) -> web.Response:
        rpm, rpd = self.cfg.rpm or 60, self.cfg.rpd or 250
        if req.api == "openai":
            found = chat.fault_error(fault, req.model, rpm, rpd)
            assert found is not None
            status, body, wait = found
            headers = {}
            if wait:
                headers = {
                    "retry-after": str(round(wait)),
                    "retry-after-ms": str(round(wait * 1000)),
                }
            self.record.call(req, status, fault)
            return reply.json(req.api, status, body, headers)
        error = gemini.fault_error(
            fault, req.model, version, method, rpm, rpd, self.cfg.fault_retry_s
        )
        assert error is not None
        self.record.call(req, error[0], fault)
        if req.vertex and error[0] == 429:
            return reply.json(req.api, 429, vertex.exhausted())
        return reply.json(req.api, error[0], error[1])

    async def _shed(self, req: Req) -> web.Response:
        """Flex has no capacity for this call: refused at once and not billed. Gemini answers
        a bare 503 UNAVAILABLE, OpenAI a 429 that names no rate limit of the key."""
        if self.latency:
            await asyncio.sleep(self.latency * 0.2)
        self.record.call(req, 503 if req.api != "openai" else 429, "flex_shed")
        if req.api == "openai":
            body = envelopes.openai(
                "Resource unavailable: there is no Flex capacity for this request right now. "
                "Please retry later or use the default service tier.",
                "resource_unavailable",
                "resource_unavailable",
            )
            return reply.json(req.api, 429, body)
        body = envelopes.google(
            503, "UNAVAILABLE", "The model is overloaded. Please try again later."
        )
        return reply.json(req.api, 503, body)

    def _cached(self, req: Req) -> int:
        if req.context_cache is not None:
            return self.contexts.cached_tokens(req)
        _, system = core.prompt_tokens(req)
        if system < self.cfg.cache_min_tokens or system == 0:
            return 0
        entry = (req.key, req.model, hash(req.system))
        if entry in self.cache:
            return system
        self.cache.add(entry)
        return 0

    async def complete(
        self, request: web.Request, req: Req, version: str, method: str
    ) -> web.StreamResponse:
        if (
            req.tier == "flex"
            and self.cfg.flex_shed
            and self.flex_rng.random() < self.cfg.flex_shed
        ):
            return await self._shed(req)
        limited = self._quota_error(req)
        if limited is not None:
            return limited
        fault, drop = self.picker.forced(
            request.headers.get("x-sim-fault"), core.unpacked_texts(req)
        )
        if fault is None:
            fault = self.picker.draw()
        if fault is not None:
            mapping = ON_GEMINI if req.api == "gemini" else ON_OPENAI
            fault = (ON_COMPAT if req.api == "openai-compat" else mapping).get(fault, fault)
        if fault == "drop":
            self.record.call(req, 0, fault)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if fault in ERRORS:
            assert fault is not None
            if self.latency:
                await asyncio.sleep(self.latency * self.jitter.uniform(0.5, 1.5))
            return self._fault_error(req, fault, version, method)
        delay = self.latency * self.jitter.uniform(0.5, 1.5) if self.latency else 0.0
        if req.tier == "flex":
            delay *= self.cfg.flex_slowdown
        if fault == "hang":
            delay += self.cfg.hang_seconds
        if delay:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self.record.call(req, 499, fault)
                raise
            if request.transport is None or request.transport.is_closing():
                self.record.call(req, 499, fault)
                return web.Response(status=499)
        result = core.generate(req, fault, drop, self._cached(req))
        rid = self.record.response_id()
        if req.api == "gemini":
            return await self._send_gemini(request, req, result, rid, fault)
        return await self._send_chat(request, req, result, rid, fault)

    async def _send_gemini(
        self, request: web.Request, req: Req, r: Result, rid: str, fault: str | None
    ) -> web.StreamResponse:
        if fault == "truncated_body":
            raw = orjson.dumps(gemini.body(r, req.model, rid))
            self.record.call(req, 200, fault)
            return web.Response(body=raw[: len(raw) // 2], headers=GOOGLE_JSON)
        if not req.stream:
            self.record.call(req, 200, fault, r, rid)
            return web.Response(
                body=orjson.dumps(gemini.body(r, req.model, rid)), headers=GOOGLE_JSON
            )
        parts = [orjson.dumps(c) for c in gemini.chunks(r, req.model, rid)]
        if not req.sse:
            self.record.call(req, 200, fault, r, rid)
            return web.Response(body=b"[" + b"\n,\n".join(parts) + b"]", headers=GOOGLE_JSON)
        return await self._stream(
            request, req, [b"data: " + p + b"\r\n\r\n" for p in parts], r, rid, fault
        )

    async def _send_chat(
        self, request: web.Request, req: Req, r: Result, rid: str, fault: str | None
    ) -> web.StreamResponse:
        rid = "chatcmpl-" + rid if req.api == "openai" else rid
        created = int(time.time())
        headers = dict(OPENAI_JSON if req.api == "openai" else GOOGLE_JSON)
        if req.api == "openai":
            project = self.projects.get(req.key, req.key)
            left_r, left_t = self.quota.remaining(project)
            rpm, tpm, _ = self.quota.limits(project)
            headers.update(chat.rate_headers(rpm or 5000, left_r, tpm or 4_000_000, left_t))
            headers["x-request-id"] = "req_" + rid[9:]
        if fault == "truncated_body":
            raw = orjson.dumps(chat.body(r, req.model, rid, created))
            self.record.call(req, 200, fault)
            return web.Response(body=raw[: len(raw) // 2], headers=headers)
        if not req.stream:
            self.record.call(req, 200, fault, r, rid)
            tier = "flex" if req.tier == "flex" else "default"
            body = orjson.dumps(chat.body(r, req.model, rid, created, tier))
            return web.Response(body=body, headers=headers)
        events = [
            b"data: " + orjson.dumps(c) + b"\n\n"
            for c in chat.chunks(r, req.model, rid, created, req.include_usage)
        ]
        events.append(b"data: [DONE]\n\n")
        return await self._stream(request, req, events, r, rid, fault, headers)

    async def _stream(
        self,
        request: web.Request,
        req: Req,
        events: list[bytes],
        r: Result,
        rid: str,
        fault: str | None,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**(headers or {}), "Content-Type": SSE})
        try:
            await resp.prepare(request)
            for event in events:
                await resp.write(event)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.record.call(req, 499, fault)
            raise
        self.record.call(req, 200, fault, r, rid)
        return resp


def _model_info(name: str) -> dict[str, Any]:
    title = " ".join(w.capitalize() for w in name.split("-"))
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": title,
        "description": f"Simulated {title}.",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": [
            "generateContent",
            "countTokens",
            "createCachedContent",
            "batchGenerateContent",
        ],
        "temperature": 1,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2,
        "thinking": True,
    }
