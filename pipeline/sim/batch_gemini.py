"""Gemini Batch Mode: the resumable upload, files and downloads, batchGenerateContent and the
batches/* operations.

Shapes follow the recordings: states BATCH_STATE_* on the wire, int64 counters as strings,
inline answers under metadata.output.inlinedResponses.inlinedResponses (and a copy under
response), file answers in metadata.output.responsesFile, output lines {key, response|error}.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from pipeline.sim import envelopes, gemini, reply
from pipeline.sim.batch import ENDED, Job, ProviderBatches, SimFile, timestamp
from pipeline.sim.core import Req, Result

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
STATE = {
    "pending": "BATCH_STATE_PENDING",
    "running": "BATCH_STATE_RUNNING",
    "succeeded": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
}
NO_BATCH = "Requested entity was not found."


class GeminiBatches:
    """Gemini's dialect of the batch book and its own endpoints (auth checked before them)."""

    api = "gemini"

    def __init__(self, book: ProviderBatches, host: str):
        self.book = book
        self.host = host

    # -- the dialect ----------------------------------------------------------------------
    def parse(self, body: Any, req: Req) -> None:
        gemini.parse(body, req)

    def answer(self, key: str, result: Result, model: str, rid: str) -> dict[str, Any]:
        return {"key": key, "response": gemini.body(result, model, rid)}

    def line_error(self, key: str, message: str, code: int) -> dict[str, Any]:
        status = "INVALID_ARGUMENT" if code == 400 else "INTERNAL"
        return {"key": key, "error": {"code": code, "message": message, "status": status}}

    def output_name(self, tag: str) -> str:
        return f"files/batch-{tag}"

    def job_name(self, name: str) -> str:
        return "batches/" + name

    def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return reply.json("gemini", status, body, headers)

    def not_found(self, message: str = NO_BATCH) -> web.Response:
        return self.json(404, envelopes.google(404, "NOT_FOUND", message))

    def page(self, jobs: list[Job], query: Mapping[str, str]) -> dict[str, Any]:
        size = int(query.get("pageSize") or 50)
        start = int(query.get("pageToken") or 0)
        page: dict[str, Any] = {"operations": [self.view(j) for j in jobs[start : start + size]]}
        if start + size < len(jobs):
            page["nextPageToken"] = str(start + size)
        return page

    def cancelled(self, job: Job) -> dict[str, Any]:
        return {}

    def view(self, job: Job) -> dict[str, Any]:
        """The batch as a long-running operation."""
        self.book.advance(job)
        meta: dict[str, Any] = {
            "@type": BATCH_TYPE,
            "model": f"models/{job.model}",
            "displayName": job.display,
        }
        if job.input_file:
            meta["inputConfig"] = {"fileName": job.input_file}
        output = _output(job) if job.state == "succeeded" else None
        if output is not None:
            meta["output"] = output
        meta["createTime"] = timestamp(job.created)
        if job.ended is not None:
            meta["endTime"] = timestamp(job.ended)
        meta["updateTime"] = timestamp(job.ended or job.created)
        meta["batchStats"] = _stats(job)
        meta["state"] = STATE[job.state]
        meta["name"] = job.name
        view: dict[str, Any] = {"name": job.name, "metadata": meta}
        if job.state in ENDED:
            view["done"] = True
        if job.state == "failed":
            view["error"] = {
                "code": 400,
                "message": "Batch failed: the input could not be processed.",
                "status": "INVALID_ARGUMENT",
            }
        if output is not None:
            view["response"] = {"@type": OUTPUT_TYPE, **output}
        return view

    def file_info(self, f: SimFile) -> dict[str, Any]:
        return {
            "name": f.name,
            "displayName": f.display,
            "mimeType": f.mime,
            "sizeBytes": str(len(f.data)),
            "createTime": timestamp(f.created),
            "updateTime": timestamp(f.created),
            "expirationTime": timestamp(f.created + 48 * 3600),
            "sha256Hash": secrets.token_urlsafe(32),
            "uri": f"{self.host}/v1beta/{f.name}",
            "state": "ACTIVE",
            "source": "UPLOADED" if not f.name.startswith("files/batch-") else "GENERATED",
        }

    # -- endpoints ------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        """The resumable upload: a start (with the key), chunks, a finalize."""
        upload_id = request.query.get("upload_id")
        command = request.headers.get("x-goog-upload-command", "")
        if upload_id is None:
            return await self._start_upload(request, command)
        up = self.book.uploads.get(upload_id)
        if up is None:
            self.book.record.http(request.path, 404)
            return self.not_found("Upload not found.")
        offset = int(request.headers.get("x-goog-upload-offset", "0") or 0)
        chunk = await request.read()
        up["data"][offset : offset + len(chunk)] = chunk
        self.book.record.http(request.path, 200)
        if "finalize" not in command:
            return web.Response(status=200, headers={"x-goog-upload-status": "active"})
        del self.book.uploads[upload_id]
        name = "files/" + secrets.token_hex(6)
        f = self.book.add_file(name, up["display"], up["mime"], bytes(up["data"]))
        return self.json(200, {"file": self.file_info(f)}, {"x-goog-upload-status": "final"})

    async def _start_upload(self, request: web.Request, command: str) -> web.Response:
        if "start" not in command:
            self.book.record.http(request.path, 400)
            return self.json(400, envelopes.invalid_argument("Expected a resumable upload."))
        meta = orjson.loads(await request.read() or b"{}").get("file") or {}
        upload_id = secrets.token_urlsafe(12)
        self.book.uploads[upload_id] = {
            "data": bytearray(),
            "display": meta.get("display_name") or meta.get("displayName") or "",
            "mime": request.headers.get("x-goog-upload-header-content-type")
            or meta.get("mime_type")
            or "application/octet-stream",
        }
        url = (
            f"{request.scheme}://{request.host}{request.path}"
            f"?upload_id={upload_id}&upload_protocol=resumable"
        )
        self.book.record.http(request.path, 200)
        return web.Response(
            status=200,
            headers={
                "x-goog-upload-url": url,
                "x-goog-upload-status": "active",
                "x-goog-upload-chunk-granularity": "8388608",
            },
        )

    async def file_get(self, request: web.Request) -> web.Response:
        name, _, method = request.match_info["name"].partition(":")
        f = self.book.files.get(f"files/{name}")
        self.book.record.http(request.path, 200 if f else 404)
        if f is None:
            return self.not_found("File not found.")
        if method == "download" or request.path.startswith("/download/"):
            return web.Response(body=f.data, headers={"Content-Type": "application/jsonl"})
        return self.json(200, self.file_info(f))

    async def create(self, request: web.Request, key: str, model: str, body: Any) -> web.Response:
        """POST /v1beta/models/{model}:batchGenerateContent (auth already checked)."""
        batch = (body.get("batch", body) if isinstance(body, dict) else None) or {}
        config = batch.get("inputConfig") or batch.get("input_config") or {}
        inline = isinstance(config.get("requests"), dict)
        input_file = None if inline else config.get("fileName") or config.get("file_name")
        lines: list[tuple[str, Any]] = []
        if inline:
            for i, item in enumerate(config["requests"].get("requests") or []):
                k = str(((item.get("metadata") or {}).get("key")) or i)
                lines.append((k, item.get("request") or {}))
        elif input_file:
            input_file = str(input_file)
            f = self.book.files.get(input_file)
            if f is None:
                self.book.record.http(request.path, 400)
                return self.json(400, envelopes.invalid_argument(f"File {input_file} not found."))
            for i, raw in enumerate(f.data.splitlines()):
                if raw.strip():
                    item = orjson.loads(raw)
                    lines.append((str(item.get("key", i)), item.get("request") or {}))
        if not lines:
            self.book.record.http(request.path, 400)
            return self.json(400, envelopes.invalid_argument("Batch has no requests."))
        job = Job(
            dialect=self,
            name="batches/" + secrets.token_hex(16),
            model=model,
            display=str(batch.get("displayName") or batch.get("display_name") or ""),
            key=key,
            lines=lines,
            inline=inline,
            created=time.time(),
            fault=self.book.take_fault(),
            input_file=input_file,
        )
        await self.book.created(job, request.path)
        return self.json(200, self.view(job))

    async def delete(self, request: web.Request) -> web.Response:
        job = self.book.jobs.pop(self.job_name(request.match_info["name"]), None)
        self.book.record.http(request.path, 200 if job else 404)
        if job is None:
            return self.not_found()
        return self.json(200, {})


def _stats(job: Job) -> dict[str, str]:
    stats = {"requestCount": str(len(job.lines))}
    if job.state in ("pending", "running"):
        stats["pendingRequestCount"] = str(len(job.lines))
    elif job.state == "succeeded":
        if job.ok:
            stats["successfulRequestCount"] = str(job.ok)
        if job.failed:
            stats["failedRequestCount"] = str(job.failed)
    return stats


def _output(job: Job) -> dict[str, Any]:
    if not job.inline:
        return {"responsesFile": job.output_file}
    inlined = [
        {
            **({"response": o["response"]} if "response" in o else {"error": o["error"]}),
            "metadata": {"key": o["key"]},
        }
        for o in job.outputs or []
    ]
    return {"inlinedResponses": {"inlinedResponses": inlined}}
