"""The OpenAI Batch API on the wire: /files (purpose=batch), /batches, output by custom_id."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from pipeline.core.reply import Reply
from pipeline.lanes import api
from pipeline.lanes.api import BatchApiError, RemoteBatch, jsonl_items, send
from pipeline.providers.base import line_error
from pipeline.providers.openai import openai_error, parse_chat_completion
from pipeline.transport import HttpResponse, Transport

STATES = {
    "validating": api.PENDING,
    "in_progress": api.RUNNING,
    "finalizing": api.RUNNING,
    "completed": api.SUCCEEDED,
    "failed": api.FAILED,
    "expired": api.EXPIRED,
    "cancelling": api.RUNNING,
    "cancelled": api.CANCELLED,
}
TAG = "flashpipe_batch"  # metadata key holding the local batch id


class OpenAIBatchApi:
    def __init__(self, transport: Transport, base_url: str, model: str, api_key: str):
        self.t = transport
        self.base = base_url
        self.model = model
        self.key = api_key
        self.requests = 0

    async def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> HttpResponse:
        self.requests += 1
        headers = {"authorization": f"Bearer {self.key}", "content-type": content_type}
        return await send(self.t, method, f"{self.base}{path}", headers, body, openai_error)

    def line(self, key: str, request: bytes) -> bytes:
        return (
            b'{"custom_id":'
            + orjson.dumps(key)
            + b',"method":"POST","url":"/v1/chat/completions","body":'
            + request
            + b"}"
        )

    async def submit(
        self, display: str, keys: list[str], requests: list[bytes], inline: bool
    ) -> str:
        data = b"\n".join(self.line(k, r) for k, r in zip(keys, requests, strict=True)) + b"\n"
        boundary = "flashpipe" + secrets.token_hex(8)
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{display}.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        resp = await self._call("POST", "/files", body, f"multipart/form-data; boundary={boundary}")
        file_id = orjson.loads(resp.body)["id"]
        create = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {TAG: display},
        }
        resp = await self._call("POST", "/batches", orjson.dumps(create))
        return str(orjson.loads(resp.body)["id"])

    async def find(self, display: str) -> str | None:
        after = ""
        while True:
            page = orjson.loads(
                (
                    await self._call(
                        "GET", "/batches?limit=100" + (f"&after={after}" if after else "")
                    )
                ).body
            )
            for b in page.get("data") or []:
                if (b.get("metadata") or {}).get(TAG) == display:
                    return str(b["id"])
            if not page.get("has_more") or not page.get("data"):
                return None
            after = str(page.get("last_id") or page["data"][-1]["id"])

    async def get(self, name: str) -> RemoteBatch:
        try:
            body = orjson.loads((await self._call("GET", f"/batches/{name}")).body)
        except BatchApiError as exc:
            if exc.status == 404:
                return RemoteBatch(name, api.EXPIRED, "the provider no longer knows this batch")
            raise
        state = STATES.get(str(body.get("status", "")), api.PENDING)
        errors = (body.get("errors") or {}).get("data") or []
        error = None
        if errors:
            e = errors[0]
            error = f"{e.get('code', '')}: {e.get('message', '')}".strip()
        return RemoteBatch(name, state, error, body)

    async def results(self, batch: RemoteBatch) -> dict[str, Reply]:
        out: dict[str, Reply] = {}
        for field in ("output_file_id", "error_file_id"):
            file_id = batch.body.get(field)
            if not file_id:
                continue
            data = (await self._call("GET", f"/files/{file_id}/content")).body
            for item in jsonl_items(data):
                out[str(item.get("custom_id", ""))] = _reply(item)
        return out


def _reply(item: dict[str, Any]) -> Reply:
    response = item.get("response")
    if isinstance(response, dict) and response.get("status_code") == 200:
        body = response.get("body")
        if isinstance(body, dict):
            return parse_chat_completion(body)
    raw = item.get("error") or (response or {}).get("body", {}).get("error") or {}
    err: dict[str, Any] = raw if isinstance(raw, dict) else {}
    status = int((response or {}).get("status_code") or 500)
    return line_error(status, openai_error(status, err, {}))
