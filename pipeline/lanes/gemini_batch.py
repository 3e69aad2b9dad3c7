"""Gemini Batch Mode on the wire: batchGenerateContent, batches/{id}, the resumable upload.

Shapes follow the recordings (batch.lifecycle.inline, batch.create.200.file-input,
files.upload.resumable, batch.output.responses-file.lines) and the google-genai captures.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.reply import Reply
from pipeline.lanes import api
from pipeline.lanes.api import BatchApiError, RemoteBatch, jsonl_items, send
from pipeline.providers.base import google_error, line_error
from pipeline.providers.gemini import parse_generate_content
from pipeline.transport import HttpResponse, Transport

# the wire's BATCH_STATE_*, and the SDK's JOB_STATE_* in case a gateway passes them through
STATES = {
    f"{prefix}_STATE_{name.upper()}": name
    for prefix in ("BATCH", "JOB")
    for name in (api.PENDING, api.RUNNING, api.SUCCEEDED, api.FAILED, api.CANCELLED, api.EXPIRED)
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
        return await send(self.t, method, url, headers or self._headers(), body, google_error)

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
                return RemoteBatch(name, api.EXPIRED, "the provider no longer knows this batch")
            raise
        meta = body.get("metadata") or {}
        state = STATES.get(str(meta.get("state", "")), api.PENDING)
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
        for item in jsonl_items(data):
            out[str(item.get("key", ""))] = _reply(item)
        return out


def _reply(item: dict[str, Any]) -> Reply:
    response = item.get("response")
    if isinstance(response, dict):
        return parse_generate_content(response)
    raw = item.get("error")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    code = int(error.get("code", 500) or 500)
    return line_error(code, google_error(code, error, {}))
