"""The batch endpoints of both APIs in one table: each route with its auth scheme, and the
operations both APIs have (get, list, cancel) written once over the caller's dialect."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from pipeline.sim.auth import Gate, Handler, Scheme, caller
from pipeline.sim.batch import Dialect, Job, ProviderBatches
from pipeline.sim.batch_gemini import GeminiBatches
from pipeline.sim.batch_openai import OpenAIBatches
from pipeline.sim.config import Config
from pipeline.sim.faults import Picker
from pipeline.sim.record import Recorder


class BatchApi(Dialect, Protocol):
    """What the shared operations need of an API beyond its dialect."""

    def job_name(self, name: str) -> str: ...

    def json(self, status: int, body: Any) -> web.Response: ...

    def not_found(self) -> web.Response: ...

    def page(self, jobs: list[Job], query: Mapping[str, str]) -> dict[str, Any]: ...

    def view(self, job: Job) -> dict[str, Any]: ...

    def cancelled(self, job: Job) -> dict[str, Any]: ...


class Batches:
    """Owns the batch book and the two APIs that read and write it."""

    def __init__(self, cfg: Config, record: Recorder, picker: Picker):
        self.book = ProviderBatches(cfg, record, picker)
        self.gemini = GeminiBatches(self.book, cfg.host)
        self.openai = OpenAIBatches(self.book)
        self.apis: dict[str, BatchApi] = {"gemini": self.gemini, "openai": self.openai}

    def routes(self, gate: Gate, router: web.UrlDispatcher) -> None:
        table: list[tuple[str, str, Handler, Scheme]] = []
        for v in ("v1beta", "v1"):
            table += [
                ("POST", f"/upload/{v}/files", self.gemini.upload, "upload"),
                ("GET", f"/{v}/files/{{name}}", self.gemini.file_get, "google"),
                ("GET", f"/download/{v}/files/{{name}}", self.gemini.file_get, "google"),
                ("POST", f"/{v}/batches/{{name}}", self.cancel_gemini, "google"),
                ("DELETE", f"/{v}/batches/{{name}}", self.gemini.delete, "google"),
            ]
        table += [
            ("GET", "/v1beta/batches", self.list, "google"),
            ("GET", "/v1beta/batches/{name}", self.get, "google"),
            # /v1/batches is both Gemini's (v1 surface) and OpenAI's: the credentials decide
            ("GET", "/v1/batches", self.list, "either"),
            ("GET", "/v1/batches/{name}", self.get, "either"),
            ("POST", "/v1/files", self.openai.upload, "bearer"),
            ("GET", "/v1/files/{name}/content", self.openai.content, "bearer"),
            ("POST", "/v1/batches", self.create_openai, "bearer"),
            ("POST", "/v1/batches/{name}/cancel", self.cancel_openai, "bearer"),
        ]
        for method, path, handler, scheme in table:
            gate.add(router, method, path, handler, scheme)

    async def create_openai(self, request: web.Request) -> web.Response:
        return await self.openai.create(request, caller(request).key)

    async def list(self, request: web.Request) -> web.Response:
        api = self.apis[caller(request).api]
        page = api.page(self.book.jobs_of(api), request.query)
        self.book.record.http(request.path, 200)
        return api.json(200, page)

    async def get(self, request: web.Request) -> web.Response:
        api = self.apis[caller(request).api]
        job = self.book.jobs.get(api.job_name(request.match_info["name"]))
        self.book.record.http(request.path, 200 if job else 404)
        if job is None:
            return api.not_found()
        return api.json(200, api.view(job))

    async def cancel_gemini(self, request: web.Request) -> web.Response:
        """POST /v1beta/batches/{name}:cancel (the only method on that path)."""
        name, _, method = request.match_info["name"].partition(":")
        return self._cancel(request, self.gemini, name if method == "cancel" else None)

    async def cancel_openai(self, request: web.Request) -> web.Response:
        return self._cancel(request, self.openai, request.match_info["name"])

    def _cancel(self, request: web.Request, api: BatchApi, name: str | None) -> web.Response:
        job = self.book.jobs.get(api.job_name(name)) if name is not None else None
        self.book.record.http(request.path, 200 if job else 404)
        if job is None:
            return api.not_found()
        self.book.cancel(job)
        return api.json(200, api.cancelled(job))
