"""Gemini Batch Mode on the wire: batchGenerateContent, batches/{id}, the resumable upload.

Shapes follow the recordings (batch.lifecycle.inline, batch.create.200.file-input,
files.upload.resumable, batch.output.responses-file.lines) and the google-genai captures.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.reply import Reply, ReplyKind
from pipeline.core.retry import ErrorClass
from pipeline.lanes.api import (
    CANCELLED,
    EXPIRED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    BatchApiError,
    RemoteBatch,
)
from pipeline.providers.base import google_error
from pipeline.providers.gemini import parse_generate_content
from pipeline.transport import HttpResponse, Transport, TransportError

STATES = {
    "BATCH_STATE_PENDING": PENDING,
    "BATCH_STATE_RUNNING": RUNNING,
    "BATCH_STATE_SUCCEEDED": SUCCEEDED,
    "BATCH_STATE_FAILED": FAILED,
    "BATCH_STATE_CANCELLED": CANCELLED,
    "BATCH_STATE_EXPIRED": EXPIRED,
    # the SDK's names, in case a gateway passes them through
    "JOB_STATE_PENDING": PENDING,
    "JOB_STATE_RUNNING": RUNNING,
    "JOB_STATE_SUCCEEDED": SUCCEEDED,
    "JOB_STATE_FAILED": FAILED,
    "JOB_STATE_CANCELLED": CANCELLED,
    "JOB_STATE_EXPIRED": EXPIRED,
}


class GeminiBatchApi:
    def __init__(self, transport: Transport, base_url: str, model: str, api_key: str):
        self.t = transport
        self.base = base_url
        self.model = model.removeprefix("models/")
        self.key = api_key
        self.requests = 0  # HTTP requests sent, for the lane report

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"content-type": "application/json", "x-goog-api-key": self.key, **(extra or {})}

    async def _call(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResponse:
        self.requests += 1
        try:
            resp = await self.t.request(method, url, headers or self._headers(), body)
        except TransportError as exc:
            raise BatchApiError(f"{method} {url.split('?')[0]}: {exc}") from None
        if resp.status != 200:
            error = _error_object(resp.body)
            cls, what, delay = google_error(resp.status, error)
            raise BatchApiError(
                f"{method} {url.split('?')[0]}: {what}",
                stop=cls is ErrorClass.STOP,
                bad=cls is ErrorClass.BAD_REQUEST,
                retry_after=delay,
                status=resp.status,
            )
        return resp

    def line(self, key: str, request: bytes) -> bytes:
        return b'{"key":' + orjson.dumps(key) + b',"request":' + request + b"}"

    async def submit(
        self, display: str, keys: list[str], requests: list[bytes], inline: bool
    ) -> str:
        url = f"{self.base}/v1beta/models/{self.model}:batchGenerateContent"
        if inline:
            items = b",".join(
                b'{"request":' + r + b',"metadata":{"key":' + orjson.dumps(k) + b"}}"
                for k, r in zip(keys, requests, strict=True)
            )
            body = (
                b'{"batch":{"displayName":'
                + orjson.dumps(display)
                + b',"inputConfig":{"requests":{"requests":['
                + items
                + b"]}}}}"
            )
        else:
            data = b"\n".join(self.line(k, r) for k, r in zip(keys, requests, strict=True)) + b"\n"
            file_name = await self.upload(display, data)
            body = orjson.dumps(
                {"batch": {"displayName": display, "inputConfig": {"fileName": file_name}}}
            )
        resp = await self._call("POST", url, body)
        return str(orjson.loads(resp.body)["name"])

    async def upload(self, display: str, data: bytes) -> str:
        """The resumable upload: start (the session URL comes back in a header), then one
        `upload, finalize` chunk."""
        start = self._headers(
            {
                "x-goog-upload-protocol": "resumable",
                "x-goog-upload-command": "start",
                "x-goog-upload-header-content-length": str(len(data)),
                "x-goog-upload-header-content-type": "application/jsonl",
            }
        )
        meta = orjson.dumps({"file": {"display_name": display, "mime_type": "application/jsonl"}})
        resp = await self._call("POST", f"{self.base}/upload/v1beta/files", meta, start)
        session = resp.headers.get("x-goog-upload-url")
        if not session:
            raise BatchApiError("file upload: no x-goog-upload-url in the answer to start")
        chunk = {
            "content-type": "application/jsonl",
            "x-goog-upload-command": "upload, finalize",
            "x-goog-upload-offset": "0",
            "content-length": str(len(data)),
        }
        resp = await self._call("POST", session, data, chunk)
        if resp.headers.get("x-goog-upload-status", "final") != "final":
            raise BatchApiError("file upload: the upload did not finalize")
        return str(orjson.loads(resp.body)["file"]["name"])

    async def find(self, display: str) -> str | None:
        token = ""
        while True:
            url = f"{self.base}/v1beta/batches?pageSize=100" + (
                f"&pageToken={token}" if token else ""
            )
            page = orjson.loads((await self._call("GET", url)).body)
            for op in page.get("operations") or page.get("batches") or []:
                meta = op.get("metadata") or {}
                if meta.get("displayName") == display:
                    return str(op["name"])
            token = page.get("nextPageToken") or ""
            if not token:
                return None

    async def get(self, name: str) -> RemoteBatch:
        try:
            body = orjson.loads((await self._call("GET", f"{self.base}/v1beta/{name}")).body)
        except BatchApiError as exc:
            if exc.status == 404:  # deleted, or older than the provider keeps batches
                return RemoteBatch(name, EXPIRED, "the provider no longer knows this batch")
            raise
        meta = body.get("metadata") or {}
        state = STATES.get(str(meta.get("state", "")), PENDING)
        err = body.get("error")
        error = None
        if isinstance(err, dict):
            error = f"{err.get('status', err.get('code', ''))}: {err.get('message', '')}".strip()
        return RemoteBatch(name, state, error, body)

    async def results(self, batch: RemoteBatch) -> dict[str, Reply]:
        meta = batch.body.get("metadata") or {}
        output = meta.get("output") or (batch.body.get("response") or {})
        inlined = (output.get("inlinedResponses") or {}).get("inlinedResponses")
        out: dict[str, Reply] = {}
        if isinstance(inlined, list):
            for item in inlined:
                key = str((item.get("metadata") or {}).get("key", ""))
                out[key] = _reply(item)
            return out
        responses_file = output.get("responsesFile")
        if not responses_file:
            return out
        url = f"{self.base}/download/v1beta/{responses_file}:download?alt=media"
        data = (await self._call("GET", url)).body
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a torn line is an answer we did not get: the row goes again
            out[str(item.get("key", ""))] = _reply(item)
        return out


def _reply(item: dict[str, Any]) -> Reply:
    response = item.get("response")
    if isinstance(response, dict):
        return parse_generate_content(response)
    raw = item.get("error")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    code = int(error.get("code", 500) or 500)
    cls, what, delay = google_error(code, error)
    if cls is ErrorClass.STOP:
        cls = ErrorClass.BAD_REQUEST  # one line's error does not stop the job
    return Reply(ReplyKind.ERROR, code, error_class=cls, error=what, retry_after=delay)


def _error_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"message": raw[:200].decode("utf-8", "replace")}
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return {"message": str(body)[:200]}
