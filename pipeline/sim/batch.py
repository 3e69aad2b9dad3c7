"""Batch jobs and files: Gemini Batch Mode (batchGenerateContent, batches/*, the resumable
upload, downloads) and the OpenAI Batch API (/v1/files, /v1/batches).

Shapes follow the recordings: states BATCH_STATE_* on the wire, int64 counters as strings,
inline answers under metadata.output.inlinedResponses.inlinedResponses (and a copy under
response), file answers in metadata.output.responsesFile, output lines {key, response|error}.
A batch finishes `batch_seconds` after it was created; `batch_faults` are consumed one per
created batch: "ok", "expire", "fail" or "invalid=0.03" (that share of answers breaks schema),
"stall" / "stall=SECONDS" (held PENDING for ever / that much longer, then answered, billed) or
"lie" (reported SUCCEEDED with every line failed, nothing billed).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

from pipeline.sim import chat, core, envelopes, gemini
from pipeline.sim.core import BadRequest, Req

if TYPE_CHECKING:
    from pipeline.sim.server import Sim

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
GOOGLE_JSON = {"Content-Type": "application/json; charset=UTF-8"}
STATE = {
    "pending": ("BATCH_STATE_PENDING", "validating"),
    "running": ("BATCH_STATE_RUNNING", "in_progress"),
    "succeeded": ("BATCH_STATE_SUCCEEDED", "completed"),
    "failed": ("BATCH_STATE_FAILED", "failed"),
    "expired": ("BATCH_STATE_EXPIRED", "expired"),
    "cancelled": ("BATCH_STATE_CANCELLED", "cancelled"),
}


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SimFile:
    name: str  # "files/abc" (Gemini) or "file-abc" (OpenAI)
    display: str
    mime: str
    data: bytes
    created: float


@dataclass
class Job:
    api: str  # "gemini" | "openai"
    name: str
    model: str
    display: str
    key: str
    lines: list[tuple[str, Any]]  # (key or custom_id, request body)
    inline: bool
    created: float
    fault: str
    input_file: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    state: str = "pending"
    outputs: list[dict[str, Any]] | None = None
    output_file: str | None = None
    ok: int = 0
    failed: int = 0
    ended: float | None = None


class Batches:
    def __init__(self, sim: Sim):
        self.sim = sim
        self.files: dict[str, SimFile] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.faults = list(sim.cfg.batch_faults)
        self.rng = random.Random(sim.cfg.seed + 3)
        self.create_delay = sim.cfg.batch_create_delay

    def routes(self, app: web.Application) -> None:
        r = app.router
        for v in ("v1beta", "v1"):
            r.add_post(f"/upload/{v}/files", self.upload)
            r.add_get(f"/{v}/files/{{name}}", self.file_get)
            r.add_get(f"/download/{v}/files/{{name}}", self.file_get)
            r.add_post(f"/{v}/batches/{{name}}", self.cancel_gemini)
            r.add_delete(f"/{v}/batches/{{name}}", self.delete_gemini)
        r.add_get("/v1beta/batches", self.list_gemini)
        r.add_get("/v1beta/batches/{name}", self.get_gemini)
        # /v1/batches is both Gemini's (v1 surface) and OpenAI's: the credentials decide
        r.add_get("/v1/batches", self._either(self.list_gemini, self.openai_list))
        r.add_get("/v1/batches/{name}", self._either(self.get_gemini, self.openai_get))
        r.add_post("/v1/files", self.openai_file)
        r.add_get("/v1/files/{name}/content", self.openai_content)
        r.add_post("/v1/batches", self.openai_create)
        r.add_post("/v1/batches/{name}/cancel", self.openai_cancel)

    @staticmethod
    def _either(google: Handler, openai: Handler) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            if request.headers.get("authorization", "").lower().startswith("bearer "):
                return await openai(request)
            return await google(request)

        return route

    # -- auth and plumbing --------------------------------------------------------------
    def _google_key(self, request: web.Request) -> web.Response | str:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return self._json(403, envelopes.unregistered())
        if key not in self.sim.projects:
            return self._json(400, envelopes.api_key_invalid())
        return key

    def _openai_key(self, request: web.Request) -> web.Response | str:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if key not in self.sim.projects:
            return self._json(401, envelopes.openai_bad_key(key), openai=True)
        return key

    def _json(self, status: int, body: Any, *, openai: bool = False) -> web.Response:
        headers = {"Content-Type": "application/json"} if openai else GOOGLE_JSON
        return web.Response(body=orjson.dumps(body), status=status, headers=headers)

    def _http(self, request: web.Request, status: int) -> None:
        """One ledger line per HTTP request of the batch lane (not billed)."""
        if self.sim.logging:
            self.sim.ledger.record(
                {
                    "t": time.time(),
                    "api": "batch",
                    "path": request.path,
                    "status": status,
                    "billed": False,
                    "http": True,
                    "lane": "batch",
                    "usage": {"prompt": 0, "cached": 0, "output": 0, "thinking": 0},
                    "items": 0,
                }
            )

    def _take_fault(self) -> str:
        return self.faults.pop(0) if self.faults else "ok"

    async def _created(self, request: web.Request) -> None:
        """Log the create; the first one may answer late (the batch exists already)."""
        self._http(request, 200)
        if self.create_delay:
            delay, self.create_delay = self.create_delay, 0.0
            self.sim.ledger.flush()
            await asyncio.sleep(delay)

    # -- files (Gemini resumable upload) --------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        upload_id = request.query.get("upload_id")
        command = request.headers.get("x-goog-upload-command", "")
        if upload_id is None:
            key = self._google_key(request)
            if isinstance(key, web.Response):
                return key
            if "start" not in command:
                self._http(request, 400)
                return self._json(400, envelopes.invalid_argument("Expected a resumable upload."))
            meta = orjson.loads(await request.read() or b"{}").get("file") or {}
            upload_id = secrets.token_urlsafe(12)
            self.uploads[upload_id] = {
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
            self._http(request, 200)
            return web.Response(
                status=200,
                headers={
                    "x-goog-upload-url": url,
                    "x-goog-upload-status": "active",
                    "x-goog-upload-chunk-granularity": "8388608",
                },
            )
        up = self.uploads.get(upload_id)
        if up is None:
            self._http(request, 404)
            return self._json(404, envelopes.google(404, "NOT_FOUND", "Upload not found."))
        offset = int(request.headers.get("x-goog-upload-offset", "0") or 0)
        chunk = await request.read()
        up["data"][offset : offset + len(chunk)] = chunk
        if "finalize" not in command:
            self._http(request, 200)
            return web.Response(status=200, headers={"x-goog-upload-status": "active"})
        del self.uploads[upload_id]
        name = "files/" + secrets.token_hex(6)
        f = SimFile(name, up["display"], up["mime"], bytes(up["data"]), time.time())
        self.files[name] = f
        self._http(request, 200)
        return web.Response(
            body=orjson.dumps({"file": self._file_info(f)}),
            headers={**GOOGLE_JSON, "x-goog-upload-status": "final"},
        )

    def _file_info(self, f: SimFile) -> dict[str, Any]:
        return {
            "name": f.name,
            "displayName": f.display,
            "mimeType": f.mime,
            "sizeBytes": str(len(f.data)),
            "createTime": _ts(f.created),
            "updateTime": _ts(f.created),
            "expirationTime": _ts(f.created + 48 * 3600),
            "sha256Hash": secrets.token_urlsafe(32),
            "uri": f"{self.sim.cfg.host}/v1beta/{f.name}",
            "state": "ACTIVE",
            "source": "UPLOADED" if not f.name.startswith("files/batch-") else "GENERATED",
        }

    async def file_get(self, request: web.Request) -> web.Response:
        key = self._google_key(request)
        if isinstance(key, web.Response):
            return key
        name, _, method = request.match_info["name"].partition(":")
        f = self.files.get(f"files/{name}")
        self._http(request, 200 if f else 404)
        if f is None:
            return self._json(404, envelopes.google(404, "NOT_FOUND", "File not found."))
        if method == "download" or request.path.startswith("/download/"):
            return web.Response(body=f.data, headers={"Content-Type": "application/jsonl"})
        return self._json(200, self._file_info(f))

    # -- Gemini batches ---------------------------------------------------------------------
    async def create_gemini(self, request: web.Request, model: str, body: Any) -> web.Response:
        """POST /v1beta/models/{model}:batchGenerateContent (auth already checked)."""
        key = request.headers.get("x-goog-api-key") or request.query.get("key") or ""
        batch = body.get("batch", body) if isinstance(body, dict) else None
        config = (batch or {}).get("inputConfig") or (batch or {}).get("input_config") or {}
        lines: list[tuple[str, Any]] = []
        inline = True
        input_file = None
        if isinstance(config.get("requests"), dict):
            for i, item in enumerate(config["requests"].get("requests") or []):
                k = str(((item.get("metadata") or {}).get("key")) or i)
                lines.append((k, item.get("request") or {}))
        elif config.get("fileName") or config.get("file_name"):
            input_file = str(config.get("fileName") or config.get("file_name"))
            f = self.files.get(input_file)
            if f is None:
                self._http(request, 400)
                return self._json(400, envelopes.invalid_argument(f"File {input_file} not found."))
            inline = False
            for i, raw in enumerate(f.data.splitlines()):
                if raw.strip():
                    item = orjson.loads(raw)
                    lines.append((str(item.get("key", i)), item.get("request") or {}))
        if not lines:
            self._http(request, 400)
            return self._json(400, envelopes.invalid_argument("Batch has no requests."))
        name = "batches/" + secrets.token_hex(16)
        display = str((batch or {}).get("displayName") or (batch or {}).get("display_name") or "")
        job = Job(
            "gemini",
            name,
            model,
            display,
            key,
            lines,
            inline,
            time.time(),
            self._take_fault(),
            input_file,
        )
        self.jobs[name] = job
        await self._created(request)
        return self._json(200, self._gemini_view(job))

    def _advance(self, job: Job) -> None:
        if job.state in ("succeeded", "failed", "expired", "cancelled"):
            return
        age = time.time() - job.created
        delay = self.sim.cfg.batch_seconds
        hold = 0.0
        if job.fault.startswith("stall"):
            hold = float(job.fault.split("=", 1)[1]) if "=" in job.fault else float("inf")
        if age < delay * 0.3 + hold:
            job.state = "pending"
            return
        if age < delay + hold:
            job.state = "running"
            return
        job.ended = time.time()
        if job.fault == "expire":
            job.state = "expired"
            return
        if job.fault == "fail":
            job.state = "failed"
            return
        if job.fault == "lie":
            self._lie(job)
        else:
            self._run(job)
        job.state = "succeeded"

    def _lie(self, job: Job) -> None:
        """Succeeded, says the batch; every line holds an error and nothing is billed."""
        job.failed = len(job.lines)
        self._keep_outputs(
            job,
            [self._line_error(job, k, "Internal error encountered.", 500) for k, _ in job.lines],
        )

    def _run(self, job: Job) -> None:
        """Answer every line once (billed in the ledger at the batch lane)."""
        bad_share = 0.0
        if job.fault.startswith("invalid="):
            bad_share = float(job.fault.split("=", 1)[1])
        bad = set()
        if bad_share:
            n = max(1, round(len(job.lines) * bad_share))
            bad = set(self.rng.sample(range(len(job.lines)), min(n, len(job.lines))))
        outputs: list[dict[str, Any]] = []
        for i, (k, body) in enumerate(job.lines):
            req = Req(job.api, f"batch:{job.name}", job.model, job.key)
            try:
                if job.api == "gemini":
                    gemini.parse(body, req)
                else:
                    chat.parse(body, req)
            except BadRequest as e:
                job.failed += 1
                outputs.append(self._line_error(job, k, e.message))
                continue
            fault, drop = self.sim.picker.forced(None, core.unpacked_texts(req))
            if i in bad:
                fault = "bad_enum" if req.schema is not None and i % 2 else "bad_json"
            result = core.generate(req, fault, drop, 0)
            rid = self.sim.response_id()
            self.sim.log(req, 200, fault, result, rid, lane="batch")
            job.ok += 1
            if job.api == "gemini":
                outputs.append({"key": k, "response": gemini.body(result, job.model, rid)})
            else:
                outputs.append(
                    {
                        "id": f"batch_req_{rid}",
                        "custom_id": k,
                        "response": {
                            "status_code": 200,
                            "request_id": f"req_{rid}",
                            "body": chat.body(
                                result, job.model, f"chatcmpl-{rid}", int(time.time())
                            ),
                        },
                        "error": None,
                    }
                )
        self._keep_outputs(job, outputs)

    def _keep_outputs(self, job: Job, outputs: list[dict[str, Any]]) -> None:
        job.outputs = outputs
        if not job.inline:
            tag = job.name.split("/")[-1]
            name = f"files/batch-{tag}" if job.api == "gemini" else f"file-out-{tag}"
            data = b"".join(orjson.dumps(o) + b"\n" for o in outputs)
            self.files[name] = SimFile(name, f"batch-{tag}", "application/jsonl", data, time.time())
            job.output_file = name

    def _line_error(self, job: Job, k: str, message: str, code: int = 400) -> dict[str, Any]:
        if job.api == "gemini":
            status = "INVALID_ARGUMENT" if code == 400 else "INTERNAL"
            return {"key": k, "error": {"code": code, "message": message, "status": status}}
        kind = "invalid_request_error" if code == 400 else "server_error"
        err = {"message": message, "type": kind, "code": None}
        return {
            "id": "batch_req_x",
            "custom_id": k,
            "response": {"status_code": code, "request_id": "req_x", "body": {"error": err}},
            "error": None,
        }

    def _gemini_view(self, job: Job) -> dict[str, Any]:
        self._advance(job)
        wire, _ = STATE[job.state]
        stats: dict[str, str] = {"requestCount": str(len(job.lines))}
        if job.state in ("pending", "running"):
            stats["pendingRequestCount"] = str(len(job.lines))
        elif job.state == "succeeded":
            if job.ok:
                stats["successfulRequestCount"] = str(job.ok)
            if job.failed:
                stats["failedRequestCount"] = str(job.failed)
        meta: dict[str, Any] = {
            "@type": BATCH_TYPE,
            "model": f"models/{job.model}",
            "displayName": job.display,
        }
        if job.input_file:
            meta["inputConfig"] = {"fileName": job.input_file}
        output: dict[str, Any] | None = None
        if job.state == "succeeded":
            if job.inline:
                output = {
                    "inlinedResponses": {
                        "inlinedResponses": [
                            {
                                **(
                                    {"response": o["response"]}
                                    if "response" in o
                                    else {"error": o["error"]}
                                ),
                                "metadata": {"key": o["key"]},
                            }
                            for o in job.outputs or []
                        ]
                    }
                }
            else:
                output = {"responsesFile": job.output_file}
            meta["output"] = output
        meta["createTime"] = _ts(job.created)
        if job.ended is not None:
            meta["endTime"] = _ts(job.ended)
        meta["updateTime"] = _ts(job.ended or job.created)
        meta["batchStats"] = stats
        meta["state"] = wire
        meta["name"] = job.name
        view: dict[str, Any] = {"name": job.name, "metadata": meta}
        if job.state in ("succeeded", "failed", "expired", "cancelled"):
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

    async def list_gemini(self, request: web.Request) -> web.Response:
        key = self._google_key(request)
        if isinstance(key, web.Response):
            return key
        jobs = [j for j in self.jobs.values() if j.api == "gemini"]
        size = int(request.query.get("pageSize") or 50)
        start = int(request.query.get("pageToken") or 0)
        page: dict[str, Any] = {
            "operations": [self._gemini_view(j) for j in jobs[start : start + size]]
        }
        if start + size < len(jobs):
            page["nextPageToken"] = str(start + size)
        self._http(request, 200)
        return self._json(200, page)

    async def get_gemini(self, request: web.Request) -> web.Response:
        key = self._google_key(request)
        if isinstance(key, web.Response):
            return key
        job = self.jobs.get("batches/" + request.match_info["name"])
        self._http(request, 200 if job else 404)
        if job is None:
            return self._json(
                404, envelopes.google(404, "NOT_FOUND", "Requested entity was not found.")
            )
        return self._json(200, self._gemini_view(job))

    async def cancel_gemini(self, request: web.Request) -> web.Response:
        key = self._google_key(request)
        if isinstance(key, web.Response):
            return key
        name, _, method = request.match_info["name"].partition(":")
        job = self.jobs.get("batches/" + name)
        self._http(request, 200 if job and method == "cancel" else 404)
        if job is None or method != "cancel":
            return self._json(
                404, envelopes.google(404, "NOT_FOUND", "Requested entity was not found.")
            )
        self._advance(job)
        if job.state in ("pending", "running"):
            job.state, job.ended = "cancelled", time.time()
        return self._json(200, {})

    async def delete_gemini(self, request: web.Request) -> web.Response:
        key = self._google_key(request)
        if isinstance(key, web.Response):
            return key
        job = self.jobs.pop("batches/" + request.match_info["name"], None)
        self._http(request, 200 if job else 404)
        if job is None:
            return self._json(
                404, envelopes.google(404, "NOT_FOUND", "Requested entity was not found.")
            )
        return self._json(200, {})

    # -- OpenAI batches -----------------------------------------------------------------------
    async def openai_file(self, request: web.Request) -> web.Response:
        key = self._openai_key(request)
        if isinstance(key, web.Response):
            return key
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
        name = "file-" + secrets.token_hex(12)
        self.files[name] = SimFile(name, filename, "application/jsonl", data, time.time())
        self._http(request, 200)
        return self._json(200, self._openai_file_info(self.files[name], purpose), openai=True)

    def _openai_file_info(self, f: SimFile, purpose: str) -> dict[str, Any]:
        return {
            "id": f.name,
            "object": "file",
            "bytes": len(f.data),
            "created_at": int(f.created),
            "filename": f.display,
            "purpose": purpose,
        }

    async def openai_content(self, request: web.Request) -> web.Response:
        key = self._openai_key(request)
        if isinstance(key, web.Response):
            return key
        f = self.files.get(request.match_info["name"])
        self._http(request, 200 if f else 404)
        if f is None:
            body = envelopes.openai("No such File object", "invalid_request_error")
            return self._json(404, body, openai=True)
        return web.Response(body=f.data, headers={"Content-Type": "application/octet-stream"})

    async def openai_create(self, request: web.Request) -> web.Response:
        key = self._openai_key(request)
        if isinstance(key, web.Response):
            return key
        body = orjson.loads(await request.read())
        f = self.files.get(str(body.get("input_file_id")))
        if f is None:
            self._http(request, 400)
            err = envelopes.openai("Invalid input_file_id", "invalid_request_error")
            return self._json(400, err, openai=True)
        lines = []
        model = ""
        for raw in f.data.splitlines():
            if raw.strip():
                item = orjson.loads(raw)
                model = model or str((item.get("body") or {}).get("model", ""))
                lines.append((str(item.get("custom_id")), item.get("body") or {}))
        name = "batch_" + secrets.token_hex(12)
        job = Job(
            "openai", name, model, "", key, lines, False, time.time(), self._take_fault(), f.name
        )
        job.metadata = dict(body.get("metadata") or {})
        self.jobs[name] = job
        await self._created(request)
        return self._json(200, self._openai_view(job), openai=True)

    def _openai_view(self, job: Job) -> dict[str, Any]:
        self._advance(job)
        _, status = STATE[job.state]
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
            "status": status,
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

    async def openai_list(self, request: web.Request) -> web.Response:
        key = self._openai_key(request)
        if isinstance(key, web.Response):
            return key
        jobs = [j for j in self.jobs.values() if j.api == "openai"][::-1]  # newest first
        after = request.query.get("after")
        if after:
            ids = [j.name for j in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit") or 20)
        page = [self._openai_view(j) for j in jobs[:limit]]
        self._http(request, 200)
        return self._json(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(jobs) > limit,
            },
            openai=True,
        )

    async def openai_get(self, request: web.Request) -> web.Response:
        key = self._openai_key(request)
        if isinstance(key, web.Response):
            return key
        job = self.jobs.get(request.match_info["name"])
        self._http(request, 200 if job else 404)
        if job is None:
            body = envelopes.openai("No such Batch object", "invalid_request_error")
            return self._json(404, body, openai=True)
        return self._json(200, self._openai_view(job), openai=True)

    async def openai_cancel(self, request: web.Request) -> web.Response:
        key = self._openai_key(request)
        if isinstance(key, web.Response):
            return key
        job = self.jobs.get(request.match_info["name"])
        self._http(request, 200 if job else 404)
        if job is None:
            body = envelopes.openai("No such Batch object", "invalid_request_error")
            return self._json(404, body, openai=True)
        self._advance(job)
        if job.state in ("pending", "running"):
            job.state, job.ended = "cancelled", time.time()
        return self._json(200, self._openai_view(job), openai=True)
