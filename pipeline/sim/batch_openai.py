"""The OpenAI Batch API: /v1/files (multipart upload, content) and /v1/batches; output lines
{id, custom_id, response: {status_code, request_id, body}, error}."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from pipeline.sim import chat, envelopes, reply
from pipeline.sim.batch import Job, ProviderBatches
from pipeline.sim.core import Req, Result

STATUS = {
    "pending": "validating",
    "running": "in_progress",
    "succeeded": "completed",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
}


class OpenAIBatches:
    """OpenAI's dialect of the batch book and its own endpoints (auth checked before them)."""

    api = "openai"

    def __init__(self, book: ProviderBatches):
        self.book = book

    # -- the dialect ----------------------------------------------------------------------
    def parse(self, body: Any, req: Req) -> None:
        chat.parse(body, req)

    def answer(self, key: str, result: Result, model: str, rid: str) -> dict[str, Any]:
        body = chat.body(result, model, f"chatcmpl-{rid}", int(time.time()))
        return {
            "id": f"batch_req_{rid}",
            "custom_id": key,
            "response": {"status_code": 200, "request_id": f"req_{rid}", "body": body},
            "error": None,
        }

    def line_error(self, key: str, message: str, code: int) -> dict[str, Any]:
        kind = "invalid_request_error" if code == 400 else "server_error"
        err = {"message": message, "type": kind, "code": None}
        return {
            "id": "batch_req_x",
            "custom_id": key,
            "response": {"status_code": code, "request_id": "req_x", "body": {"error": err}},
            "error": None,
        }

    def output_name(self, tag: str) -> str:
        return f"file-out-{tag}"

    def job_name(self, name: str) -> str:
        return name

    def json(self, status: int, body: Any) -> web.Response:
        return reply.json("openai", status, body)

    def not_found(self, what: str = "Batch") -> web.Response:
        return self.json(404, envelopes.openai(f"No such {what} object", "invalid_request_error"))

    def page(self, jobs: list[Job], query: Mapping[str, str]) -> dict[str, Any]:
        jobs = jobs[::-1]  # newest first
        after = query.get("after")
        if after:
            ids = [j.name for j in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        limit = int(query.get("limit") or 20)
        page = [self.view(j) for j in jobs[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(jobs) > limit,
        }

    def cancelled(self, job: Job) -> dict[str, Any]:
        return self.view(job)

    def view(self, job: Job) -> dict[str, Any]:
        self.book.advance(job)
        done = job.state == "succeeded"
        return {
            "id": job.name,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": {
                "object": "list",
                "data": [{"code": "invalid_file", "message": "Batch failed."}],
            }
            if job.state == "failed"
            else None,
            "input_file_id": job.input_file,
            "completion_window": "24h",
            "status": STATUS[job.state],
            "output_file_id": job.output_file if done else None,
            "error_file_id": None,
            "created_at": int(job.created),
            "in_progress_at": int(job.created) + 1,
            "expires_at": int(job.created + 86400),
            "completed_at": int(job.ended) if done and job.ended else None,
            "request_counts": {
                "total": len(job.lines),
                "completed": job.ok,
                "failed": job.failed,
            },
            "metadata": job.metadata,
        }

    # -- endpoints ------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        """POST /v1/files: a multipart form with `purpose` and `file`."""
        reader = await request.multipart()
        purpose, data, filename = "", b"", "upload.jsonl"
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                data = bytes(await part.read())
        f = self.book.add_file("file-" + secrets.token_hex(12), filename, "application/jsonl", data)
        self.book.record.http(request.path, 200)
        info = {
            "id": f.name,
            "object": "file",
            "bytes": len(f.data),
            "created_at": int(f.created),
            "filename": f.display,
            "purpose": purpose,
        }
        return self.json(200, info)

    async def content(self, request: web.Request) -> web.Response:
        f = self.book.files.get(request.match_info["name"])
        self.book.record.http(request.path, 200 if f else 404)
        if f is None:
            return self.not_found("File")
        return web.Response(body=f.data, headers={"Content-Type": "application/octet-stream"})

    async def create(self, request: web.Request, key: str) -> web.Response:
        body = orjson.loads(await request.read())
        f = self.book.files.get(str(body.get("input_file_id")))
        if f is None:
            self.book.record.http(request.path, 400)
            err = envelopes.openai("Invalid input_file_id", "invalid_request_error")
            return self.json(400, err)
        lines = []
        model = ""
        for raw in f.data.splitlines():
            if raw.strip():
                item = orjson.loads(raw)
                model = model or str((item.get("body") or {}).get("model", ""))
                lines.append((str(item.get("custom_id")), item.get("body") or {}))
        job = Job(
            dialect=self,
            name="batch_" + secrets.token_hex(12),
            model=model,
            display="",
            key=key,
            lines=lines,
            inline=False,
            created=time.time(),
            fault=self.book.take_fault(),
            input_file=f.name,
            metadata=dict(body.get("metadata") or {}),
        )
        await self.book.created(job, request.path)
        return self.json(200, self.view(job))
